"""Config values that would train something else than asked (or crash deep inside JAX) are
refused when the config is loaded or before the first step, naming the key, the value and
what is allowed."""

from __future__ import annotations

import pytest

from jaxreason.config_io import ConfigError
from jaxreason.train.callbacks import Callback
from jaxreason.train.config import load_train_config
from jaxreason.train.preflight import check_devices


@pytest.mark.parametrize("override, pattern", [
    ("--optimizer.lr=.nan", r"optimizer.lr=nan must be positive \(a finite number in \(0, inf\)"),
    ("--optimizer.lr=.inf", r"optimizer.lr=inf must be positive"),
    ("--optimizer.lr=-1e-3", r"optimizer.lr=-0.001 must be positive"),
    ("--optimizer.b2=1.5", r"optimizer.b2=1.5 must be a finite number in \[0, 1\)"),
    ("--optimizer.grad_clip=.nan", r"optimizer.grad_clip=nan must be positive"),
    ("--schedule.min_lr_ratio=2", r"schedule.min_lr_ratio=2.0 must be a finite number in \[0, 1\]"),
    ("--trainer.eval_every=-1", r"trainer.eval_every=-1 must be >= 0 .*0 evaluates only after "
                                r"the last step"),
    ("--trainer.log_every=0", r"trainer.log_every=0 must be >= 1"),
    ("--checkpoint.save_every=-2", r"checkpoint.save_every=-2 must be >= 0"),
    ("--data.eval_batches=0", r"data.eval_batches=0 must be >= 1"),
    ("--peft.lora_dropout=1", r"peft.lora_dropout=1.0 must be a finite number in \[0, 1\)"),
])
def test_bad_numbers_are_refused_at_load(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_train_config(None, [override])


def test_empty_yaml_file_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("# only a comment\n")
    with pytest.raises(ConfigError, match=rf"config file '{path}' is empty"):
        load_train_config(path)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  steps: 3\n optimizer: {lr: 1\n")
    with pytest.raises(ConfigError, match=rf"config file '{path}' is not valid YAML: .* at line "
                                          r"3, column 2"):
        load_train_config(path)


def test_mesh_sizes_on_one_device_are_refused(train, tmp_path):
    with pytest.raises(ConfigError, match=r"mesh \{'data': -1, 'fsdp': 2, 'tensor': 1\}: .*"
                                          r"the 1 device\(s\)"):
        train(tmp_path, "--mesh.fsdp=2", "--trainer.steps=1")
    check_devices(load_train_config(None, ["--mesh.data=1"]), 1)  # sizes of 1 fit one device


def test_batch_that_does_not_split_over_data_parallel_devices_names_batch_size():
    config = load_train_config(None, ["--data.batch_size=6", "--mesh.fsdp=2"])
    with pytest.raises(ConfigError, match=r"data.batch_size=6 does not split over the 4 "
                                          r"data-parallel shards of the mesh \(data=2 x fsdp=2, "
                                          r"tensor=1, on 4 devices\): use a multiple of 4"):
        check_devices(config, 4)
    assert check_devices(load_train_config(None, ["--data.batch_size=6", "--mesh.tensor=2"]),
                         4) == (2, 1, 2)


def test_unknown_task_args_list_the_tasks_parameters(train, tmp_path):
    with pytest.raises(ConfigError, match=r"data.task_args: task 'copy' takes no argument "
                                          r"'symbol'. Did you mean 'symbols'\? Allowed: length, "
                                          r"rows, symbols"):
        train(tmp_path, "--data.task_args={rows: 64, symbol: 4}", "--trainer.steps=1")


def test_unknown_model_overrides_list_the_config_fields(train, tmp_path):
    with pytest.raises(ConfigError, match=r"model.overrides: 'n_layer' is not a field of "
                                          r"GPT2Config \(preset 'gpt2-tiny'\). Did you mean "
                                          r"'num_layers'\? Allowed: activation, attention_impl, hidden_size"):
        train(tmp_path, "--model.overrides={n_layer: 3}", "--trainer.steps=1")


def test_best_metric_never_logged_is_refused_before_training(train, tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint.best_metric='eval_los' is never logged.*"
                                          r"Did you mean 'eval_loss'\? Logged metrics: .*"
                                          r"eval_loss.*grad_norm"):
        train(tmp_path, "--checkpoint.best_metric=eval_los", "--checkpoint.save_every=1",
              "--trainer.steps=2")
    assert not (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(ConfigError, match=r"held-out metric.*data.eval_fraction=0"):
        load_train_config(None, ["--checkpoint.best_metric=eval_loss", "--checkpoint.save_every=1",
                                 "--data.eval_fraction=0"])


def test_best_metric_from_a_callback_is_checked_once_it_has_run(train, tmp_path):
    cb = Callback(lambda info: {"score": 1.0}, every=2)
    _, rows = train(tmp_path / "ok", "--checkpoint.best_metric=score", "--checkpoint.save_every=2",
                    "--trainer.steps=2", callbacks=[cb])
    assert rows[-1]["score"] == 1.0
    with pytest.raises(ConfigError, match=r"'scor' is never logged \(every callback has run by "
                                          r"step 2\).*Did you mean 'score'"):
        train(tmp_path / "bad", "--checkpoint.best_metric=scor", "--checkpoint.save_every=2",
              "--trainer.steps=4", callbacks=[cb])
