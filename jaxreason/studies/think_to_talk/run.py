"""Think-to-Talk or Talk-to-Think? (Kudo et al.) end to end: when, inside a model writing a
chain of thought, is each intermediate answer of a multi-step formula decodable?

The study wires shared pieces together:

* ``jaxreason.tasks.formulas`` builds the five problem configs, splits, few-shot prompts and
  counterfactual pairs; ``jaxreason.tasks.formula_tokens`` the embedded tokenizer.
* ``jaxreason.train`` trains the embedded default model (a small Llama) from scratch on the
  formula chains of thought, or a local HF Llama-family checkpoint is loaded instead.
* :mod:`.decode` decodes with a cached few-shot prompt and exports the residual stream to
  :mod:`~jaxreason.probe.activation_store` chunk by chunk.
* :mod:`.probing` fits the vmapped linear probes of :mod:`jaxreason.probe.linear`;
  :mod:`.patching` patches activations.
* :mod:`.report` writes ``report.md``; :mod:`.config` holds the settings.

Modes (every number in the outputs names the one that produced it):

* ``faithful``: probes evaluated on every test problem, a missing position counting as
  wrong (as in the original); the primary probe is the original's full-batch GD on raw
  features; the original's edit pairs and general pool (``jaxreason.tasks.formulas``).
* ``fixed``: probes evaluated on the solved test problems only (positions mean the same
  tokens as in training); the primary probe is standardised L2 logistic regression; edit
  pairs drawn uniformly over the valid operands.

Both modes use the original's own problems for the five configs' splits and prompts.

Both probe kinds run whenever ``probes`` lists them, so each mode reports its control beside
its primary numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import jax
import numpy as np

from jaxreason import atomic
from jaxreason.config_io import ConfigError
from jaxreason.models import load_pretrained, load_tokenizer
from jaxreason.models.generate import prefill_prefix
from jaxreason.probe.activation_store import ActivationWriter, open_store
from jaxreason.probe.linear import chance_accuracy
from jaxreason.sharding import data_parallel
from jaxreason.studies.base import check_model_dir, prepare_run_dir, train_or_load
from jaxreason.studies.think_to_talk import patching, probing
from jaxreason.studies.think_to_talk.config import ThinkToTalkConfig
from jaxreason.studies.think_to_talk.decode import decode_problems, hidden_indices
from jaxreason.studies.think_to_talk.report import patch_figures, task_figures, write_report
from jaxreason.tasks import formulas as fm
from jaxreason.tasks.formula_tokens import FormulaTokenizer, HFCodec


# ----------------------------------------------------------------------------- model

def load_codec(config: ThinkToTalkConfig):
    """The study's tokenizer: the local checkpoint's, or the embedded formula tokenizer."""
    if config.model_path:
        return HFCodec(load_tokenizer(config.model_path))
    return FormulaTokenizer()


def _checked_patch(codec, pairs, i: int, setting) -> list[str]:
    try:
        return patching.check_patch_positions(codec, pairs, setting.start, setting.end,
                                              setting.expect)
    except ValueError as e:
        raise ConfigError(f"patches[{i}] ({setting.name!r}): {e}") from None


def load_model(config: ThinkToTalkConfig, codec=None):
    """(model, params, codec, train metrics): the embedded model (trained here unless
    skipped) or a local HF checkpoint."""
    codec = codec or load_codec(config)
    if config.model_path:
        model, params = load_pretrained(config.model_path, dtype=config.dtype)
        return model, params, codec, {}
    vocab = config.train.model.overrides.get("vocab_size")
    if vocab is not None and vocab < codec.vocab_size:
        raise ValueError(f"train.model.overrides.vocab_size={vocab} is smaller than the "
                         f"formula vocabulary ({codec.vocab_size} tokens)")
    model, params, train_metrics = train_or_load(config)
    return model, params, codec, train_metrics


# ----------------------------------------------------------------------------- stages

def _prompt(config: ThinkToTalkConfig, task: str, splits) -> str:
    if task in config.general_prompt_for:
        return fm.general_prompt(50, config.mode)
    return fm.few_shot_prompt(splits["train"], config.shots)


def _export(config, model, params, codec, prefix, problems, directory: Path, indices, mesh,
            desc: str, meta: dict):
    """Decode ``problems`` into a store at ``directory`` (resuming a killed export)."""
    writer = _open_writer(directory, indices, model.config.hidden_size, config.export_dtype, meta)
    decode_problems(model, params, codec, prefix, problems, indices=indices,
                    batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                    writer=writer, progress=config.progress, desc=desc, mesh=mesh)
    writer.close()
    return open_store(directory)


def _open_writer(directory: Path, indices, width: int, dtype: str, meta: dict):
    """A resuming writer; an export left by other weights or settings is refused with advice."""
    try:
        return ActivationWriter(directory, indices, width, dtype=dtype, meta=meta, resume=True)
    except ValueError as e:
        raise ValueError(f"{e}\n{directory} holds states from another model or other settings; "
                         "set a new run_dir or delete that folder to export again") from None


def run(config: ThinkToTalkConfig) -> dict:
    """Decode, export, probe, patch, plot and report. Returns the metrics."""
    t0 = time.perf_counter()
    if config.model_path:
        check_model_dir(config.model_path)
    out = prepare_run_dir(config)
    # bad patch positions fail now, before training or decoding
    codec = load_codec(config)
    pairs = (fm.edit_pairs_for(fm.make_splits("2step"), config.patch_pairs, config.mode)
             if config.patches else [])
    patched_tokens = {p.name: _checked_patch(codec, pairs, i, p)
                      for i, p in enumerate(config.patches)}
    model, params, codec, train_metrics = load_model(config, codec)
    L = model.config.num_layers
    indices = hidden_indices(L, config.layer_step)
    late = [(i, p.start_layer) for i, p in enumerate(config.patches) if p.start_layer > L]
    if late:
        raise ConfigError(f"patches[{late[0][0]}].start_layer={late[0][1]} is past the model's "
                          f"hidden-state indices 0..{L} ({L} blocks)")
    mesh, params = data_parallel(model, params, config.batch_size, config.data_parallel)
    fingerprint = weights_fingerprint(params)
    settings = config.probe.settings()
    sizes = {"test": config.test_size, "probing_train": config.probing_train_size}
    metrics: dict = {"mode": config.mode, "layers": list(indices), "num_layers": L,
                     "probes": list(config.probe.probes), "threshold": config.probe.threshold,
                     "train": train_metrics, "tasks": {}, "patching": {}, "figures": []}
    rows: list[dict] = []
    kept_probes = {}
    for task in config.tasks:
        splits = fm.make_splits(task, sizes)
        prompt_ids = codec.encode(_prompt(config, task, splits))
        prefix = prefill_prefix(model, params, prompt_ids)
        meta = {"task": task, "prompt_tokens": len(prompt_ids), "model": config.model_path or "embedded",
                "weights": fingerprint, "max_new_tokens": config.max_new_tokens}
        stores = {split: _export(config, model, params, codec, prefix, splits[split],
                                 out / "states" / task / split, indices, mesh,
                                 f"{task} {split}",
                                 {**meta, "split": split, "problems": len(splits[split])})
                  for split in ("probing_train", "test")}
        answers = {s: fm.answers_array(splits[s]) for s in stores}
        fitted = probing.fit_task_probes(stores["probing_train"], answers["probing_train"],
                                             config.probe.probes, settings, config.progress,
                                             f"{task} probes", config.probe_train_on)
        acc = probing.evaluate_task_probes(fitted, stores["test"], answers["test"], config.mode)
        src_len = len(codec.encode(splits["test"][0].source))
        tokens = _position_tokens(codec, stores["probing_train"], fitted.positions)
        chance = chance_accuracy(answers["test"])
        rows += probing.result_rows(acc, tokens, config.mode, task, chance)
        summary = _task_summary(config, task, stores, acc, fitted, tokens, chance, src_len,
                                indices, len(prompt_ids))
        metrics["tasks"][task] = summary
        metrics["figures"] += [p.name for p in task_figures(out, task, acc, indices, tokens,
                                                             chance, src_len, config)]
        if task == "2step":
            kept_probes = {"probes": fitted, "test_accuracy": acc, "tokens": tokens,
                           "chance": chance, "prefix": prefix}
    if config.patches:
        metrics["patching"] = _patching(config, model, params, codec, kept_probes, pairs,
                                        patched_tokens, indices, mesh, out, rows)
        metrics["figures"] += [p.name for p in patch_figures(out, metrics["patching"],
                                                             kept_probes, config)]
    atomic.write_jsonl(out / "probe_results.jsonl", rows)
    metrics["seconds"] = time.perf_counter() - t0
    metrics["summary"] = {"mode": config.mode,
                          "test_accuracy": {t: v["test_accuracy"] for t, v in metrics["tasks"].items()},
                          **{f"patch {k}": {a: v[a] for a in ("base_accuracy", "accuracy",
                                                              "intervention_accuracy")}
                             for k, v in metrics["patching"].items()},
                          "seconds": round(metrics["seconds"], 1)}
    atomic.write_json(out / "metrics.json", metrics)
    write_report(out / "report.md", metrics, config)
    return metrics


def weights_fingerprint(params) -> str:
    """A short digest of the weights, stored with every export: resuming an export written by
    other weights (a retrained embedded model in the same run_dir) is refused, not mixed."""
    leaves = jax.tree_util.tree_leaves(params)
    sums = [float(jax.numpy.sum(jax.numpy.abs(x.astype(jax.numpy.float32)))) for x in leaves]
    text = ",".join(f"{v:.6g}" for v in sums)  # 6 digits: stable across reduction orders
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _position_tokens(codec, store, positions: int) -> list[str]:
    """The token at every probed position of the first training row of the probed length."""
    row = int(np.argmax(store.lengths() >= positions))
    return codec.token_strings(store.tokens()[row, :positions])


def _task_summary(config, task, stores, acc, fitted, tokens, chance, src_len, indices,
                  prompt_len) -> dict:
    test_correct = stores["test"].extra("correct").astype(bool)
    train_correct = stores["probing_train"].extra("correct").astype(bool)
    summary = {"test_accuracy": float(test_correct.mean()),
               "probing_train_accuracy": float(train_correct.mean()),
               "probe_train_rows": fitted.train_rows,
               "test_rows_probed": int(len(test_correct) if config.mode == "faithful"
                                       else test_correct.sum()),
               "positions": fitted.positions, "source_length": src_len,
               "prompt_tokens": prompt_len, "chance": chance.tolist(), "first_decodable": {},
               "tokens": tokens}
    for kind in config.probe.probes:
        grid = np.stack([acc[(kind, i)] for i in indices])  # (layers, P, J)
        summary[f"best_{kind}"] = grid.max(axis=(0, 1)).tolist()
        for var in range(grid.shape[2]):
            hit = probing.first_decodable(grid[:, :, var], config.probe.threshold)
            if hit is not None:
                hit["layer"] = int(indices[hit.pop("layer_row")])
                hit["token"] = tokens[hit["position"]]
                hit["before_cot"] = hit["position"] < src_len
            summary["first_decodable"][f"{kind}/v{var}"] = hit
            summary[f"{kind}_source_end_v{var}"] = float(grid[:, src_len - 1, var].max())
    return summary


def _patching(config, model, params, codec, kept, pairs, patched_tokens, indices, mesh,
              out: Path, rows) -> dict:
    """Every patch setting on the 2step counterfactual pairs; the patched states are scored
    with the 2step probes against the edited problems' intermediate answers."""
    edited_answers = fm.answers_array([p.edited for p in pairs])
    results = {}
    for setting in config.patches:
        tokens = patched_tokens[setting.name]
        directory = out / "states" / "patching" / setting.name
        writer = _open_writer(directory, indices, model.config.hidden_size, config.export_dtype,
                              {"patch": dataclasses.asdict(setting),
                               "weights": weights_fingerprint(params), "pairs": len(pairs)})
        patching.run_patching(model, params, codec, kept["prefix"], pairs,
                                  start_layer=setting.start_layer, start=setting.start,
                                  end=setting.end, indices=indices, batch_size=config.batch_size,
                                  max_new_tokens=config.max_new_tokens,
                                  teacher_force=setting.teacher_force, writer=writer,
                                  progress=config.progress, desc=setting.name, mesh=mesh)
        writer.close()
        store = open_store(directory)
        summary = patching.summarize((), store)
        acc = probing.evaluate_task_probes(kept["probes"], store, edited_answers, "faithful")
        rows += probing.result_rows(acc, kept["tokens"], config.mode, "2step",
                                        kept["chance"], condition=f"patched:{setting.name}")
        summary.update({"setting": dataclasses.asdict(setting), "patched_tokens": tokens,
                        "probe_accuracy": {f"{k}/{i}": a.tolist() for (k, i), a in acc.items()}})
        results[setting.name] = summary
    return results
