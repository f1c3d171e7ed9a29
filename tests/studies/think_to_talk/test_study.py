"""One small Think-to-Talk run end to end through the command line: train (2 steps), decode
and export, probe, patch, plot, report; a second run reuses the finished exports."""

import json

import numpy as np
import pytest
import yaml

from jaxreason.probe.__main__ import cli

CONFIG = {
    "study": "think_to_talk", "mode": "faithful", "tasks": ["2step"],
    "test_size": 8, "probing_train_size": 16, "batch_size": 8, "max_new_tokens": 4,
    "probe_train_on": "all", "patch_pairs": 8, "progress": False,
    "patches": [{"name": "tf", "start_layer": 1, "start": 13, "end": 14,
                 "expect": ["<edited>", ";"], "teacher_force": 38}],
    "probe": {"probes": ["sgd", "logreg"], "sgd_steps": 5, "logreg_steps": 5},
    "train": {"model": {"preset": "llama-tiny",
                        "overrides": {"vocab_size": 71, "max_position_embeddings": 320}},
              "data": {"source": "formulas", "task_args": {"rows": 16, "seq_len": 256,
                                                           "configs": ["2step"]},
                       "batch_size": 4, "eval_fraction": 0.0},
              "trainer": {"steps": 2, "log_every": 1, "eval_every": 100, "progress": False,
                          "plot": False}},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ttt")
    config = json.loads(json.dumps(CONFIG))
    config["run_dir"] = str(out / "run")
    config["train"]["trainer"]["run_dir"] = str(out / "run" / "train")
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli(["--config", str(path)]) == 0
    first = (out / "run" / "probe_results.jsonl").read_text()
    assert cli(["--config", str(path), "--skip_training=true"]) == 0
    return out / "run", first


def test_outputs_exist(run):
    run_dir, _ = run
    for name in ("metrics.json", "report.md", "probe_results.jsonl",
                 "heatmap_2step_sgd_v0.png", "heatmap_2step_logreg_v1.png",
                 "patching_tf_v0.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "states" / "2step" / "test" / "manifest.json").exists()


def test_rows_cover_every_layer_position_variable_and_probe(run):
    run_dir, _ = run
    rows = [json.loads(line) for line in (run_dir / "probe_results.jsonl").read_text().splitlines()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    positions = metrics["tasks"]["2step"]["positions"]
    test_rows = [r for r in rows if r["condition"] == "test"]
    assert len(test_rows) == 2 * 3 * positions * 2  # kinds x hidden indices 0..2 x P x vars
    assert {r["mode"] for r in rows} == {"faithful"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    patched = [r for r in rows if r["condition"] == "patched:tf"]
    assert len(patched) == len(test_rows)
    # the source tokens label the positions: 2step's source ends with " =" "?"
    by_pos = {r["position"]: r["token"] for r in test_rows}
    assert by_pos[17] == "?" and by_pos[14] == " ;"


def test_metrics_and_report_state_the_mode_and_the_patching(run):
    run_dir, _ = run
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["mode"] == "faithful" and m["layers"] == [0, 1, 2]
    t = m["tasks"]["2step"]
    assert t["source_length"] == 18 and t["positions"] >= 18
    assert np.isclose(sum(t["chance"]) / 2, np.mean(t["chance"]))
    p = m["patching"]["tf"]
    assert p["pairs"] == 8 and p["patched_tokens"][1] == ";"
    report = (run_dir / "report.md").read_text()
    assert "faithful" in report and "Activation patching" in report
    assert "chance" in report.lower()


def test_a_second_run_reuses_the_exports(run):
    run_dir, first = run
    # the exports were complete, so nothing was decoded again: identical probe rows
    assert (run_dir / "probe_results.jsonl").read_text() == first


def _char_tokenizer():
    """A character-level HF tokenizer over the formula alphabet (built here, no download)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from jaxreason.tasks.formulas import LETTERS

    chars = ["<unk>", " ", "?", "=", "+", "-", ",", ";", "\n"] + list("0123456789") + list(LETTERS)
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[],
                              unk_token="<unk>"))
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


def test_a_local_hf_checkpoint_runs_with_its_own_token_positions(tmp_path):
    """model_path: a HF Llama directory with its tokenizer. A character-level tokenizer puts
    the edited digit at 20 (not Llama-3's 13): the original's positions are refused with the
    source's tokens listed, the right ones run."""
    import torch
    import transformers

    tok = _char_tokenizer()
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512))
    hf.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    config = {k: v for k, v in CONFIG.items() if k != "train"}
    config.update(model_path=str(tmp_path / "model"), run_dir=str(tmp_path / "run"),
                  mode="faithful", probe={"probes": ["logreg"], "logreg_steps": 3},
                  patches=[{"name": "v2_edit", "start_layer": 1, "start": 13, "end": 14,
                            "expect": ["<edited>", ";"]}])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"patch position 13 holds .* 20:'\d' \| 21:'' \| 22:';'"):
        cli(["--config", str(path)])
    config["patches"][0].update(start=20, end=22, expect=["<edited>", "", ";"])
    path.write_text(yaml.safe_dump(config))
    assert cli(["--config", str(path)]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["tasks"]["2step"]["source_length"] == 28  # one token per character
    assert m["patching"]["v2_edit"]["patched_tokens"][1:] == ["", ";"]
