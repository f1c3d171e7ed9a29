"""Bad inputs a new user gives the study command line and the LLM client config: each is
refused before anything long runs, naming the key, the bad value and what is allowed; a run
directory that holds other outputs is never overwritten silently."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import yaml

from jaxreason.config_io import ConfigError
from jaxreason.llm.config import LLMConfig, read_api_key
from jaxreason.llm.errors import LLMConfigError
from jaxreason.probe.__main__ import cli
import jaxreason.studies.think_to_talk.run as ttt_run
from jaxreason.studies.base import load_study, prepare_run_dir

TTT, KTH = "configs/think_to_talk.yaml", "configs/mechprobe_kth.yaml"
LLAMA = "configs/mechprobe_llama_proofwriter.yaml"

LOAD_CASES = [
    (TTT, ["--tset_size=5"], r"unknown key 'tset_size'. Did you mean 'test_size'\?"),
    (TTT, ["--test_size=abc"], "test_size must be an integer, got 'abc'"),
    (TTT, ["--tasks=[5step]"], r"tasks: unknown \['5step'\]; known: \['1step'"),
    (TTT, ["--test_size=-1"], "test_size=-1 must be positive"),
    (TTT, ["--patch_pairs=-3"], "patch_pairs=-3 must be positive"),
    (TTT, ["--shots=-1"], r"shots=-1 must be non-negative \(>= 0\)"),
    (TTT, ["--layer_step=0"], r"layer_step=0 must be positive \(>= 1\)"),
    (TTT, ["--dtype=float7"], r"dtype = 'float7' is not a compute dtype; choose one of \['float32'"),
    (TTT, ["--mode=bogus"], r"mode = 'bogus' is not allowed; choose one of \['faithful', 'fixed'\]"),
    (TTT, ["--patches=[{name: a, start: -1, end: 14}]"],
     r"patches\[0\] \('a'\): start=-1, end=14.*allowed: 0 <= start <= end"),
    (TTT, ["--patches=[{name: a, start: 13, end: 15}]"],
     r"patches\[0\] \('a'\): expect has 2 entries for the 3 positions 13..15"),
    (TTT, ["--general_prompt_for=[3step]", "--tasks=[2step]"],
     r"general_prompt_for: \['3step'\] are not in tasks"),
    (KTH, ["--probe_examples=-5"], "probe_examples=-5 must be positive"),
    (KTH, ["--batch_size=0"], "batch_size=0 must be positive"),
    (KTH, ["--masking_fractions=[2.0]"], r"\[2.0\] lie outside \[0, 1\]"),
    (KTH, ["--random_mask_draws=-1"], "random_mask_draws=-1 must be positive"),
    (LLAMA, ["--icl_num=-1"], "icl_num=-1 must be non-negative"),
    (LLAMA, ["--pad_multiple=0"], "pad_multiple=0 must be positive"),
    (LLAMA, ["--keep_layers=[-1]"], r"keep_layers=\(-1,\) must be non-negative"),
    (LLAMA, ["--dtype=float7"], "dtype = 'float7' is not a compute dtype"),
]


@pytest.mark.parametrize("path,overrides,message", LOAD_CASES)
def test_bad_config_values_are_refused_at_load(path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_study(path, overrides)


def test_unknown_study_names_the_registered_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("study: bogus\n")
    with pytest.raises(ConfigError, match=r"unknown study 'bogus'; registered: \['kv_transplant', 'mechprobe_kth'"):
        load_study(path)


def test_cli_reports_a_bad_mode_in_one_line(capsys):
    assert cli(["--config", TTT, "--mode=bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: mode = 'bogus' is not allowed") and "Traceback" not in err


# ----------------------------------------------------------------------------- at run time
# Every case below is refused before the model is trained or loaded: the configs would
# otherwise train for minutes.


def _ttt(tmp_path, **changes):
    config, study = load_study(TTT, [f"--run_dir={tmp_path / 'run'}",
                                     f"--train.trainer.run_dir={tmp_path / 'run' / 'train'}",
                                     "--progress=false"])
    return dataclasses.replace(config, **changes), study


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the study started training before refusing its input")
    monkeypatch.setattr(ttt_run, "train_or_load", refuse)


def _refused_before_training(config, study, message):
    with pytest.raises(ConfigError, match=message):
        study.run(config)


def test_model_path_that_does_not_exist(tmp_path, no_training):
    config, study = _ttt(tmp_path, model_path=str(tmp_path / "nope"))
    _refused_before_training(config, study, r"model_path = '.*nope' is not a local directory")


def test_model_path_that_is_not_a_hf_folder(tmp_path, no_training):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "notes.txt").write_text("x")
    config, study = _ttt(tmp_path, model_path=str(tmp_path / "weights"))
    _refused_before_training(config, study, r"is not a HF checkpoint folder: it needs "
                                            r"config.json .* found \['notes.txt'\]")


def test_patch_positions_outside_the_prompt(tmp_path, no_training):
    config, study = _ttt(tmp_path)
    bad = dataclasses.replace(config.patches[0], start=30, end=31)
    config = dataclasses.replace(config, patches=(bad,))
    _refused_before_training(config, study, r"patches\[0\] \('v2_edit'\): patch positions "
                                            r"30..31 must satisfy 0 <= start <= end < 18")


def test_run_dir_that_is_a_file(tmp_path, no_training):
    (tmp_path / "run").write_text("my notes")
    config, study = _ttt(tmp_path)
    _refused_before_training(config, study, "run_dir = .* is a file, not a directory")
    assert (tmp_path / "run").read_text() == "my notes"


def test_run_dir_of_another_study_is_not_overwritten(tmp_path, no_training):
    run = tmp_path / "run"
    run.mkdir()
    (run / "study.json").write_text(json.dumps({"study": "mechprobe_kth", "mode": "fixed"}))
    (run / "metrics.json").write_text('{"kth": 1}')
    config, study = _ttt(tmp_path)
    _refused_before_training(config, study, "holds the outputs of study 'mechprobe_kth', not "
                                            "'think_to_talk'; refusing to overwrite")
    assert (run / "metrics.json").read_text() == '{"kth": 1}'


def test_unmarked_outputs_in_run_dir_are_not_overwritten(tmp_path, no_training):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text("my report")
    config, study = _ttt(tmp_path)
    _refused_before_training(config, study, r"holds \['report.md'\] but no study.json")
    assert (run / "report.md").read_text() == "my report"


def test_the_same_study_resumes_and_says_so(tmp_path):
    config, _ = _ttt(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = prepare_run_dir(config)  # fresh: no warning
    assert json.loads((out / "study.json").read_text()) == {"study": "think_to_talk",
                                                            "mode": "fixed"}
    with pytest.warns(UserWarning, match=r"resuming .* \(study 'think_to_talk'\) \(mode "
                                         r"'fixed' -> 'faithful'\): finished exports"):
        prepare_run_dir(dataclasses.replace(config, mode="faithful"))


def test_patch_start_layer_past_the_model_is_refused_before_decoding(tmp_path, monkeypatch):
    """A tiny local HF Llama (2 blocks) with a character tokenizer, built here."""

    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from jaxreason.tasks.formulas import LETTERS

    chars = ["<unk>", " ", "?", "=", "+", "-", ",", ";", "\n", *"0123456789", *LETTERS]
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[],
                              unk_token="<unk>"))
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    config, study = _ttt(tmp_path, model_path=str(tmp_path / "model"))
    patch = dataclasses.replace(config.patches[0], start_layer=9, start=20, end=22,
                                expect=("<edited>", "", ";"))
    config = dataclasses.replace(config, patches=(patch,))

    def no_decoding(*a, **k):
        raise AssertionError("decoding started before the patch settings were checked")
    monkeypatch.setattr(ttt_run, "decode_problems", no_decoding)
    with pytest.raises(ConfigError, match=r"patches\[0\].start_layer=9 is past the model's "
                                          r"hidden-state indices 0..2"):
        study.run(config)


# ----------------------------------------------------------------------------- LLM client


@pytest.mark.parametrize("kw,message", [
    ({"timeout_s": "abc"}, "timeout_s must be a number, got 'abc'"),
    ({"timeout_s": float("nan")}, "timeout_s must be a number, got nan"),
    ({"backoff_jitter": "x"}, "backoff_jitter must be a number"),
    ({"seed": "x"}, "seed must be an integer"),
    ({"offline": "yes", "cache_dir": "c"}, "offline must be true or false"),
])
def test_llm_config_values_of_the_wrong_type(kw, message):
    with pytest.raises(LLMConfigError, match=message):
        LLMConfig(model="m", **kw)


def test_llm_cache_dir_that_is_a_file(tmp_path):
    (tmp_path / "cache").write_text("x")
    with pytest.raises(LLMConfigError, match=r"cache_dir='.*cache' is a file, not a folder"):
        LLMConfig(model="m", cache_dir=str(tmp_path / "cache"))


def test_llm_api_key_env_that_is_not_set(monkeypatch):
    monkeypatch.delenv("JAXREASON_TEST_UNSET_KEY", raising=False)
    config = LLMConfig(model="m", api_key_env="JAXREASON_TEST_UNSET_KEY")
    with pytest.raises(LLMConfigError, match="JAXREASON_TEST_UNSET_KEY is not set"):
        read_api_key(config)


def test_llm_config_from_yaml_names_the_key(tmp_path):
    from jaxreason.config_io import from_dict

    with pytest.raises(ConfigError, match="timeout_s must be a number, got 'soon'"):
        from_dict(LLMConfig, yaml.safe_load("model: m\ntimeout_s: soon\n"))
