"""The neuron lens (Rai & Yao, ACL 2024) end to end: which FFN neurons carry chain-of-thought
arithmetic, what they promote, and what knocking them out does.

1. Few-shot inference per prompt type (:mod:`.decoding`), scored by both parsers.
2. Algorithm One on the analysis prompt's sample of correct answers: top-k neurons per
   decoding position and layer, reduced inside the compiled program.
3. Algorithm Two (:mod:`.neurons`): their value vectors through the unembedding.
4. Concept neurons (:mod:`.concepts`): the seed-token filter and the labeller.
5. Ablation (:mod:`.ablation`): concept neurons and random controls, three ways.
6. Prompt variants (:mod:`.variants`): concept-neuron activity per prompt type.
7. ``metrics.json``, tables, figures and ``report.md`` (:mod:`.report`).

Every stage's decoding is a run folder of the shared generation runner (``results.jsonl``
and an array store), so a killed run resumes where it stopped and a rerun reuses it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from jaxreason import atomic
from jaxreason.llm import LLMClient
from jaxreason.models import load_pretrained, load_tokenizer
from jaxreason.models import weights as W
from jaxreason.sharding import data_parallel
from jaxreason.studies.base import prepare_run_dir
from jaxreason.studies.neuron_lens import ablation, concepts, neurons, report, variants
from jaxreason.studies.neuron_lens.config import NeuronLensConfig
from jaxreason.studies.neuron_lens.data import load_data, sample_correct
from jaxreason.studies.neuron_lens.decoding import (PromptSet, accuracy, dominant_run,
                                                    run_accuracy)
from jaxreason.studies.world_model import resolve_model_path, stored_check


def _accuracies(results) -> dict:
    return {m: accuracy(results, m) for m in ("faithful", "fixed")}


def _dominant(config, model, params, prompts, problems, results, out: Path, mesh):
    """Algorithm One on this prompt type's sample of correctly answered problems."""
    correct = [r[f"correct_{config.mode}"] or not config.sample_correct for r in results]
    sample = sample_correct(problems, correct, config.neuron_examples, config.sample_seed)
    if not sample:
        return None, sample
    return dominant_run(config, model, params, prompts, problems, sample,
                        out / "dominant" / prompts.prompt_type, mesh), sample


def _label(config, found: dict, out: Path) -> tuple[dict, list]:
    if config.labeller == "seed_tokens":
        return found, []
    with LLMClient(config.llm) as client:
        accepted, records = concepts.label_with_llm(client, found, config.mode)
        atomic.write_json(out / "llm_usage.json", client.usage())
    return accepted, records


def run(config: NeuronLensConfig) -> dict:
    """The whole study; returns the metrics (also written to ``metrics.json``)."""
    t0 = time.perf_counter()
    model_dir = resolve_model_path(config)
    out = prepare_run_dir(config)
    data = load_data(config)
    model, params = load_pretrained(model_dir, dtype=config.dtype)
    tok = load_tokenizer(model_dir)
    mesh, params = data_parallel(model, params, config.batch_size, config.data_parallel)
    L, F = model.config.num_layers, model.config.intermediate_size
    prompt_sets = {t: PromptSet.build(tok, t, text, config.mode)
                   for t, text in data.prompts.items()}
    # 1. inference per prompt type
    inference = {t: run_accuracy(config, model, params, ps, data.problems,
                                 out / "inference" / t, mesh=mesh)
                 for t, ps in prompt_sets.items()}
    acc = {t: _accuracies(r) for t, r in inference.items()}
    # 2-3. dominant neurons on the analysis prompt and their vocabulary
    base = config.analysis_prompt
    dom, sample = _dominant(config, model, params, prompt_sets[base], data.problems,
                            inference[base], out, mesh)
    if dom is None:
        raise RuntimeError(f"no problem was answered correctly with {base} ({config.mode} "
                           f"parser), so there is no sample for the dominant neurons")
    if config.save_original_json:
        neurons.save_original_layout(out / "algorithm_one" / base, dom)
    found = neurons.aggregate(dom)
    neurons.project(model, params, tok, found, config.promoted_tokens)
    variant = neurons.project(model, params, tok, found, config.promoted_tokens, final_norm=True)
    all_neurons = neurons.flat(found)
    # 4. concept neurons
    seeds, seed_name = concepts.seed_lists(config.seed_words, data.source)
    skip = concepts.skipped_layers(L, config.skip_layers)
    use = all_neurons
    if config.projection == "final_norm":
        use = [neurons.Neuron(n.layer, n.index, n.score, n.count, n.best,
                              variant[n.name]["tokens"], variant[n.name]["token_ids"])
               for n in all_neurons]
    cands = concepts.candidates(use, seeds, skip, config.min_seed_hits)
    accepted, llm_records = _label(config, cands, out)
    by_name = {n.name: n for n in all_neurons}
    for c, ns in accepted.items():
        for n in ns:
            by_name[n.name].concepts.append(c)
    if llm_records:
        atomic.write_json(out / "llm_labels.json", llm_records)
    neurons.save_neurons(out / "neurons.json", all_neurons,
                         {"mode": config.mode, "prompt_type": base, "examples": len(sample),
                          "projection": config.projection, "labeller": config.labeller,
                          "seed_words": seed_name, "skipped_layers": skip})
    concept_lists = {c: [by_name[n.name] for n in accepted.get(c, [])] for c in concepts.CONCEPTS}
    # 5. ablation
    concept_pairs = [(n.layer, n.index) for c in concepts.CONCEPTS for n in concept_lists[c]]
    targets = {}
    if concept_pairs:
        targets["concept"] = concept_pairs
    if "original" in config.random_controls:
        targets["original"] = ablation.original_random(L, F, config.random_seed,
                                                       config.random_count,
                                                       config.random_index_range)
    if "same_count" in config.random_controls and concept_pairs:
        targets["same_count"] = ablation.same_count_random(concept_pairs, F, config.random_seed)
    eps = ablation.noise(model.config.hidden_size, config.noise_seed, config.noise_mean,
                         config.noise_std)
    abl, tests = _ablations(config, model, params, prompt_sets[base], data.problems, targets,
                            eps, inference[base], out, mesh)
    # 6. prompt variants
    activity = {}
    if config.variant_analysis:
        activity[base] = variants.concept_activity(dom, concept_lists)
        for t, ps in prompt_sets.items():
            if t == base:
                continue
            d, _ = _dominant(config, model, params, ps, data.problems, inference[t], out, mesh)
            if d is not None:
                activity[t] = variants.concept_activity(d, concept_lists)
    mode_acc = {t: a[config.mode] for t, a in acc.items()}
    verdicts = variants.claims(mode_acc, activity,
                               {w: {k: v[config.mode] for k, v in r.items()}
                                for w, r in abl.items()}, config.mode, base, tests)
    metrics = {
        "mode": config.mode, "dtype": config.dtype, "data": data.description,
        "source": data.source, "model": str(model_dir),
        "model_check": stored_check(model_dir), "num_layers": L, "width": F,
        "problems": len(data.problems), "prompt_types": list(prompt_sets),
        "analysis_prompt": base, "accuracy": acc,
        "dominant": {"examples": len(sample), "sample": sample, "steps": config.neuron_steps,
                     "top_k": config.top_k, "valid_pairs": int(dom.valid.sum()),
                     "neurons": len(all_neurons),
                     "per_layer": [len(found[l]) for l in range(L)],
                     "final_norm_overlap": neurons.overlap(all_neurons, variant)},
        "concepts": {"labeller": config.labeller, "seed_words": seed_name, "seeds": seeds,
                     "skipped_layers": skip, "min_seed_hits": config.min_seed_hits,
                     "projection": config.projection,
                     "candidates": {c: len(v) for c, v in cands.items()},
                     "counts": {c: len(v) for c, v in concept_lists.items()},
                     "neurons": {c: [n.name for n in v] for c, v in concept_lists.items()},
                     "histogram": report.layer_histogram(concept_lists, L),
                     "llm_unparsed": sum(not r["parsed"] for r in llm_records)},
        "ablation": abl, "ablation_tests": tests,
        "noise_norm": float(np.linalg.norm(eps)),
        "mean_value_norm": float(np.mean(np.asarray(W.value_norms(model, params)))),
        "targets": {k: [f"L{l}N{i}" for l, i in v] for k, v in targets.items()},
        "faithful_hooked": {k: [f"L{l}N{i}" for l, i in ablation.faithful_hooks(v)]
                            for k, v in targets.items()},
        "noise": {"seed": config.noise_seed, "mean": config.noise_mean, "std": config.noise_std},
        "variants": activity, "claims": verdicts, "published": report.PUBLISHED,
    }
    metrics["figures"] = [p.name for p in report.figures(out, metrics)]
    metrics["seconds"] = time.perf_counter() - t0
    metrics["summary"] = report.summary(metrics)
    atomic.write_json(out / "metrics.json", metrics)
    report.write_tables(out, metrics, all_neurons)
    report.write_report(out / "report.md", metrics)
    return metrics


def _ablations(config, model, params, prompts, problems, targets: dict, eps, none_results,
               out: Path, mesh) -> tuple[dict, dict]:
    """``{way: {"none": {faithful, fixed}, target: {faithful, fixed}, ...}}`` and, per way,
    the paired sign test of the concept neurons against each random control (mode's
    parser, the same problems)."""
    result, tests = {}, {}
    key = f"correct_{config.mode}"
    for way in config.ablation_ways:
        rows = {"none": _accuracies(none_results)}
        correct = {}
        for name, pairs in targets.items():
            folder = out / "ablation" / f"{way}__{name}"
            ident = {"way": way, "neurons": [list(p) for p in pairs],
                     "noise": [config.noise_seed, config.noise_mean, config.noise_std]}
            desc = f"{way} {name}"
            if way == "zero":
                res = run_accuracy(config, model, params, prompts, problems, folder,
                                   interventions=ablation.zero_interventions(pairs),
                                   identity=ident, mesh=mesh, desc=desc)
            elif way == "corrupt_clean":
                res = run_accuracy(config, model, ablation.clean_params(model, params, pairs, eps),
                                   prompts, problems, folder, identity=ident, mesh=mesh,
                                   desc=desc)
            else:
                drift = ablation.CumulativeCorruption(model, params, pairs, eps,
                                                      config.batch_size, config.max_new_tokens)
                res = run_accuracy(config, model, params, prompts, problems, folder,
                                   params_for_call=drift, shared_prefix=False, identity=ident,
                                   mesh=mesh, desc=desc)
            rows[name] = _accuracies(res)
            correct[name] = [r[key] for r in res]
        result[way] = rows
        if "concept" in correct:
            tests[way] = {f"concept_vs_{k}": ablation.paired_sign_test(correct["concept"], v)
                          for k, v in correct.items() if k != "concept"}
    return result, tests
