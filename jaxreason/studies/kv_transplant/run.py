"""CoT correctness by K/V transplant (MMacDougall06, cot-correctness-detection-test) end to end.

An *arguer* pass reads each of two chains of thought; its keys and values of every layer
over the chain (before RoPE) are spliced into a *chooser* pass that sees both as candidate 1
and 2 plus a third model's argument for one of them, and a LoRA adapter shared by both roles
is trained, through both passes, to put the correct slot's number next.

Pipeline: rows (the user's CSV or the embedded world's) -> the original's seeded split, a
validation split carved from training, and the statistics that need no model
(``stats_only`` stops there, before any model is loaded) -> the model (a local checkpoint or
the world base model) with a fresh or PEFT adapter -> per condition (``transplant``,
``no_transplant``: the chooser reads its own keys and values; ``shuffled``: keys and values of
another problem's arguments; ``positive_control``: a marker visible only through the
transplant) the original's training schedule with a test and validation pass after every
step -> ``metrics.jsonl`` (one row per step and condition), ``metrics.json``, curves and
``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

from jaxreason import atomic
from jaxreason.models import load_pretrained, load_tokenizer
from jaxreason.studies.base import prepare_run_dir
from jaxreason.studies.kv_transplant import adapters, batching, prompts
from jaxreason.studies.kv_transplant.config import KVTransplantConfig
from jaxreason.studies.kv_transplant.report import plot_curves, write_report
from jaxreason.studies.kv_transplant.train import (evaluate_rows, make_functions,
                                                   train_condition)
from jaxreason.studies.world_model import resolve_model_path, stored_check
from jaxreason.tasks import cot_choice as cc
from jaxreason.tasks.readers import read_cot_choice_csv


def load_rows(config: KVTransplantConfig, out) -> list:
    """The CSV rows (the embedded world's written to ``data.csv`` and read back)."""
    if config.data_path:
        rows = read_cot_choice_csv(config.data_path, unescape_newlines=config.unescape_newlines)
    else:
        world = cc.world_rows(config.world_rows, config.seed, config.world_p_right,
                              config.world_split, steps=config.world_steps)
        cc.write_cot_choice_csv(world, out / "data.csv")
        rows = read_cot_choice_csv(out / "data.csv", unescape_newlines=True)
    return cc.masked_rows(rows) if config.masked else rows


def splits(config: KVTransplantConfig, n: int) -> dict:
    test, train = cc.split_indices(n, config.test_fraction, config.split_seed)
    val, train = cc.validation_split(train, config.val_fraction)
    return {"test": test, "val": val, "train": train}


def encode_items(tokenizer, items, config) -> tuple[list, list[int]]:
    """Encoded items (None where a slot's windows differ in length) and the dropped rows."""
    out, dropped = [], []
    for i, item in enumerate(items):
        try:
            out.append(prompts.encode_item(tokenizer, item, config.mode, config.prompt_style))
        except ValueError:
            out.append(None)
            dropped.append(i)
    return out, dropped


def score(outputs: dict, batch_size: int, prefix: str) -> dict:
    """True rates and the original's mean of batch means of one pass."""
    args = (outputs["chosen_correct"], outputs["orig_correct"], outputs["diff"], outputs["nll"])
    true = cc.choice_metrics(*args)
    orig = cc.batch_mean_metrics(*args, batch=batch_size)
    return {**{f"{prefix}_{k}": v for k, v in true.items() if k != "n"},
            **{f"{prefix}_orig_{k}": v for k, v in orig.items() if k not in ("n", "batches")}}


def model_and_adapter(config: KVTransplantConfig):
    path = resolve_model_path(config)
    tokenizer = load_tokenizer(path)
    model, params = load_pretrained(path, dtype=config.dtype)
    if config.adapter_path:
        params = adapters.load_peft_adapter(model, params, config.adapter_path)
    else:
        params = adapters.fresh_adapter(model, params, config.lora_rank, config.lora_alpha,
                                        config.seed)
    return model, params, tokenizer, str(path)


def run_condition(condition, config, model, params, tokenizer, rows, split, answer_ids, log):
    """Train and evaluate one condition; returns its summary."""
    t0 = time.perf_counter()
    make = cc.positive_control_item if condition == "positive_control" else cc.item_of
    items, dropped = encode_items(tokenizer, [make(r) for r in rows], config)
    bad = set(dropped)
    parts = {k: [int(i) for i in v if int(i) not in bad] for k, v in split.items()}
    if not parts["train"] or not parts["test"]:
        raise ValueError(f"condition {condition}: no usable training or test rows "
                         f"({len(dropped)} of {len(rows)} dropped for unequal windows)")
    kept = [it for it in items if it is not None]
    lengths = batching.shapes(kept, config.length_bucket)
    if max(lengths[:2]) > config.max_length:
        raise ValueError(f"prompts of {max(lengths[:2])} tokens exceed max_length="
                         f"{config.max_length}")
    donors = None
    if condition == "shuffled":  # a derangement within each split, so no split leaks into another
        donors = np.arange(len(items))
        for rows_of in parts.values():
            if len(rows_of) > 1:
                donors[rows_of] = np.asarray(rows_of)[batching.derangement(len(rows_of),
                                                                           config.seed)]
    transplant = condition != "no_transplant"
    trainable, frozen = adapters.split_trainable(params)
    if config.adapters == "separate":
        trainable = {"arguer": trainable, "chooser": trainable}
    _, evaluate = make_functions(model, answer_ids, config.remat, config.adapters == "shared")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    common = dict(lengths=lengths, pad_id=pad, batch_size=config.test_batch, donors=donors)

    def on_step(step, state):
        row = {}
        for name in ("test", "val"):
            if parts[name]:
                outs = evaluate_rows(evaluate, state, frozen, items, parts[name],
                                     transplant=transplant, **common)
                row.update(score(outs, config.test_batch, name))
        return row

    trainable, history = train_condition(
        model, trainable, frozen, items, parts["train"], lengths=lengths, pad_id=pad,
        answer_ids=answer_ids, config=config, transplant=transplant, donors=donors,
        on_step=on_step, desc=condition)
    for row in history:
        log.append({"condition": condition, "mode": config.mode, **row})
    summary = summarize_history(history)
    summary.update(dropped=len(dropped), rows={k: len(v) for k, v in parts.items()},
                   seconds=time.perf_counter() - t0)
    if condition == "positive_control":
        outs = evaluate_rows(evaluate, trainable, frozen, items, parts["test"], transplant=False,
                             **common)
        summary["without_transplant"] = score(outs, config.test_batch, "test")
    return summary


def summarize_history(history: list[dict]) -> dict:
    """The last test pass, the original's best and mean over test passes, and the test
    numbers at the step with the best validation f_c (the honest pick)."""
    tested = [r for r in history if "test_f_c" in r]
    trained = [r for r in tested if r["step"] > 0]
    last = tested[-1]
    out = {"steps": history[-1]["step"], "initial": {k: v for k, v in tested[0].items()
                                                    if k.startswith("test_")},
           "final": {k: v for k, v in last.items() if k.startswith(("test_", "val_"))}}
    if trained:
        orig = [r["test_orig_f_c"] for r in trained]
        out["best_test_orig_f_c"] = float(max(orig))
        out["best_test_orig_f_c_step"] = int(trained[int(np.argmax(orig))]["step"])
        out["mean_test_orig_f_c"] = float(np.mean(orig))
        out["mean_test_f_c"] = float(np.mean([r["test_f_c"] for r in trained]))
        with_val = [r for r in trained if r.get("val_f_c") is not None]
        if with_val:
            pick = max(with_val, key=lambda r: (r["val_f_c"], -r["step"]))
            out["selected"] = {"step": pick["step"], "val_f_c": pick["val_f_c"],
                               "test_f_c": pick["test_f_c"],
                               "test_orig_f_c": pick["test_orig_f_c"]}
    return out


def run(config: KVTransplantConfig) -> dict:
    t0 = time.perf_counter()
    out = prepare_run_dir(config)
    rows = load_rows(config, out)
    split = splits(config, len(rows))
    metrics = {"mode": config.mode, "masked": config.masked,
               "data": config.data_path or f"embedded world ({config.world_split} split)",
               "dataset": cc.dataset_statistics(rows, split["test"], split["train"],
                                                split["val"], config.test_batch),
               "config": dataclasses.asdict(config), "conditions": {}}
    if config.stats_only:
        return finish(out, metrics, config, [], t0)
    model, params, tokenizer, path = model_and_adapter(config)
    metrics["model"] = path
    metrics["model_check"] = stored_check(path)
    answer_ids = prompts.answer_ids(tokenizer, config.answer_tokens)
    log: list[dict] = []
    for condition in config.conditions:
        metrics["conditions"][condition] = run_condition(
            condition, config, model, params, tokenizer, rows, split, answer_ids, log)
        atomic.write_jsonl(out / "metrics.jsonl", log)
    metrics["figures"] = [p.name for p in plot_curves(out, log, metrics)]
    return finish(out, metrics, config, log, t0)


def finish(out, metrics, config, log, t0) -> dict:
    metrics["seconds"] = time.perf_counter() - t0
    metrics["summary"] = summary_of(metrics)
    atomic.write_json(out / "metrics.json", metrics)
    if log:
        atomic.write_jsonl(out / "metrics.jsonl", log)
    write_report(out / "report.md", metrics, config)
    return metrics


def summary_of(metrics: dict) -> dict:
    """What the command line prints."""
    ds = metrics["dataset"]
    out = {"mode": metrics["mode"], "rows": ds["rows"], "choice_correct_test":
           round(ds["choice_correct_test"], 3)}
    for name, c in metrics["conditions"].items():
        sel = c.get("selected", {})
        out[name] = {"final_test_f_c": round(c["final"]["test_f_c"], 3),
                     "selected_test_f_c": sel.get("test_f_c"),
                     "best_test_orig_f_c": c.get("best_test_orig_f_c")}
        if "without_transplant" in c:
            out[name]["without_transplant_test_f_c"] = c["without_transplant"]["test_f_c"]
    out["seconds"] = round(metrics["seconds"], 1)
    return json.loads(json.dumps(out))
