"""ProofWriter and ARC (STREET) records for MechanisticProbe's Llama probes (Hou et al., 2023).

Reads the *processed* JSON format of the original's ``utils.preprocess_proofwriter`` /
``preprocess_arc`` (also the layout of the HF dataset ``yyyyifan/MechanisticProbe_ProofWriter_ARC``):
``<dir>/{train,dev,test}.json``, each a JSON object keyed by depth *string*, each value a list of
records ``{context, triples{id: text}, rules{id: text}, question, answer, proof}`` (ARC records
also carry ``options``; their ``rules`` is ``{}``). ProofWriter lives in ``<dir>/CWA/`` in the
original's ``data_loader``; both ``<dir>`` and ``<dir>/CWA`` are accepted.

Pieces:

* :func:`get_proof_graph`: a parser for the PRover proof syntax, written anew (the original's
  ``proofparser.get_proof_graph`` is a copy of PRover's). ``(a b) -> r`` makes ``a`` and ``b``
  children of ``r``; groups nest. The result is ``(nodes in order of first appearance,
  child->parent edges)``; an edge that reverses an earlier one is dropped.
  ``chain_links=False`` (faithful) reproduces PRover's loss of chain links ``-> p1 -> p2``:
  only the first arrow after a parenthesised group makes edges.
* :func:`label_parser`: the P1 label per statement (1 when the statement is a proof node,
  before any truncation) and, for the useful statements, the P2 depth class. Faithful keeps
  only ``edges[:depth]`` (with depth 1 the second premise of a two-premise proof
  becomes root-level); fixed keeps every edge and uses the proof's own height.
* :func:`bucket_sample`: the probe sample of the original's ``proofwriter_probe_analysis``
  and its ARC analogue.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "SPLITS", "PROOFWRITER_BUCKETS", "resolve_data_dir", "load_split", "load_dataset",
    "get_proof_graph", "statements", "label_parser", "label_length", "bucket_sample",
    "proof_nodes",
]

SPLITS = ("train", "dev", "test")
# #triples + #rules values that form a ProofWriter probe bucket (depth-1 records).
PROOFWRITER_BUCKETS = (2, 4, 8, 12, 16, 20, 24)


# ----------------------------------------------------------------------------- reading

def resolve_data_dir(data_dir) -> Path:
    """``<dir>/CWA`` when it holds the split files (the original's layout), else ``<dir>``."""
    d = Path(data_dir).expanduser()
    for cand in (d / "CWA", d):
        if all((cand / f"{s}.json").exists() for s in SPLITS):
            return cand
    raise FileNotFoundError(
        f"no {{train,dev,test}}.json under {d} or {d / 'CWA'}; expected the processed "
        "MechanisticProbe format (e.g. the data/ folder of the HF dataset "
        "yyyyifan/MechanisticProbe_ProofWriter_ARC)")


def load_split(data_dir, split: str) -> dict[str, list[dict]]:
    """``{depth string: [record, ...]}`` of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = resolve_data_dir(data_dir) / f"{split}.json"
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by depth, got {type(data).__name__}")
    for depth, records in data.items():
        for r in records:
            missing = {"triples", "rules", "question", "answer", "proof"} - set(r)
            if missing:
                raise ValueError(f"{path}: a depth-{depth} record lacks {sorted(missing)}")
    return data


def load_dataset(data_dir) -> dict[str, dict[str, list[dict]]]:
    """``{split: {depth: records}}`` for train, dev and test."""
    return {s: load_split(data_dir, s) for s in SPLITS}


def statements(record: dict) -> list[tuple[str, str]]:
    """``[(id, text), ...]``: triples first, then rules, in JSON order, as in the original."""
    return list(record["triples"].items()) + list((record.get("rules") or {}).items())


# ----------------------------------------------------------------------------- proofs

def _tokenize_proof(proof: str) -> list[str]:
    s = proof.replace("(", " ( ").replace(")", " ) ").replace("[", " ").replace("]", " ")
    s = s.replace("->", " -> ")
    return s.split()


def get_proof_graph(proof: str, chain_links: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """Parse a PRover-style proof into ``(nodes, edges)``.

    Grammar: ``expr := item+``, ``item := atom ("->" id)*``, ``atom := id | "(" expr ")"``.
    ``X -> r`` links every *head* of ``X`` (the outermost outputs: an id is its own head, a
    group's heads are the heads of its items, an arrow chain's head is its last target) to
    ``r`` as a child->parent edge. Intermediate ids of the ``%`` form (``rule1 % int1``) keep
    the rule id. Edges that reverse an earlier edge (and exact repeats) are dropped.

    Args:
      proof: e.g. ``"[((triple1) -> rule1)]"`` or ``"(triple2 triple3) -> rule2"``.
      chain_links: False reproduces PRover's parser (faithful): only the first arrow
        after a parenthesised group makes edges; ``(a) -> p1 -> p2`` loses ``p1 -> p2``.
    Returns:
      ``nodes`` in order of first appearance and ``edges`` as (child, parent) pairs.
    """
    toks = [t for t in _tokenize_proof(proof) if t != "%" and not t.startswith("int")] \
        if "%" in proof else _tokenize_proof(proof)
    nodes: list[str] = []
    raw_edges: list[tuple[str, str]] = []
    pos = 0

    def add_node(x):
        if x not in nodes:
            nodes.append(x)

    def parse_expr(stop: str | None) -> list[str]:
        nonlocal pos
        heads: list[str] = []
        while pos < len(toks) and toks[pos] != stop:
            heads.extend(parse_item())
        if stop is not None:
            if pos >= len(toks):
                raise ValueError(f"unbalanced parentheses in proof {proof!r}")
            pos += 1  # consume ")"
        return heads

    def parse_item() -> list[str]:
        nonlocal pos
        t = toks[pos]
        if t == "(":
            pos += 1
            heads = parse_expr(")")
            grouped = True
        elif t in (")", "->"):
            raise ValueError(f"unexpected {t!r} at token {pos} of proof {proof!r}")
        else:
            pos += 1
            add_node(t)
            heads = [t]
            grouped = False
        first = True
        while pos < len(toks) and toks[pos] == "->":
            pos += 1
            if pos >= len(toks) or toks[pos] in ("(", ")", "->"):
                raise ValueError(f"'->' must be followed by an id in proof {proof!r}")
            target = toks[pos]
            pos += 1
            add_node(target)
            if chain_links or (first and grouped):
                raw_edges.extend((h, target) for h in heads)
            heads = [target]
            first = False
        return heads

    parse_expr(None)
    edges: list[tuple[str, str]] = []
    for a, b in raw_edges:
        if (b, a) in edges or (a, b) in edges:
            continue
        edges.append((a, b))
    return nodes, edges


def proof_nodes(proof: str) -> list[str]:
    return get_proof_graph(proof)[0]


def _longest_to_root(node: str, parents: dict[str, list[str]], roots: set[str],
                     seen: frozenset = frozenset()) -> int:
    """Longest simple-path length from ``node`` to any root (0 for a root)."""
    best = 0 if node in roots else -1
    for p in parents.get(node, ()):
        if p in seen:
            continue
        sub = _longest_to_root(p, parents, roots, seen | {node})
        if sub >= 0:
            best = max(best, sub + 1)
    return max(best, 0)


def label_length(bucket: int, dataset: str = "proofwriter") -> int:
    """The label length ("depth") a bucket key stands for (the original reuses the bucket key
    as the depth argument): ProofWriter bucket 1 holds depth-0 records (length 0) and every
    other bucket length 1; ARC bucket 1 gives length 0 and bucket 2 length 1 (key - 1,
    floored at 0)."""
    if dataset == "proofwriter":
        return 0 if int(bucket) == 1 else 1
    return max(int(bucket) - 1, 0)


def label_parser(record: dict, depth: int, faithful: bool = True, chain_links: bool | None = None):
    """P1 and P2 labels of one record.

    Args:
      record: a processed record.
      depth: the label length (faithful: from :func:`label_length`).
      faithful: truncate the edges to ``edges[:depth]`` (as the original) and use ``depth`` as the
        class of the roots; fixed keeps every edge and uses the proof's own height.
      chain_links: passed to :func:`get_proof_graph` (default: ``not faithful``).
    Returns:
      ``(p1, p2)``: ``p1`` a list of 0/1 per statement (triples then rules), ``p2`` a list of
      depth classes, one per useful statement in statement order (0 = leaf-most, the largest
      class = root).
    """
    if chain_links is None:
        chain_links = not faithful
    nodes, edges = get_proof_graph(record["proof"], chain_links=chain_links)
    if faithful:
        edges = edges[:depth]
    sources = {a for a, _ in edges}
    roots = {n for n in nodes if n not in sources}
    parents: dict[str, list[str]] = {}
    for a, b in edges:
        parents.setdefault(a, []).append(b)
    h = {n: _longest_to_root(n, parents, roots) for n in nodes}
    top = depth if faithful else max(h.values(), default=0)
    p1, p2 = [], []
    for sid, _ in statements(record):
        useful = sid in nodes
        p1.append(int(useful))
        if useful:
            p2.append(max(top - h[sid], 0))
    return p1, p2


# ----------------------------------------------------------------------------- sampling

def _pool(data: dict, splits: Iterable[str], depths: Iterable[str]) -> list[tuple[int, dict]]:
    out = []
    for split in splits:
        for d in depths:
            for r in data[split].get(d, []):
                if "OR" in r["proof"]:
                    continue
                out.append((int(d), r))
    return out


def bucket_sample(data: dict, dataset: str = "proofwriter", *, include_train: bool = True,
                  cap: int | None = 1024, seed: int = 42, rng: random.Random | None = None,
                  buckets: Sequence[int] = PROOFWRITER_BUCKETS,
                  max_depth: int | None = None) -> dict[int, list[dict]]:
    """The probe sample of the original: ``{bucket key: records}``.

    ProofWriter: pool test+dev(+train) records of depth 0 and 1 without "OR", shuffle, keep
    proofs with at least ``depth + 1`` nodes, then depth 0 -> bucket 1 and depth 1 -> bucket
    ``#triples + #rules`` when it is in ``buckets``; at most ``cap`` records a bucket.
    ARC: the same pool over depths ``<= max_depth`` (default 2), bucket = depth, no cap by
    default in the original (pass ``cap=None``).

    ``include_train=False`` is the fixed mode's guard against demo/probe overlap (the original
    pools train records, from which the in-context demos are also drawn).
    """
    rng = rng or random.Random(seed)
    splits = ["test", "dev"] + (["train"] if include_train else [])
    if dataset == "proofwriter":
        depths = ["0", "1"]
    else:
        top = 2 if max_depth is None else max_depth
        keys = {k for s in splits for k in data[s]}
        depths = sorted((k for k in keys if k.lstrip("-").isdigit() and int(k) <= top), key=int)
    pool = _pool(data, splits, depths)
    rng.shuffle(pool)
    out: dict[int, list[dict]] = {}
    for d, r in pool:
        if len(proof_nodes(r["proof"])) < d + 1:
            continue
        if dataset == "proofwriter":
            if d == 0:
                key = 1
            else:
                m = len(r["triples"]) + len(r.get("rules") or {})
                if m not in buckets:
                    continue
                key = m
        else:
            key = d
        bucket = out.setdefault(key, [])
        if cap is None or len(bucket) < cap:
            bucket.append(r)
    return dict(sorted(out.items()))
