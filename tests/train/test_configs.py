"""The training config schema: every shipped YAML loads, and mistakes are reported clearly.

No model is built here: these tests only parse and validate configs, so they take
milliseconds each.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jaxreason.config_io import ConfigError, to_dict
from jaxreason.train.__main__ import cli
from jaxreason.train.config import TrainConfig, load_train_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# study configs (a top-level `study:` key) are checked by tests/studies/test_study_configs.py
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.yaml")
                      if "study" not in (yaml.safe_load(p.read_text()) or {}))


def test_config_dir_is_found():
    """The glob below really sees the shipped configs (an empty list would pass vacuously)."""
    assert len(CONFIG_FILES) >= 3, CONFIG_DIR


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_loads_and_round_trips(path, tmp_path):
    """Each file in configs/ validates, and its dumped form loads back to an equal config."""
    config = load_train_config(path)
    assert isinstance(config, TrainConfig)
    raw = yaml.safe_load(path.read_text())
    for section, values in raw.items():  # what the file says is what the config holds
        for key, value in values.items():
            got = getattr(getattr(config, section), key)
            assert to_dict(got) == value, (section, key, got, value)
    dumped = tmp_path / "again.yaml"
    dumped.write_text(yaml.safe_dump(to_dict(config)))
    assert load_train_config(dumped) == config


def test_shipped_config_values():
    """Spot checks: YAML numbers, nested task args and the LoRA section come through typed."""
    gpt2 = load_train_config(CONFIG_DIR / "copy_gpt2_tiny.yaml")
    assert gpt2.optimizer.lr == pytest.approx(3e-3) and isinstance(gpt2.optimizer.lr, float)
    assert gpt2.data.task_args == {"rows": 2048, "length": 8, "symbols": 16}
    assert gpt2.schedule.kind == "cosine" and gpt2.checkpoint.best_metric == "eval_loss"
    lora = load_train_config(CONFIG_DIR / "copy_llama_lora.yaml", ["--trainer.steps=7"])
    assert lora.peft.mode == "lora+new-embeddings" and lora.peft.new_tokens == 2
    assert lora.peft.lora_alpha == 16.0 and lora.trainer.steps == 7


def test_overrides_are_parsed_as_yaml_and_coerced():
    """``1e-3`` (a string to YAML 1.1) becomes a float; lists become tuples; null clears."""
    c = load_train_config(None, ["--optimizer.lr=1e-3", "--optimizer.grad_clip=null",
                                 "--trainer.classify_tokens=[5, 7]", "--trainer.steps", "12",
                                 "--mesh.fsdp=2"])
    assert c.optimizer.lr == 1e-3 and c.optimizer.grad_clip is None
    assert c.trainer.classify_tokens == (5, 7) and c.trainer.steps == 12 and c.mesh.fsdp == 2


@pytest.mark.parametrize("override, named, suggestion", [
    ("--optimizer.lrr=1", "'lrr'", "'lr'"),
    ("--optimzer.lr=1", "'optimzer'", "'optimizer'"),
    ("--trainer.step=5", "'step'", "'steps'"),
    ("--peft.lora_rnk=4", "'lora_rnk'", "'lora_rank'"),
])
def test_unknown_key_names_it_and_suggests(override, named, suggestion):
    """An unknown key is an error naming the key and the closest allowed one."""
    with pytest.raises(ConfigError) as e:
        load_train_config(None, [override])
    msg = str(e.value)
    assert named in msg and f"Did you mean {suggestion}?" in msg and "Allowed keys" in msg


def test_unknown_key_in_yaml_file(tmp_path):
    """The same check applies to keys written in a YAML file."""
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  steps: 3\n  log_evrey: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key trainer\.'log_evrey'.*'log_every'"):
        load_train_config(path)


@pytest.mark.parametrize("override, pattern", [
    ("--trainer.steps=abc", r"trainer\.steps must be an integer, got 'abc'"),
    ("--trainer.steps=2.5", r"trainer\.steps must be an integer"),
    ("--optimizer.lr=fast", r"optimizer\.lr must be a number"),
    ("--trainer.progress=3", r"trainer\.progress must be true or false"),
    ("--trainer.objective=regress", r"trainer\.objective: unknown objective 'regress'; registered: \["),
    ("--model.dtype=float16", r"model\.dtype = 'float16' is not allowed"),
    ("--data.buckets=8", r"data\.buckets must be a list"),
    ("--optimizer.grad_clip=big", r"optimizer\.grad_clip = 'big' does not fit"),
    ("--data.task_args=3", r"data\.task_args must be a mapping"),
])
def test_wrong_type_is_reported(override, pattern):
    """A value of the wrong type names the key, what was expected and what was given."""
    with pytest.raises(ConfigError, match=pattern):
        load_train_config(None, [override])


@pytest.mark.parametrize("overrides, pattern", [
    (["--schedule.warmup_steps=50", "--trainer.steps=10"],
     r"warmup_steps=50 exceeds trainer.steps=10"),
    (["--peft.mode=new-embeddings"], r"peft.mode=new-embeddings needs peft.new_tokens > 0"),
    (["--peft.mode=lora+new-embeddings"], r"needs peft.new_tokens > 0"),
    (["--checkpoint.best_metric=eval_loss"], r"best_metric needs checkpoint.save_every > 0"),
    (["--trainer.objective=classify", "--trainer.classify_tokens=[3]"],
     r"classify needs at least two"),
    (["--peft.mode=patterns"], r"peft.mode=patterns needs peft.patterns"),
    (["--model.hf_path=/x"], r"exactly one of preset and hf_path"),
    (["--model.preset=null"], r"exactly one of preset and hf_path"),
    (["--mesh.data=-1", "--mesh.fsdp=-1"], r"at most one mesh axis may be -1"),
    (["--optimizer.accumulate=0"], r"accumulate=0 must be >= 1"),
    (["--data.eval_fraction=1.0"], r"eval_fraction=1.0 must be in \[0, 1\)"),
    (["--optimizer.lr=0"], r"lr=0.0 must be positive"),
    (["--schedule.decay_fraction=1.5"],
     r"schedule.decay_fraction=1.5 must be a finite number in \[0, 1\]"),
])
def test_impossible_combinations_are_refused(overrides, pattern):
    """Combinations that cannot run fail at load time, before any model is built."""
    with pytest.raises(ConfigError, match=pattern):
        load_train_config(None, overrides)


def test_allowed_edge_combinations():
    """The boundaries of those checks are accepted (warmup == steps, best metric + saves)."""
    load_train_config(None, ["--schedule.warmup_steps=10", "--trainer.steps=10"])
    load_train_config(None, ["--checkpoint.best_metric=eval_loss", "--checkpoint.save_every=5"])
    load_train_config(None, ["--peft.mode=new-embeddings", "--peft.new_tokens=1"])


def test_cli_config_error_exits_2(capsys):
    """``python -m jaxreason.train --config X --optimizer.lrr=1``: status 2, a readable error."""
    status = cli(["--config", str(CONFIG_DIR / "copy_gpt2_tiny.yaml"), "--optimizer.lrr=1"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("config error:") and "'lrr'" in err and "Did you mean 'lr'?" in err


def test_cli_missing_file_and_bad_value_exit_2(capsys, tmp_path):
    """A missing config file or an impossible value is also a status-2 config error."""
    assert cli(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["--trainer.steps=0"]) == 2
    assert "trainer.steps=0 must be positive" in capsys.readouterr().err
    assert cli(["--resume", "--schedule.warmup_steps=-1"]) == 2
    assert "warmup_steps=-1 must be >= 0" in capsys.readouterr().err
