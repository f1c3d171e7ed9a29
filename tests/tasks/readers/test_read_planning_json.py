"""Planning-token step JSON reader: faithful and fixed step typing, cleaning, bad rows, folders."""

from __future__ import annotations

import json

import pytest

from jaxreason.tasks.readers import (ReaderError, RowError, clean_steps, faithful_step_types,
                                     read_planning_json)

REC1 = {"question": "Was the ship that recovered Apollo 13 named after a battle?",
        "answer": "True",
        "cot_steps": ["[rag]: The ship that recovered Apollo 13 was the USS Iwo Jima.",
                      "[rag]: Iwo Jima was a battle of World War II.",
                      "[reason]: So the ship was named after a battle."],
        "split": "train"}
REC2 = {"question": "Can a cat fly?", "answer": "False",
        "cot_steps": ["[reasoning]: Cats have no wings.", "[reason]: So no: [note]: none."],
        "split": "test"}


def write_list(path, records):
    """A pretty-printed JSON list, so records start on known lines."""
    path.write_text(json.dumps(records, indent=2))
    return path


def start_lines(path):
    lines = path.read_text().splitlines()
    return [i + 1 for i, t in enumerate(lines) if t == "  {"]


def test_good_records_lines_and_faithful_types(tmp_path):
    path = write_list(tmp_path / "StrategyQA_train_clean.json", [REC1, REC2])
    got = read_planning_json(path)
    assert [r.line for r in got] == start_lines(path)
    a, b = got
    assert a.cot_steps == tuple(REC1["cot_steps"]) and a.answer == "True" and a.split == "train"
    assert a.step_types() == ("memory", "memory", "reason")
    assert a.step_types("fixed") == ("memory", "memory", "reason")
    assert a.step_texts()[0] == "The ship that recovered Apollo 13 was the USS Iwo Jima."
    # faithful: '[reasoning]' is dropped and the next label slides up; the last step gets assignment
    assert b.step_types() == ("reason", "assignment")
    assert b.step_types("fixed") == ("reason", "reason")
    # faithful removes every '[...]: '; fixed only the leading tag
    assert b.step_texts() == ("Cats have no wings.", "So no: none.")
    assert b.step_texts("fixed") == ("Cats have no wings.", "So no: [note]: none.")
    assert [r.question for r in read_planning_json(path, split="test")] == [REC2["question"]]


def test_faithful_typing_counts_tags_across_the_whole_text():
    q = "Pick one.\n[rag]: a line of the question that looks like a tag"
    with pytest.raises(ValueError, match="2 step tags for 1 steps"):
        faithful_step_types(q, ("[reason]: x",))
    # a newline inside a step followed by a tag adds a label that shifts the rest
    assert faithful_step_types("q", ("[rag]: a\n[reason]: b", "untagged", "[rag]: c")) == \
        ("memory", "reason", "memory")
    assert faithful_step_types("q", ("no tag", "[Reason]: case matters")) == ("assignment",) * 2


def test_too_many_tags_is_a_row_error_only_in_faithful_mode(tmp_path):
    rec = dict(REC1, question="Q?\n[rag]: tag-like line", cot_steps=["[reason]: x"])
    path = write_list(tmp_path / "tags.json", [rec])
    (r,) = read_planning_json(path)
    with pytest.raises(RowError, match=r"tags.json, line 2, field 'cot_steps'"):
        r.step_types()
    assert r.step_types("fixed") == ("reason",)


def test_cleaning_as_the_generator_did():
    steps = ("[rag]: kept", "[reason]: ", "[reasoning]: remapped to rag", "[Reason]: also rag",
             "no colon at all", "untagged: but with text")
    assert clean_steps(steps) == ("[rag]: kept", "[rag]: remapped to rag", "[rag]: also rag",
                                  "untagged: but with text")


def test_clean_option_drops_empty_records(tmp_path):
    empty = dict(REC2, cot_steps=["[rag]: ", "[reason]:"])
    path = write_list(tmp_path / "c.json", [REC1, empty, REC2])
    assert len(read_planning_json(path)) == 3
    cleaned = read_planning_json(path, clean=True)
    assert len(cleaned) == 2 and cleaned[1].cot_steps[0] == "[rag]: Cats have no wings."


def test_json_lines_layout(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text(json.dumps(REC1) + "\n\n" + json.dumps(REC2) + "\n")
    assert [r.line for r in read_planning_json(path)] == [1, 3]


@pytest.mark.parametrize("bad, field, expect", [
    (dict(REC1, cot_steps="[rag]: one string"), "cot_steps", "expected a list of strings"),
    (dict(REC1, cot_steps=["[rag]: ok", 7]), "cot_steps[1]", "expected a string such as"),
    ({k: v for k, v in REC1.items() if k != "cot_steps"}, "cot_steps", "missing"),
    (dict(REC1, answer=True), "answer", "expected a string, got bool"),
    ({k: v for k, v in REC1.items() if k != "split"}, "split", "missing"),
    (["not", "an", "object"], None, "expected an object"),
])
def test_bad_records_name_file_line_and_field(tmp_path, bad, field, expect):
    path = write_list(tmp_path / "bad_steps.json", [REC1, bad])
    with pytest.raises(RowError) as e:
        read_planning_json(path)
    line = start_lines(path)[1] if isinstance(bad, dict) else None
    assert e.value.field == field and expect in str(e.value) and "bad_steps.json" in str(e.value)
    if line is not None:
        assert e.value.line == line and f"line {line}" in str(e.value)


def test_broken_json_missing_file_and_no_matching_split(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"question": "q",\n   "answer": }\n]')
    with pytest.raises(RowError, match=r"broken.json, line 3: not valid JSON"):
        read_planning_json(path)
    path.write_text(json.dumps([REC1]) + " trailing")
    with pytest.raises(RowError, match="unexpected text after"):
        read_planning_json(path)
    with pytest.raises(ReaderError, match="does not exist"):
        read_planning_json(tmp_path / "gone.json")
    with pytest.raises(ReaderError, match="split == 'dev'"):
        read_planning_json(write_list(tmp_path / "ok.json", [REC1]), split="dev")


def test_datasets_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list([REC1, REC2]).save_to_disk(str(tmp_path / "saved"))
    got = read_planning_json(tmp_path / "saved", split="train")
    assert len(got) == 1 and got[0].step_types() == ("memory", "memory", "reason")
    assert got[0].line == 1 and got[0].source.endswith("saved")
