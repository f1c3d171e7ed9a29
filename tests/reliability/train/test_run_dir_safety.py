"""A run directory that holds a run, or files a run did not write, is never overwritten by
accident: rerunning without ``--resume`` is refused, ``trainer.overwrite`` deletes only the
run's own files, a user's own ``config.yaml`` / ``metrics.jsonl`` is refused by name, and an
``hf/`` that is not an export is refused before the first step."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from jaxreason.config_io import ConfigError
from jaxreason.train.__main__ import cli
from jaxreason.train.run_dir import RunDirError

RUN = ("--trainer.steps=4", "--checkpoint.save_every=2")


def _digest(directory: Path) -> dict:
    """Path -> sha256 of every file below ``directory`` (what "unchanged" means here)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(train, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished")
    train(run_dir, *RUN)
    return run_dir


def test_rerun_into_finished_run_is_refused_and_changes_nothing(finished, train):
    before = _digest(finished)
    assert any(k.startswith("checkpoints/4/") for k in before) and "metrics.jsonl" in before
    with pytest.raises(RunDirError, match=r"already holds a training run \(checkpoints of "
                                          r"steps \[2, 4\].*--resume.*--overwrite") as e:
        train(finished, *RUN)
    assert str(finished) in str(e.value)
    assert _digest(finished) == before


def test_cli_refusal_is_one_message_not_a_traceback(finished, base_args, capsys):
    assert cli([*base_args, f"--trainer.run_dir={finished}", *RUN]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: trainer.run_dir=") and "Traceback" not in err


def test_overwrite_deletes_only_the_runs_own_files(train, tmp_path):
    train(tmp_path, *RUN)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoints" / "README").write_text("also mine")
    old_rows = (tmp_path / "metrics.jsonl").read_text()
    _, rows = train(tmp_path, "--trainer.steps=3", "--checkpoint.save_every=3",
                    "--trainer.overwrite=true")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (tmp_path / "metrics.jsonl").read_text() != old_rows
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "README"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "checkpoints" / "README").read_text() == "also mine"


@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_users_own_file_in_a_fresh_run_dir_is_not_overwritten(name, overwrite, train, tmp_path):
    (tmp_path / name).write_text("a user's file\n")
    with pytest.raises(RunDirError, match="which no jaxreason run wrote") as e:
        train(tmp_path, "--trainer.steps=2", f"--trainer.overwrite={str(overwrite).lower()}")
    assert str(tmp_path / name) in str(e.value)
    assert (tmp_path / name).read_text() == "a user's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_users_hf_directory_is_refused_before_training(train, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "thesis.tex").write_text("\\section{}")
    with pytest.raises(ConfigError, match=r"checkpoint.export_hf: .*hf.*not empty") as e:
        train(tmp_path, "--trainer.steps=2", "--checkpoint.export_hf=true")
    assert "thesis.tex" in str(e.value) or "not empty" in str(e.value)
    assert (tmp_path / "hf" / "thesis.tex").read_text() == "\\section{}"
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before the first step


def test_resume_and_overwrite_together_are_refused(tmp_path, config_for):
    with pytest.raises(ConfigError, match="choose one"):
        config_for(tmp_path, "--checkpoint.resume=true", "--trainer.overwrite=true")
