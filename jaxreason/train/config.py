"""The training job's configuration: typed, frozen sections loaded from YAML.

``python -m jaxreason.train --config configs/X.yaml --optimizer.lr=3e-4`` reads the file,
applies the dotted overrides and checks everything through ``jaxreason.config_io``; the
sections below are the schema, and their ``__post_init__`` checks catch impossible
combinations early (before a model is built or a device touched).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from jaxreason.config_io import ConfigError, load_config
from jaxreason.sharding import MeshConfig
from jaxreason.train import objectives


def _check_number(where: str, value: float, *, low: float, high: float = math.inf,
                  low_open: bool = False, high_open: bool = False) -> None:
    """Refuse NaN, infinities and values outside [low, high] (open ends where asked)."""
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not ok:
        lo = f"{'(' if low_open else '['}{low:g}"
        hi = f"{high:g}{')' if high_open else ']'}" if math.isfinite(high) else "inf)"
        kind = "positive (a finite number" if low == 0 and low_open else "a finite number"
        raise ConfigError(f"{where}={value!r} must be {kind} in {lo}, {hi}"
                          + (")" if kind.startswith("positive") else ""))


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which model to train: a preset built from scratch, or a local HF checkpoint.

    ``preset`` is ``gpt2-tiny``, ``gpt2-small``, ``llama-tiny``, or a family name (``gpt2``,
    ``llama``) with every size in ``overrides``; ``hf_path`` loads a checkpoint instead.

    ``scan_layers``: run the blocks under scan with stacked parameters (null: for models of
    16 or more layers). ``remat``: activation checkpointing per block, ``none``, ``block``
    (recompute the whole block in the backward pass) or ``dots`` (keep the products with
    the weights, recompute the rest); captures and interventions work under each.
    """

    preset: str | None = "gpt2-tiny"
    hf_path: str | None = None
    overrides: dict = dataclasses.field(default_factory=dict)
    dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    scan_layers: bool | None = None
    remat: Literal["none", "block", "dots"] = "none"

    def __post_init__(self):
        if (self.preset is None) == (self.hf_path is None):
            raise ConfigError("model: set exactly one of preset and hf_path")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where token data comes from.

    ``source``: ``arrays`` (a directory of ``.npy`` files written by
    ``jaxreason.data.TokenDataset.save``: ``tokens.npy``, ``loss_mask.npy``, any extra
    per-example arrays ...; memory-mapped, so larger than memory is fine) or a task name in
    ``jaxreason.registry.TASKS`` (``copy`` is built in; the studies register theirs).
    """

    source: str = "copy"
    path: str | None = None
    task_args: dict = dataclasses.field(default_factory=dict)
    batch_size: int = 16
    eval_fraction: float = 0.05
    eval_batches: int = 4
    shuffle_seed: int = 0
    shuffle: bool = True  # False reads rows in order every epoch (the MechanisticProbe original)
    buckets: tuple[int, ...] = ()

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ConfigError(f"data.batch_size={self.batch_size} must be positive")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction={self.eval_fraction} must be in [0, 1)")
        if self.eval_batches < 1:
            raise ConfigError(f"data.eval_batches={self.eval_batches} must be >= 1 (set "
                              "data.eval_fraction=0 for no held-out evaluation)")
        bad = [b for b in self.buckets if b < 1]
        if bad:
            raise ConfigError(f"data.buckets={list(self.buckets)}: every bucket must be a "
                              f"positive length, got {bad}")


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    """AdamW with clipping, accumulation and a weight-decay mask.

    ``no_decay``: parameter path patterns excluded from weight decay (norms, biases and
    embeddings by default, as in most LM recipes).
    """

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    no_decay: tuple[str, ...] = ("*bias", "*norm*", "*ln_*", "*embedding", "*lora_*")
    grad_clip: float | None = 1.0
    accumulate: int = 1

    def __post_init__(self):
        _check_number("optimizer.lr", self.lr, low=0.0, low_open=True)
        _check_number("optimizer.b1", self.b1, low=0.0, high=1.0, high_open=True)
        _check_number("optimizer.b2", self.b2, low=0.0, high=1.0, high_open=True)
        _check_number("optimizer.eps", self.eps, low=0.0, low_open=True)
        _check_number("optimizer.weight_decay", self.weight_decay, low=0.0)
        if self.grad_clip is not None:
            _check_number("optimizer.grad_clip", self.grad_clip, low=0.0, low_open=True)
        if self.accumulate < 1:
            raise ConfigError(f"optimizer.accumulate={self.accumulate} must be >= 1")


@dataclasses.dataclass(frozen=True)
class ScheduleSection:
    """Learning-rate schedule after a linear warmup: constant, cosine, or ``wsd``
    (warmup-stable-decay: the peak held, then linear over the last ``decay_fraction`` of the
    steps), the decaying ones down to ``min_lr_ratio`` of the peak."""

    kind: Literal["constant", "cosine", "wsd"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    decay_fraction: float = 0.2

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ConfigError(f"schedule.warmup_steps={self.warmup_steps} must be >= 0")
        _check_number("schedule.min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        _check_number("schedule.decay_fraction", self.decay_fraction, low=0.0, high=1.0)


@dataclasses.dataclass(frozen=True)
class TrainerSection:
    """The loop: steps, objective, evaluation cadence, where results go.

    ``objective_options`` are the objective's keyword arguments (checked against its
    signature). ``classify_tokens`` is a deprecated alias of
    ``objective_options.classify_tokens``, passed only to objectives that take it.
    ``eval_every=0`` evaluates only after the last step. ``overwrite`` lets a new run replace
    the run already in ``run_dir`` (its checkpoints, metrics.jsonl, final_metrics.json,
    config.yaml and curves.png, nothing else); without it such a directory is refused unless
    ``checkpoint.resume`` continues it.
    """

    steps: int = 100
    objective: str = "causal_lm"  # any name in jaxreason.registry.OBJECTIVES
    objective_options: dict = dataclasses.field(default_factory=dict)
    classify_tokens: tuple[int, ...] = ()
    eval_every: int = 50
    log_every: int = 10
    seed: int = 0
    run_dir: str = "runs/default"
    progress: bool = True
    plot: bool = True
    overwrite: bool = False

    def __post_init__(self):
        if self.steps <= 0:
            raise ConfigError(f"trainer.steps={self.steps} must be positive")
        if self.eval_every < 0:
            raise ConfigError(f"trainer.eval_every={self.eval_every} must be >= 0 (a step "
                              "count; 0 evaluates only after the last step)")
        if self.log_every < 1:
            raise ConfigError(f"trainer.log_every={self.log_every} must be >= 1 (log every "
                              "that many steps; the first and last step are always logged)")
        if not self.run_dir:
            raise ConfigError("trainer.run_dir must name a directory")
        try:
            objectives.get(self.objective)
        except ValueError as e:
            raise ConfigError(f"trainer.objective: {e}") from None
        if self.classify_tokens and "classify_tokens" in self.objective_options:
            raise ConfigError("set classify_tokens once: trainer.objective_options."
                              "classify_tokens (trainer.classify_tokens is its deprecated alias)")
        try:
            objectives.check_options(self.objective, self.options())
        except ValueError as e:
            raise ConfigError(f"trainer.objective_options: {e}") from None

    def options(self) -> dict:
        """The keyword arguments the loop passes to the objective."""
        options = dict(self.objective_options)
        names, _, open_ended = objectives.option_names(objectives.get(self.objective))
        if self.classify_tokens and ("classify_tokens" in names or open_ended):
            options["classify_tokens"] = self.classify_tokens
        return options


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    """Orbax checkpoints in ``<run_dir>/checkpoints``.

    ``resume: true`` continues the newest checkpoint that restores and refuses a run
    directory with none; ``resume: auto`` (for launchers that start the first and every later
    attempt the same way: job arrays, preemptible jobs, studies) continues one when there is
    one and otherwise starts at step 0, saying so in one line.

    ``export_tokenizer``: a local tokenizer directory saved into the ``export_hf`` directory,
    so the export loads as any local checkpoint (model and tokenizer from one directory).
    """

    save_every: int = 0
    keep_last: int = 2
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    resume: bool | Literal["auto"] = False
    export_hf: bool = False
    export_tokenizer: str | None = None

    def __post_init__(self):
        if self.save_every < 0:
            raise ConfigError(f"checkpoint.save_every={self.save_every} must be >= 0 (0: no "
                              "checkpoints)")
        if self.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last={self.keep_last} must be >= 1")
        if self.best_metric == "":
            raise ConfigError("checkpoint.best_metric must name a logged metric or be null")


@dataclasses.dataclass(frozen=True)
class PeftSection:
    """What trains: everything, LoRA adapters, new token rows, or parameters by pattern."""

    mode: Literal["all", "lora", "new-embeddings", "lora+new-embeddings", "patterns"] = "all"
    patterns: tuple[str, ...] = ()
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    new_tokens: int = 0
    # "mean", or per new token the existing ids whose rows it starts from (null: the mean)
    new_token_init: Literal["mean"] | tuple[tuple[int, ...] | None, ...] = "mean"

    def __post_init__(self):
        if "new-embeddings" in self.mode and self.new_tokens <= 0:
            raise ConfigError(f"peft.mode={self.mode} needs peft.new_tokens > 0")
        if self.mode == "patterns" and not self.patterns:
            raise ConfigError("peft.mode=patterns needs peft.patterns")
        if self.lora_rank <= 0:
            raise ConfigError(f"peft.lora_rank={self.lora_rank} must be positive")
        if self.new_tokens < 0:
            raise ConfigError(f"peft.new_tokens={self.new_tokens} must be >= 0")
        if self.new_token_init != "mean" and len(self.new_token_init) != self.new_tokens:
            raise ConfigError(f"peft.new_token_init lists {len(self.new_token_init)} entries "
                              f"for peft.new_tokens={self.new_tokens}; give one list of "
                              "source token ids (or null for the mean row) per new token")
        _check_number("peft.lora_alpha", self.lora_alpha, low=0.0, low_open=True)
        _check_number("peft.lora_dropout", self.lora_dropout, low=0.0, high=1.0, high_open=True)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    optimizer: OptimizerSection = OptimizerSection()
    schedule: ScheduleSection = ScheduleSection()
    trainer: TrainerSection = TrainerSection()
    checkpoint: CheckpointSection = CheckpointSection()
    mesh: MeshConfig = MeshConfig()
    peft: PeftSection = PeftSection()

    def __post_init__(self):
        if self.schedule.warmup_steps > self.trainer.steps:
            raise ConfigError(f"schedule.warmup_steps={self.schedule.warmup_steps} exceeds "
                              f"trainer.steps={self.trainer.steps}")
        if self.data.batch_size % self.optimizer.accumulate:
            raise ConfigError(f"optimizer.accumulate={self.optimizer.accumulate} must divide "
                              f"data.batch_size={self.data.batch_size}")
        if self.checkpoint.best_metric and not self.checkpoint.save_every:
            raise ConfigError("checkpoint.best_metric needs checkpoint.save_every > 0")
        best = self.checkpoint.best_metric
        if best and best.startswith("eval_") and self.data.eval_fraction == 0:
            raise ConfigError(f"checkpoint.best_metric={best!r} is a held-out metric, but "
                              "data.eval_fraction=0 leaves no held-out data, so it is never "
                              "logged; set data.eval_fraction > 0 or rank by a training metric")
        if self.checkpoint.resume and self.trainer.overwrite:
            raise ConfigError("checkpoint.resume (--resume) continues the run in "
                              "trainer.run_dir and trainer.overwrite (--overwrite) deletes it: "
                              "choose one")


def load_train_config(path=None, overrides=()) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)
