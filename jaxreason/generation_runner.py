"""Generation over a dataset: batches, stops, scores, captures and resume in one place.

Every study that decodes many prompts needs the same loop: encode each record, left-pad a
batch, continue from a shared few-shot prefix, stop at stop tokens or strings, decode and
score each row, keep the captured activations, write everything to disk batch by batch, and
pick up where a killed run stopped. :func:`run_generation` is that loop;
:func:`generate_batch` is one batch of it, for callers that drive batches themselves
(activation patching runs a base batch, then a patched one built from its states). It lives
at the package top level, next to the models rather than under ``probe``, because training
evaluation uses it as much as probing studies do.

* **Prompts**: ``encode(record)`` gives token ids of any length; a batch is left padded
  with ``pad_token_id`` (so every row's next token sits in the same slot). A shared
  ``prefix`` (ids, or a cache from :func:`~jaxreason.models.generate.prefill_prefix`) is
  prefilled once and continued by every batch. The last short batch repeats its first record
  up to ``batch_size`` rows so it reuses the compiled programs; those rows are dropped.
* **Stops**: ``stop_tokens`` end a row inside the decoding program (the token is kept, as
  ``generate`` counts it). ``stop_strings`` are checked on the host every few steps on the
  decoded text; decoding ends once every row has stopped, and each row's text is cut before
  its first stop string, its ``num_tokens`` the fewest tokens whose text holds it.
* **Scores**: ``score(record, text, ids)`` returns a dict of result fields, written with
  ``index``, ``text`` and ``num_tokens`` as one JSON line per record.
* **Captures**: capture requests go to ``generate`` unchanged and their values are treated
  as opaque (any pytree whose leaves have the batch first). ``to_arrays(batch)`` turns a
  batch into the store's arrays; the default keeps ``generated``, ``num_tokens``,
  ``prompt_length`` and every capture leaf under its hook name (slot axis as ``generate``
  returns it: the chunk record's ``prompt_width`` is the batch's padded prompt width).
* **Resume**: per batch the result lines are appended first, then the store chunk is
  written (atomically). On a rerun the store says how many records are done; result lines
  beyond that (at most the one batch a kill interrupts, and a line cut mid-way) are dropped,
  with a one-line warning, and their batch decoded again, so the files come out identical.
  Refused without changing anything: a store written with other settings, capture, prefix,
  model config or weights (``out_dir`` stores record them with the caller's ``identity``),
  finished chunks whose records now encode to other prompts (every chunk records a digest
  of its prompts), a results file with fewer complete lines than the store has rows, more
  than one batch ahead of it, or with a damaged or misnumbered line. Without a store the
  results file alone is trusted (it records no settings); :mod:`jaxreason.generation_resume`
  holds these checks. Sampling seeds are derived from
  ``(seed, first record of the batch)``, so a resumed batch draws what it would have drawn.
* **Data parallel**: with ``mesh`` the rows of every batch are split over its data axes
  (``generate``'s ``mesh``); ``batch_size`` must divide over them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxreason.generation_resume import (check_prompts, check_results, describe, digest,
                                         model_identity, read_results, rewrite_results)
from jaxreason.models.generate import generate, prefill_prefix
from jaxreason.models.layers import KVCache
from jaxreason.probe.array_store import ArrayWriter

__all__ = ["DecodeSettings", "GeneratedBatch", "RunOutput", "generate_batch", "run_generation",
           "batch_seed", "default_arrays"]

RESULT_KEYS = ("index", "text", "num_tokens")


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How every batch decodes: greedy when ``temperature`` is 0, else temperature/top-p
    sampling seeded per batch; ``stop_tokens`` end rows in the program, ``stop_strings`` on
    the host (they need a ``decode``)."""

    max_new_tokens: int
    batch_size: int = 8
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_tokens: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    pad_token_id: int = 0
    intervene_on: str = "prefill"

    def __post_init__(self):
        for name in ("max_new_tokens", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))
        object.__setattr__(self, "stop_strings", tuple(str(t) for t in self.stop_strings))
        if any(not s for s in self.stop_strings):
            raise ValueError(f"stop_strings={list(self.stop_strings)} may not hold ''")


@dataclasses.dataclass
class GeneratedBatch:
    """One decoded batch. Row arrays hold the real rows only, except ``captured``, which is
    the padded batch (``rows`` real rows first, then copies of the first record), so
    interventions built from it fit a batch padded the same way."""

    start: int  # index of the first record
    records: list
    prompt_ids: np.ndarray  # (B, T) left padded with pad_token_id
    prompt_lengths: np.ndarray  # (B,) real prompt tokens per row
    generated: np.ndarray  # (B, N) new tokens, pad_token_id after a stop token
    num_generated: np.ndarray  # (B,) tokens up to and including the first stop token
    num_tokens: np.ndarray  # (B,) the same, cut at the first stop string
    texts: list | None  # decoded and cut texts (None without a decode)
    captured: dict  # hook name -> value (NumPy leaves) over slots capture_start ..
    capture_start: int
    rows: int
    results: list = dataclasses.field(default_factory=list)
    derived: dict = dataclasses.field(default_factory=dict)  # a client's per-batch values


@dataclasses.dataclass
class RunOutput:
    """Results per record (read back from the results file for resumed rows when there is
    one, else None for them), the rows a resumed run skipped, and the store's folder."""

    results: list
    skipped: int
    store: Path | None


def batch_seed(seed: int, start: int) -> int:
    """The sampling seed of the batch starting at record ``start``."""
    return int(np.random.SeedSequence([int(seed), int(start)]).generate_state(1)[0] >> 1)


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if (lengths == 0).any():
        raise ValueError(f"prompt of record {int(np.argmax(lengths == 0))} of the batch is "
                         f"empty; every record needs at least one prompt token")
    ids = np.full((len(prompts), int(lengths.max())), pad_id, np.int32)
    for r, p in enumerate(prompts):
        ids[r, ids.shape[1] - len(p):] = p
    mask = (np.arange(ids.shape[1])[None, :] >= ids.shape[1] - lengths[:, None]).astype(np.int32)
    return ids, mask, lengths


def _first_stop(text: str, stops: Sequence[str]) -> int:
    """Where the earliest stop string starts in ``text`` (-1 if none)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def _stop_row(ids: np.ndarray, decode: Callable, stops: Sequence[str]) -> tuple[str, int]:
    """(text cut before its first stop string, fewest tokens whose text holds that stop)."""
    text = decode(ids)
    cut = _first_stop(text, stops)
    if cut < 0:
        return text, len(ids)
    lo, hi = 1, len(ids)  # the shortest prefix whose text holds a stop: a monotone search
    while lo < hi:
        mid = (lo + hi) // 2
        if _first_stop(decode(ids[:mid]), stops) >= 0:
            hi = mid
        else:
            lo = mid + 1
    return text[:cut], lo


def generate_batch(model, params, prompts: Sequence[Sequence[int]], settings: DecodeSettings, *,
                   decode: Callable[[Sequence[int]], str] | None = None, prefix=None,
                   capture=None, interventions=None, mesh=None, pad_to: int | None = None,
                   seed: int | None = None, start: int = 0,
                   records: Sequence | None = None,
                   params_for_call: Callable[[int], Any] | None = None) -> GeneratedBatch:
    """Decode one batch of prompts (token id lists of any length) after ``prefix``.

    ``pad_to`` repeats the first prompt up to that many rows (a short last batch reuses the
    compiled programs); ``seed`` defaults to ``settings.seed``; ``interventions`` must fit
    the padded batch; ``params_for_call`` goes to ``generate`` (weights per forward call)."""
    n = len(prompts)
    if n == 0:
        raise ValueError("generate_batch needs at least one prompt")
    if settings.stop_strings and decode is None:
        raise ValueError(f"stop_strings={list(settings.stop_strings)} need a decode function")
    ids, mask, lengths = _left_pad(prompts, settings.pad_token_id)
    if pad_to and pad_to > n:
        ids = np.concatenate([ids, np.repeat(ids[:1], pad_to - n, axis=0)])
        mask = np.concatenate([mask, np.repeat(mask[:1], pad_to - n, axis=0)])
    if prefix is not None and not isinstance(prefix, KVCache):
        prefix = prefill_prefix(model, params, prefix)
    stops = settings.stop_strings

    def rows_stopped(tokens):  # (B, n) ids so far -> (B,) bool
        return np.asarray([_first_stop(decode(row), stops) >= 0 for row in tokens])
    out = generate(model, params, ids, mask, max_new_tokens=settings.max_new_tokens,
                   eos_token_id=list(settings.stop_tokens) or None,
                   pad_token_id=settings.pad_token_id, temperature=settings.temperature,
                   top_p=settings.top_p, seed=settings.seed if seed is None else seed,
                   capture=capture, interventions=interventions,
                   intervene_on=settings.intervene_on, prefix=prefix, mesh=mesh,
                   stop_when=rows_stopped if stops else None, params_for_call=params_for_call)
    generated = np.asarray(jax.device_get(out.generated))[:n]
    n_gen = np.asarray(jax.device_get(out.num_generated))[:n].astype(np.int32)
    texts, n_tok = None, n_gen.copy()
    if decode is not None:
        texts = []
        for r in range(n):
            row = generated[r, :n_gen[r]]
            if settings.stop_strings:
                text, n_tok[r] = _stop_row(row, decode, settings.stop_strings)
            else:
                text = decode(row)
            texts.append(text)
    return GeneratedBatch(start=start, records=list(records) if records is not None else [],
                          prompt_ids=ids[:n], prompt_lengths=lengths, generated=generated,
                          num_generated=n_gen, num_tokens=n_tok, texts=texts,
                          captured=jax.device_get(out.captured),
                          capture_start=int(out.capture_start), rows=n)


def _leaf_name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return ".".join(parts)


def default_arrays(batch: GeneratedBatch) -> dict[str, np.ndarray]:
    """What the store keeps by default: new tokens, their counts, prompt lengths and every
    capture leaf (real rows) under its hook name (``name.key`` for structured values)."""
    arrays = {"generated": batch.generated, "num_tokens": batch.num_tokens,
              "prompt_length": batch.prompt_lengths}
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch.captured)[0]:
        arrays[_leaf_name(path)] = np.asarray(leaf)[:batch.rows]
    return arrays


def _jsonable(row: dict) -> dict:
    """The row as its JSON line reads back (NumPy scalars and arrays become Python values),
    so a fresh and a resumed run return the same results."""
    def plain(o):
        if isinstance(o, (np.generic, np.ndarray)):
            return o.tolist()
        raise TypeError(f"result field value {o!r} of type {type(o).__name__} is not JSON")
    return json.loads(json.dumps(row, default=plain))


def run_generation(model, params, records: Sequence, encode: Callable[[Any], Sequence[int]],
                   settings: DecodeSettings, *,
                   decode: Callable[[Sequence[int]], str] | None = None, prefix=None,
                   capture=None, interventions=None,
                   score: Callable[[Any, str | None, np.ndarray], Mapping] | None = None,
                   to_arrays: Callable[[GeneratedBatch], Mapping] | None = None,
                   out_dir=None, identity: dict | None = None, store: ArrayWriter | None = None,
                   results_path=None, mesh=None, progress: bool = True,
                   desc: str = "generating",
                   on_batch: Callable[[GeneratedBatch], None] | None = None,
                   params_for_call: Callable[[int, int], Any] | None = None) -> RunOutput:
    """Decode every record in batches, scoring each and streaming results and arrays to disk.

    Args:
      records: any sequence; ``encode(record)`` gives its prompt token ids.
      settings: :class:`DecodeSettings`.
      decode: ids -> text (needed for texts, stop strings and text scores).
      prefix: shared prompt prefix, token ids or a ``prefill_prefix`` cache.
      capture, interventions: passed to ``generate`` for every batch (interventions must fit
        the padded batch).
      score: ``(record, text, ids) -> dict`` of result fields; ``ids`` are the row's tokens
        up to its stop.
      to_arrays: batch -> arrays for the store (default :func:`default_arrays`).
      out_dir: a run folder: ``results.jsonl`` and the store ``arrays/`` (identity: the
        settings, the record count, capture, prefix digest, the model's config and weights
        fingerprint, and ``identity``); closed when done. Or pass ``store`` (an open
        :class:`~jaxreason.probe.array_store.ArrayWriter`, which you close) and/or
        ``results_path`` yourself.
      mesh: data-parallel decoding over its data axes.
      on_batch: called with every finished batch (after it is on disk).
      params_for_call: ``(start, n) -> params`` of forward call ``n`` (0 the prefill) of the
        batch starting at record ``start``: weights that change while decoding, as a pure
        function of the batch, so a resumed run computes what a fresh one did.
    """
    bs = settings.batch_size
    if mesh is not None:
        ways = int(mesh.shape.get("data", 1)) * int(mesh.shape.get("fsdp", 1))
        if bs % ways:
            raise ValueError(f"batch_size={bs} must divide over the {ways} data-parallel "
                             f"devices of the mesh")
    if prefix is not None and not isinstance(prefix, KVCache):
        prefix_ids = [int(t) for t in prefix]
        prefix = prefill_prefix(model, params, prefix_ids)
    else:
        prefix_ids = None
    own_store = False
    if out_dir is not None and (store is not None or results_path is not None):
        raise ValueError("pass out_dir, or store/results_path, not both")
    if out_dir is not None:
        results_path = Path(out_dir) / "results.jsonl"
    results_path = None if results_path is None else Path(results_path)
    done_results, cut = read_results(results_path) if results_path is not None else ([], False)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if not (out_dir / "arrays").exists():  # checked before a fresh store is made
            check_results(done_results, 0, bs, results_path, out_dir / "arrays")
        run_identity = {"settings": dataclasses.asdict(settings), "records": len(records),
                        "capture": describe(capture),
                        "prefix": None if prefix_ids is None else digest(prefix_ids),
                        **model_identity(model, params), "user": describe(identity or {})}
        store = ArrayWriter(out_dir / "arrays", identity=run_identity, resume=True,
                            label="generation store")
        own_store = True
    if store is not None:
        done = store.done_rows()
        check_prompts(store, records, encode)
        if results_path is not None:
            check_results(done_results, done, bs, results_path, store.directory)
    else:
        done = len(done_results) - len(done_results) % bs
    if done % bs and done != len(records):
        raise ValueError(f"the run holds {done} finished rows, not a multiple of batch_size="
                         f"{bs}; resume with the batch size it was written with")
    if done > len(records):
        raise ValueError(f"the run holds {done} finished rows but there are only "
                         f"{len(records)} records")
    results: list = list(done_results[:done]) + [None] * (len(records) - done)
    if results_path is not None and (len(done_results) != done or cut):
        dropped = len(done_results) - done
        warnings.warn(f"resuming {results_path} at record {done}: dropping {dropped} result "
                      f"line(s) past the store{' and a line cut by a kill' if cut else ''}; "
                      f"their batch is decoded again", stacklevel=2)
        rewrite_results(results_path, done_results[:done])
    bar = tqdm(total=len(records), initial=done, desc=desc, disable=not progress)
    for lo in range(done, len(records), bs):
        chunk = list(records[lo:lo + bs])
        prompts = [[int(t) for t in encode(r)] for r in chunk]
        batch = generate_batch(model, params, prompts, settings,
                               decode=decode, prefix=prefix, capture=capture,
                               interventions=interventions, mesh=mesh, pad_to=bs,
                               seed=batch_seed(settings.seed, lo), start=lo, records=chunk,
                               params_for_call=None if params_for_call is None
                               else functools.partial(params_for_call, lo))
        for r, rec in enumerate(chunk):
            text = batch.texts[r] if batch.texts is not None else None
            row = {"index": lo + r, "text": text, "num_tokens": int(batch.num_tokens[r])}
            extra = dict(score(rec, text, batch.generated[r, :batch.num_tokens[r]])) \
                if score is not None else {}
            clash = sorted(set(extra) & set(RESULT_KEYS))
            if clash:
                raise ValueError(f"score returned the reserved result fields {clash}")
            row.update(extra)
            batch.results.append(_jsonable(row))
        results[lo:lo + len(chunk)] = batch.results
        if results_path is not None:
            results_path.parent.mkdir(parents=True, exist_ok=True)
            with open(results_path, "a") as f:
                f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in batch.results))
        if store is not None:
            store.write((to_arrays or default_arrays)(batch),
                        info={"prompt_width": int(batch.prompt_ids.shape[1]),
                              "prompt_digest": digest(prompts)})
        if on_batch is not None:
            on_batch(batch)
        bar.update(len(chunk))
    bar.close()
    if own_store:
        store.close()
    return RunOutput(results=results, skipped=done,
                     store=None if store is None else store.directory)
