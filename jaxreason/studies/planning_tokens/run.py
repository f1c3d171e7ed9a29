"""Memory and reasoning planning tokens (Jin et al., ACL 2025) end to end.

For each variant (the paper's setting, and the baselines: LoRA on the same chains of thought
without planning tokens, planning tokens without the memory/reason labels):

1. the tokenizer gets the planning tokens after the embedding rows (:mod:`.vocab`), the
   records become training arrays through :class:`jaxreason.tasks.planning.Template`;
2. the shared training loop trains it (:mod:`.training`; objective :mod:`.objective`), and at
   the end of every epoch a callback saves its state and evaluates it by generation
   (:mod:`.evaluation`);
3. the epoch to report is picked: the best by test accuracy (faithful, as the paper reports)
   and the last (fixed); both are in the metrics;
4. the analyses of :mod:`.analysis` run on the headline epoch's generations and weights, the
   paper setting is exported for ``peft`` (:mod:`.export`), and :mod:`.report` writes
   ``report.md``.

With ``rescore`` set, only :mod:`.rescore` runs (no model is loaded).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from jaxreason import atomic
from jaxreason.config_io import ConfigError
from jaxreason.models import load_pretrained, load_tokenizer
from jaxreason.models.families import family_of
from jaxreason.studies.base import prepare_run_dir
from jaxreason.studies.planning_tokens import analysis, export
from jaxreason.studies.planning_tokens.config import LORA_MODULES, PlanningTokensConfig, Variant
from jaxreason.studies.planning_tokens.evaluation import (EpochEvaluator, decode_settings,
                                                          read_epochs, read_results)
from jaxreason.studies.planning_tokens.model import with_bias
from jaxreason.studies.planning_tokens.report import write_report
from jaxreason.studies.planning_tokens.rescore import rescore
from jaxreason.studies.planning_tokens.training import (steps_per_epoch, token_dataset,
                                                        train_config)
from jaxreason.studies.planning_tokens.vocab import extend_tokenizer, init_sources, output_bias
from jaxreason.studies.world_model import resolve_model_path, stored_check
from jaxreason.tasks.planning import (Template, TokenGroups, draw_with_replacement,
                                      make_examples, records_from_rows)
from jaxreason.tasks.readers import read_planning_json
from jaxreason.train.build import apply_peft
from jaxreason.train.loop import main as train_main


def load_records(config: PlanningTokensConfig):
    """(train records, test records): the user's JSON files, or the embedded world's."""
    if config.dataset == "world" and not config.train_file:
        from jaxreason.tasks.word_problem_variants import planning_records  # the world: only here

        rows = planning_records(("train", "test"))
        records = records_from_rows(rows, "embedded world")
        train = [r for r in records if r.split == "train"]
        test = [r for r in records if r.split == "test"]
    else:
        train = read_planning_json(config.train_file, split="train", clean=config.clean)
        test = read_planning_json(config.test_file, split="test", clean=config.clean)
    if config.train_size:
        train = train[:config.train_size]
    if config.test_size:
        test = test[:config.test_size]
    return train, test


def _bos_id(tokenizer):
    """The BOS id the tokenizer puts in front of a text, or None when it puts none."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    return full[0] if len(full) > len(plain) else None


def _template(config, tokenizer, groups, vocab, planning: bool) -> Template:
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    space = encode(" ")
    if config.spacers and len(space) != 1:
        raise ConfigError(f"spacers: the tokenizer splits ' ' into {space}, not one token")
    return Template(encode, groups, vocab.group_ids() if vocab else None, _bos_id(tokenizer),
                    tokenizer.eos_token_id, config.mode, config.model_max_length,
                    planning=planning, spacers=config.spacers and planning,
                    space_id=space[0] if space else None)


def test_examples(config, records, template: Template) -> list:
    """The examples evaluated each epoch (faithful: drawn with replacement down to
    ``num_test``), sorted by prompt length so batches share few shapes."""
    examples = make_examples(records, config.dataset, config.mode, labels=True)
    if config.mode == "faithful" and len(examples) > config.num_test:
        examples = [examples[i] for i in draw_with_replacement(len(examples), config.num_test)]
    return sorted(examples, key=lambda ex: len(template.test_prompt(ex.question)))


@dataclasses.dataclass
class Prepared:
    """One variant ready to train."""

    variant: Variant
    directory: Path
    tokenizer: object
    vocab: object
    template: Template
    tests: list
    bias: tuple
    train_cfg: object
    train_rows: int
    unknown_tokens: int  # <unk> ids in the training arrays (faithful whitespace)


def prepare_variant(config, variant: Variant, base_dir: Path, hf_cfg: dict, groups,
                    train_records, test_records, out: Path) -> Prepared:
    directory = out / variant.name
    tokenizer = load_tokenizer(base_dir)
    rows = int(hf_cfg["vocab_size"])
    vocab = None
    if variant.planning_tokens:
        vocab = extend_tokenizer(tokenizer, groups, rows, hf_cfg.get("model_type", ""),
                                 config.qwen_padding_rows_bug)
    template = _template(config, tokenizer, groups, vocab, variant.planning_tokens)
    train = make_examples(train_records, config.dataset, config.mode, labels=variant.labels)
    data = token_dataset(train, template, tokenizer.pad_token_id or 0, config.mode)
    data.save(directory / "data")
    bias = ()
    if variant.planning_tokens and variant.trainable != "none":
        bias = output_bias(groups.count, int(hf_cfg["hidden_size"]), config.mode, config.seed)
    init = init_sources(tokenizer, groups, rows) if vocab else ()
    cfg = train_config(config, variant, base_dir, directory / "data", directory / "train",
                       len(data), data.seq_len, groups.count, init, bias)
    tests = test_examples(config, test_records, template)
    unk = tokenizer.unk_token_id
    unknown = 0 if unk is None else int((data.arrays["tokens"] == unk).sum())
    return Prepared(variant, directory, tokenizer, vocab, template, tests, bias, cfg,
                    len(data), unknown)


def train_variant(config, prep: Prepared, base_dir: Path, position_limit) -> dict:
    """Train with the per-epoch callback; returns the loop's final metrics."""
    longest = max(len(prep.template.test_prompt(ex.question)) for ex in prep.tests)
    settings, source = decode_settings(config, prep.tokenizer, base_dir, longest, position_limit)
    atomic.write_json(prep.directory / "decoding.json", source)
    per_epoch = steps_per_epoch(prep.train_rows, config.batch_size)
    evaluator = EpochEvaluator(config=config, variant=prep.variant, tokenizer=prep.tokenizer,
                               template=prep.template, examples=prep.tests, vocab=prep.vocab,
                               bias=prep.bias, out_dir=prep.directory, per_epoch=per_epoch,
                               settings=settings, full=prep.variant.trainable == "none")
    result = train_main(prep.train_cfg, callbacks=[evaluator.callback()])
    return {"decoding": source, "final_loss": result.get("loss"),
            "steps": result.get("final_step"), "steps_per_epoch": per_epoch}


def epoch_params(config, prep: Prepared, epoch: int, seed: int):
    """(model, params) of a variant after ``epoch`` (rebuilt from the base and the saved
    epoch files)."""
    epoch_dir = prep.directory / "epochs" / f"epoch_{epoch}"
    if prep.variant.trainable == "none":
        return load_pretrained(epoch_dir / "model", dtype=config.dtype)
    model, params = load_pretrained(prep.train_cfg.model.hf_path, dtype=config.dtype)
    model, params, _ = apply_peft(model, params, prep.train_cfg.peft, seed)
    first = prep.vocab.rows if prep.vocab else None
    return model, export.load_epoch(epoch_dir, model, params, first_id=first)


def pick_epochs(epochs: list[dict]) -> dict:
    """The best epoch by test accuracy (the earliest on ties) and the last."""
    if not epochs:
        raise RuntimeError("no epoch was evaluated; is epochs at least 1?")
    best = max(epochs, key=lambda r: (r["test_accuracy"], -r["epoch"]))
    last = max(epochs, key=lambda r: r["epoch"])
    return {"best_epoch": best["epoch"], "best_accuracy": best["test_accuracy"],
            "last_epoch": last["epoch"], "last_accuracy": last["test_accuracy"],
            "per_epoch": [{"epoch": r["epoch"], "test_accuracy": r["test_accuracy"],
                           "loss": r.get("loss")}
                          for r in sorted(epochs, key=lambda r: r["epoch"])]}


def analyse_variant(config, prep: Prepared, picked: dict, groups) -> dict:
    epoch = picked["best_epoch"] if config.mode == "faithful" else picked["last_epoch"]
    results = read_results(prep.directory, epoch)
    out = {"headline_epoch": epoch, "step_counts": analysis.step_counts(results)}
    out["gold_step_counts"] = {t: sum(ex.step_types.count(t) for ex in prep.tests)
                                  / len(prep.tests) for t in ("memory", "reason")}
    if all(ex.step_texts and any(ex.step_texts) for ex in prep.tests):
        out["error_attribution"] = analysis.error_attribution(
            prep.tests, results, groups if prep.variant.planning_tokens else None)
    return out


def attention_analysis(config, prep: Prepared, epoch: int) -> dict:
    model, params = epoch_params(config, prep, epoch, config.seed)
    seqs = [(list(e.ids), e.source_len) for e in
            (prep.template.training(ex) for ex in prep.tests[:config.attention_examples])]
    if config.attention_layer >= model.config.num_layers or \
            config.attention_head >= model.config.num_heads:
        raise ConfigError(f"attention_layer={config.attention_layer}, attention_head="
                          f"{config.attention_head}: the model has {model.config.num_layers} "
                          f"layers and {model.config.num_heads} heads")
    found = analysis.attention_to_planning(with_bias(model, prep.bias), params, seqs,
                                           prep.vocab.ids, config.attention_layer,
                                           config.attention_head)
    if found.get("heatmap"):
        found["heatmap"]["tokens"] = prep.tokenizer.convert_ids_to_tokens(found["heatmap"]["ids"])
    return found, model, params


def run(config: PlanningTokensConfig) -> dict:
    """Train, evaluate, analyse and report every variant. Returns the metrics."""
    if config.rescore:
        return rescore(config)
    t0 = time.perf_counter()
    out = prepare_run_dir(config)
    base_dir = resolve_model_path(config)
    hf_cfg = json.loads((base_dir / "config.json").read_text())
    base_model, _ = load_pretrained(base_dir, dtype=config.dtype)
    position_limit = family_of(base_model).position_limit(base_model.config)
    train_records, test_records = load_records(config)
    groups = TokenGroups(config.n_prefix, config.n_special)
    metrics: dict = {"mode": config.mode, "dataset": config.dataset, "model": str(base_dir),
                     "model_check": stored_check(base_dir),
                     "train_examples": len(train_records), "test_records": len(test_records),
                     "groups": {"n_prefix": groups.n_prefix, "n_special": groups.n_special,
                                "new_tokens": groups.count},
                     "variants": {}, "figures": []}
    heat = None
    for variant in config.variants:
        prep = prepare_variant(config, variant, base_dir, hf_cfg, groups, train_records,
                               test_records, out)
        entry = {"trainable": variant.trainable, "planning_tokens": variant.planning_tokens,
                 "labels": variant.labels, "test_examples": len(prep.tests),
                 "unique_test_examples": len({ex.question for ex in prep.tests}),
                 "unknown_tokens_in_training": prep.unknown_tokens}
        if prep.vocab is not None:
            entry["vocab"] = {"rows": prep.vocab.rows, "first_id": prep.vocab.first_id,
                              "fillers": prep.vocab.fillers,
                              "in_padding_rows": prep.vocab.in_padding_rows}
        entry.update(train_variant(config, prep, base_dir, position_limit))
        entry.update(pick_epochs(read_epochs(prep.directory)))
        entry.update(analyse_variant(config, prep, entry, groups))
        if variant.planning_tokens and heat is None:
            entry["attention"], model, params = attention_analysis(config, prep,
                                                                   entry["headline_epoch"])
            heat = entry["attention"].pop("heatmap", None)
            if "lora" in variant.trainable:
                export.export_peft(prep.directory / "peft_export", model, params, prep.tokenizer,
                                   rank=config.lora_rank, alpha=config.lora_alpha,
                                   dropout=config.lora_dropout,
                                   targets=LORA_MODULES[config.lora_module], bias=prep.bias,
                                   base_model=str(base_dir), planning=True)
                entry["peft_export"] = str(prep.directory / "peft_export")
        metrics["variants"][variant.name] = entry
    metrics["seconds"] = time.perf_counter() - t0
    metrics["summary"] = summary_of(metrics)
    metrics["figures"] = write_report(out, metrics, config, heat)
    atomic.write_json(out / "metrics.json", metrics)
    return metrics


def summary_of(metrics: dict) -> dict:
    out = {"mode": metrics["mode"]}
    for name, v in metrics["variants"].items():
        counts = v.get("step_counts", {})
        out[name] = {"best": f"{v['best_accuracy']:.3f} (epoch {v['best_epoch']})",
                     "last": f"{v['last_accuracy']:.3f} (epoch {v['last_epoch']})",
                     "memory:reason": (f"{counts['memory_per_generation']:.2f}:"
                                       f"{counts['reason_per_generation']:.2f}"
                                       if counts and v["planning_tokens"] else None)}
    out["seconds"] = round(metrics["seconds"], 1)
    return out
