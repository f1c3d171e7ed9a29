"""MechanisticProbe (Hou et al., 2023) on the k-th smallest task with GPT-2, end to end.

The study wires shared pieces together and reimplements none of them: ``jaxreason.train``
trains (or fine-tunes) the model, ``jaxreason.tasks.kth_smallest`` rebuilds the lists and
the duplicate-aware labels, ``jaxreason.probe.features`` exports last-query attention from
jitted ``attn.hook_pattern`` captures, ``jaxreason.probe.knn`` runs the scikit-learn probes,
``jaxreason.probe.entropy`` and the core's ``HeadMask`` intervention do the causal analysis.

Modes (every number in the report names the one that produced it):

* ``faithful``: the original's quirks: the kNN split at row N/2 (an example count used as a
  row index), the P2 label with a constant column, the random baseline with dropout active
  (train mode), masking p+1 heads, one random head mask per masking level, duplicate
  positions repeated in the size-rank view, the original's probe sample drawn with Python's
  ``random`` after data generation, and the case study's edit that moves the two smallest
  numbers into place without always being a permutation.
* ``fixed``: examples split by example, a single binary P2 label, a dropout-free baseline,
  exactly p heads masked, random masking averaged over several draws, duplicates given
  distinct ranks, the case study's numbers moved by true swaps.

In both modes the random baseline is initialised as HuggingFace initialises a fresh GPT-2
(:mod:`.random_twin`), and the lists come from the training data's own ``data_seed``.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxreason import atomic
from jaxreason.hooks import head_mask_interventions
from jaxreason.probe import entropy as ent
from jaxreason.probe import knn, plots
from jaxreason.probe.features import HF_TRAIN_DROPOUT_SITES, gpt2_probe_features, last_query_attention
from jaxreason.studies.base import prepare_run_dir, train_or_load
from jaxreason.studies.mechprobe.config import MechProbeConfig
from jaxreason.studies.mechprobe.random_twin import random_twin
from jaxreason.studies.mechprobe.report import write_kth_report
from jaxreason.tasks import kth_smallest as kth


def study_lists(config: MechProbeConfig) -> dict:
    """Every split's number lists, rebuilt from the training task's arguments (the task's
    ``data_seed`` included, so the probe's test split is the one training never saw)."""
    args = dict(config.train.data.task_args)
    args.pop("split", None)  # the study needs every split, not the trained one
    seed = args.pop("data_seed", kth.ORIGINAL_SEED)
    return kth.kth_smallest_lists(seed=seed, **args)


@functools.partial(jax.jit, static_argnames=("model",))
def _predict(model, params, ids, edits):
    return jnp.argmax(model.apply(params, ids, interventions=edits).logits[:, -1], -1)


def accuracy(model, params, tokens, labels, batch_size: int, interventions=None) -> float:
    """Argmax over the whole vocabulary at the last position vs the answer token (one
    compiled program per intervention structure, shared by every head mask)."""
    hits = 0
    for i in range(0, len(tokens), batch_size):
        ids = jnp.asarray(tokens[i:i + batch_size])
        hits += int((np.asarray(_predict(model, params, ids, interventions))
                     == labels[i:i + batch_size]).sum())
    return hits / len(tokens)


def probe_scores(attn_trained, attn_random, p1, answer, faithful: bool, seed: int) -> dict:
    """P1/P2 F1 for the trained and random models, the probing scores, and layer-wise F1."""
    out = {}
    feats = {"trained": gpt2_probe_features(attn_trained), "random": gpt2_probe_features(attn_random)}
    n = len(p1)
    for name, f in feats.items():
        X1, y1, ex1 = knn.p1_rows(f, p1)
        X2, y2, ex2 = knn.p2_rows(f, p1, answer, faithful=faithful)
        if faithful:
            out[f"f1_p1_{name}"] = knn.knn_f1_two_fold_rows(X1, y1, n)
            out[f"f1_p2_{name}"] = knn.knn_f1_two_fold_rows(X2, y2, n)
        else:
            out[f"f1_p1_{name}"] = knn.knn_f1_by_example(X1, y1, ex1, seed=seed)
            out[f"f1_p2_{name}"] = knn.knn_f1_by_example(X2, y2, ex2, seed=seed)
    out["S_P1"] = float(knn.probing_score(out["f1_p1_trained"], out["f1_p1_random"]))
    out["S_P2"] = float(knn.probing_score(out["f1_p2_trained"], out["f1_p2_random"]))
    X1, y1, ex1 = knn.p1_rows(feats["trained"], p1)
    X2, y2, ex2 = knn.p2_rows(feats["trained"], p1, answer, faithful=faithful)
    if faithful:
        s1 = lambda X, y: knn.knn_f1_two_fold_rows(X, y, n)  # noqa: E731
        s2 = s1
    else:
        s1 = lambda X, y: knn.knn_f1_by_example(X, y, ex1, seed=seed)  # noqa: E731
        s2 = lambda X, y: knn.knn_f1_by_example(X, y, ex2, seed=seed)  # noqa: E731
    out["layerwise_f1_p1"] = [float(v) for v in knn.layerwise_scores(X1, y1, s1)]
    out["layerwise_f1_p2"] = [float(v) for v in knn.layerwise_scores(X2, y2, s2)]
    return out


def masking_curves(model, params, tokens, labels, h_pos, h_size, config, faithful) -> dict:
    """Accuracy after masking a growing fraction of heads, by three policies."""
    rng = np.random.default_rng(config.seed)
    base = accuracy(model, params, tokens, labels, config.batch_size)
    shape = h_pos.shape
    curves = {"random": [base], "low position entropy": [base], "low size entropy": [base]}
    for frac in tqdm(config.masking_fractions, desc="head masking", leave=False):
        # the random policy's accuracy: the mean over `mask_draws` masks (the original: one)
        draws = [ent.heads_to_mask(np.zeros(shape), frac, policy="random", rng=rng,
                                   faithful=faithful) for _ in range(config.mask_draws)]
        curves["random"].append(float(np.mean([
            accuracy(model, params, tokens, labels, config.batch_size,
                     head_mask_interventions(m, every_layer=True)) for m in draws])))
        for name, scores in (("low position entropy", h_pos), ("low size entropy", h_size)):
            mask = ent.heads_to_mask(scores, frac, policy="low", rng=rng, faithful=faithful)
            edits = head_mask_interventions(mask, every_layer=True)
            curves[name].append(accuracy(model, params, tokens, labels, config.batch_size, edits))
    return curves




def run(config: MechProbeConfig) -> dict:
    """Train (unless skipped), probe, analyse, plot and report. Returns the metrics."""
    t0 = time.perf_counter()
    faithful = config.mode == "faithful"
    out_dir = prepare_run_dir(config)
    model, params, train_metrics = train_or_load(config)

    lists = study_lists(config)
    k, vocab = lists["k"], lists["vocab"]
    test = lists["test"][:config.eval_examples]
    test_tokens, test_labels = vocab.encode(test), vocab.label(kth.answers(test, k))
    if faithful and len(lists["test"]) >= config.probe_examples:
        probe_lists = kth.faithful_probe_sample(lists, config.probe_examples)
    else:
        pick = np.random.default_rng(config.seed).permutation(len(lists["test"]))
        probe_lists = lists["test"][np.sort(pick[:config.probe_examples])]
    p1, answer = kth.useful_and_answer_labels_batch(probe_lists, k)

    random_model, random_params = random_twin(model.config, seed=config.random_seed)
    dropout = 0.1 if faithful else 0.0
    probe_tokens = vocab.encode(probe_lists)
    attn_trained = last_query_attention(model, params, probe_tokens, config.batch_size)
    attn_random = last_query_attention(random_model, random_params, probe_tokens,
                                       config.batch_size, dropout_rate=dropout,
                                       dropout_sites=HF_TRAIN_DROPOUT_SITES if faithful else ("attn",))
    metrics = {"mode": config.mode, "k": k, "vocab": vocab.source,
               "data_seed": lists["data_seed"],
               "random_mask_draws": config.mask_draws,
               "test_accuracy": accuracy(model, params, test_tokens, test_labels, config.batch_size),
               "random_test_accuracy": accuracy(random_model, random_params, test_tokens,
                                                test_labels, config.batch_size),
               "train": train_metrics}
    metrics.update(probe_scores(attn_trained, attn_random, p1, answer, faithful, config.seed))

    # causal analysis over the evaluation lists
    attn_test = last_query_attention(model, params, test_tokens, config.batch_size)
    by_pos, by_rank = ent.attention_by_rank(attn_test, test, dedupe=not faithful)
    h_pos, h_size = ent.head_entropy(by_pos), ent.head_entropy(by_rank)
    metrics["entropy_position"] = h_pos.tolist()
    metrics["entropy_size"] = h_size.tolist()
    metrics["masking"] = masking_curves(model, params, test_tokens, test_labels, h_pos, h_size,
                                        config, faithful)
    mask40 = ent.heads_to_mask(h_pos, 0.4, policy="low", rng=np.random.default_rng(config.seed),
                               faithful=faithful).astype(np.float32)
    metrics["case_study_40pct_accuracy"] = accuracy(model, params, test_tokens, test_labels,
                                                    config.batch_size,
                                                    head_mask_interventions(mask40, every_layer=True))
    attn_random_test = last_query_attention(random_model, random_params, test_tokens,
                                            config.batch_size)
    rnd_pos, rnd_rank = ent.attention_by_rank(attn_random_test, test, dedupe=not faithful)
    case = case_study(model, params, test, vocab, mask40, config.batch_size, faithful)
    metrics["case_study_swapped_examples"] = case["examples"]
    metrics["case_study_slots"] = [LEAF_SLOT, ROOT_SLOT]  # 0-based
    if case["swapped"] is not None:  # kept heads' attention to the two slots, per layer
        metrics["case_study_leaf_attention"] = case["swapped"][:, LEAF_SLOT].tolist()
        metrics["case_study_root_attention"] = case["swapped"][:, ROOT_SLOT].tolist()
    figures = _figures(out_dir, by_pos, by_rank, rnd_pos, rnd_rank, h_pos, h_size, metrics,
                       case, config.masking_fractions)
    metrics["attention_by_rank_layer"] = by_rank.mean(1).T.tolist()  # (S ranks, L)
    metrics["attention_by_position_layer"] = by_pos.mean(1).T.tolist()
    metrics["figures"] = [p.name for p in figures]
    metrics["seconds"] = time.perf_counter() - t0
    atomic.write_json(out_dir / "metrics.json", metrics)
    write_kth_report(out_dir / "report.md", metrics, config)
    return metrics


# 0-based slots the original moves the two smallest to (its positions 8 and 12, 1-based)
LEAF_SLOT, ROOT_SLOT = 7, 11


def case_study(model, params, lists, vocab, mask, batch_size: int, faithful: bool) -> dict:
    """The original's case study: with the 40% lowest-H_pos heads masked, the head-averaged
    attention of the last token over the heads left (per layer), on all lists and on
    duplicate-free lists with the smallest number moved to position 8 ("leaf") and the 2nd
    smallest to position 12 ("root"), 1-based (:func:`kth.move_two_smallest`; ``faithful``
    keeps the original's edit, which is not always a permutation)."""
    def mean_over_kept(attn):  # (N, L, H, S) -> (L, S)
        kept = mask[None, :, :, None]
        return ((attn * kept).sum(2) / np.maximum(kept.sum(2), 1)).mean(0)

    every = last_query_attention(model, params, vocab.encode(lists), batch_size, head_mask=mask)
    # lists too short to hold the root slot get no leaf/root view
    distinct = [r for r in lists if len(set(r.tolist())) == len(r) > ROOT_SLOT]
    swapped = np.asarray([kth.move_two_smallest(r, LEAF_SLOT, ROOT_SLOT, faithful)
                          for r in distinct], np.int64).reshape(-1, np.shape(lists)[1])
    flow = last_query_attention(model, params, vocab.encode(swapped), batch_size,
                                head_mask=mask) if len(swapped) else None
    return {"all": mean_over_kept(every),
            "swapped": None if flow is None else mean_over_kept(flow),
            "examples": int(len(swapped))}


def _figures(out_dir, by_pos, by_rank, rnd_pos, rnd_rank, h_pos, h_size, metrics, case,
             fractions):
    s = by_rank.shape[-1]
    ranks = [f"{r + 1}" for r in range(s)]
    positions = [f"{p + 1}" for p in range(s)]
    center = 1.0 / s
    figs = [
        plots.plot_attention_grid(by_rank.mean(1).T, ranks, "trained: attention by size rank",
                                  out_dir / "attn_rank_trained.png", center=center),
        plots.plot_attention_grid(rnd_rank.mean(1).T, ranks, "random init: attention by size rank",
                                  out_dir / "attn_rank_random.png", center=center),
        plots.plot_attention_grid(by_pos.mean(1).T, positions, "trained: attention by position",
                                  out_dir / "attn_position_trained.png", ylabel="position"),
        plots.plot_attention_grid(rnd_pos.mean(1).T, positions, "random init: attention by position",
                                  out_dir / "attn_position_random.png", ylabel="position"),
        plots.plot_entropy_heatmap(h_pos, "head entropy by position", out_dir / "entropy_position.png"),
        plots.plot_entropy_heatmap(h_size, "head entropy by size rank", out_dir / "entropy_size.png"),
        plots.plot_masking_curves([0.0, *fractions],
                                  metrics["masking"], out_dir / "masking.png"),
        plots.plot_layerwise(list(range(1, len(metrics["layerwise_f1_p1"]) + 1)),
                             {"P1 (useful)": metrics["layerwise_f1_p1"],
                              "P2 (answer)": metrics["layerwise_f1_p2"]},
                             out_dir / "layerwise_probe.png"),
    ]
    figs.append(plots.plot_attention_grid(case["all"].T, positions,
                                          "40% lowest-H_pos heads masked: kept heads",
                                          out_dir / "case_study_40pct.png", ylabel="position"))
    if case["swapped"] is not None:
        labels = list(positions)
        labels[LEAF_SLOT], labels[ROOT_SLOT] = f"{LEAF_SLOT + 1} leaf", f"{ROOT_SLOT + 1} root"
        figs.append(plots.plot_attention_grid(case["swapped"].T, labels,
                                              f"smallest at {LEAF_SLOT + 1} (leaf), 2nd "
                                              f"smallest at {ROOT_SLOT + 1} (root)",
                                              out_dir / "case_study_leaf_root.png",
                                              ylabel="position"))
    return figs

