"""Token ids for the formula task: an embedded tokenizer and a wrapper for HF tokenizers.

The embedded tokenizer reproduces how Llama-3's BPE splits the character-level format of
Think-to-Talk (Kudo et al.): a letter or a symbol carries the space before it (``' o'``,
``' ='``, ``' ;'``), a digit does not (``' '``, ``'5'``), and ``'?'`` and ``'\\n'`` stand alone.
Sources and targets therefore have the original's token lengths (2step: 18 and 40) and the
original's patch positions (13-14, 15-17) mean the same tokens for the embedded model as for
Llama-3.

Both tokenizers encode without special tokens: the original never adds a BOS.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from jaxreason.tasks.formulas import LETTERS

PAD = "<pad>"
_SYMBOLS = "=+-,;"
VOCAB: tuple[str, ...] = ((PAD, "\n", " ", "?") + tuple("0123456789") + tuple(LETTERS)
                          + tuple(" " + c for c in LETTERS) + tuple(" " + c for c in _SYMBOLS))


class TextCodec(Protocol):
    """What the study needs from a tokenizer."""

    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_strings(self, ids: Sequence[int]) -> list[str]: ...


class FormulaTokenizer:
    """Greedy longest match over :data:`VOCAB` (tokens are at most two characters)."""

    def __init__(self):
        self.vocab = VOCAB
        self.index = {s: i for i, s in enumerate(VOCAB)}
        self.pad_id = self.index[PAD]
        self.eos_id = self.index["\n"]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            pair = text[i:i + 2]
            if len(pair) == 2 and pair in self.index:
                ids.append(self.index[pair])
                i += 2
            elif text[i] in self.index:
                ids.append(self.index[text[i]])
                i += 1
            else:
                raise ValueError(f"character {text[i]!r} at {i} of {text[:40]!r}... is not in the "
                                 f"formula vocabulary (lowercase letters, digits, ' =+-,;?\\n')")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i != self.pad_id)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[int(i)] for i in ids]


class HFCodec:
    """A HuggingFace tokenizer used as the original did: ``add_special_tokens=False``, EOS =
    the id of ``"\\n"``."""

    def __init__(self, tokenizer, eos_text: str = "\n"):
        self.tokenizer = tokenizer
        ids = tokenizer.encode(eos_text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"the tokenizer splits the stop text {eos_text!r} into {ids}; "
                             "the study needs a single-token newline")
        self.eos_id = ids[0]
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=False)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]


def encode_batch(codec: TextCodec, texts: Sequence[str], what: str = "source") -> np.ndarray:
    """Equal-length encodings as an (N, T) array; the original's collator required every
    source of a task to have one token length, and so does this."""
    rows = [codec.encode(t) for t in texts]
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        first = next(r for r in rows if len(r) != len(rows[0]))
        raise ValueError(f"{what} token lengths differ ({sorted(lengths)}): e.g. "
                         f"{codec.decode(rows[0])!r} vs {codec.decode(first)!r}; the study "
                         "needs one length per task (a tokenizer that merges digits?)")
    return np.asarray(rows, np.int32)
