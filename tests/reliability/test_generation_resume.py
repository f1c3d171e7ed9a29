"""Resuming a generation run whose files were damaged, or with other inputs: repaired with a
one-line warning where a kill explains the damage, refused otherwise, and never losing what
is on disk. One finished run on a tiny random Llama is copied for every case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxreason.generation_runner import DecodeSettings, run_generation
from jaxreason.models import LlamaConfig, from_config

N_NEW, BS = 3, 2


def decode(ids) -> str:
    return "".join(chr(97 + int(i) % 26) for i in ids)


def _encode(rec):
    return rec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, params = from_config(LlamaConfig.tiny(), seed=1)
    records = [[int(t) for t in np.random.default_rng(i).integers(1, 100, 4)] for i in range(6)]
    whole = tmp_path_factory.mktemp("whole")
    run_generation(model, params, records, _encode, DecodeSettings(N_NEW, batch_size=BS),
                   decode=decode, out_dir=whole, progress=False)
    return model, params, records, whole


def _files(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _killed_copy(whole: Path, dst: Path, chunks: int) -> Path:
    """The run as a kill after ``chunks`` finished chunks would leave it (results in step)."""
    shutil.copytree(whole, dst)
    arrays = dst / "arrays"
    man = json.loads((arrays / "manifest.json").read_text())
    man_all = dict(man)
    prog = {"chunks": man["chunks"][:chunks], "fields": man["fields"]}
    (arrays / "progress.json").write_text(json.dumps(prog))
    man.update(chunks=prog["chunks"], num_rows=BS * chunks, complete=False)
    (arrays / "manifest.json").write_text(json.dumps(man))
    for c in man_all["chunks"][chunks:]:  # a kill leaves no unlisted chunk behind here
        shutil.rmtree(arrays / c["name"])
    lines = (dst / "results.jsonl").read_text().splitlines(keepends=True)
    (dst / "results.jsonl").write_text("".join(lines[:BS * chunks]))
    return dst


def _run(setup, out_dir, **kw):
    model, params, records, _ = setup
    args = dict(records=records, settings=DecodeSettings(N_NEW, batch_size=BS))
    args.update(kw)
    return run_generation(kw.pop("model", model), kw.pop("params", params), args["records"],
                          _encode, args["settings"], decode=decode, out_dir=out_dir,
                          progress=False)


def test_line_cut_by_a_kill_is_repaired_to_the_uninterrupted_files(setup, tmp_path):
    whole = setup[3]
    run = _killed_copy(whole, tmp_path / "run", 1)
    with open(run / "results.jsonl", "a") as f:  # a kill in the middle of the next line
        f.write('{"index": 2, "te')
    with pytest.warns(UserWarning, match="at record 2: dropping 0 result line.* cut by a kill"):
        out = _run(setup, run)
    assert out.skipped == 2
    assert _files(run) == _files(whole)


def _refused_unchanged(setup, run, message, **kw):
    before = _files(run)
    with pytest.raises(ValueError, match=message):
        _run(setup, run, **kw)
    assert _files(run) == before, "a refused resume changed the run's files"


def test_results_shorter_than_the_store_are_refused(setup, tmp_path):
    run = _killed_copy(setup[3], tmp_path / "run", 2)
    text = (run / "results.jsonl").read_text()
    (run / "results.jsonl").write_text(text[:len(text) // 2])  # truncated mid-line
    _refused_unchanged(setup, run, "holds [12] complete results but the store .* holds 4 rows")


def test_results_far_ahead_of_the_store_are_not_dropped(setup, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(setup[3] / "results.jsonl", run)  # the store was moved away
    _refused_unchanged(setup, run, "holds 6 results but the store .* only 0 rows: more than "
                                   "one batch")


def test_damaged_line_in_the_middle_is_refused_naming_it(setup, tmp_path):
    run = _killed_copy(setup[3], tmp_path / "run", 2)
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    lines[1] = "{oops\n"
    (run / "results.jsonl").write_text("".join(lines))
    _refused_unchanged(setup, run, "line 2 is not JSON")
    lines[1] = json.dumps({"index": 7}) + "\n"
    (run / "results.jsonl").write_text("".join(lines))
    _refused_unchanged(setup, run, "line 2 holds the result of record 7, expected index 1")


def test_other_decode_settings_are_refused(setup, tmp_path):
    run = _killed_copy(setup[3], tmp_path / "run", 1)
    _refused_unchanged(setup, run, "stored identity differs from the given settings",
                       settings=DecodeSettings(N_NEW + 1, batch_size=BS))


def test_another_model_is_refused(setup, tmp_path):
    run = _killed_copy(setup[3], tmp_path / "run", 1)
    model, other = from_config(LlamaConfig.tiny(), seed=2)
    _refused_unchanged(setup, run, "stored identity differs from the given weights",
                       model=model, params=other)


def test_changed_records_are_refused(setup, tmp_path):
    records = setup[2]
    run = _killed_copy(setup[3], tmp_path / "run", 2)
    changed = [records[1], records[0], *records[2:]]  # same count, another first record
    _refused_unchanged(setup, run, r"records 0..1 encode to other prompts .* chunk "
                                   r"'chunk_00000'", records=changed)
