"""The arguer and chooser prompts, tokenized, with the windows whose keys and values move.

An *arguer* prompt is the question's prompt followed by one argument and nothing else; the
*chooser* prompt holds the question, both arguments as candidate 1 and 2, the choice
argument, and ends where the next token is the slot number (``"answer_choice":
"candidate_`` in the original's JSON). Two styles share that structure: ``alpaca`` (the
original's Alpaca-preamble JSON prompts, for a real tokenizer) and ``world`` (the same in the
embedded world's closed vocabulary).

Windows, per argument, as (start, length) in the unpadded token row:

* ``faithful``: the original fences each argument with a ``[SEP]`` special token, tokenizes
  the whole text, deletes the fences and transplants ``[f0 - 1, f1 - 2)`` (fence columns
  before deletion; a later slot shifts by the fences before it). The window starts at the
  token just before the argument (arguer and chooser each contribute their own delimiter
  there) and leaves out the argument's last token. Its length equals the argument's token
  count.
* ``fixed``: every text piece is tokenized on its own and the id lists are spliced, so both
  prompts hold the same argument ids, and the window is exactly those ids.

Arguer window position ``a0 + k`` lands on chooser position ``c0 + k``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from jaxreason.tasks.cot_choice import ChoiceItem
from jaxreason.tasks.cot_choice_generate import ALPACA, ARGUMENT_FIRST, CHOOSE
from jaxreason.tasks.word_problems import question_block

FENCE = "[SEP]"
_ARG = "\x00ARG\x00"  # placeholder for an argument while a template is assembled


def arguer_pieces(style: str, question: str) -> list[str]:
    """The text before the argument (nothing follows it)."""
    if style == "world":
        return [question_block(question)]
    return [ALPACA.format(instruction=ARGUMENT_FIRST, input=json.dumps({"question": question}))
            + '{\n"argument": "']


def chooser_pieces(style: str, question: str, choice_argument: str) -> list[str]:
    """The three texts around candidate 1 and candidate 2."""
    if style == "world":
        text = (f"{question_block(question, think=False)}So candidate 1 is\n{_ARG}\n"
                f"So candidate 2 is\n{_ARG}\n{choice_argument}\nThe answer is candidate ")
    else:
        body = (f'{{"question": {json.dumps(question)}, "candidate_1": {_ARG}, '
                f'"candidate_2": {_ARG}}}')
        text = (ALPACA.format(instruction=CHOOSE, input=body) + '{\n"argument": "'
                + choice_argument + '",\n"answer_choice": "candidate_')
    return text.split(_ARG)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One prompt's ids and the (start, length) window of each argument in it."""

    ids: tuple[int, ...]
    windows: tuple[tuple[int, int], ...]


def fence_id(tokenizer) -> int:
    """The id of the ``[SEP]`` fence, added to the tokenizer as a special token if missing
    (it never reaches the model: fences are deleted before any forward pass)."""
    if FENCE not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [FENCE]})
    return tokenizer.convert_tokens_to_ids(FENCE)


def _bos(tokenizer) -> list[int]:
    probe = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and probe and probe[0] == bos else []


def encode_faithful(tokenizer, pieces: Sequence[str], arguments: Sequence[str]) -> Encoded:
    """The fence-based encoding: ``pieces[0] [SEP] arg0 [SEP] pieces[1] ...``."""
    if len(pieces) not in (len(arguments), len(arguments) + 1):
        raise ValueError(f"{len(pieces)} text pieces for {len(arguments)} arguments")
    sep = fence_id(tokenizer)
    text = ""
    for i, arg in enumerate(arguments):
        if FENCE in arg:
            raise ValueError(f"argument {i} contains the fence {FENCE!r}: {arg[:60]!r}")
        text += pieces[i] + FENCE + arg + FENCE
    text += pieces[len(arguments)] if len(pieces) > len(arguments) else ""
    ids = tokenizer(text)["input_ids"]
    fences = [c for c, t in enumerate(ids) if t == sep]
    if len(fences) != 2 * len(arguments):
        raise ValueError(f"expected {2 * len(arguments)} fences, found {len(fences)} in {text[:80]!r}")
    windows = []
    for j in range(len(arguments)):
        start, end = fences[2 * j] - 1 - 2 * j, fences[2 * j + 1] - 2 - 2 * j
        if start < 0 or end <= start:
            raise ValueError(f"argument {j} of {text[:80]!r} is empty or starts the text")
        windows.append((start, end - start))
    return Encoded(tuple(t for t in ids if t != sep), tuple(windows))


def encode_fixed(tokenizer, pieces: Sequence[str], arguments: Sequence[str]) -> Encoded:
    """Pieces and arguments tokenized one by one and spliced; windows are the argument ids."""
    ids = _bos(tokenizer)
    windows = []
    piece = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
    for i, arg in enumerate(arguments):
        ids += piece(pieces[i])
        arg_ids = piece(arg)
        if not arg_ids:
            raise ValueError(f"argument {i} is empty")
        windows.append((len(ids), len(arg_ids)))
        ids += arg_ids
    if len(pieces) > len(arguments):
        ids += piece(pieces[len(arguments)])
    return Encoded(tuple(ids), tuple(windows))


def encode(tokenizer, pieces, arguments, mode: str) -> Encoded:
    return (encode_faithful if mode == "faithful" else encode_fixed)(tokenizer, pieces, arguments)


@dataclasses.dataclass(frozen=True)
class EncodedItem:
    """An example ready for batching: one arguer run per slot, the chooser, the label."""

    arguers: tuple[Encoded, Encoded]  # the arguer runs whose windows go to slot 1 and 2
    chooser: Encoded  # windows: slot 1's, slot 2's
    correct_slot: int  # 1 or 2
    orig_correct: bool


def encode_item(tokenizer, item: ChoiceItem, mode: str, style: str) -> EncodedItem:
    """Both arguer runs and the chooser of ``item``; a ValueError when a slot's arguer
    window and chooser window differ in length."""
    arguers = tuple(encode(tokenizer, arguer_pieces(style, item.question), [text], mode)
                    for text in item.slots(arguer=True))
    chooser = encode(tokenizer, chooser_pieces(style, item.question, item.choice_argument),
                     item.slots(arguer=False), mode)
    for j, (a, w) in enumerate(zip(arguers, chooser.windows)):
        if a.windows[0][1] != w[1]:
            raise ValueError(f"slot {j + 1}: the arguer window has {a.windows[0][1]} tokens but "
                             f"the chooser's has {w[1]} ({item.question[:60]!r})")
    return EncodedItem(arguers, chooser, item.correct_slot, item.choice_was_correct)


def answer_ids(tokenizer, tokens: Sequence[str]) -> tuple[int, int]:
    """The ids of slot 1's and slot 2's token (``"1"``, ``"2"``), refused when unknown."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = tokenizer.unk_token_id
    bad = [t for t, i in zip(tokens, ids) if i is None or (unk is not None and i == unk)]
    if bad:
        raise ValueError(f"answer_tokens {bad} are not tokens of this tokenizer")
    return int(ids[0]), int(ids[1])
