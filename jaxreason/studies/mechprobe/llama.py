"""MechanisticProbe (Hou et al., 2023) with a Llama-family model on ProofWriter and ARC.

It follows the original repository's ``rtask/proofwriter_probe`` and ``rtask/arc_probe``
(statement features, proof trees, probe sampling, prompts, the corruption experiment). Shared
pieces only are wired here: :mod:`jaxreason.tasks.proofwriter` (records, proofs,
labels, buckets), :mod:`jaxreason.probe.features` (span arithmetic, statement features),
:mod:`jaxreason.probe.knn` (kNN CV, probing score), the hook runner's position capture.

Memory: the forward asks for ``blocks.*.attn.hook_pattern`` only at the query positions, and
the jitted program reduces those rows on the fly (max / mean over query tokens, mean over
heads), so only (L, S) values per example leave the device; no T x T pattern is kept.
Prompts run ``FORWARD_BATCH`` at a time (:func:`query_attention_batch`): sorted by length,
right-padded to a multiple of ``pad_multiple`` (causal attention: padding after the last real
token changes nothing before it) and the query positions to a multiple of 16, so one program
serves many examples and each row sees exactly its own prompt. A phase plans all of its
prompts first (drawing demos and corruptions in the one-by-one order), then runs them.

Modes (every number in ``metrics.json`` / ``report.md`` names the mode):

* ``faithful``: feature demos from ``random.choices`` (with replacement), evaluator demos from
  ``random.sample`` (so the accuracy sees other demos and another prompt); statements
  concatenated with no separator and " {question} True or False?"; spans from separate
  tokenisation with the tokenizer's default special tokens plus the +1 shift; ProofWriter
  keeps layers 0-16, 19, 28 and ARC 0-16 (filtered to the model's depth); the random baseline
  takes the *mean* over query tokens, all layers and no demo prefix; labels truncate
  ``edges[:depth]``; the ARC proof re-parse drops chain links; the pool includes train
  records; corruption hits the first sentence (the original's selection loop never runs).
* ``fixed``: one set of demos (sampled without replacement) for the evaluator and the
  features, and one prompt for both ("{statements joined by spaces} {question}: True or
  False?"), so the accuracy and the features come from one forward; exact spans from
  tokenising prompt prefixes; every layer; the baseline runs the same pipeline as the model;
  labels keep every edge; the pool excludes train; corruption hits a sentence outside the
  proof.

Answer tokens: the original restricts the argmax to the hard-coded LLaMA-1 ids
[5852, 7700]. Ids differ per tokenizer, so both modes take the ids of "True"/"False" from the
tokenizer (first token of ``encode(word, add_special_tokens=False)``); ``metrics.json`` records
them next to the original's ids.

Corruption: counter ("That <sentence> is false"), shuffle (statement order) and noise
(a sentence of another theory inserted) are all implemented (the original's shuffle and
noise are placeholders fixed at 0). To keep the cost bounded, the
per-record forwards (clean and corrupted) are computed once for ``corrupt_pool`` records and
the ``corrupt_iterations`` iterations resample subsets of them (the original re-runs every
forward with fresh demos in each of its 1,024 iterations). Binning: 8 equal-width bins over
the S_P2 range; faithful leaves the maximum outside every bin as the original does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxreason import atomic
from jaxreason.models import from_config, load_pretrained, load_tokenizer
from jaxreason.probe import knn
from jaxreason.probe.features import (ARC_KEEP_LAYERS, PROOFWRITER_KEEP_LAYERS,
                                      llama_statement_features, statement_boundaries)
from jaxreason.studies.base import check_model_dir, prepare_run_dir
from jaxreason.studies.mechprobe.config import MechProbeLlamaConfig
from jaxreason.studies.mechprobe.report import write_llama_report
from jaxreason.tasks import proofwriter as pw

FORWARD_BATCH = 8  # prompts per batched forward (see query_attention_batch)
ORIGINAL_ANSWER_IDS = (5852, 7700)  # the original llama.evaluator's hard-coded "True"/"False"
CORRUPTIONS = ("counter", "shuffle", "noise")


# ----------------------------------------------------------------------------- prompts

def _yes(answer) -> str:
    if isinstance(answer, bool):
        return "True" if answer else "False"
    return str(answer)


def demo_text(record: dict, dataset: str) -> str:
    if dataset == "arc":
        return f"{record['context']} {record['question']}{_yes(record['answer'])}\n"
    return f"{record['context']} {record['question']}: True or False?{_yes(record['answer'])}\n"


def evaluator_prompt(record: dict, demos: list[dict], dataset: str = "proofwriter",
                     context: str | None = None) -> str:
    """llama.evaluator's prompt: demos then "{context} {question}: True or False?"."""
    ctx = record["context"] if context is None else context
    return "".join(demo_text(d, dataset) for d in demos) + f"{ctx} {record['question']}: True or False?"


def _encode(tok, text: str, special: bool = True) -> list[int]:
    return list(tok.encode(text, add_special_tokens=special))


@dataclasses.dataclass
class FeaturePrompt:
    ids: list[int]
    boundaries: np.ndarray  # n_statements + 1


def feature_prompt(tok, record: dict, demos: list[dict], dataset: str, faithful: bool,
                   texts: list[str] | None = None) -> FeaturePrompt:
    """The prompt of the attention features and its statement boundaries.

    Faithful (the original's feature prompt): icl + statements with no separator
    + " {question} True or False?" (ARC: " {question}"); boundaries from separate
    tokenisation, cumsum, +1 on the first.
    Fixed: statements joined by spaces + " {question}: True or False?"; boundary j is the
    token count of the prompt prefix ending before statement j (exact up to merges).
    """
    icl = "".join(demo_text(d, dataset) for d in demos)
    texts = [t for _, t in pw.statements(record)] if texts is None else texts
    if faithful:
        tail = f" {record['question']}" + ("" if dataset == "arc" else " True or False?")
        prompt = icl + "".join(texts) + tail
        ids = _encode(tok, prompt)
        prefix_len = len(_encode(tok, icl)) if icl else 0
        b = statement_boundaries(prefix_len, [len(_encode(tok, t)) for t in texts])
        return FeaturePrompt(ids, b)
    tail = f" {record['question']}" + ("" if dataset == "arc" else ": True or False?")
    starts, text = [], icl
    for j, t in enumerate(texts):
        starts.append(len(text))
        text += ("" if j == 0 else " ") + t
    ends_at = len(text)
    prompt = text + tail
    ids = _encode(tok, prompt)
    b = [len(_encode(tok, prompt[:c])) for c in starts] + [len(_encode(tok, prompt[:ends_at]))]
    # a leading space joins the next statement's first token; keep the split monotone
    b = np.maximum.accumulate(np.asarray(b, int))
    return FeaturePrompt(ids, b)


def answer_token_ids(tok) -> tuple[int, int]:
    ids = []
    for w in ("True", "False"):
        enc = _encode(tok, w, special=False)
        if not enc:
            raise ValueError(f"the tokenizer encodes {w!r} to nothing")
        ids.append(enc[0])
    return tuple(ids)


# ----------------------------------------------------------------------------- forward

@functools.partial(jax.jit, static_argnames=("model", "reduce"))
def _query_forward(model, params, ids, qpos, qmask, last, answer_ids, reduce: bool = True):
    """One padded batch: per-layer attention of the query rows, and the True/False choice.

    ids (B, T); qpos (B, P) absolute query slots (padded by repeating the last one); qmask
    (B, P) 1 for real query slots; last (B,) the last real position.
    reduce=True returns (max over queries, mean over queries) of the head mean, each
    (B, L, S), computed in the program; reduce=False returns the raw rows (B, L, H, P, S).
    """
    out = model.apply(params, ids, capture={"blocks.*.attn.hook_pattern": qpos})
    L = model.config.num_layers
    rows = jnp.stack([out.captured[f"blocks.{i}.attn.hook_pattern"] for i in range(L)], 1)
    rows = rows.astype(jnp.float32)  # (B, L, P, H, S)
    logits = jnp.take_along_axis(out.logits, last[:, None, None], axis=1)[:, 0]  # (B, V)
    choice = logits[:, answer_ids]  # (B, 2)
    if not reduce:
        return jnp.transpose(rows, (0, 1, 3, 2, 4)), choice
    m = qmask[:, None, :, None, None].astype(jnp.float32)
    mx = jnp.where(m > 0, rows, -jnp.inf).max(axis=2).mean(axis=2)  # max over q, mean heads
    mean = ((rows * m).sum(2) / jnp.maximum(m.sum(2), 1.0)).mean(axis=2)
    return (mx, mean), choice


def _pad_to(n: int, mult: int) -> int:
    return max(mult, int(math.ceil(n / mult)) * mult)


def query_attention(model, params, ids: list[int], start: int, answer_ids=(0, 1),
                    pad_multiple: int = 64, reduce: bool = True):
    """Attention of the query rows ``start..len(ids)-1`` of one prompt.

    Returns ``(pooled, choice)``: ``pooled`` is ``{"max": (L, T), "mean": (L, T)}`` (head
    mean after max / mean over query tokens) when ``reduce``, else the raw (L, H, Q, T) rows;
    ``choice`` the logits of ``answer_ids`` at the last position.
    """
    t = len(ids)
    if not 0 <= start < t:
        raise ValueError(f"query start {start} outside a prompt of {t} tokens")
    tp = _pad_to(t, pad_multiple)
    arr = np.zeros((1, tp), np.int32)
    arr[0, :t] = ids
    q = np.arange(start, t)
    qp = _pad_to(len(q), 16)
    qpos = np.full((1, qp), t - 1, np.int32)
    qpos[0, :len(q)] = q
    qmask = np.zeros((1, qp), np.int32)
    qmask[0, :len(q)] = 1
    res, choice = _query_forward(model, params, jnp.asarray(arr), jnp.asarray(qpos),
                                 jnp.asarray(qmask), jnp.asarray([t - 1], jnp.int32),
                                 jnp.asarray(answer_ids, jnp.int32), reduce=reduce)
    choice = np.asarray(choice[0], np.float64)
    if reduce:
        return {"max": np.asarray(res[0][0, :, :t]), "mean": np.asarray(res[1][0, :, :t])}, choice
    return np.asarray(res[0, :, :, :len(q), :t]), choice


def query_attention_batch(model, params, prompts: list[tuple[list[int], int]], answer_ids=(0, 1),
                          pad_multiple: int = 64, batch_size: int = 8) -> list:
    """:func:`query_attention` (reduced) of many prompts, ``batch_size`` per forward.

    ``prompts``: (ids, query start) pairs. Prompts are sorted by length so a batch holds
    similar lengths, right-padded to the batch's longest (a multiple of ``pad_multiple``):
    with causal attention, padding after a row's last real token changes nothing before it,
    so no mask and no position shift are needed and every row sees exactly its own prompt.
    Only each row's query rows are captured (its slots padded by repeating its last one). A
    short last batch is filled with copies of its first row so that every batch of a length
    bucket reuses one compiled program. Returns one ``(pooled, choice)`` per prompt, in order.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; must be an integer >= 1")
    for i, (ids, start) in enumerate(prompts):
        if not 0 <= start < len(ids):
            raise ValueError(f"prompt {i}: query start {start} outside a prompt of {len(ids)} "
                             "tokens")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][0]))
    rows = batch_size if len(prompts) >= batch_size else 1 << (len(prompts) - 1).bit_length()
    out = [None] * len(prompts)
    for lo in range(0, len(order), batch_size):
        group = order[lo:lo + batch_size]
        lengths = [len(prompts[i][0]) for i in group]
        tp = _pad_to(max(lengths), pad_multiple)
        qp = _pad_to(max(t - prompts[i][1] for i, t in zip(group, lengths)), 16)
        arr = np.zeros((rows, tp), np.int32)
        qpos, qmask = np.zeros((rows, qp), np.int32), np.zeros((rows, qp), np.int32)
        last = np.zeros((rows,), np.int32)
        for r in range(rows):
            i = group[r] if r < len(group) else group[0]
            ids, start = prompts[i]
            t = len(ids)
            arr[r, :t] = ids
            qpos[r] = t - 1
            qpos[r, :t - start] = np.arange(start, t)
            qmask[r, :t - start] = 1
            last[r] = t - 1
        (mx, mean), choice = _query_forward(model, params, jnp.asarray(arr), jnp.asarray(qpos),
                                            jnp.asarray(qmask), jnp.asarray(last),
                                            jnp.asarray(answer_ids, jnp.int32))
        mx, mean, choice = np.asarray(mx), np.asarray(mean), np.asarray(choice, np.float64)
        for r, (i, t) in enumerate(zip(group, lengths)):
            out[i] = {"max": mx[r, :, :t], "mean": mean[r, :, :t]}, choice[r]
    return out


class _Forwards:
    """Prompts collected while a phase is planned, run together by
    :func:`query_attention_batch`: ``add`` returns a ticket, ``run`` the results by ticket.
    Planning first keeps every random draw (demos, corruptions) in the one-by-one order, so
    batching changes no prompt."""

    def __init__(self, model, params, answer_ids, pad_multiple, batch_size=8):
        self.model, self.params, self.answer_ids = model, params, answer_ids
        self.pad_multiple, self.batch_size = pad_multiple, batch_size
        self.prompts: list[tuple[list[int], int]] = []

    def add(self, ids: list[int], start: int) -> int:
        self.prompts.append((ids, start))
        return len(self.prompts) - 1

    def run(self) -> list:
        res = query_attention_batch(self.model, self.params, self.prompts, self.answer_ids,
                                    self.pad_multiple, self.batch_size)
        self.prompts = []
        return res


def _features(pooled: dict, boundaries, pool: str, keep_layers):
    """(n_statements, kept layers): span means of the pooled head-mean rows."""
    a = pooled[pool][:, None, None, :]  # (L, 1, 1, T): the pooling is already done
    return llama_statement_features([a], [boundaries], "max", keep_layers)[0]


# ----------------------------------------------------------------------------- probing

def _knn_f1(X, y) -> tuple[float, str]:
    X = np.asarray(X, np.float64)
    y = np.asarray(y)
    ok = np.isfinite(X).all(axis=1)
    X, y = X[ok], y[ok]
    if len(y) == 0:
        return float("nan"), "no rows"
    if len(np.unique(y)) < 2:
        return 1.0, "single class (F1 = 1 as sklearn scores it)"
    counts = np.bincount(np.unique(y, return_inverse=True)[1])
    if len(y) < 10 or counts.max() < 5:
        return float("nan"), f"too few rows ({len(y)}) for 5-fold CV with 8 neighbours"
    try:
        return knn.knn_f1_cv(X, y, cv=5, p=1), ""
    except ValueError as e:
        return float("nan"), str(e)


def _p_rows(feats, labels):
    X1, y1, X2, y2 = [], [], [], []
    for f, (p1, p2) in zip(feats, labels):
        X1.append(f)
        y1.extend(p1)
        useful = np.flatnonzero(np.asarray(p1))
        X2.append(f[useful])
        y2.extend(p2)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros((0, 1))  # noqa: E731
    return cat(X1), np.asarray(y1, int), cat(X2), np.asarray(y2, int)


def _probe(feats, labels) -> dict:
    X1, y1, X2, y2 = _p_rows(feats, labels)
    f1_p1, why1 = _knn_f1(X1, y1)
    f1_p2, why2 = _knn_f1(X2, y2)
    out = {"f1_p1": f1_p1, "f1_p2": f1_p2, "rows_p1": int(len(y1)), "rows_p2": int(len(y2)),
           "nan_rows": int((~np.isfinite(X1).all(axis=1)).sum()) if len(X1) else 0}
    if why1:
        out["note_p1"] = why1
    if why2:
        out["note_p2"] = why2
    return out


# ----------------------------------------------------------------------------- corruption

def corrupt(sentences: list[str], kind: str, target: int | None, rng: random.Random,
            noise: str | None = None) -> list[str]:
    """One corruption of a list of sentences.

    counter: sentence ``target`` becomes "That <sentence> is false"; shuffle: the order is
    permuted; noise: ``noise`` is inserted before sentence ``target`` (random when None).
    """
    s = list(sentences)
    if kind == "counter":
        body = s[target]
        end = "." if body.endswith(".") else ""
        s[target] = f"That {body[:-1] if end else body} is false{end}"
    elif kind == "shuffle":
        rng.shuffle(s)
    elif kind == "noise":
        at = rng.randrange(len(s) + 1) if target is None else target
        s.insert(at, noise or "")
    else:
        raise ValueError(f"unknown corruption {kind!r}; choose from {CORRUPTIONS}")
    return s


def _bin_summary(sp2, clean, deltas: dict, bins: int, faithful: bool) -> list[dict]:
    sp2 = np.asarray(sp2, np.float64)
    ok = np.isfinite(sp2)
    if not ok.any():
        return []
    lo, hi = float(sp2[ok].min()), float(sp2[ok].max())
    width = (hi - lo) / bins if hi > lo else 1.0
    out = []
    for i in range(bins):
        a, b = lo + i * width, lo + (i + 1) * width
        last = i == bins - 1 and not faithful
        sel = ok & (sp2 >= a) & ((sp2 <= b) if last else (sp2 < b))
        row = {"bin": [a, b], "n": int(sel.sum()),
               "clean_accuracy": float(np.mean(np.asarray(clean)[sel])) if sel.any() else None}
        for k, v in deltas.items():
            v = np.asarray(v, np.float64)[sel]
            v = v[np.isfinite(v)]
            row[f"delta_{k}"] = float(v.mean()) if len(v) else None
        out.append(row)
    return out


# ----------------------------------------------------------------------------- run

def _keep_layers(config, num_layers: int, faithful: bool):
    if config.keep_layers is not None:
        keep = list(config.keep_layers)
    elif faithful:
        keep = list(PROOFWRITER_KEEP_LAYERS if config.dataset == "proofwriter" else ARC_KEEP_LAYERS)
    else:
        keep = list(range(num_layers))
    return [k for k in keep if k < num_layers] or list(range(num_layers))


def _train_records(data) -> list[dict]:
    return [r for recs in data["train"].values() for r in recs]


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _clean(x.item())
    return x


def run(config: MechProbeLlamaConfig) -> dict:
    t0 = time.perf_counter()
    faithful = config.mode == "faithful"
    arc = config.dataset == "arc"
    check_model_dir(config.model_path)
    out_dir = prepare_run_dir(config)
    rng = random.Random(config.seed)

    data = pw.load_dataset(config.data_dir)
    train = _train_records(data)
    if not train:
        raise ValueError(f"{config.data_dir}: the train split is empty (demos come from it)")
    # the original caps ProofWriter buckets at 1,024 and ARC not at all; here the config's
    # cap applies to both (set it high for the uncapped faithful ARC sample)
    buckets = pw.bucket_sample(data, config.dataset, include_train=faithful, rng=rng,
                               cap=config.max_examples_per_bucket)

    tok = load_tokenizer(config.model_path)
    model, params = load_pretrained(config.model_path, dtype=config.dtype)
    rand_model, rand_params = from_config(model.config, seed=config.random_seed)
    answer_ids = answer_token_ids(tok)
    L = model.config.num_layers
    keep = _keep_layers(config, L, faithful)
    pad = config.pad_multiple

    # every forward is planned first (a ticket in fw / rfw) and resolved after the batched run
    fw = _Forwards(model, params, answer_ids, pad, FORWARD_BATCH)
    rfw = _Forwards(rand_model, rand_params, answer_ids, pad, FORWARD_BATCH)

    def demos_for_features():
        return (rng.choices(train, k=config.icl_num) if faithful
                else rng.sample(train, min(config.icl_num, len(train))))

    def hit_of(record, ticket):
        def resolve(res):
            choice = res[ticket][1]
            return int((choice[0] >= choice[1]) == bool(record["answer"]))
        return resolve

    def evaluate(record, demos, context=None):
        """llama.evaluator: resolves to 1 if the True/False argmax matches the answer (None
        for ARC)."""
        if arc:
            return lambda res: None
        ids = _encode(tok, evaluator_prompt(record, demos, context=context))
        return hit_of(record, fw.add(ids, len(ids) - 1))

    def eval_demos():
        return rng.sample(train, min(config.icl_num, len(train)))

    def measure(record, *, texts=None, want_features=True):
        """Resolves to (features, hit) for one record on the trained model."""
        demos = demos_for_features()
        fp = feature_prompt(tok, record, demos, config.dataset, faithful, texts)
        ticket = fw.add(fp.ids, int(fp.boundaries[-1]))
        if arc:
            hit = lambda res: None  # noqa: E731
        elif faithful:  # the original: another prompt and other demos for the accuracy
            hit = evaluate(record, eval_demos())
        else:
            hit = hit_of(record, ticket)

        def resolve(res):
            feats = (_features(res[ticket][0], fp.boundaries, "max", keep) if want_features
                     else None)
            return feats, hit(res)
        return resolve

    def baseline_features(record):
        """Resolves (on the random model's results) to the baseline features."""
        if faithful:
            fp = feature_prompt(tok, record, [], config.dataset, True)
            pool, layers = "mean", None
        else:
            fp = feature_prompt(tok, record, demos_for_features(), config.dataset, False)
            pool, layers = "max", keep
        ticket = rfw.add(fp.ids, int(fp.boundaries[-1]))
        return lambda rres: _features(rres[ticket][0], fp.boundaries, pool, layers)

    metrics = {"mode": config.mode, "dataset": config.dataset, "model_path": config.model_path,
               "num_layers": L, "keep_layers": keep,
               "answer_token_ids": list(answer_ids),
               "original_answer_token_ids": list(ORIGINAL_ANSWER_IDS),
               "answer_ids_match_original": list(answer_ids) == list(ORIGINAL_ANSWER_IDS),
               "buckets": {}}
    for key, records in buckets.items():
        depth = pw.label_length(key, config.dataset)
        labels = [pw.label_parser(r, depth, faithful=faithful) for r in records]
        plans = [(measure(r), baseline_features(r)) for r in records]
        res, rres = fw.run(), rfw.run()
        feats, hits = zip(*[m(res) for m, _ in plans]) if plans else ((), ())
        base = [b(rres) for _, b in plans]
        model_scores = _probe(feats, labels)
        rand_scores = _probe(base, labels)
        entry = {"n": len(records), "label_length": depth,
                 "model": model_scores, "random": rand_scores,
                 "S_P1": knn.probing_score(model_scores["f1_p1"], rand_scores["f1_p1"]),
                 "S_P2": knn.probing_score(model_scores["f1_p2"], rand_scores["f1_p2"])}
        if not arc:
            entry["icl_accuracy"] = float(np.mean(hits)) if hits else None
        metrics["buckets"][str(key)] = entry

    if config.corrupt and not arc:
        metrics["corruption"] = _corruption(config, data, faithful, rng, measure,
                                            baseline_features, evaluate, eval_demos, fw, rfw)
    metrics["seconds"] = time.perf_counter() - t0
    metrics = _clean(metrics)
    atomic.write_json(out_dir / "metrics.json", metrics)
    write_llama_report(out_dir / "report.md", metrics, config)
    return metrics


def _corruption(config, data, faithful, rng, measure, baseline_features, evaluate,
                eval_demos, fw, rfw) -> dict:
    """The corruption experiment: accuracy change under counter / shuffle / noise, binned by
    S_P2. Every forward is planned first (``measure`` and friends return resolvers) and run
    in batches by ``fw`` (trained model) and ``rfw`` (random model)."""
    splits = ["test", "dev"] + (["train"] if faithful else [])
    pool = [r for s in splits for r in data[s].get("1", []) if "OR" not in r["proof"]]
    rng.shuffle(pool)
    pool = pool[:config.corrupt_pool]
    if len(pool) < 2:
        return {"note": f"only {len(pool)} depth-1 records; corruption skipped"}
    labels = [pw.label_parser(r, 1, faithful=faithful) for r in pool]
    base_plans = [baseline_features(r) for r in pool[:128]]
    plans = []  # per record: (clean resolver, {kind: corrupted-hit resolver or None})
    for i, r in enumerate(pool):
        clean_plan = measure(r)
        if faithful:
            sents = r["context"].split(". ")
            target = 0  # the original's selection loop compares text with ids and never runs
        else:
            ids = [sid for sid, _ in pw.statements(r)]
            sents = [t for _, t in pw.statements(r)]
            nodes = set(pw.proof_nodes(r["proof"]))
            free = [j for j, sid in enumerate(ids) if sid not in nodes]
            target = rng.choice(free) if free else None
        other = pool[(i + 1) % len(pool)]
        noise_src = [t for _, t in pw.statements(other)] or [other["context"]]
        noise = rng.choice(noise_src)
        kinds = {}
        for kind in CORRUPTIONS:
            if kind == "counter" and target is None:
                kinds[kind] = None
                continue
            tgt = target if (kind != "noise" or faithful) else None
            new = corrupt(sents, kind, tgt, rng, noise.rstrip(". ") if faithful else noise)
            if faithful:
                kinds[kind] = evaluate(r, eval_demos(), context=". ".join(new))
            else:
                plan = measure(r, texts=new, want_features=False)
                kinds[kind] = lambda res, plan=plan: plan(res)[1]
        plans.append((clean_plan, kinds))
    res, rres = fw.run(), rfw.run()
    scratch = _probe([b(rres) for b in base_plans], labels[:128])
    feats, clean = [], []
    deltas = {k: [] for k in CORRUPTIONS}
    for clean_plan, kinds in plans:
        f, hit = clean_plan(res)
        feats.append(f)
        clean.append(hit)
        for kind, plan in kinds.items():
            deltas[kind].append(float("nan") if plan is None else float(plan(res) - hit))
    lo, hi = config.corrupt_subset[0], config.corrupt_subset[-1]
    sp1s, sp2s, accs, dsum = [], [], [], {k: [] for k in CORRUPTIONS}
    n = len(pool)
    for _ in range(config.corrupt_iterations):
        size = min(n, rng.randint(min(lo, n), min(hi, n)))
        idx = rng.sample(range(n), size)
        sc = _probe([feats[j] for j in idx], [labels[j] for j in idx])
        sp1s.append(knn.probing_score(sc["f1_p1"], scratch["f1_p1"]))
        sp2s.append(knn.probing_score(sc["f1_p2"], scratch["f1_p2"]))
        accs.append(float(np.mean([clean[j] for j in idx])))
        for k in CORRUPTIONS:
            v = np.asarray([deltas[k][j] for j in idx], np.float64)
            v = v[np.isfinite(v)]
            dsum[k].append(float(v.mean()) if len(v) else float("nan"))
    return {"pool": n, "iterations": config.corrupt_iterations, "scratch": scratch,
            "target": "first sentence (original)" if faithful else "a statement outside the proof",
            "acc": accs, "sp1": sp1s, "sp2": sp2s,
            **{f"corrupt_{k}": v for k, v in dsum.items()},
            "bins": _bin_summary(sp2s, accs, dsum, config.corrupt_bins, faithful)}
