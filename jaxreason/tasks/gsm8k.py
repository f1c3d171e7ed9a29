"""GSM8K few-shot prompting and answer parsing as Rai & Yao (ACL 2024) do it, plus a fixed parser.

The neuron-lens study prompts a model with one of seven few-shot prompt files (full chain of
thought, equations only, text only, ...), each holding eight demonstrations that end in
``The answer is N.``, and reads the model's answer back from the decoded text. Other tools
that compare against that study need the exact same strings and the exact same scoring, so
they live here, apart from the study:

* :func:`read_prompt_file` / :func:`read_prompt_files`: the user's prompt files (we ship none
  of the original's; the embedded world writes its own, see ``word_problem_variants``).
* :func:`build_prompt`: every line of the prompt file stripped and joined with newlines, a
  blank line, ``Question: `` and the question with its whitespace runs collapsed to single
  spaces, then ``\\nLet's think step by step\\n`` (always the ASCII apostrophe, even when the
  file uses a curly one). For ``equation_only`` the original appends ``\\n\\n`` instead; the
  fixed variant appends ``\\n``, the layout of that file's own demonstrations.
* :func:`extract_answer`, on the decoded prompt plus generation:

  - ``faithful``: the original's parser. It takes the text after the first *generated*
    ``The answer is `` (the original splits on it and takes piece 9, past the prompt's own 8;
    here the prompt's occurrences are counted), cuts it at ``\\n\\nQuestion:``, turns every
    letter and every ``%$=-.`` into a space, deletes commas and parses the last
    whitespace-separated piece with ``int(float(.))``. So ``-5`` reads as 5, ``2.5`` as 5, and
    the last number before the next blank line wins. A miss is the original's sentinel
    234234 (:data:`SENTINEL`), returned here as ``None``.
  - ``fixed``: the number right after the first generated ``The answer is `` (an optional
    ``$``, sign, thousands commas and decimals kept: ``-5`` is -5, ``2.5`` is 2.5, ``1,234``
    is 1234), nothing after it; ``None`` when no number follows.

Both return an ``int`` (a decimal that is not whole stays a ``float`` in fixed mode).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Sequence

from jaxreason.tasks.readers.gsm8k import parse_final_answer

Mode = Literal["faithful", "fixed"]
MODES = ("faithful", "fixed")
ANSWER_MARK = "The answer is "
QUESTION_MARK = "Question: "
THINK_SUFFIX = "\nLet's think step by step\n"
EQUATION_ONLY = "equation_only"
SUFFIXES = {"faithful": "\n\n", "fixed": "\n"}  # after an equation_only question
SENTINEL = 234234  # the original's prediction when it finds no answer
# what the original blanks out before it takes the last token: letters and % $ = - .
_FAITHFUL_BLANKS = re.compile(r"[a-zA-Z%$=\-.]")
_FIXED_NUMBER = re.compile(r"\s*\$?\s*([+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; allowed: {list(MODES)}")


def read_prompt_file(path) -> str:
    """A few-shot prompt file's text (UTF-8), as the user wrote it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {str(p)!r} does not exist (a few-shot prompt "
                                f"text file, e.g. cot_prompt.txt)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"prompt file {str(p)!r} is not UTF-8 text ({e})") from None
    if ANSWER_MARK not in text:
        raise ValueError(f"prompt file {str(p)!r} holds no {ANSWER_MARK.strip()!r}: every "
                         f"demonstration must end with '{ANSWER_MARK}N.'")
    return text


def read_prompt_files(directory, prompt_types: Sequence[str]) -> dict[str, str]:
    """``{prompt_type: text}`` from ``directory/<prompt_type>.txt`` for each type."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"prompt folder {str(d)!r} does not exist; it must hold "
                                f"<prompt_type>.txt for each of {list(prompt_types)}")
    missing = [t for t in prompt_types if not (d / f"{t}.txt").is_file()]
    if missing:
        raise FileNotFoundError(f"prompt folder {str(d)!r} lacks "
                                f"{[f'{t}.txt' for t in missing]}; found "
                                f"{sorted(p.name for p in d.glob('*.txt'))}")
    return {t: read_prompt_file(d / f"{t}.txt") for t in prompt_types}


def demonstrations(prompt_text: str) -> str:
    """The prompt file as the original puts it in front of every question: each line
    stripped, joined with newlines, then a blank line."""
    return "\n".join(line.strip() for line in prompt_text.splitlines()) + "\n\n"


def question_suffix(prompt_type: str, mode: Mode = "faithful") -> str:
    """What follows the question: the ``Let's think`` line, or a line end for equation_only."""
    _check_mode(mode)
    return SUFFIXES[mode] if prompt_type == EQUATION_ONLY else THINK_SUFFIX


def test_block(question: str, prompt_type: str, mode: Mode = "faithful") -> str:
    """``Question: `` + the whitespace-collapsed question + the prompt type's suffix."""
    return QUESTION_MARK + " ".join(question.split()) + question_suffix(prompt_type, mode)


def build_prompt(prompt_text: str, question: str, prompt_type: str,
                 mode: Mode = "faithful") -> str:
    """The exact prompt string of the original (``mode="fixed"`` changes only the
    equation_only suffix, see the module docstring)."""
    return demonstrations(prompt_text) + test_block(question, prompt_type, mode)


def faithful_prediction(text: str, prompt_answers: int = 8) -> int:
    """The original's parse of ``text`` (prompt + generation), sentinel included: the piece
    after occurrence ``prompt_answers + 1`` of ``The answer is ``."""
    pieces = text.split(ANSWER_MARK)
    if len(pieces) <= prompt_answers + 1:
        return SENTINEL
    s = pieces[prompt_answers + 1].split("\n\nQuestion:")[0]
    s = _FAITHFUL_BLANKS.sub(" ", s).replace(",", "")
    tokens = s.split()
    if not tokens:
        return SENTINEL
    try:
        return int(float(tokens[-1]))
    except (ValueError, OverflowError):
        return SENTINEL


def fixed_prediction(generation: str) -> int | float | None:
    """The number right after the first ``The answer is `` of the generated text."""
    at = generation.find(ANSWER_MARK)
    if at < 0:
        return None
    m = _FIXED_NUMBER.match(generation, at + len(ANSWER_MARK))
    return None if m is None else parse_final_answer(m.group(1))


def extract_answer(text: str, mode: Mode, prompt: str | None = None) -> int | float | None:
    """The model's answer in ``text`` (the decoded prompt followed by the generation).

    ``prompt``: the prompt ``text`` starts with; its own ``The answer is `` count tells
    where the generation's first one is (without it: the original's eight demonstrations).
    Faithful mode's sentinel comes back as ``None``.
    """
    _check_mode(mode)
    if prompt is not None and not text.startswith(prompt):
        raise ValueError("text does not start with the given prompt; pass the decoded "
                         "prompt followed by the generation")
    shown = 8 if prompt is None else prompt.count(ANSWER_MARK)
    if mode == "faithful":
        value = faithful_prediction(text, shown)
        return None if value == SENTINEL else value
    if prompt is not None:
        return fixed_prediction(text[len(prompt):])
    pieces = text.split(ANSWER_MARK, shown + 1)
    return fixed_prediction(ANSWER_MARK + pieces[-1]) if len(pieces) > shown + 1 else None
