"""Callbacks: work the training loop does between steps, on a schedule.

A :class:`Callback` wraps ``fn(info) -> dict | None`` and says when it runs: after every
``every`` steps, when an epoch ends (an epoch is ``len(train_data) / data.batch_size``
steps), and/or after the last step. ``info`` is a :class:`StepInfo` (step, epoch, model,
params, the metrics row of this step, run directory, mesh, config); the dict ``fn`` returns
is added to that row, so it lands in ``metrics.jsonl``, in the progress of
``checkpoint.best_metric`` and in the checkpoint saved at that step. Callbacks run on every
host (an evaluation or an export of sharded parameters needs all of them); only process 0
writes the row.

Callbacks run before the step's row is written and its checkpoint saved, in list order
(each sees what the earlier ones added). A resumed run starts after its restored step, so a
callback never runs twice for one step.

The loop's own evaluation and HuggingFace export are callbacks built here from the config
(:func:`evaluation`, :func:`hf_export`); ``main(config, callbacks=[...])`` adds more.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import jax

from jaxreason import sharding as sh
from jaxreason.config_io import ConfigError
from jaxreason.models import save_pretrained
from jaxreason.models.export_dir import check_target
from jaxreason.train.lora import lora_paths, merge_lora


@dataclasses.dataclass
class StepInfo:
    """What a callback sees after optimizer step ``step``."""

    step: int  # optimizer steps done
    epoch: int  # epochs completed
    model: Any
    params: Any
    metrics: dict  # this step's row so far (train metrics, lr, earlier callbacks' additions)
    run_dir: Path
    mesh: Any
    config: Any  # the TrainConfig


@dataclasses.dataclass(frozen=True)
class Callback:
    """``fn`` run after every ``every`` steps (0: not by count), at each epoch end and/or
    after the last step."""

    fn: Callable[[StepInfo], Mapping[str, float] | None]
    every: int = 0
    epoch_end: bool = False
    at_end: bool = False
    name: str = ""

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"callback {self.label}: every={self.every} must be >= 0")
        if not (self.every or self.epoch_end or self.at_end):
            raise ValueError(f"callback {self.label} never runs: set every, epoch_end or at_end")

    @property
    def label(self) -> str:
        return self.name or getattr(self.fn, "__name__", repr(self.fn))

    def due(self, step: int, last_step: int, epoch_ended: bool) -> bool:
        return ((self.every > 0 and step % self.every == 0) or (self.epoch_end and epoch_ended)
                or (self.at_end and step == last_step))


def epochs_done(step: int, batch_size: int, rows: int) -> int:
    """Whole passes over ``rows`` training rows after ``step`` batches."""
    return step * batch_size // rows


def run_due(callbacks, info: StepInfo, last_step: int, epoch_ended: bool) -> None:
    """Run the due callbacks in order, adding what each returns to ``info.metrics``."""
    for cb in callbacks:
        if cb.due(info.step, last_step, epoch_ended):
            extra = cb.fn(info)
            if extra is not None and not isinstance(extra, Mapping):
                raise TypeError(f"callback {cb.label} returned {type(extra).__name__}; a "
                                "callback returns a dict of metrics or None")
            if extra:
                # NumPy / JAX scalars become floats, so the row stays JSON
                info.metrics.update({k: float(v) if hasattr(v, "dtype") else v
                                     for k, v in extra.items()})


# ----------------------------------------------------------------------------- built-ins

def evaluate(params, data, batch_size: int, eval_batches: int, mesh, eval_fn) -> dict:
    """Mean objective metrics over up to ``eval_batches`` held-out batches (rows split evenly
    over the mesh's data shards; a short last batch is skipped)."""
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    size = min(batch_size, len(data)) // shards * shards
    if size == 0:
        return {}
    totals: dict[str, float] = {}
    n = 0
    for batch in data.eval_batches(size, eval_batches):
        if len(batch["tokens"]) < size:
            continue
        arrays = {k: sh.global_batch(v, mesh) for k, v in batch.items()}
        _, metrics = eval_fn(params, arrays)
        for k, v in jax.device_get(metrics).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        n += 1
    return {f"eval_{k}": v / max(n, 1) for k, v in totals.items()}


def evaluation(eval_data, eval_fn, config) -> Callback:
    """Held-out metrics (``eval_*``) every ``trainer.eval_every`` steps and after the last
    (none without held-out data; the step's row is still written, as it always was)."""
    def run(info: StepInfo) -> dict:
        if eval_data is None:
            return {}
        return evaluate(info.params, eval_data, config.data.batch_size,
                        config.data.eval_batches, info.mesh, eval_fn)

    return Callback(run, every=config.trainer.eval_every, at_end=True, name="evaluation")


def hf_export(tokenizer_dir=None) -> Callback:
    """A HuggingFace directory ``<run_dir>/hf`` of the final weights (LoRA merged), with the
    tokenizer of ``tokenizer_dir`` saved beside them when given."""
    def run(info: StepInfo) -> None:
        export_hf(info.model, info.params, info.run_dir / "hf", tokenizer_dir)

    return Callback(run, at_end=True, name="hf_export")


def check_export_target(path) -> None:
    """Refuse, before the first step, an export target the export at the end would refuse
    (a non-empty directory that is not an earlier jaxreason export), so a run does not train
    for hours and then fail to write its export."""
    path = Path(path)
    try:
        check_target(path, overwrite=False)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"checkpoint.export_hf: {e}. The export runs after the last step; move that "
            f"directory's files away, or set checkpoint.export_hf=false") from None


def export_hf(model, params, path, tokenizer_dir=None) -> Path:
    """Merge LoRA adapters (if any) and write a HuggingFace directory; a local tokenizer
    directory ``tokenizer_dir`` is saved into it, so model and tokenizer load from one place."""
    if jax.process_count() > 1:  # params may span other hosts' devices (FSDP/tensor)
        from jax.experimental import multihost_utils  # multi-host runs only
        params = multihost_utils.process_allgather(params, tiled=True)
    params = jax.device_get(params)
    if lora_paths(params):
        params = merge_lora(params)
    if jax.process_index():
        return Path(path)
    tokenizer = None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer  # seconds to import: only with a tokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return save_pretrained(model, params, path, tokenizer=tokenizer)
