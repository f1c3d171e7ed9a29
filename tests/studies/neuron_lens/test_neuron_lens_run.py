"""One small end-to-end run of the neuron lens on the tiny world model: every stage, every
output file, metrics that add up, and a rerun that resumes every decoding run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxreason.config_io import load_config
from jaxreason.studies.neuron_lens.config import NeuronLensConfig
from jaxreason.studies.neuron_lens.run import run

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def _config(model_dir, run_dir, **kw) -> NeuronLensConfig:
    base = dict(model_path=str(model_dir), run_dir=str(run_dir), dtype="float32",
                prompt_types=("cot_prompt",), world_shots=1, num_problems=4, batch_size=4,
                max_new_tokens=8, neuron_examples=2, neuron_steps=6, top_k=8,
                promoted_tokens=20, min_seed_hits=1, sample_correct=False,
                random_controls=("same_count",), progress=False)
    base.update(kw)
    return NeuronLensConfig(**base)


@pytest.fixture(scope="module")
def finished(tiny_world_model, tmp_path_factory):
    # one prompt type and one random control keep the compiled programs few: the clean
    # corruption reuses the inference programs, the two zeroing runs share theirs
    config = _config(tiny_world_model, tmp_path_factory.mktemp("neuron_lens") / "run")
    return config, run(config)


def test_every_stage_writes_its_outputs(finished):
    config, m = finished
    out = Path(config.run_dir)
    for name in ("metrics.json", "report.md", "neurons.json", "neurons.tsv",
                 "concept_neurons.tsv", "concept_layers.png", "ablation.png",
                 "prompt_variants.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["mode"] \
        == "fixed"
    assert set(m["accuracy"]) == {"cot_prompt"}
    assert set(m["accuracy"]["cot_prompt"]) == {"faithful", "fixed"}
    assert m["dominant"]["examples"] == 2 and len(m["dominant"]["per_layer"]) == 1
    assert m["concepts"]["skipped_layers"] == 0 and m["concepts"]["seed_words"] == "world"
    assert set(m["ablation"]) == {"corrupt_faithful", "corrupt_clean", "zero"}
    for rows in m["ablation"].values():
        assert {"none", "concept", "same_count"} == set(rows)
        assert all(0.0 <= v["fixed"] <= 1.0 for v in rows.values())
    hist = m["concepts"]["histogram"]
    assert {c: sum(v) for c, v in hist.items()} == m["concepts"]["counts"]
    assert [c["claim"] for c in m["claims"]] == [1, 2, 3, 4]
    assert set(m["ablation_tests"]) == set(m["ablation"])
    assert all(0 <= t["concept_vs_same_count"]["p"] <= 1 for t in m["ablation_tests"].values())
    assert m["targets"]["same_count"] and len(m["targets"]["same_count"]) == len(
        set(m["targets"]["concept"]))
    report = (out / "report.md").read_text()
    assert "fixed mode" in report and "16.83%" in report and "seed_tokens" in report
    assert "World base model check" not in report  # a model with no check beside it


def test_rerun_resumes_every_decoding_run(finished):
    config, first = finished
    with pytest.warns(UserWarning, match="resuming"):
        again = run(config)
    assert again["accuracy"] == first["accuracy"] and again["ablation"] == first["ablation"]
    assert again["concepts"]["neurons"] == first["concepts"]["neurons"]


def test_the_embedded_configs_load():
    config = load_config(NeuronLensConfig, CONFIGS / "neuron_lens.yaml")
    assert config.model_path == "" and config.labeller == "seed_tokens"
    llama = load_config(NeuronLensConfig, CONFIGS / "neuron_lens_llama2.yaml")
    assert llama.top_k == 20 and llama.neuron_steps == 149 and llama.max_new_tokens == 500


@pytest.mark.slow
def test_two_prompt_types_both_controls_faithful_mode(tiny_world_model, tmp_path):
    config = _config(tiny_world_model, tmp_path / "run", mode="faithful",
                     prompt_types=("cot_prompt", "equation_only"),
                     random_controls=("original", "same_count"), save_original_json=True)
    m = run(config)
    assert set(m["variants"]) == {"cot_prompt", "equation_only"}
    assert set(m["ablation"]["zero"]) == {"none", "concept", "original", "same_count"}
    assert (tmp_path / "run" / "algorithm_one" / "cot_prompt" / "cot_all_1.json").is_file()
    assert "faithful mode" in (tmp_path / "run" / "report.md").read_text()
