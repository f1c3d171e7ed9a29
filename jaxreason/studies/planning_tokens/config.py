"""Settings of the planning-token study: the data, the token groups and template, what trains,
the original's optimisation schedule, evaluation by generation each epoch, the baselines and
the analyses.

``mode`` decides the original's quirks (every number in the outputs names it):

* faithful: the template as concatenated strings, the loss from the prompt's last token,
  batch 1 with 16 accumulated per-example means, the frozen output bias drawn uniformly in
  +-1/sqrt(D), sampling with the checkpoint's ``generation_config.json``, the test subset drawn
  with replacement (seed 42) when it is larger than ``num_test``, StrategyQA answers compared
  case-sensitively, and the best epoch by test accuracy as the headline;
* fixed: ids built piece by piece, the whole prompt masked, padded batches with the same
  per-example loss, a zero output bias, greedy decoding on the whole test set, and the last
  epoch as the headline (the best epoch is reported beside it).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxreason.config_io import ConfigError
from jaxreason.studies.base import StudyConfig, check_compute_dtype, check_sizes
from jaxreason.studies.world_model import WorldModelFields
from jaxreason.tasks.planning import DATASETS

TRAINABLE = ("none", "prompt-tuning", "lora", "lora+prompt-tuning")
LORA_MODULES = {"mlp": ("gate_proj", "up_proj", "down_proj"),
                "attn": ("q_proj", "k_proj", "v_proj", "o_proj")}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One trained model: the paper's setting or a baseline.

    ``planning_tokens: false`` trains on the same chains of thought without any planning
    token (the LoRA baseline); ``labels: false`` keeps the tokens but types every step
    ``assignment`` (planning tokens without the memory/reason labels)."""

    name: str = "paper"
    trainable: Literal["none", "prompt-tuning", "lora", "lora+prompt-tuning"] = "lora+prompt-tuning"
    planning_tokens: bool = True
    labels: bool = True


@dataclasses.dataclass(frozen=True)
class PlanningTokensConfig(StudyConfig, WorldModelFields):
    """The study's settings; an empty ``model_path`` runs on the embedded world base model."""

    study: Literal["planning_tokens"] = "planning_tokens"
    run_dir: str = "runs/planning_tokens"
    dataset: Literal["strategyqa", "commonsenseqa", "truthfulqa", "world"] = "world"
    train_file: str = ""  # a JSON file of the original's format (empty: the embedded world)
    test_file: str = ""
    clean: bool = False  # apply the original generator's cleaning to the records
    rescore: str = ""  # an outputs JSON to score against test_file, and nothing else
    train_size: int = 0  # 0: every training record
    test_size: int = 0  # 0: every test record (before num_test's draw)
    # token groups and template
    n_prefix: int = 2
    n_special: int = 4
    model_max_length: int = 700
    spacers: bool = False  # fixed mode: the id of " " before every planning token
    qwen_padding_rows_bug: bool = False  # faithful, Qwen only: ids in the padding rows
    # model and training
    dtype: str = "float32"
    variants: tuple[Variant, ...] = (Variant(),)
    lora_module: Literal["mlp", "attn"] = "mlp"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lr: float = 2e-4
    epochs: int = 10
    warmup_steps: int = 700
    batch_size: int = 16  # examples per optimizer update
    grad_clip: float = 1.0
    seed: int = 42
    # evaluation
    num_test: int = 200  # faithful: a larger test set is sampled with replacement to this
    eval_batch_size: int = 16
    max_new_tokens: int = 512
    decoding: Literal["auto", "greedy", "generation_config"] = "auto"
    score_text: Literal["generated", "full"] = "generated"
    # analyses
    attention_layer: int = 0
    attention_head: int = 0
    attention_examples: int = 32
    progress: bool = True

    def __post_init__(self):
        check_sizes(self, positive=("n_prefix", "n_special", "model_max_length", "lora_rank",
                                    "epochs", "batch_size", "num_test", "eval_batch_size",
                                    "max_new_tokens", "attention_examples"),
                    non_negative=("train_size", "test_size", "warmup_steps",
                                  "attention_layer", "attention_head"))
        check_compute_dtype(self.dtype)
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset={self.dataset!r}; allowed: {list(DATASETS)}")
        files = self.train_file and self.test_file
        if self.dataset != "world" and not self.rescore and not files:
            raise ConfigError(f"dataset={self.dataset!r} needs train_file and test_file (JSON "
                              f"files of the original's format); only dataset=world is embedded")
        if self.rescore and not self.test_file:
            raise ConfigError("rescore=<outputs.json> needs test_file=<the dataset's test JSON>")
        if self.qwen_padding_rows_bug and self.mode != "faithful":
            raise ConfigError("qwen_padding_rows_bug reproduces a bug of the original: it is "
                              "allowed in mode=faithful only")
        if self.spacers and self.mode != "fixed":
            raise ConfigError("spacers apply to mode=fixed (faithful tokenizes the text as the "
                              "original does)")
        if not self.variants:
            raise ConfigError("variants is empty; list at least the paper's setting")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or not all(n and n.replace("_", "").isalnum()
                                                     for n in names):
            raise ConfigError(f"variants: names must be unique words (letters, digits, _), "
                              f"got {names}")
        for i, v in enumerate(self.variants):
            if not v.planning_tokens and v.trainable != "lora":
                raise ConfigError(f"variants[{i}] ({v.name!r}): without planning tokens only "
                                  f"trainable=lora makes sense (got {v.trainable!r})")
            if not v.planning_tokens and not v.labels:
                raise ConfigError(f"variants[{i}] ({v.name!r}): labels=false needs planning "
                                  "tokens (the labels are the type tokens)")
        if self.lora_dropout < 0 or self.lora_dropout >= 1 or self.lr <= 0 or self.grad_clip <= 0:
            raise ConfigError(f"lora_dropout={self.lora_dropout} must be in [0, 1), lr={self.lr} "
                              f"and grad_clip={self.grad_clip} positive")

    @property
    def sample_decoding(self) -> bool:
        """Whether evaluation samples with the checkpoint's generation config."""
        if self.decoding == "auto":
            return self.mode == "faithful"
        return self.decoding == "generation_config"
