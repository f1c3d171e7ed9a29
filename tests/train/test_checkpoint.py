"""Checkpointer: round trip, retention, best kept, config, atomicity, errors (CPU)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreason.train.checkpoint import Checkpointer


def _state(seed=0, step=0):
    k = jax.random.PRNGKey(seed)
    params = {"dense": {"w": jax.random.normal(k, (4, 3)), "b": jnp.arange(3.0)},
              "emb": jnp.ones((5, 2), jnp.bfloat16)}
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    _, opt_state = opt.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    return {"params": params, "opt_state": opt_state,
            "step": jnp.asarray(step, jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed)),   # uint32 key data
            "key": jax.random.key(seed + 1),                    # typed key, too
            "data_pos": jnp.asarray([step, 7], jnp.int32)}


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _ckpt(tmp_path, **kw):
    kw.setdefault("save_every", 1)
    return Checkpointer(tmp_path / "ckpt", **kw)


def test_round_trip_concrete_and_abstract_target(tmp_path):
    state = _state(seed=1, step=10)
    ck = _ckpt(tmp_path, save_every=5)
    assert ck.latest_step() is None and ck.best_step() is None
    assert ck.save(10, state, config={"lr": 1e-3})
    # Restore into a concrete tree of zeros ...
    zeros = jax.tree.map(lambda x: x if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                         else jnp.zeros_like(x), state)
    _assert_tree_equal(ck.restore(10, zeros), state)
    # ... and into an abstract one from jax.eval_shape (step None = latest).
    abstract = jax.eval_shape(lambda: _state())
    restored = ck.restore(None, abstract)
    _assert_tree_equal(restored, state)
    for leaf in jax.tree.leaves(restored):
        assert isinstance(leaf, jax.Array)
        assert leaf.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    ck.close()


def test_save_every_force_and_existing_step(tmp_path):
    ck = _ckpt(tmp_path, save_every=4)
    s = {"x": jnp.arange(3)}
    assert not ck.save(3, s, config={})
    assert ck.save(4, s, config={})
    assert ck.save(5, s, config={}, force=True)
    assert not ck.save(5, s, config={}, force=True)       # already on disk
    assert ck.all_steps() == [4, 5] and ck.latest_step() == 5
    with pytest.raises(TypeError, match="JSON"):
        ck.save(8, s, config={"bad": object()})
    assert ck.all_steps() == [4, 5]


def test_keep_last_retention(tmp_path):
    ck = _ckpt(tmp_path, keep_last=2)
    for step in range(1, 7):
        assert ck.save(step, {"x": jnp.full((2,), step)}, config={"step": step})
    assert ck.all_steps() == [5, 6]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["5", "6"]
    np.testing.assert_array_equal(ck.restore(5, {"x": jnp.zeros(2, jnp.int32)})["x"], [5, 5])


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_is_kept_even_when_old(tmp_path, mode):
    values = {1: 0.5, 2: 0.1, 3: 0.7, 4: 0.9, 5: 0.8}   # 2 is best for min, 4 for max
    if mode == "max":
        values = {k: -v for k, v in values.items()}
    best = 2
    ck = _ckpt(tmp_path, keep_last=2, best_metric="m", best_mode=mode)
    for step, v in values.items():
        ck.save(step, {"x": jnp.full((2,), step)}, config={}, metrics={"m": jnp.float32(v)})
    assert ck.all_steps() == [best, 4, 5]
    assert ck.best_step() == best
    assert ck.metrics(best) == {"m": pytest.approx(values[best])}
    # Saves without the metric do not displace the best one.
    ck.save(6, {"x": jnp.zeros(2, jnp.int32)}, config={}, metrics={"other": 1.0})
    ck.save(7, {"x": jnp.zeros(2, jnp.int32)}, config={})
    assert ck.all_steps() == [best, 6, 7] and ck.best_step() == best
    ck.close()
    # Reopening the directory reads the metrics back: best survives a restart.
    ck = _ckpt(tmp_path, keep_last=2, best_metric="m", best_mode=mode)
    assert ck.best_step() == best
    # A new best replaces the old one, which then falls out of retention.
    ck.save(8, {"x": jnp.zeros(2, jnp.int32)}, config={}, metrics={"m": -5.0 if mode == "min" else 5.0})
    assert ck.all_steps() == [7, 8] and ck.best_step() == 8


def test_keep_best_false_and_no_metric(tmp_path):
    ck = _ckpt(tmp_path / "a", keep_last=1, best_metric="m", keep_best=False)
    for step, v in [(1, 0.0), (2, 1.0)]:
        ck.save(step, {"x": jnp.zeros(1)}, config={}, metrics={"m": v})
    assert ck.all_steps() == [2]
    ck = _ckpt(tmp_path / "b", keep_last=1)
    ck.save(1, {"x": jnp.zeros(1)}, config={}, metrics={"m": 1.0})
    assert ck.best_step() is None and ck.metrics(1) == {"m": 1.0}


def test_config_beside_each_checkpoint(tmp_path):
    ck = _ckpt(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        ck.save(step, {"x": jnp.zeros(1)}, config={"lr": 0.1 * step, "model": {"d": 8}})
    for step in (1, 2, 3):
        assert ck.config(step) == {"lr": pytest.approx(0.1 * step), "model": {"d": 8}}
        with open(tmp_path / "ckpt" / str(step) / "config" / "config.json") as f:
            assert json.load(f)["model"] == {"d": 8}
    assert ck.config() == ck.config(3)


def test_interrupted_write_leftover_tmp_dir(tmp_path):
    """An unfinished write (Orbax's `<step>.orbax-checkpoint-tmp[-<ts>]`) is not a step."""
    ck = _ckpt(tmp_path)
    ck.save(10, {"x": jnp.arange(4)}, config={"ok": True})
    ck.close()
    tmp = tmp_path / "ckpt" / "20.orbax-checkpoint-tmp"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "half_written").write_bytes(b"\0" * 10)
    ck = _ckpt(tmp_path)
    assert ck.latest_step() == 10 and ck.all_steps() == [10]
    np.testing.assert_array_equal(ck.restore(None, {"x": jnp.zeros(4, jnp.int32)})["x"], np.arange(4))
    ck.wait()
    assert not tmp.exists()   # cleaned up on open (cleanup_tmp_directories)
    assert ck.save(20, {"x": jnp.arange(4) + 1}, config={})
    assert ck.latest_step() == 20


_KILLED_MID_SAVE = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from jaxreason.train.checkpoint import Checkpointer
    ck = Checkpointer(sys.argv[1], save_every=1)
    ck.save(1, {"x": jnp.arange(4)}, config={"good": 1})
    async def die(self):   # step 2's data is on disk; its first commit rename is next
        os._exit(17)
    atomicity.AtomicRenameTemporaryPath.finalize = die
    ck.save(2, {"x": jnp.arange(4) * 100}, config={"good": 0})
    os._exit(0)
""")


def test_process_killed_before_commit_keeps_last_good(tmp_path):
    d = tmp_path / "ckpt"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_SAVE, str(d)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr[-3000:]
    leftovers = [n for n in os.listdir(d) if n.startswith("2.orbax-checkpoint-tmp")]
    assert leftovers, os.listdir(d)
    written = [f for _, _, fs in os.walk(d / leftovers[0]) for f in fs]
    assert "manifest.ocdbt" in written and "config.json" in written   # data was on disk
    ck = Checkpointer(d, save_every=1)
    assert ck.latest_step() == 1 and ck.all_steps() == [1]
    np.testing.assert_array_equal(ck.restore(None, {"x": jnp.zeros(4, jnp.int32)})["x"], np.arange(4))
    assert ck.config() == {"good": 1}


def test_clear_errors(tmp_path):
    ck = _ckpt(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoints in"):
        ck.restore(None, {"x": jnp.zeros(1)})
    ck.save(3, {"x": jnp.zeros(1)}, config={})
    ck.save(4, {"x": jnp.zeros(1)}, config={})
    with pytest.raises(FileNotFoundError, match=r"step 7 .*available steps: \[3, 4\]"):
        ck.restore(7, {"x": jnp.zeros(1)})
    with pytest.raises(FileNotFoundError, match="step 7"):
        ck.config(7)
    with pytest.raises(ValueError, match="structure"):
        ck.restore(4, {"y": jnp.zeros(1)})
    # A path that is a file, and a directory holding something else entirely.
    (tmp_path / "file").write_text("hi")
    with pytest.raises(NotADirectoryError):
        Checkpointer(tmp_path / "file", save_every=1)
    other = tmp_path / "other"
    (other / "logs").mkdir(parents=True)
    (other / "notes.txt").write_text("x")
    ck2 = Checkpointer(other, save_every=1)
    assert ck2.latest_step() is None
    with pytest.raises(FileNotFoundError, match=r"holds \['logs', 'notes.txt'\] but no checkpoint"):
        ck2.restore(None, {"x": jnp.zeros(1)})
    ck2.save(1, {"x": jnp.ones(1)}, config={})   # checkpoints may live beside other files
    assert ck2.all_steps() == [1] and (other / "notes.txt").exists()
    (other / "2024").mkdir()   # looks like a step to Orbax, retention would delete it
    with pytest.raises(ValueError, match=r"not a jaxreason checkpoint directory: .*\['2024'\]"):
        Checkpointer(other, save_every=1)
    assert (other / "2024").is_dir()


def test_async_save_then_wait(tmp_path):
    ck = _ckpt(tmp_path, async_save=True)
    assert ck.save(1, {"x": jnp.arange(8)}, config={"a": 1})
    ck.wait()
    assert ck.latest_step() == 1
    np.testing.assert_array_equal(ck.restore(1, {"x": jnp.zeros(8, jnp.int32)})["x"], np.arange(8))
    ck.close()
