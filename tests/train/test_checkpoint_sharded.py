"""Checkpointer with arrays sharded over 8 fake CPU devices, restored into other shardings.

XLA_FLAGS must be set before JAX starts, so the check runs in a fresh Python
process and the other tests keep their single device.
"""

import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxreason.train.checkpoint import Checkpointer
    assert jax.device_count() == 8, jax.devices()

    mesh = Mesh(np.array(jax.devices()).reshape(8), ("x",))
    mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
    w = jnp.arange(16 * 8, dtype=jnp.float32).reshape(16, 8)
    state = {
        "w": jax.device_put(w, NamedSharding(mesh, P("x", None))),
        "b": jax.device_put(jnp.arange(8.0), NamedSharding(mesh, P("x"))),
        "step": jax.device_put(jnp.int32(42), NamedSharding(mesh, P())),
        "rng": jax.device_put(jax.random.key_data(jax.random.key(0)), NamedSharding(mesh, P())),
    }
    ck = Checkpointer(sys.argv[1], save_every=1)
    assert ck.save(1, state, config={"mesh": [8]})

    def check(restored, target):
        for k in state:
            np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(state[k]))
            assert restored[k].sharding == target[k].sharding, (k, restored[k].sharding)

    # 1) abstract target, different shardings (other axis, other mesh, replicated)
    abstract = {
        "w": jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=NamedSharding(mesh2, P("b", "a"))),
        "b": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(mesh, P())),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P())),
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh2, P("a"))),
    }
    r = ck.restore(1, abstract)
    check(r, abstract)
    assert r["w"].addressable_shards[0].data.shape == (4, 4)   # really resharded

    # 2) concrete target: its arrays' shardings are used (column-sharded w)
    concrete = {
        "w": jax.device_put(jnp.zeros((16, 8)), NamedSharding(mesh, P(None, "x"))),
        "b": jax.device_put(jnp.zeros(8), NamedSharding(mesh2, P("b"))),
        "step": jnp.int32(0),
        "rng": jnp.zeros(2, jnp.uint32),
    }
    check(ck.restore(None, concrete), concrete)

    # 3) abstract target from eval_shape (no sharding): one default device
    r = ck.restore(None, jax.eval_shape(lambda: state))
    for k in state:
        np.testing.assert_array_equal(np.asarray(r[k]), np.asarray(state[k]))
        assert r[k].sharding.device_set == {jax.devices()[0]}
    print("SHARDED-OK")
""")


def test_sharded_save_restore_into_other_shardings(tmp_path, xla_flags):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=8")}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "ckpt")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "SHARDED-OK" in proc.stdout, proc.stderr[-4000:]
