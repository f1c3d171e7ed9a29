"""The training loop: ``main(config)`` does one whole run.

Flow: check the run directory (:mod:`jaxreason.train.run_dir`: a run is never replaced
without ``trainer.overwrite``) and the mesh -> build model (+ LoRA / new tokens) -> place
parameters on the mesh by their logical axes -> optimizer with a trainable mask -> when
resuming, restore the newest checkpoint that restores (:mod:`jaxreason.train.resume`) ->
load and check the data against the model -> jitted steps over deterministic batches, with
JSONL metrics, checkpoints, a progress bar and callbacks (:mod:`jaxreason.train.callbacks`:
the held-out evaluation, the optional HF export and whatever the caller adds) -> curves PNG.

Everything a run depends on lives in the ``TrainState`` pytree (step, params, optimizer
state, PRNG key) and batch ``s`` is a function of (seed, s), so a run killed and resumed
from its last checkpoint produces the same losses as one that never stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
import yaml
from flax import struct
from tqdm.auto import tqdm

from jaxreason import atomic
from jaxreason import sharding as sh
from jaxreason.config_io import to_dict
from jaxreason.train import objectives, preflight
from jaxreason.train import run_dir as rd
from jaxreason.train.build import apply_peft, build_data, build_model, logical_axes
from jaxreason.train.callbacks import (Callback, StepInfo, check_export_target, epochs_done,
                                       evaluation, hf_export, run_due)
from jaxreason.models import layout
from jaxreason.train.checkpoint import Checkpointer
from jaxreason.train.config import TrainConfig
from jaxreason.train.masks import trainable_optimizer
from jaxreason.train.optim import build_optimizer
from jaxreason.train.plots import plot_curves
from jaxreason.train.resume import resume_state


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


@struct.dataclass
class TrainState:
    step: jax.Array  # () int32: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # (2,) uint32 PRNG key data


def make_train_step(model, tx, objective, options: dict, accumulate: int, use_dropout: bool):
    """One optimizer step, with gradient accumulation over ``accumulate`` micro-batches."""
    def loss_fn(params, batch, rng):
        return objective(model, params, batch, rng if use_dropout else None, **options)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict):
        rng, sub = jax.random.split(state.rng)
        if accumulate == 1:
            (_, metrics), grads = grad_fn(state.params, batch, sub)
        else:
            micro = jax.tree_util.tree_map(
                lambda x: x.reshape((accumulate, x.shape[0] // accumulate) + x.shape[1:]), batch)

            def body(carry, inputs):
                mb, key = inputs
                (_, m), g = grad_fn(state.params, mb, key)
                return jax.tree_util.tree_map(jnp.add, carry, (g, m)), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            _, m_shape = jax.eval_shape(loss_fn, state.params,
                                        jax.tree_util.tree_map(lambda x: x[0], micro), sub)
            init = (zeros, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape))
            keys = jax.random.split(sub, accumulate)
            (grads, metrics), _ = jax.lax.scan(body, init, (micro, keys))
            grads = jax.tree_util.tree_map(lambda g: g / accumulate, grads)
            metrics = jax.tree_util.tree_map(lambda m: m / accumulate, metrics)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return TrainState(state.step + 1, params, opt_state, rng), metrics

    return step


class MetricsLog:
    """Append-only JSONL of metrics; on resume, rows past the restored step are dropped."""

    def __init__(self, path: Path, resume_step: int | None, writer: bool):
        self.path, self.writer = path, writer
        if not writer:
            return
        rows = self.read(path) if path.exists() else []
        keep = [r for r in rows if resume_step is not None and r["step"] <= resume_step]
        atomic.write_jsonl(path, keep)

    @staticmethod
    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

    def write(self, row: dict) -> None:
        if self.writer:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def initial_state(config: TrainConfig):
    """Model, step-0 ``TrainState`` (placed on the mesh), optimizer, lr schedule and mesh."""
    seed = config.trainer.seed
    mesh = sh.make_mesh(config.mesh) if jax.device_count() > 1 else None
    model, params = build_model(config.model, seed)
    model, params, old_vocab = apply_peft(model, params, config.peft, seed)
    if mesh is not None:
        shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        params = sh.place(params, sh.param_shardings(logical_axes(model, params), shapes, mesh))
    base_tx, lr_fn = build_optimizer(config.optimizer, config.schedule, config.trainer.steps, params)
    tx = trainable_optimizer(base_tx, params, config.peft.mode, config.peft.patterns or None,
                             old_vocab)
    with sh.activation_rules(mesh):
        opt_state = jax.jit(tx.init)(params)
    state = TrainState(jnp.zeros((), jnp.int32), params, opt_state,
                       jax.random.key_data(jax.random.PRNGKey(seed)))
    if mesh is not None:
        state = state.replace(step=jax.device_put(state.step, sh.replicated(mesh)),
                              rng=jax.device_put(state.rng, sh.replicated(mesh)))
    return model, state, tx, lr_fn, mesh


def load_trained(config: TrainConfig, best: bool = True):
    """The trained ``(model, params)`` of a finished run: the best checkpoint by
    ``checkpoint.best_metric`` when there is one (and ``best``), else the latest."""
    model, state, *_ = initial_state(config)
    ck = config.checkpoint
    directory = Path(config.trainer.run_dir).expanduser().resolve() / "checkpoints"
    checkpointer = Checkpointer(directory, save_every=ck.save_every or 10**9,
                                keep_last=ck.keep_last, best_metric=ck.best_metric,
                                best_mode=ck.best_mode,
                                convert=layout.checkpoint_conversion(model))
    step = checkpointer.best_step() if best and ck.best_metric else None
    if step is None and checkpointer.latest_step() is None:
        checkpointer.close()
        raise FileNotFoundError(f"no checkpoint in {directory}; train first (and set "
                                "checkpoint.save_every)")
    if step is None:
        _, state = checkpointer.restore_newest(state, report=_say)
    else:
        state = checkpointer.restore(step, state)
    checkpointer.close()
    return model, state.params


def _say(message: str) -> None:
    """One line of run information on stderr (process 0 only)."""
    if jax.process_index() == 0:
        print(f"jaxreason.train: {message}", file=sys.stderr, flush=True)


def main(config: TrainConfig, callbacks: Sequence[Callback] = ()) -> dict:
    """Run one training job; returns the final metrics (and writes them to the run dir).

    ``callbacks`` run after the built-in evaluation (and before the HF export) when due."""
    run_dir = Path(config.trainer.run_dir).expanduser().resolve()
    writer = jax.process_index() == 0
    ck = config.checkpoint
    contents = rd.inspect_run_dir(run_dir)
    resuming = rd.check_run_dir(contents, ck.resume, config.trainer.overwrite, report=_say)
    seed = config.trainer.seed
    # a mesh asked for on one device is refused here (loading a trained run ignores it)
    preflight.check_devices(config, jax.device_count(), jax.process_count())
    model, state, tx, lr_fn, mesh = initial_state(config)
    cfg_dict = to_dict(config)

    def open_checkpointer():
        return Checkpointer(run_dir / "checkpoints", save_every=ck.save_every or 10**9,
                            keep_last=ck.keep_last, best_metric=ck.best_metric,
                            best_mode=ck.best_mode,
                            convert=layout.checkpoint_conversion(model))

    start = 0
    final_path = run_dir / "final_metrics.json"
    checkpointer = None
    if resuming:
        checkpointer = open_checkpointer()
        try:
            start, state = resume_state(checkpointer, state, cfg_dict, report=_say)
        except BaseException:
            checkpointer.close()
            raise
        if start >= config.trainer.steps and final_path.exists():  # resuming a finished run
            checkpointer.close()
            return json.loads(final_path.read_text())

    objective = objectives.get(config.trainer.objective)
    options = config.trainer.options()
    try:
        train_data, eval_data = build_data(config.data, seed, model)
        if ck.best_metric and not callbacks:  # with callbacks: checked once they have run
            sample = train_data.batch(0, config.data.batch_size, config.data.shuffle_seed,
                                      config.data.buckets, shuffle=config.data.shuffle)
            with sh.activation_rules(mesh):
                known = preflight.logged_metrics(objective, model, state.params, sample,
                                                 options, eval_data is not None)
            if ck.best_metric not in known:
                raise preflight.unknown_best_metric(ck.best_metric, known)
        if ck.export_hf:
            check_export_target(run_dir / "hf")
    except BaseException:
        if checkpointer is not None:
            checkpointer.close()
        raise
    if (config.trainer.overwrite or ck.resume == "auto") and contents.holds_run and not resuming:
        if writer:
            gone = rd.remove_run(contents)
            why = "trainer.overwrite" if config.trainer.overwrite else "checkpoint.resume=auto"
            _say(f"{why}: deleted the earlier run's files in {run_dir}: {', '.join(gone)}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # multi-host runs only
            multihost_utils.sync_global_devices("jaxreason.train overwrite")
    if checkpointer is None:
        checkpointer = open_checkpointer()
    if writer:
        atomic.write_text(run_dir / "config.yaml", f"{rd.CONFIG_HEADER} (written by "
                          "jaxreason.train; each checkpoint keeps its own copy)\n"
                          + yaml.safe_dump(cfg_dict, sort_keys=False))
    log = MetricsLog(run_dir / "metrics.jsonl", start if resuming else None, writer)

    use_dropout = "lora" in config.peft.mode and config.peft.lora_dropout > 0
    step_fn = make_train_step(model, tx, objective, options, config.optimizer.accumulate,
                              use_dropout)
    with sh.activation_rules(mesh):
        train_step = jax.jit(step_fn, donate_argnums=0)
        eval_fn = jax.jit(lambda p, b: objective(model, p, b, None, **options))
    scheduled = [evaluation(eval_data, eval_fn, config), *callbacks,
                 *([hf_export(ck.export_tokenizer)] if ck.export_hf else [])]
    batch_size, last_step = config.data.batch_size, config.trainer.steps
    best_pending = bool(ck.best_metric and callbacks)
    seen_keys: set[str] = set()
    not_yet_run = {id(c) for c in callbacks}

    last: dict = {}
    bar = tqdm(total=config.trainer.steps, initial=start, desc="training",
               disable=not (config.trainer.progress and writer))
    tokens_seen, t0 = 0, time.perf_counter()
    for step in range(start, config.trainer.steps):
        batch = train_data.batch(step, config.data.batch_size, config.data.shuffle_seed,
                                 config.data.buckets, shuffle=config.data.shuffle)
        arrays = {k: sh.global_batch(v, mesh) for k, v in batch.items()}
        with sh.activation_rules(mesh):
            state, metrics = train_step(state, arrays)
        done = step + 1
        if done == start + 1:  # time from the end of the first (compiling) step
            jax.block_until_ready(state.step)
            tokens_seen, t0 = 0, time.perf_counter()
        else:
            tokens_seen += int(batch["attention_mask"].sum()) * jax.process_count()
        epoch = epochs_done(done, batch_size, len(train_data))
        epoch_ended = epoch > epochs_done(step, batch_size, len(train_data))
        want_log = done % config.trainer.log_every == 0 or done == last_step
        want_callback = any(c.due(done, last_step, epoch_ended) for c in scheduled)
        want_save = bool(ck.save_every) and (done % ck.save_every == 0 or done == last_step)
        if want_log or want_callback or want_save or done == start + 1:
            row = _scalars(metrics)
            if not all(math.isfinite(v) for v in row.values()):
                bad = {k: v for k, v in row.items() if not math.isfinite(v)}
                kept = checkpointer.latest_step()
                bar.close()
                checkpointer.close()
                raise TrainingDiverged(
                    f"non-finite metrics {bad} at step {done}; stopped without saving. Last good "
                    f"checkpoint: {'step ' + str(kept) if kept is not None else 'none'} in "
                    f"{run_dir / 'checkpoints'}")
            elapsed = time.perf_counter() - t0
            row.update(step=done, split="train", lr=float(lr_fn(step)),
                       tokens_per_s=tokens_seen / max(elapsed, 1e-9))
            run_due(scheduled, StepInfo(done, epoch, model, state.params, row, run_dir, mesh,
                                        config), last_step, epoch_ended)
            if best_pending:
                seen_keys |= set(row)
                not_yet_run -= {id(c) for c in callbacks if c.due(done, last_step, epoch_ended)}
                if ck.best_metric in seen_keys:
                    best_pending = False
                elif not not_yet_run:
                    bar.close()
                    checkpointer.close()
                    raise preflight.unknown_best_metric(
                        ck.best_metric, seen_keys - {"split"},
                        f" (every callback has run by step {done})")
            last = row
            log.write(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            if want_save:
                checkpointer.save(done, state, config=cfg_dict, metrics=row, force=True)
        bar.update(1)
    bar.close()
    checkpointer.wait()
    result = dict(last, run_dir=str(run_dir), final_step=int(state.step))
    if writer:
        atomic.write_json(final_path, result)
        if config.trainer.plot and (run_dir / "metrics.jsonl").exists():
            plot_curves(MetricsLog.read(run_dir / "metrics.jsonl"), run_dir / "curves.png")
    checkpointer.close()
    return result
