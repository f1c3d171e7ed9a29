"""CoT-correctness CSV reader: columns, types, slot logic, bad rows, datasets folders."""

from __future__ import annotations

import csv

import pytest

from jaxreason.tasks.readers import COT_CHOICE_COLUMNS, ReaderError, RowError, read_cot_choice_csv


def row(**over):
    base = {"Question": "Sam has 5 pens and loses 2. How many are left?",
            "Correct Answer": "3.0", "Correct Argument": "5 - 2 = 3 pens.",
            "Incorrect Answer": "7.0", "Incorrect Argument": "5 + 2 = 7 pens.",
            "Choice Answer": "candidate_1", "Choice Argument": "Candidate 1 subtracts.",
            "Choice Answers Swapped": "False"}
    base.update(over)
    return base


def write_csv(path, rows, columns=COT_CHOICE_COLUMNS):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def test_good_rows_types_and_slots(tmp_path):
    rows = [row(),
            row(**{"Choice Answers Swapped": "True", "Choice Answer": "candidate_1",
                   "Correct Argument": "First line.\\nSecond line, \"quoted\"."}),
            row(**{"Choice Answers Swapped": "True", "Choice Answer": "candidate_2",
                   "Correct Answer": "0.5", "Question": "A question\nspanning two lines?"})]
    path = write_csv(tmp_path / "dataset.csv", rows)
    got = read_cot_choice_csv(path)
    assert [r.line for r in got] == [2, 3, 4]            # header is line 1
    a, b, c = got
    assert (a.correct_answer, a.incorrect_answer, a.swapped) == (3.0, 7.0, False)
    assert a.slot_arguments == ("5 - 2 = 3 pens.", "5 + 2 = 7 pens.") and a.correct_slot == 1
    assert a.choice_was_correct                       # picked slot 1, which holds the correct CoT
    assert b.swapped and b.slot_arguments[0] == "5 + 2 = 7 pens." and b.correct_slot == 2
    assert not b.choice_was_correct and c.choice_was_correct
    assert b.correct_argument == 'First line.\\nSecond line, "quoted".'   # kept as written
    assert c.question == "A question\nspanning two lines?" and c.correct_answer == 0.5
    un = read_cot_choice_csv(path, unescape_newlines=True)
    assert un[1].correct_argument == 'First line.\nSecond line, "quoted".'


def test_rows_after_a_multiline_field_get_their_own_line(tmp_path):
    rows = [row(Question="two\nlines"), row(**{"Choice Answer": "slot one"})]
    path = write_csv(tmp_path / "ml.csv", rows)
    with pytest.raises(RowError, match=r"ml.csv, line 4, field 'Choice Answer'"):
        read_cot_choice_csv(path)


def test_missing_columns_listed_with_found_ones(tmp_path):
    cols = [c for c in COT_CHOICE_COLUMNS if c not in ("Choice Argument", "Correct Answer")]
    path = write_csv(tmp_path / "cols.csv", [row()], columns=cols)
    with pytest.raises(ReaderError) as e:
        read_cot_choice_csv(path)
    msg = str(e.value)
    assert "['Correct Answer', 'Choice Argument']" in msg and "'Question'" in msg and "cols.csv" in msg


@pytest.mark.parametrize("over, field, expect", [
    ({"Correct Answer": "forty"}, "Correct Answer", "expected a number"),
    ({"Incorrect Answer": "nan"}, "Incorrect Answer", "expected a number"),
    ({"Choice Answer": "candidate_3"}, "Choice Answer", "['candidate_1', 'candidate_2']"),
    ({"Choice Answers Swapped": "maybe"}, "Choice Answers Swapped", "expected True or False"),
    ({"Incorrect Argument": ""}, "Incorrect Argument", "non-empty"),
])
def test_bad_values_name_file_line_and_field(tmp_path, over, field, expect):
    path = write_csv(tmp_path / "bad.csv", [row(), row(**over)])
    with pytest.raises(RowError) as e:
        read_cot_choice_csv(path)
    msg = str(e.value)
    assert f"bad.csv, line 3, field {field!r}" in msg and expect in msg


def test_wrong_field_count_and_missing_or_empty_files(tmp_path):
    path = write_csv(tmp_path / "short.csv", [row()])
    with open(path, "a") as f:
        f.write("only,three,fields\n")
    with pytest.raises(RowError, match=r"short.csv, line 3: expected 8 fields.*found 3"):
        read_cot_choice_csv(path)
    with pytest.raises(ReaderError, match="does not exist"):
        read_cot_choice_csv(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ReaderError, match="is empty"):
        read_cot_choice_csv(tmp_path / "empty.csv")


def test_datasets_folder_with_native_types(tmp_path):
    import datasets

    rows = [row(), row(**{"Choice Answers Swapped": "True"})]
    native = [{**r, "Correct Answer": float(r["Correct Answer"]),
               "Incorrect Answer": float(r["Incorrect Answer"]),
               "Choice Answers Swapped": r["Choice Answers Swapped"] == "True"} for r in rows]
    datasets.Dataset.from_list(native).save_to_disk(str(tmp_path / "saved"))
    got = read_cot_choice_csv(tmp_path / "saved")
    assert [r.swapped for r in got] == [False, True] and got[0].correct_answer == 3.0
    from_csv = read_cot_choice_csv(write_csv(tmp_path / "same.csv", rows))
    assert [dataclass_fields(g) for g in got] == [dataclass_fields(g) for g in from_csv]
    partial = [{k: v for k, v in r.items() if k != "Choice Argument"} for r in native]
    datasets.Dataset.from_list(partial).save_to_disk(str(tmp_path / "partial"))
    with pytest.raises(ReaderError, match=r"lacks the columns \['Choice Argument'\]"):
        read_cot_choice_csv(tmp_path / "partial")


def dataclass_fields(r):
    return {k: v for k, v in vars(r).items() if k != "line"}
