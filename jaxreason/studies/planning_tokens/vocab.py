"""Where the planning tokens live: their ids in the tokenizer and the model, and their init.

The new ids come after the rows of the checkpoint's embedding matrix. A tokenizer shorter than
the matrix (Qwen2.5: 151,665 tokens for 152,064 rows; the world tokenizer: 243 for 256) would
give ``add_tokens`` ids inside the padding rows, which are untrained and, in the original,
frozen: its Qwen runs never learn the planning tokens (the original's ``new_embedding`` is
used only for ids at or past the row count). Here the gap is first filled with special
``<unused_row_i>`` tokens, so the planning tokens get ids ``rows, rows + 1, ...`` in the
tokenizer and the model alike, and an exported tokenizer stays consistent with the weights.
``qwen_padding_rows_bug`` (faithful mode, Qwen checkpoints only) reproduces the original
instead: no filler, planning ids in the padding rows, the appended rows never used.

Init: every token of a group starts from the base model's rows (input embedding and head) for
the id of its literal key word (``"prefix"``, ``"memory"``, ...) looked up in the vocabulary,
as the original's ``convert_tokens_to_ids`` does; a word that is not one vocabulary entry
starts from the mean row. The rows are added by :func:`jaxreason.train.vocab.add_tokens`.

The output bias of the new logits is frozen: faithful draws it as PyTorch's default
``Linear`` bias, uniform in +-1/sqrt(D) (the original never trains it); fixed uses zeros.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxreason.config_io import ConfigError
from jaxreason.tasks.planning import GROUP_KEYS, TokenGroups

FILLER = "<unused_row_{}>"


@dataclasses.dataclass(frozen=True)
class PlanningVocab:
    """The planning tokens of one model: their names, ids and where those ids sit."""

    groups: TokenGroups
    rows: int  # rows of the base embedding matrix
    first_id: int  # id of the first planning token (tokenizer and model)
    fillers: int  # <unused_row_i> tokens added before them
    in_padding_rows: bool  # the reproduced Qwen bug: ids below ``rows``

    @property
    def names(self) -> tuple[str, ...]:
        return self.groups.all_names()

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(range(self.first_id, self.first_id + self.groups.count))

    def group_ids(self) -> dict[str, tuple[int, ...]]:
        ids = dict(zip(self.names, self.ids))
        return {key: tuple(ids[n] for n in self.groups.names(key)) for key in GROUP_KEYS}


def extend_tokenizer(tokenizer, groups: TokenGroups, rows: int, model_type: str,
                     qwen_padding_rows_bug: bool = False) -> PlanningVocab:
    """Add the planning tokens to ``tokenizer`` (in place) with ids at ``rows`` and beyond
    (see the module docstring); returns where they went."""
    have = len(tokenizer)
    if have > rows:
        raise ConfigError(f"the tokenizer has {have} tokens but the model's embedding only "
                          f"{rows} rows; the tokenizer does not belong to this checkpoint")
    clash = [n for n in groups.all_names() if n in tokenizer.get_vocab()]
    if clash:
        raise ConfigError(f"the tokenizer already holds planning tokens {clash[:3]}; load the "
                          "base model's own tokenizer")
    fillers = 0
    if qwen_padding_rows_bug:
        if model_type != "qwen2":
            raise ConfigError(f"qwen_padding_rows_bug reproduces the original's bug on Qwen2.5 "
                              f"checkpoints; this model is {model_type!r}")
    elif have < rows:
        fillers = tokenizer.add_tokens([FILLER.format(i) for i in range(have, rows)],
                                       special_tokens=True)
    tokenizer.add_tokens(list(groups.all_names()))
    first = tokenizer.convert_tokens_to_ids(groups.all_names()[0])
    got = tokenizer.convert_tokens_to_ids(list(groups.all_names()))
    if got != list(range(first, first + groups.count)):
        raise ConfigError(f"the tokenizer gave the planning tokens ids {got}, not consecutive")
    if not qwen_padding_rows_bug and first != rows:
        raise ConfigError(f"the planning tokens got ids from {first}, expected {rows} (the "
                          "first id after the embedding rows)")
    return PlanningVocab(groups, rows, first, fillers, first < rows)


def init_sources(tokenizer, groups: TokenGroups, rows: int) -> tuple[tuple[int, ...] | None, ...]:
    """Per planning token, the base row its init copies (the key word's vocabulary id), or
    None (the mean row) where the word is not one vocabulary entry."""
    vocab = tokenizer.get_vocab()
    out = []
    for key in GROUP_KEYS:
        tid = vocab.get(key)
        src = (tid,) if tid is not None and 0 <= tid < rows else None
        out += [src] * len(groups.names(key))
    return tuple(out)


def output_bias(count: int, width: int, mode: str, seed: int) -> tuple[float, ...]:
    """The frozen bias of the new logits (see the module docstring)."""
    if mode == "fixed":
        return (0.0,) * count
    bound = 1.0 / np.sqrt(width)
    draw = np.random.default_rng([seed, 7]).uniform(-bound, bound, count)
    return tuple(float(x) for x in draw)
