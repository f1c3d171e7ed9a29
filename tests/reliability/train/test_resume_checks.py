"""``--resume`` never starts over silently and never resumes a different model: a missing or
checkpoint-less run directory is refused, a changed model names the fields that differ, and
every other changed setting is reported in one line."""

from __future__ import annotations

import pytest

from jaxreason.train.resume import ModelChanged, config_changes
from jaxreason.train.run_dir import RunDirError

RUN = ("--trainer.steps=2", "--checkpoint.save_every=2")


@pytest.fixture(scope="module")
def saved(train, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("saved")
    train(run_dir, *RUN)
    return run_dir


def test_resume_of_a_missing_directory_is_refused(saved, train):
    typo = saved.parent / (saved.name + "x")
    with pytest.raises(RunDirError, match=r"checkpoint.resume .*does not exist, so there is "
                                          r"nothing to resume") as e:
        train(typo, *RUN, "--checkpoint.resume=true")
    assert str(typo) in str(e.value) and not typo.exists()


def test_resume_of_a_run_without_checkpoints_is_refused(train, tmp_path):
    train(tmp_path, "--trainer.steps=2")  # checkpoint.save_every=0: no checkpoints
    rows = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match=r"holds a run that saved no checkpoint.*save_every "
                                          r"> 0.*--overwrite"):
        train(tmp_path, "--trainer.steps=4", "--checkpoint.resume=true")
    assert (tmp_path / "metrics.jsonl").read_text() == rows


@pytest.mark.parametrize("overrides, named", [
    (["--model.overrides={num_layers: 3}"], "model.overrides.num_layers 3 (checkpoint: 'not set')"),
    (["--model.preset=llama-tiny"], "model.preset 'llama-tiny' (checkpoint: 'gpt2-tiny')"),
    (["--peft.mode=lora"], "peft.mode 'lora' (checkpoint: 'all')"),
])
def test_changed_model_is_refused_naming_the_fields(overrides, named, saved, train, capfd):
    capfd.readouterr()
    with pytest.raises(ModelChanged, match="another model or other trained parameters") as e:
        train(saved, "--trainer.steps=4", *RUN[1:], *overrides, "--checkpoint.resume=true")
    assert named in str(e.value) and "step 2" in str(e.value)
    assert len(str(e.value).splitlines()) == 1 and "Traceback" not in capfd.readouterr().err


def test_changed_training_settings_are_accepted_and_reported(saved, train, tmp_path, capfd):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(saved, run_dir)
    capfd.readouterr()
    _, rows = train(run_dir, "--trainer.steps=4", *RUN[1:], "--optimizer.lr=1e-3",
                    "--data.batch_size=8", "--checkpoint.resume=true")
    lines = [x.split("jaxreason.train: ", 1)[1] for x in capfd.readouterr().err.splitlines()
             if x.startswith("jaxreason.train: resuming with")]
    assert lines == ["resuming with data.batch_size 8 (checkpoint: 16)",
                     "resuming with optimizer.lr 0.001 (checkpoint: 0.003)",
                     "resuming with trainer.steps 4 (checkpoint: 2)"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["lr"] == pytest.approx(1e-3)


def test_config_changes_ignore_launch_settings_and_schema_drift():
    saved = {"trainer": {"run_dir": "a", "progress": True, "steps": 2},
             "data": {"task_args": {"rows": 4}}, "old_section": {"x": 1}}
    current = {"trainer": {"run_dir": "b", "progress": False, "steps": 2.0, "overwrite": False},
               "data": {"task_args": {"rows": 4, "length": 9}}}
    assert config_changes(saved, current) == [("data.task_args.length", 9, "not set")]


def test_resume_auto_starts_a_first_run_with_one_line_and_continues_later(train, tmp_path,
                                                                          capfd):
    """``checkpoint.resume=auto`` (job arrays, preemptible jobs, studies): the first launch
    starts at step 0 saying so, the next one resumes; a finished run without checkpoints is
    refused rather than trained again."""
    capfd.readouterr()
    train(tmp_path / "a", "--trainer.steps=2", "--checkpoint.save_every=2",
          "--checkpoint.resume=auto")
    err = capfd.readouterr().err
    assert [x for x in err.splitlines() if "resume=auto" in x] == [
        f"jaxreason.train: checkpoint.resume=auto: no checkpoint in "
        f"{tmp_path / 'a' / 'checkpoints'} yet; starting at step 0"]
    _, rows = train(tmp_path / "a", "--trainer.steps=3", "--checkpoint.save_every=2",
                    "--checkpoint.resume=auto")
    assert "resuming from checkpoint step 2" in capfd.readouterr().err
    assert [r["step"] for r in rows] == [1, 2, 3]
    train(tmp_path / "b", "--trainer.steps=2")
    with pytest.raises(RunDirError, match="resume=auto: .*finished run without checkpoints"):
        train(tmp_path / "b", "--trainer.steps=2", "--checkpoint.resume=auto")
