"""GSM8K prompt assembly and the two answer parsers (jaxreason.tasks.gsm8k)."""

from __future__ import annotations

import pytest

from jaxreason.tasks import gsm8k
from jaxreason.tasks.word_problem_variants import PROMPT_TYPES

# a two-demonstration prompt file with the original's quirks: padded lines, a curly
# apostrophe, a blank line inside, a trailing blank line
FILE = ("Question: There are 15 trees.  \n  Let\u2019s think step by step\n"
        "So 21 - 15 = 6.\nThe answer is 6.\n\n"
        "Question: Leah had 32.\nLet's think step by step\nThe answer is 39.\n\n")


@pytest.mark.parametrize("prompt_type", PROMPT_TYPES)
def test_build_prompt_for_every_type(prompt_type):
    q = "  How many\n trees   are there?\t"
    got = gsm8k.build_prompt(FILE, q, prompt_type)
    demos = ("Question: There are 15 trees.\nLet\u2019s think step by step\nSo 21 - 15 = 6.\n"
             "The answer is 6.\n\nQuestion: Leah had 32.\nLet's think step by step\n"
             "The answer is 39.\n" + "\n\n")  # the file's last blank line, then the blank line
    suffix = "\n\n" if prompt_type == "equation_only" else "\nLet's think step by step\n"
    assert got == demos + "Question: How many trees are there?" + suffix
    # the suffix always has the ASCII apostrophe, whatever the file uses
    assert got.endswith(suffix) and "\u2019" not in got[len(demos):]


def test_fixed_mode_changes_only_the_equation_only_suffix():
    for t in PROMPT_TYPES:
        faithful = gsm8k.build_prompt(FILE, "Q?", t, "faithful")
        fixed = gsm8k.build_prompt(FILE, "Q?", t, "fixed")
        if t == "equation_only":
            assert faithful == fixed + "\n"
        else:
            assert faithful == fixed
    with pytest.raises(ValueError, match="mode='loose'"):
        gsm8k.build_prompt(FILE, "Q?", "cot_prompt", "loose")


PROMPT = "".join(f"Question: q{i}\nThe answer is {i}.\n\n" for i in range(8))


@pytest.mark.parametrize("generation, faithful, fixed", [
    ("So 3 - 8 = -5.\nThe answer is -5.\n\nQuestion: next", 5, -5),
    ("The answer is 2.5.\n\nQuestion:", 5, 2.5),
    ("The answer is $1,234.\n\n", 1234, 1234),
    ("The answer is 4.0 apples.", 0, 4),  # faithful: "4.0" reads as "4 0", the last wins
    ("I do not know.\n\nQuestion: x\nThe answer is 3.", 3, 3),  # faithful: any later one
    ("no answer at all", None, None),
    ("The answer is seven.", None, None),
    # text after the answer: the faithful parser takes the last number before the blank line
    ("The answer is 12. Then 7 more.\n\nQuestion: z", 7, 12),
    ("The answer is 5 apples and 6 pears.", 6, 5),
    ("The answer is 5.\nThe answer is 6.", 5, 5),  # the first generated one
])
def test_both_parsers_on_tricky_strings(generation, faithful, fixed):
    text = PROMPT + generation
    assert gsm8k.extract_answer(text, "faithful", PROMPT) == faithful
    assert gsm8k.extract_answer(text, "fixed", PROMPT) == fixed
    # without the prompt both count the original's eight demonstrations
    assert gsm8k.extract_answer(text, "faithful") == faithful
    assert gsm8k.extract_answer(text, "fixed") == fixed


def test_faithful_prediction_keeps_the_sentinel_and_counts_the_prompt():
    assert gsm8k.faithful_prediction(PROMPT + "nothing") == gsm8k.SENTINEL
    two = "Question: a\nThe answer is 1.\n\nQuestion: b\nThe answer is 2.\n\n"
    assert gsm8k.extract_answer(two + "The answer is 9.", "faithful", two) == 9
    assert gsm8k.extract_answer(two + "The answer is 9.", "faithful") is None  # needs 9 pieces
    with pytest.raises(ValueError, match="does not start with the given prompt"):
        gsm8k.extract_answer("other text", "fixed", two)


def test_prompt_files_are_read_by_type_with_clear_errors(tmp_path):
    (tmp_path / "cot_prompt.txt").write_text(FILE, encoding="utf-8")
    assert gsm8k.read_prompt_files(tmp_path, ["cot_prompt"]) == {"cot_prompt": FILE}
    with pytest.raises(FileNotFoundError, match=r"lacks \['text_only.txt'\]"):
        gsm8k.read_prompt_files(tmp_path, ["cot_prompt", "text_only"])
    (tmp_path / "bad.txt").write_text("Question: no answers here\n")
    with pytest.raises(ValueError, match="holds no 'The answer is'"):
        gsm8k.read_prompt_file(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="prompt folder"):
        gsm8k.read_prompt_files(tmp_path / "missing", ["cot_prompt"])
