"""Capture, generation and HF loading run sharded (8 fake CPU devices) with the single-device
results. The device count is fixed when JAX starts, so the work runs in a subprocess."""

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def report(fake_devices):
    return fake_devices(Path(__file__).with_name("_sharding_inference_worker.py"), 8)


def test_every_family_and_mesh_ran(report):
    assert sorted(report) == ["gpt2/2x2x2", "llama-scan/2x2x2", "llama/2x2x2", "llama/8x1x1"]


def test_sharded_forward_and_captures_match_single_device(report):
    for key, r in report.items():
        assert r["logits"] < 1e-5, key
        assert r["captures"] < 1e-5, key
        assert r["capture_batch_sharded"], key


def test_sharded_generation_matches_single_device(report):
    for key, r in report.items():
        assert r["generate_tokens_equal"], key
        assert r["generate_capture"] < 1e-5, key


def test_hf_checkpoint_loads_straight_into_the_sharding(report):
    for key, r in report.items():
        assert r["loaded_shardings_match"], key
    assert report["llama/2x2x2"]["some_param_split"]
    assert report["llama-scan/2x2x2"]["some_param_split"]
