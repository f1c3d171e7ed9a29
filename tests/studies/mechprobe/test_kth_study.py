"""The MechanisticProbe k-th smallest study end to end on a tiny model (about 30 s):
training through jaxreason.train, probing, causal analysis, figures and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxreason.config_io import ConfigError
from jaxreason.probe.__main__ import cli
from jaxreason.studies.base import load_study

SMOKE = """
study: mechprobe_kth
mode: {mode}
run_dir: {root}/study_{mode}
probe_examples: 128
eval_examples: 256
batch_size: 128
masking_fractions: [0.25, 0.5]
train:
  model:
    preset: gpt2
    overrides: {{vocab_size: 35, hidden_size: 64, num_layers: 2, num_heads: 4,
                intermediate_size: 128, max_position_embeddings: 16}}
  data:
    source: kth_smallest
    task_args: {{k: 1, rows: 30000, numbers: 32}}
    batch_size: 64
    eval_fraction: 0.01
  optimizer: {{lr: 2.0e-3}}
  trainer: {{steps: 150, objective: last_token, eval_every: 150, run_dir: {root}/train,
            progress: false, plot: false}}
  checkpoint: {{save_every: 150}}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train once, then probe in both modes (the second run reuses the finished training)."""
    root = tmp_path_factory.mktemp("mechprobe")
    out = {}
    for mode in ("fixed", "faithful"):
        path = root / f"{mode}.yaml"
        path.write_text(SMOKE.format(mode=mode, root=root))
        assert cli(["--config", str(path)]) == 0
        out[mode] = root / f"study_{mode}"
    return out


def test_trained_model_probes_clearly_above_random(runs):
    for mode, run_dir in runs.items():
        m = json.loads((run_dir / "metrics.json").read_text())
        assert m["mode"] == mode
        assert m["test_accuracy"] > m["random_test_accuracy"] + 0.2, mode
        assert m["f1_p1_trained"] > m["f1_p1_random"] + 0.1, mode
        assert m["S_P1"] > 0.2, mode


def test_report_and_figures_are_written(runs):
    for mode, run_dir in runs.items():
        m = json.loads((run_dir / "metrics.json").read_text())
        report = (run_dir / "report.md").read_text()
        assert f"mode `{mode}`" in report and "S_P1" in report and "Original (12 layers)" in report
        # the original's slots (positions 8 and 12, 1-based) and its one random masking draw
        assert m["case_study_slots"] == [7, 11] and "position 8 (leaf)" in report
        assert m["random_mask_draws"] == (1 if mode == "faithful" else 3)
        assert m["data_seed"] == 42
        assert len(m["figures"]) == 10
        for name in m["figures"]:
            assert (run_dir / name).stat().st_size > 1000, name
        curves = m["masking"]
        assert set(curves) == {"random", "low position entropy", "low size entropy"}
        assert all(len(v) == 3 for v in curves.values())
        # masking nothing is the unmasked accuracy
        assert curves["random"][0] == pytest.approx(m["test_accuracy"])
        h = np.asarray(m["entropy_position"])
        assert h.shape == (2, 4) and ((h >= 0) & (h <= 1 + 1e-6)).all()


def test_unknown_study_and_bad_keys_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: mechprob_kth\n")
    with pytest.raises(ConfigError, match="Did you mean 'mechprobe_kth'"):
        load_study(bad)
    bad.write_text("study: mechprobe_kth\nprobe_exmaples: 3\n")
    with pytest.raises(ConfigError, match="probe_examples"):
        load_study(bad)
