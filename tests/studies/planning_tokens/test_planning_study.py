"""The planning-token study: the rescore command on a small outputs file, config errors, and
one small end-to-end run on the tiny world model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxreason.config_io import ConfigError
from jaxreason.probe.__main__ import cli
from jaxreason.studies.base import load_study

ROOT = Path(__file__).resolve().parents[3]
CONFIG = str(ROOT / "configs" / "planning_tokens.yaml")


def test_rescore_command(tmp_path, capsys):
    tests = [{"question": f"Is {w} wet?", "answer": a, "cot_steps": ["[rag]: x"], "split": "test"}
             for w, a in (("water", "True"), ("sand", "False"), ("ice", "True"))]
    tests.append({"question": "Ignored?", "answer": "True", "cot_steps": ["[rag]: x"],
                  "split": "train"})
    outputs = [  # the full sequence, as the original's eval.py decodes it
        {"generated_text": "Question: Is sand wet?\n <prefix_0> The answer is: False\n",
         "result": "correct"},
        {"generated_text": "Question: Is water wet?\n The answer is: true\n", "result": "correct"},
        {"generated_text": "no question here The answer is: True", "result": "correct"},
        {"generated_text": "Question: Is ice wet?\n I think so", "result": "wrong"}]
    (tmp_path / "test.json").write_text(json.dumps(tests))
    (tmp_path / "out.json").write_text(json.dumps(outputs))
    args = ["--config", CONFIG, "--dataset=strategyqa", "--mode=faithful",
            f"--rescore={tmp_path / 'out.json'}", f"--test_file={tmp_path / 'test.json'}"]
    assert cli(args) == 0
    printed = json.loads(capsys.readouterr().out.split("\nreport:")[0])
    # faithful compares case-sensitively: "true" is wrong against "True" (the file says
    # correct); the unmatched third output falls back to its position (record 3: True)
    assert printed["accuracy"] == 2 / 4 and printed["released_accuracy"] == 3 / 4
    assert printed["agreement"] == 3 / 4
    assert printed["matched_by_question"] == 3 and printed["matched_by_position"] == 1
    assert cli(args[:2] + ["--dataset=strategyqa", "--mode=fixed", *args[4:]]) == 0
    assert json.loads(capsys.readouterr().out.split("\nreport:")[0])["accuracy"] == 3 / 4


@pytest.mark.parametrize("override,message", [
    ("--dataset=strategyqa", "needs train_file and test_file"),
    ("--qwen_padding_rows_bug=true", "mode=faithful only"),
    ("--epochs=0", "epochs=0 must be positive"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_study(CONFIG, [override])


def test_small_end_to_end_run(tiny_world_model, tmp_path):
    config, study = load_study(CONFIG, [
        f"--run_dir={tmp_path / 'run'}", f"--model_path={tiny_world_model}", "--train_size=16",
        "--test_size=4", "--epochs=2", "--batch_size=16", "--warmup_steps=0",
        "--eval_batch_size=4", "--max_new_tokens=6", "--attention_examples=2",
        "--progress=false", "--variants=[{name: paper}]"])
    metrics = study(config)
    paper = metrics["variants"]["paper"]
    assert [r["epoch"] for r in paper["per_epoch"]] == [1, 2]
    assert paper["steps_per_epoch"] == 1 and paper["steps"] == 2
    assert paper["vocab"]["first_id"] == paper["vocab"]["rows"]
    assert paper["headline_epoch"] == paper["last_epoch"] == 2  # fixed mode
    assert paper["unknown_tokens_in_training"] == 0  # fixed ids: no whitespace <unk>
    run = tmp_path / "run"
    for name in ("report.md", "metrics.json", "accuracy_per_epoch.png", "attention_heatmap.png",
                 "paper/prompt_text.json", "paper/epochs/epoch_1/adapter.safetensors",
                 "paper/epochs/epoch_2/input_embeddings.safetensors",
                 "paper/eval/epoch_2/results.jsonl", "paper/peft_export/adapter_config.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "paper/eval/epoch_1/results.jsonl").open()]
    assert len(rows) == 4 and all("correct" in r and "step_types" in r for r in rows)
    assert "fixed mode" in (run / "report.md").read_text()
    assert "World base model check" not in (run / "report.md").read_text()  # none stored
