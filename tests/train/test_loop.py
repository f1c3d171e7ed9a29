"""End-to-end behaviour of ``jaxreason.train.loop.main`` on one device, in this process.

Every run is a tiny model on the copy task (or a small handmade dataset) for a few steps;
runs that several tests inspect are module fixtures, so each is trained once.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.train import callbacks, loop
from jaxreason.train.build import apply_peft, build_model
from jaxreason.train.config import OptimizerSection, ScheduleSection, load_train_config
from jaxreason.train.optim import schedule
from jaxreason.data import TokenDataset
from jaxreason.train.lora import merge_lora
from jaxreason.train.optim import build_optimizer, decay_mask, path_str
from jaxreason.train.vocab import add_tokens


def _losses(rows):
    return [r["loss"] for r in rows]


def _flat(tree):
    return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def gpt2_run(train, tmp_path_factory):
    return train(tmp_path_factory.mktemp("gpt2"), "--trainer.steps=30")


@pytest.fixture(scope="module")
def llama_run(train, tmp_path_factory):
    return train(tmp_path_factory.mktemp("llama"), "--model.preset=llama-tiny",
                 "--trainer.steps=30", "--schedule.kind=cosine", "--schedule.warmup_steps=5",
                 "--schedule.min_lr_ratio=0.1")


@pytest.fixture
def export_spy(monkeypatch):
    """Record the (model, params) that ``main`` exports; the real export still runs."""
    seen = {}
    real = callbacks.export_hf

    def spy(model, params, path, *rest):
        seen.update(model=model, params=jax.device_get(params), path=path)
        return real(model, params, path, *rest)

    monkeypatch.setattr(callbacks, "export_hf", spy)
    return seen


@pytest.mark.parametrize("which", ["gpt2_run", "llama_run"])
def test_loss_decreases_on_copy(which, request):
    """30 steps on the copy task cut the training loss well below its starting value."""
    result, rows = request.getfixturevalue(which)
    losses = _losses(rows)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert all(math.isfinite(x) for x in losses)
    assert abs(losses[0] - math.log(128)) < 0.3  # a fresh model is near uniform
    assert np.mean(losses[-5:]) < losses[0] - 1.5, losses
    assert result["final_step"] == 30 and "eval_loss" in result


def test_same_config_and_seed_is_deterministic(gpt2_run, train, tmp_path):
    """A second run of the same config and seed logs bit-identical losses and grad norms."""
    _, rows = train(tmp_path, "--trainer.steps=30")
    _, ref = gpt2_run
    assert _losses(rows) == _losses(ref)
    assert [r["grad_norm"] for r in rows] == [r["grad_norm"] for r in ref]


def test_gradient_accumulation_matches_full_batch(gpt2_run, train, tmp_path):
    """accumulate=2 over a batch of 16 takes the same steps as one batch of 16.

    The copy task counts the same number of target tokens in every row, so the mean of the
    two micro-batch mean losses is the full-batch mean; the (constant-lr) run is compared
    with the first 10 steps of the reference run.
    """
    _, rows = train(tmp_path, "--trainer.steps=10", "--optimizer.accumulate=2")
    _, ref = gpt2_run
    np.testing.assert_allclose(_losses(rows), _losses(ref)[:10], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r["grad_norm"] for r in rows],
                               [r["grad_norm"] for r in ref[:10]], rtol=1e-4)


def test_cosine_warmup_lr_is_logged(llama_run):
    """The logged lr follows linear warmup (from 0) then cosine decay to min_lr_ratio * lr."""
    _, rows = llama_run
    lr, warm, steps, alpha = 3e-3, 5, 30, 0.1
    for r in rows:
        s = r["step"] - 1  # the update made at logged step s+1 used schedule(s)
        if s < warm:
            want = lr * s / warm
        else:
            want = lr * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
                         + alpha)
        assert r["lr"] == pytest.approx(want, rel=1e-5, abs=1e-9), r["step"]
    assert rows[0]["lr"] == 0.0 and rows[warm]["lr"] == pytest.approx(lr)


def test_wsd_schedule_holds_the_peak_then_decays_linearly():
    """warmup-stable-decay: linear warmup, the peak held, then a linear ramp over the last
    decay_fraction of the steps down to min_lr_ratio * lr."""
    lr = schedule(OptimizerSection(lr=2e-3), ScheduleSection(
        kind="wsd", warmup_steps=10, decay_fraction=0.25, min_lr_ratio=0.1), 100)
    got = [float(lr(s)) for s in range(101)]
    want = [2e-3 * s / 10 for s in range(10)] + [2e-3] * 65 + \
        [2e-3 * (1 - 0.9 * k / 25) for k in range(26)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def _answer_dataset(seed, rows=64, seq=8):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 40, size=(rows, seq))
    lengths = rng.integers(4, seq + 1, size=rows)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    return tokens * mask, mask, lengths


def test_last_token_objective_on_memmapped_arrays(train, tmp_path):
    """``last_token`` trains from a saved TokenDataset (read back as memmaps) with right
    padding; labels (the first token) are predicted at each row's last real token."""
    tokens, mask, _ = _answer_dataset(0)
    data = TokenDataset({"tokens": tokens, "attention_mask": mask, "labels": tokens[:, 0]})
    path = data.save(tmp_path / "data")
    assert isinstance(TokenDataset.load(path).arrays["tokens"], np.memmap)
    result, rows = train(tmp_path / "run", "--data.source=arrays", f"--data.path={path}",
                         "--data.eval_fraction=0.25", "--trainer.objective=last_token",
                         "--trainer.steps=20")
    losses = _losses(rows)
    assert abs(losses[0] - math.log(128)) < 0.3
    assert losses[-1] < losses[0] - 1.0, losses
    assert {"accuracy", "eval_accuracy", "eval_loss"} <= set(result)


def test_last_token_uses_last_real_position():
    """The objective's loss equals cross-entropy of the logits at position length-1."""
    from jaxreason.train.objectives import last_token

    tokens, mask, lengths = _answer_dataset(1, rows=4)
    batch = {"tokens": jnp.asarray(tokens, jnp.int32), "attention_mask": jnp.asarray(mask),
             "labels": jnp.asarray(tokens[:, 0])}
    model, params = build_model(load_train_config().model, 0)
    loss, _ = jax.jit(lambda p, b: last_token(model, p, b, None))(params, batch)
    logits = np.asarray(model.jit_apply(params, batch["tokens"], batch["attention_mask"]).logits)
    logp = np.asarray(jax.nn.log_softmax(logits[np.arange(4), lengths - 1]))
    want = -logp[np.arange(4), tokens[:, 0]].mean()
    assert (lengths < tokens.shape[1]).any()  # some rows really are padded
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_classify_objective(train, tmp_path):
    """``classify`` is a softmax over ``classify_tokens`` only: a fresh model starts near
    log(2) for two classes, and it learns the parity of the first token."""
    tokens, mask, _ = _answer_dataset(2)
    data = TokenDataset({"tokens": tokens, "attention_mask": mask, "labels": tokens[:, 0] % 2})
    path = data.save(tmp_path / "data")
    result, rows = train(tmp_path / "run", "--data.source=arrays", f"--data.path={path}",
                         "--data.eval_fraction=0.25", "--trainer.objective=classify",
                         "--trainer.classify_tokens=[5, 7]", "--trainer.steps=20")
    losses = _losses(rows)
    assert abs(losses[0] - math.log(2)) < 0.1, losses[0]
    assert losses[-1] < losses[0] - 0.2, losses
    assert 0.0 <= result["accuracy"] <= 1.0 and "eval_accuracy" in result


def test_divergence_raises_and_keeps_last_good_checkpoint(train, tmp_path):
    """A huge SGD step makes the loss non-finite: TrainingDiverged names the step and the last
    good checkpoint, which is still on disk; the bad step is neither saved nor logged."""
    with pytest.raises(loop.TrainingDiverged) as e:
        train(tmp_path, "--optimizer.name=sgd", "--optimizer.lr=1e6", "--optimizer.grad_clip=null",
              "--trainer.steps=30", "--checkpoint.save_every=1", "--checkpoint.keep_last=1")
    msg = str(e.value)
    bad = int(msg.split(" at step ")[1].split(";")[0])
    assert 1 < bad < 30 and f"checkpoint: step {bad - 1}" in msg, msg
    assert (tmp_path / "checkpoints" / str(bad - 1) / "state").is_dir()
    assert not (tmp_path / "checkpoints" / str(bad)).exists()
    assert [r["step"] for r in loop.MetricsLog.read(tmp_path / "metrics.jsonl")][-1] == bad - 1


def test_lora_trains_only_adapters_and_exports(train, tmp_path, export_spy):
    """peft.mode=lora: every base weight is bit-identical to a fresh model with the same seed,
    every adapter moved, and the merged HF export gives jaxreason's merged logits in torch."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    result, _ = train(tmp_path, "--model.preset=llama-tiny", "--peft.mode=lora",
                      "--peft.lora_rank=4", "--optimizer.lr=1e-2", "--trainer.steps=6",
                      "--checkpoint.export_hf=true")
    model, trained = export_spy["model"], export_spy["params"]
    config = load_train_config(None, ["--model.preset=llama-tiny", "--peft.mode=lora",
                                      "--peft.lora_rank=4"])
    model0, base = build_model(config.model, 0)
    start = _flat(apply_peft(model0, base, config.peft, 0)[1])
    fresh, trained_flat = _flat(base), _flat(trained)
    lora = {k: v for k, v in trained_flat.items() if "/lora_" in k}
    assert {k for k in trained_flat if k not in lora} == set(fresh)
    for k, v in fresh.items():
        np.testing.assert_array_equal(trained_flat[k], v, err_msg=k)
    assert len([k for k in lora if k.endswith("lora_b")]) == 2 * 7  # 2 layers x 7 projections
    for k, v in lora.items():
        if k.endswith(("lora_a", "lora_b")):
            assert np.abs(v - start[k]).max() > 1e-4, k  # lora_b started at zero
        else:  # lora_scale, lora_dropout: hyperparameters, never trained
            np.testing.assert_array_equal(v, start[k], err_msg=k)
    assert float(lora["layers_0/mlp/up_proj/lora_scale"]) == 16.0 / 4

    ids = np.random.default_rng(0).integers(0, 128, (2, 10))
    merged = merge_lora(trained)
    ours = np.asarray(model.jit_apply(merged, jnp.asarray(ids, jnp.int32)).logits)
    adapted = np.asarray(model.jit_apply(trained, jnp.asarray(ids, jnp.int32)).logits)
    np.testing.assert_allclose(adapted, ours, atol=1e-5)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(torch.as_tensor(ids)).logits.float().numpy()
    np.testing.assert_allclose(theirs, ours, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_new_embeddings_train_only_new_rows(preset, train, tmp_path, export_spy):
    """peft.mode=new-embeddings: old embedding rows (and, for Llama's untied head, old
    lm_head columns) and every other weight stay bit-identical, even with weight decay on
    them; the two new rows (columns) move."""
    train(tmp_path, f"--model.preset={preset}", "--peft.mode=new-embeddings",
          "--peft.new_tokens=2", "--optimizer.lr=1e-2", "--optimizer.weight_decay=0.5",
          "--optimizer.no_decay=[]", "--trainer.steps=6", "--checkpoint.export_hf=true")
    model0, fresh = build_model(load_train_config(None, [f"--model.preset={preset}"]).model, 0)
    _, grown = add_tokens(model0, fresh, 2)
    trained, start = _flat(export_spy["params"]), _flat(grown)
    assert export_spy["model"].config.vocab_size == 130
    assert set(trained) == set(start)
    vocab_leaves = {"wte/embedding": 0, "embed_tokens/embedding": 0, "lm_head/kernel": 1}
    for k, v in start.items():
        if k in vocab_leaves:  # move the vocabulary axis first
            got, v = np.moveaxis(trained[k], vocab_leaves[k], 0), np.moveaxis(v, vocab_leaves[k], 0)
            np.testing.assert_array_equal(got[:128], v[:128], err_msg=k)
            assert (np.abs(got[128:] - v[128:]).max(axis=1) > 1e-4).all(), k
        else:
            np.testing.assert_array_equal(trained[k], v, err_msg=k)


def test_training_without_eval_split(train, tmp_path):
    """``data.eval_fraction=0`` (allowed by the config) trains with no held-out set."""
    result, rows = train(tmp_path, "--data.eval_fraction=0", "--trainer.steps=2")
    assert len(rows) == 2 and "eval_loss" not in result


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_weight_decay_mask_excludes_norms_biases_embeddings(preset):
    """The default ``no_decay`` patterns exempt every norm, bias and embedding, and only
    those; AdamW with zero gradients then shrinks exactly the decayed leaves."""
    config = load_train_config(None, [f"--model.preset={preset}", "--optimizer.weight_decay=0.5",
                                      "--optimizer.lr=0.1", "--optimizer.grad_clip=null"])
    _, params = build_model(config.model, 0)
    mask = _flat(decay_mask(params, config.optimizer.no_decay))
    for name, decays in mask.items():
        exempt = name.endswith(("bias", "embedding")) or "norm" in name or "/ln_" in name \
            or name.startswith("ln_")
        assert bool(decays) == (not exempt), name
    assert mask["lm_head/kernel" if preset == "llama-tiny" else "h_0/mlp/c_fc/kernel"]
    tx, _ = build_optimizer(config.optimizer, config.schedule, 10, params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    for name, u in _flat(updates).items():
        want = -0.1 * 0.5 * _flat(params)[name] if mask[name] else 0.0
        np.testing.assert_allclose(u, want, rtol=1e-6, atol=1e-9, err_msg=name)
