"""GSM8K JSON-lines reader: good rows, each kind of bad row, commas, datasets folders."""

from __future__ import annotations

import json

import pytest

from jaxreason.tasks.readers import ReaderError, RowError, parse_final_answer, read_gsm8k

GOOD = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A big sum?", "answer": "Add them.\nStill adding.\n#### 1,234,567", "extra": 1},
    {"question": "Below zero?", "answer": "It drops.\n#### -12"},
]


def write_jsonl(path, rows, blank_after_first=False):
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows]
    if blank_after_first:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_good_rows_parse_with_commas_and_signs(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", GOOD, blank_after_first=True)
    got = read_gsm8k(path)
    assert [p.final_answer for p in got] == [7, 1234567, -12]
    assert all(type(p.final_answer) is int for p in got)
    assert [p.line for p in got] == [1, 3, 4]         # the blank line 2 still counts
    assert got[1].rationale == "Add them.\nStill adding."
    assert got[0].question == GOOD[0]["question"] and got[0].answer == GOOD[0]["answer"]


@pytest.mark.parametrize("text, value", [("1,234", 1234), (" -3 ", -3), ("4.0", 4), ("2.5", 2.5),
                                         ("12345678901234567890", 12345678901234567890),
                                         ("1e3", None), ("seven", None), ("", None)])
def test_final_answer_parsing(text, value):
    assert parse_final_answer(text) == value


@pytest.mark.parametrize("row, field, expect", [
    ('{"question": "q", "answer": "no marker here"}', "answer", "found no '####'"),
    ('{"question": "q", "answer": "x\\n#### seven"}', "answer", "expected a number"),
    ('{"question": "q", "answer": "x\\n#### 2.5"}', "answer", "expected an integer"),
    ('{"answer": "x\\n#### 1"}', "question", "missing"),
    ('{"question": 5, "answer": "x\\n#### 1"}', "question", "expected a string, got int"),
    ('{"question": "q", "answer": ""}', "answer", "non-empty"),
    ('["q", "a"]', None, "expected a JSON object"),
    ('{"question": "q", "answer": ', None, "one JSON object per line"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, field, expect):
    path = write_jsonl(tmp_path / "bad_gsm.jsonl", [GOOD[0], GOOD[1], row])
    with pytest.raises(RowError) as e:
        read_gsm8k(path)
    msg = str(e.value)
    assert "bad_gsm.jsonl" in msg and "line 3" in msg and expect in msg
    assert e.value.line == 3 and e.value.field == field
    if field:
        assert repr(field) in msg


def test_fractional_answers_kept_when_allowed(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "x\n#### 2.5"}])
    assert read_gsm8k(path, allow_fractional=True)[0].final_answer == 2.5


def test_missing_path_and_empty_file(tmp_path):
    with pytest.raises(ReaderError, match="nope.jsonl does not exist"):
        read_gsm8k(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ReaderError, match="no GSM8K problems"):
        read_gsm8k(tmp_path / "empty.jsonl")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(ReaderError, match="save_to_disk"):
        read_gsm8k(tmp_path / "plain_dir")


def test_datasets_folders(tmp_path):
    import datasets

    rows = [{"question": r["question"], "answer": r["answer"]} for r in GOOD]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "flat"))
    got = read_gsm8k(tmp_path / "flat")
    assert [p.final_answer for p in got] == [7, 1234567, -12] and [p.line for p in got] == [1, 2, 3]

    bad = rows[:1] + [{"question": "q", "answer": "no marker"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(bad)}).save_to_disk(str(tmp_path / "dd"))
    assert len(read_gsm8k(tmp_path / "dd", split="train")) == 3
    with pytest.raises(ReaderError, match=r"\['test', 'train'\]"):
        read_gsm8k(tmp_path / "dd")
    with pytest.raises(RowError, match=r"dd, row 2, field 'answer'"):
        read_gsm8k(tmp_path / "dd", split="test")


def test_a_json_list_reads_like_json_lines(tmp_path):
    rows = [dict(GOOD[0], prediction="... The answer is 7.", correct=True, pred_answer=7), GOOD[2]]
    path = tmp_path / "final.json"
    path.write_text(json.dumps(rows, indent=1))
    got = read_gsm8k(path)
    assert [p.final_answer for p in got] == [7, -12] and got[0].line == 2
    path.write_text(json.dumps([GOOD[0], {"question": "q", "answer": "x #### 3 apples"}], indent=1))
    with pytest.raises(RowError, match=r"final.json, line 6, field 'answer'"):
        read_gsm8k(path)
