"""The study end to end on the tiny world model (every condition, a couple of steps), and the
statistics-only path on a user's CSV, which never loads a model."""

from __future__ import annotations

import json
import shutil

import pytest

from jaxreason.config_io import ConfigError
from jaxreason.probe.__main__ import cli
from jaxreason.studies import world_model
from jaxreason.studies.base import load_study
from jaxreason.tasks import cot_choice as cc

CONFIG = "configs/kv_transplant.yaml"


def test_stats_only_never_loads_a_model(tmp_path, capsys):
    rows = cc.world_rows(30, seed=5, steps=(1,))
    data = cc.write_cot_choice_csv(rows, tmp_path / "data.csv")
    out = tmp_path / "stats"
    code = cli(["--config", CONFIG, f"--data_path={data}", "--stats_only=true",
                f"--run_dir={out}", "--model_path=/nonexistent/model", "--unescape_newlines=true"])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    test, train = cc.split_indices(30)
    want = cc.dataset_statistics(rows, test, *cc.validation_split(train, 0.1)[::-1])
    assert m["dataset"]["reference_policies_test"] == json.loads(json.dumps(
        want["reference_policies_test"]))
    assert m["conditions"] == {} and "model" not in m
    assert "always_2" in (out / "report.md").read_text()
    assert json.loads(capsys.readouterr().out.split("report:")[0])["rows"] == 30


def test_config_refusals():
    with pytest.raises(ConfigError, match="conditions"):
        load_study(CONFIG, ["--conditions=[transplant, sideways]"])
    with pytest.raises(ConfigError, match="positive control"):
        load_study(CONFIG, ["--data_path=x.csv"])


@pytest.mark.parametrize("mode", ["faithful"])
def test_small_end_to_end_run(tmp_path, tiny_world_model, mode, monkeypatch):
    # a checked copy of the model: the report states the check beside the model
    model = tmp_path / "world" / "hf"
    shutil.copytree(tiny_world_model, model)
    monkeypatch.setattr(world_model, "evaluate_prompt_type",
                        lambda *a, **k: {"accuracy": 0.5, "n_shots": 4})
    with pytest.warns(UserWarning, match="under the 80%"):
        world_model.check_export(model, 2)
    config, study = load_study(CONFIG, [
        f"--model_path={model}", f"--run_dir={tmp_path / 'run'}", f"--mode={mode}",
        "--world_rows=36", "--steps=2", "--subbatch=4", "--subbatches_per_step=3",
        "--test_batch=4", "--val_fraction=0.2", "--progress=false", "--world_steps=[1]",
        "--length_bucket=64", "--conditions=[shuffled, positive_control]"])
    metrics = study(config)
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    conditions = ("shuffled", "positive_control")  # both transplant: one compiled program
    assert [r["condition"] for r in rows] == [c for c in conditions for _ in range(3)]
    assert [r["step"] for r in rows[:3]] == [0, 1, 2]
    for c in conditions:
        s = metrics["conditions"][c]
        assert s["rows"]["test"] > 0 and 0 <= s["final"]["test_f_c"] <= 1
        assert "test_orig_f_c" in s["final"] and "selected" in s
    # faithful training lines carry the original's (clamped) definitions only
    assert "train_orig_f_c_oc" in rows[1] and "train_f_c_oc" not in rows[1]
    assert "without_transplant" in metrics["conditions"]["positive_control"]
    assert (out / "test_f_c.png").is_file() and (out / "data.csv").is_file()
    report = (out / "report.md").read_text()
    assert "faithful mode" in report and "0.787" in report
    assert "World base model check: 50% exact match on 2 held-out" in report
    assert metrics["model_check"]["exact_match"] == 0.5
