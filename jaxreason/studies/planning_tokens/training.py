"""One variant's training run through the shared loop: its token arrays and its TrainConfig.

The original's optimisation (transformers' Trainer with the paper's command line): AdamW at
lr 2e-4, betas (0.9, 0.999), eps 1e-8, no weight decay, clipping at 1.0, a linear warmup from
0 then a cosine to 0, counted in optimizer updates, 16 examples per update and an epoch of
``floor(N / 16)`` updates. Faithful trains micro-batches of 1 with 16 accumulated, fixed one
padded batch of 16 (the same per-example loss, faster). What trains:

| trainable | ``peft.mode`` | parameters |
|---|---|---|
| none | all | everything (the new rows included) |
| prompt-tuning | new-embeddings | the new input rows and head rows |
| lora | lora | LoRA A/B (new rows frozen at their init) |
| lora+prompt-tuning | lora+new-embeddings | both (the paper's setting) |

LoRA: rank 16, alpha 16, dropout 0.05 on the adapter input, on gate/up/down (``mlp``) or
q/k/v/o (``attn``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxreason.config_io import ConfigError
from jaxreason.data import TokenDataset
from jaxreason.studies.planning_tokens.config import LORA_MODULES, PlanningTokensConfig, Variant
from jaxreason.tasks.planning import PlanningExample, Template, loss_mask
from jaxreason.train.config import (CheckpointSection, DataSection, ModelSection,
                                    OptimizerSection, PeftSection, ScheduleSection,
                                    TrainConfig, TrainerSection)

PEFT_MODES = {"none": "all", "prompt-tuning": "new-embeddings", "lora": "lora",
              "lora+prompt-tuning": "lora+new-embeddings"}
BUCKET = 32  # sequence lengths are padded to a multiple of this (fewer compiled shapes)


def token_dataset(examples: list[PlanningExample], template: Template, pad_id: int,
                  mode: str) -> TokenDataset:
    """Right-padded training arrays: tokens, attention_mask and the loss mask."""
    encoded = [template.training(ex) for ex in examples]
    width = max(len(e.ids) for e in encoded)
    width = -(-width // BUCKET) * BUCKET
    tokens = np.full((len(encoded), width), pad_id, np.int32)
    attn = np.zeros_like(tokens)
    targets = np.zeros(tokens.shape, np.float32)
    for r, e in enumerate(encoded):
        n = len(e.ids)
        tokens[r, :n] = e.ids
        attn[r, :n] = 1
        targets[r, :n] = loss_mask(n, e.source_len, mode)
    return TokenDataset({"tokens": tokens, "attention_mask": attn, "loss_mask": targets},
                        name="planning_tokens")


def steps_per_epoch(rows: int, batch_size: int) -> int:
    steps = rows // batch_size
    if steps < 1:
        raise ConfigError(f"{rows} training examples make no update of batch_size={batch_size}")
    return steps


def train_config(config: PlanningTokensConfig, variant: Variant, base_dir: Path,
                 data_dir: Path, run_dir: Path, rows: int, seq_len: int, new_tokens: int,
                 init, bias) -> TrainConfig:
    """The shared loop's config for one variant."""
    per_epoch = steps_per_epoch(rows, config.batch_size)
    total = per_epoch * config.epochs
    if config.warmup_steps > total:
        raise ConfigError(f"warmup_steps={config.warmup_steps} exceeds the {total} updates of "
                          f"{config.epochs} epochs x {per_epoch}; lower warmup_steps")
    lora = "lora" in variant.trainable
    planning = variant.planning_tokens
    buckets = tuple(range(BUCKET, seq_len + 1, BUCKET))
    options = {"new_token_bias": list(bias)} if planning and variant.trainable != "none" else {}
    return TrainConfig(
        model=ModelSection(preset=None, hf_path=str(base_dir), dtype=config.dtype),
        data=DataSection(source="arrays", path=str(data_dir), batch_size=config.batch_size,
                         eval_fraction=0.0, shuffle_seed=config.seed, buckets=buckets),
        optimizer=OptimizerSection(lr=config.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                   grad_clip=config.grad_clip,
                                   accumulate=config.batch_size
                                   if config.mode == "faithful" else 1),
        schedule=ScheduleSection(kind="cosine", warmup_steps=config.warmup_steps),
        trainer=TrainerSection(steps=total, objective="planning_lm", objective_options=options,
                               eval_every=0, log_every=max(1, per_epoch // 4), seed=config.seed,
                               run_dir=str(run_dir), progress=config.progress),
        checkpoint=CheckpointSection(save_every=total, keep_last=1, resume="auto"),
        peft=PeftSection(mode=PEFT_MODES[variant.trainable] if planning else "lora",
                         lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                         lora_dropout=config.lora_dropout if lora else 0.0,
                         lora_targets=LORA_MODULES[config.lora_module] if lora else (),
                         new_tokens=new_tokens if planning else 0,
                         new_token_init=tuple(init) if planning else "mean"))
