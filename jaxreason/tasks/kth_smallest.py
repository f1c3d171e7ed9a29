"""The k-th smallest task of MechanisticProbe (Hou et al., 2023).

A row is a list of ``length`` (16) numbers drawn uniformly *with replacement* from a fixed
number set; the model reads the list and must predict, at the last list position, the
token of ``sorted(list)[k]`` (``k`` is **0-based**: ``k=1`` is the 2nd smallest, the
original's ``min01``). There is no BOS, separator or prompt.

Two vocabularies:

* **Embedded** (default, no tokenizer): a project-own vocabulary for models trained from
  scratch. Token 0 is padding (never used by the data), and number ``n`` (``0 <= n <
  numbers``) is token ``FIRST + n``, the same id at every position and as the answer; the
  model's ``vocab_size`` is ``FIRST + numbers``.
* **HF tokenizer** (``tokenizer_path``: a local HF directory, e.g. GPT-2): the number set
  is the original's (:func:`number_set_from_tokenizer`), the tokens are the tokenizer's ids
  of the space-joined list (exactly ``length`` tokens) and the label is the id of
  ``str(answer)`` with no leading space (:func:`label_token_id`).

The lists are generated exactly as the original did (:func:`faithful_lists`): Python's
``random`` seeded with 42, then ``random.choices(numbers, k=16)`` per list, and a split by
order into 98% train / 1% validation / 1% test. With the real GPT-2 number set and
``rows=1_000_000`` that reproduces the original dataset row for row.

The registered task (``data.source: kth_smallest``) returns only the train+validation
rows by default (``split: trainval``): the trainer carves its own eval rows out of those
with ``data.eval_fraction``, so the task's **test** split is never trained on and the study
evaluates and probes on it (:func:`kth_smallest_lists` gives the raw number lists of
every split, which the probe needs to label positions by size rank).

This module also holds the duplicate-aware probe labels (:func:`useful_and_answer_labels`);
the original's loss is the study's objective (:mod:`jaxreason.studies.mechprobe.objectives`).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Mapping, Sequence

import numpy as np

from jaxreason.data import TokenDataset
from jaxreason.registry import TASKS

PAD = 0  # embedded vocabulary: padding (never produced by the data)
FIRST = 1  # embedded vocabulary: number n is token FIRST + n
DEFAULT_EMBEDDED_NUMBERS = 64
DEFAULT_TOKENIZER_NUMBERS = 512  # the original's --stask_set
ORIGINAL_SEED = 42  # the original's --random_seed, seeded just before generation
SCAN_LIMIT = 100_000  # the original stops scanning past 1e5
SPLITS = ("train", "validation", "test")


# --------------------------------------------------------------------------- tokenizer side

def _input_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, from a HF tokenizer or a duck-typed
    callable returning a mapping (or object) with ``input_ids``."""
    out = tokenizer(text, add_special_tokens=False)
    ids = out["input_ids"] if isinstance(out, Mapping) else out.input_ids
    return [int(i) for i in ids]


def number_set_from_tokenizer(tokenizer, size: int = DEFAULT_TOKENIZER_NUMBERS,
                              limit: int = SCAN_LIMIT) -> list[int]:
    """The original's number set: scan n = 0, 1, 2, ... and keep n when ``"n n"`` is exactly
    two tokens (both ``"n"`` and ``" n"`` are single tokens); stop at ``size`` numbers.

    Raises if fewer than ``size`` numbers are found in ``0..limit`` (the original silently
    stopped at 1e5 with a short set)."""
    numbers: list[int] = []
    n = 0
    while len(numbers) < size:
        if n > limit:
            raise ValueError(f"only {len(numbers)} numbers n <= {limit} have single-token "
                             f"'n' and ' n'; asked for {size}")
        if len(_input_ids(tokenizer, f"{n} {n}")) == 2:
            numbers.append(n)
        n += 1
    return numbers


def label_token_id(tokenizer, value: int) -> int:
    """The answer token: the id of ``str(value)`` with no leading space, as in the original."""
    ids = _input_ids(tokenizer, str(int(value)))
    if len(ids) != 1:
        raise ValueError(f"{value!r} is {len(ids)} tokens {ids}, not one")
    return ids[0]


# --------------------------------------------------------------------------- the lists

def faithful_split_sizes(count: int) -> tuple[int, int, int]:
    """(train, validation, test) sizes of the original's split by order: ``int(0.98 n)``,
    ``int(0.01 n)`` and the rest (float arithmetic as in the original)."""
    n_train = int(count * 0.98)
    n_val = int(count * 0.01)
    return n_train, n_val, count - n_train - n_val


def faithful_lists(numbers: Sequence[int], count: int, length: int = 16,
                   seed: int = ORIGINAL_SEED, rng: random.Random | None = None) -> dict:
    """``count`` lists generated as the original did, split by order 98/1/1.

    Deliberately uses Python's ``random`` (not numpy/JAX): seed with ``seed`` and draw
    ``random.choices(numbers, k=length)`` once per list, in order. A private
    ``random.Random(seed)`` instance produces the same stream as ``random.seed(seed)``
    followed by module-level ``random.choices`` calls, without touching the global state.
    Pass ``rng`` to keep using the generator afterwards (it is re-seeded with ``seed``
    first); the original's probe draws its 1,024 test lists from the same stream
    (:func:`faithful_probe_sample`).

    Returns ``{"train", "validation", "test"}`` -> int64 arrays (rows, length) of values.
    """
    numbers = [int(n) for n in numbers]
    if not numbers:
        raise ValueError("faithful_lists: empty number set")
    rng = random.Random() if rng is None else rng
    rng.seed(seed)
    rows = [rng.choices(numbers, k=length) for _ in range(count)]
    data = np.asarray(rows, dtype=np.int64).reshape(count, length)
    n_train, n_val, _ = faithful_split_sizes(count)
    return {"train": data[:n_train], "validation": data[n_train:n_train + n_val],
            "test": data[n_train + n_val:]}


def answers(lists: np.ndarray, k: int) -> np.ndarray:
    """``sorted(list)[k]`` per row (values, not tokens)."""
    lists = np.asarray(lists)
    if not 0 <= k < lists.shape[1]:
        raise ValueError(f"k={k} must be in 0..{lists.shape[1] - 1} (0-based)")
    return np.sort(lists, axis=1)[:, k]


# --------------------------------------------------------------------------- vocabularies

@dataclasses.dataclass(frozen=True)
class NumberVocab:
    """How number values become token ids.

    ``numbers``: the number set in scan order (the order ``random.choices`` indexes).
    ``first_ids[i]`` / ``rest_ids[i]`` / ``label_ids[i]``: the token of ``numbers[i]`` at
    position 0, at later positions, and as the answer. ``vocab_size``: the smallest model
    vocabulary that holds every id (embedded: ``FIRST + len(numbers)``; tokenizer: its
    ``len``). ``source``: ``"embedded"`` or the tokenizer path.
    """

    numbers: tuple[int, ...]
    first_ids: tuple[int, ...]
    rest_ids: tuple[int, ...]
    label_ids: tuple[int, ...]
    vocab_size: int
    source: str

    def _index(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        lut = np.full(max(self.numbers) + 1, -1, np.int64)
        lut[list(self.numbers)] = np.arange(len(self.numbers))
        if values.size and (values.min() < 0 or values.max() >= len(lut)
                            or (lut[values] < 0).any()):
            raise ValueError("values outside the number set")
        return lut[values]

    def encode(self, lists: np.ndarray) -> np.ndarray:
        """(rows, length) values -> int32 token ids (first position uses ``first_ids``)."""
        idx = self._index(lists)
        tokens = np.asarray(self.rest_ids, np.int64)[idx]
        tokens[:, 0] = np.asarray(self.first_ids, np.int64)[idx[:, 0]]
        return tokens.astype(np.int32)

    def label(self, values: np.ndarray) -> np.ndarray:
        """Answer values -> int32 answer token ids."""
        return np.asarray(self.label_ids, np.int64)[self._index(values)].astype(np.int32)


def embedded_vocab(numbers: int = DEFAULT_EMBEDDED_NUMBERS) -> NumberVocab:
    """Numbers 0..numbers-1 as tokens FIRST..FIRST+numbers-1 (0 is padding)."""
    if numbers < 2:
        raise ValueError(f"numbers={numbers} must be >= 2")
    ids = tuple(range(FIRST, FIRST + numbers))
    return NumberVocab(tuple(range(numbers)), ids, ids, ids, FIRST + numbers, "embedded")


def tokenizer_vocab(tokenizer, size: int = DEFAULT_TOKENIZER_NUMBERS,
                    source: str = "tokenizer") -> NumberVocab:
    """The original's number set and its token ids under ``tokenizer``.

    ``"n n"`` tokenizes to ``[first, rest]``: the id of ``n`` at the start of the string and
    of ``" n"`` after a number; the label is the id of ``str(n)``."""
    numbers = number_set_from_tokenizer(tokenizer, size)
    first, rest = zip(*(_input_ids(tokenizer, f"{n} {n}") for n in numbers))
    labels = tuple(label_token_id(tokenizer, n) for n in numbers)
    try:
        vocab_size = len(tokenizer)
    except TypeError:
        vocab_size = max(max(first), max(rest), max(labels)) + 1
    return NumberVocab(tuple(numbers), tuple(first), tuple(rest), labels, vocab_size, source)


@functools.lru_cache(maxsize=4)
def _hf_vocab(path: str, size: int) -> tuple[NumberVocab, object]:
    from transformers import AutoTokenizer  # seconds to import; only the GPT-2 path needs it

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tokenizer_vocab(tokenizer, size, source=str(path)), tokenizer


def _check_tokenization(tokenizer, vocab: NumberVocab, lists: np.ndarray, sample: int = 256):
    """The per-number lookup must equal tokenizing the space-joined string (it does for
    GPT-2's byte-level BPE, whose pre-tokenizer splits ``" 403"`` off on its own)."""
    for row in np.asarray(lists)[:sample]:
        want = _input_ids(tokenizer, " ".join(str(int(v)) for v in row))
        got = vocab.encode(row[None])[0].tolist()
        if want != got:
            raise ValueError(f"tokenizing {' '.join(map(str, row))!r} gives {want}, not the "
                             f"per-number ids {got}; this tokenizer does not split numbers "
                             "independently")


# --------------------------------------------------------------------------- dataset

def kth_smallest_lists(seed: int = ORIGINAL_SEED, k: int = 1, rows: int = 100_000,
                       numbers: int | None = None, length: int = 16,
                       tokenizer_path: str | None = None, tokenizer=None) -> dict:
    """The raw number lists of every split plus what the probe needs to use them.

    Returns a dict with ``train``, ``validation``, ``test`` (int64 (n, length) number
    values, split by order 98/1/1 as the original), ``vocab`` (:class:`NumberVocab`),
    ``numbers`` (the number set), ``k``, ``length``, ``vocab_size``, ``data_seed`` (``seed``)
    and ``rng_state``: the state of the Python generator right after the lists were drawn
    (for :func:`faithful_probe_sample`). ``numbers`` defaults to 64 (embedded) or 512 (tokenizer).
    Pass ``tokenizer`` (an object) or ``tokenizer_path`` (a local HF directory) for the
    tokenizer vocabulary.
    """
    if tokenizer is not None:
        vocab = tokenizer_vocab(tokenizer, numbers or DEFAULT_TOKENIZER_NUMBERS)
    elif tokenizer_path is not None:
        vocab, tokenizer = _hf_vocab(str(tokenizer_path), numbers or DEFAULT_TOKENIZER_NUMBERS)
    else:
        vocab = embedded_vocab(numbers or DEFAULT_EMBEDDED_NUMBERS)
    if not 0 <= k < length:
        raise ValueError(f"k={k} must be in 0..{length - 1} (0-based: 1 = 2nd smallest)")
    if rows < 3:
        raise ValueError(f"rows={rows} is too few to split 98/1/1")
    rng = random.Random()
    out = faithful_lists(vocab.numbers, rows, length, seed, rng=rng)
    if tokenizer is not None:
        _check_tokenization(tokenizer, vocab, out["train"])
    out.update(vocab=vocab, numbers=list(vocab.numbers), k=k, length=length,
               vocab_size=vocab.vocab_size, data_seed=seed, rng_state=rng.getstate())
    return out


def faithful_probe_sample(lists: dict, count: int = 1024) -> np.ndarray:
    """The original probe's examples: ``random.sample(test_lists, count)`` continuing the
    Python generator right after data generation (state ``lists["rng_state"]``)."""
    rng = random.Random()
    rng.setstate(lists["rng_state"])
    test = lists["test"]
    picks = rng.sample(range(len(test)), count)  # sample() picks by index: same draws
    return test[np.asarray(picks, dtype=np.int64)]


def encode(lists: np.ndarray, vocab: NumberVocab, k: int, name: str = "kth_smallest"
           ) -> TokenDataset:
    """A TokenDataset of ``lists``: tokens (n, length), labels = answer token, predict_at =
    the last position."""
    lists = np.asarray(lists)
    n, length = lists.shape
    return TokenDataset({"tokens": vocab.encode(lists),
                         "labels": vocab.label(answers(lists, k)),
                         "predict_at": np.full((n,), length - 1, np.int32)}, name=name)


@TASKS.register("kth_smallest")
def kth_smallest_task(seed: int, k: int = 1, rows: int = 100_000, numbers: int | None = None,
                      length: int = 16, tokenizer_path: str | None = None,
                      split: str = "trainval", data_seed: int = ORIGINAL_SEED) -> TokenDataset:
    """``data.source: kth_smallest``: predict ``sorted(list)[k]`` (0-based) at the last token.

    ``split``: ``trainval`` (default: train + validation rows, never the test rows; the
    trainer splits its eval rows off these with ``data.eval_fraction``), ``train``,
    ``validation``, ``test`` or ``all``. The lists depend on ``data_seed`` (42, the
    original's) only, not on ``trainer.seed``, so every model sees the same data and the
    probe rebuilds the test split without knowing the trainer's seed.
    """
    del seed  # see the docstring: the data use data_seed
    lists = kth_smallest_lists(data_seed, k, rows, numbers, length, tokenizer_path)
    parts = {"trainval": ("train", "validation"), "all": SPLITS,
             **{s: (s,) for s in SPLITS}}
    if split not in parts:
        raise ValueError(f"split={split!r} is not one of {sorted(parts)}")
    chosen = np.concatenate([lists[s] for s in parts[split]], axis=0)
    if len(chosen) == 0:
        raise ValueError(f"split={split!r} of rows={rows} is empty")
    return encode(chosen, lists["vocab"], k, name=f"kth_smallest/k{k}/{split}")


# --------------------------------------------------------------------------- probe labels

def useful_and_answer_labels(values: Sequence[int], k: int) -> tuple[np.ndarray, int]:
    """Duplicate-aware probe labels of one list (the original's ``label_generator``).

    rank(x) = index of x's *first* occurrence in the sorted list, so duplicates share the
    lower rank and some ranks are skipped. For each target rank r = 0..k: when no element
    has rank r, walk down to the nearest lower rank that exists; mark the first input
    position holding that rank. The marked positions are the useful set (P1 = 1); the answer
    position is the first occurrence of ``sorted(list)[k]``.

    Faithful and fixed modes share this definition: it is what the task's reasoning tree
    is (the first occurrence of each distinct value among the k+1 smallest), not a bug.

    Returns (p1 (length,) int8, answer position).
    """
    values = [int(v) for v in values]
    if not 0 <= k < len(values):
        raise ValueError(f"k={k} must be in 0..{len(values) - 1}")
    ordered = sorted(values)
    rank = [ordered.index(v) for v in values]
    present = set(rank)
    p1 = np.zeros(len(values), np.int8)
    for r in range(k + 1):
        while r not in present:  # rank 0 always exists, so this stops
            r -= 1
        p1[rank.index(r)] = 1
    return p1, values.index(ordered[k])


def move_two_smallest(values: Sequence[int], leaf: int, root: int, faithful: bool) -> np.ndarray:
    """One list with its smallest number moved to slot ``leaf`` and its 2nd smallest to slot
    ``root`` (0-based), for the original's case study on duplicate-free lists.

    ``faithful`` reproduces the original's edit: remember the numbers at the two slots, write
    the leaf slot's number where the smallest was, then the root slot's number where the 2nd
    smallest is *now* (found after that first write), then the two smallest into the slots.
    That is not always a permutation: when the 2nd smallest starts in the leaf slot and the
    smallest after it (but not in the root slot), or the smallest starts in the root slot and
    the 2nd smallest outside the leaf slot, a number is written twice and another is lost.
    Otherwise (``faithful=False``) two true swaps: the smallest with the leaf slot, then the
    2nd smallest, wherever it is after that, with the root slot. Meant for duplicate-free
    lists (the case study uses only those).
    """
    row = [int(v) for v in values]
    if not (0 <= leaf < len(row) and 0 <= root < len(row)) or leaf == root:
        raise ValueError(f"slots leaf={leaf}, root={root} must be two different indices "
                         f"in 0..{len(row) - 1}")
    smallest, second = sorted(row)[:2]
    if faithful:
        at_leaf, at_root = row[leaf], row[root]
        row[row.index(smallest)] = at_leaf
        row[row.index(second)] = at_root
        row[leaf], row[root] = smallest, second
    else:
        for value, slot in ((smallest, leaf), (second, root)):
            src = row.index(value)
            row[src], row[slot] = row[slot], row[src]
    return np.asarray(row, np.int64)


def useful_and_answer_labels_batch(lists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`useful_and_answer_labels` for every row: (p1 (n, length) int8, answer (n,))."""
    pairs = [useful_and_answer_labels(row, k) for row in np.asarray(lists)]
    if not pairs:
        return np.zeros((0, np.shape(lists)[1]), np.int8), np.zeros((0,), np.int64)
    p1, ans = zip(*pairs)
    return np.stack(p1), np.asarray(ans, np.int64)
