"""Training on 8 fake CPU devices gives the single-device losses, with the parameters (and
their Adam moments) laid out as the logical-axis rules say.

XLA_FLAGS must be set before JAX starts, so the sharded runs happen in one fresh process
(``_sharded_worker.py``); the single-device baselines run here, in the test process, which
has one CPU device. The default tier runs two meshes (``DEFAULT_RUNS``); the complete 2 models
x 4 meshes matrix is ``-m slow``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from jaxreason.sharding import logical_to_mesh_spec

WORKER = Path(__file__).with_name("_sharded_worker.py")
STEPS = 5
# 240 rows leave 12 held-out rows: fewer than a batch and not divisible by 8 devices, so
# evaluation on data=8 must shrink its batch to 8 rows rather than fail to shard 12.
DATA = "--data.task_args={rows: 240, length: 8, symbols: 16}"
MESHES = [(8, 1, 1), (2, 4, 1), (2, 1, 4), (2, 2, 2)]
# the default tier: pure data parallelism (whose evaluation must shrink its batch) and the
# mesh that uses all three axes at once; the single-axis fsdp and tensor meshes are -m slow
DEFAULT_RUNS = [("gpt2-tiny", 8, 1, 1), ("llama-tiny", 2, 2, 2)]
ALL_RUNS = [(p, *m) for p in ("gpt2-tiny", "llama-tiny") for m in MESHES]

# Hand-written expectations for a few leaves: (data, fsdp, tensor) -> {leaf: spec}.
EXPECTED = {
    ("gpt2-tiny", 8, 1, 1): {"['h_0']['attn']['c_attn']['kernel']": [None, None],
                             "['wte']['embedding']": [None, None]},
    ("gpt2-tiny", 2, 4, 1): {"['h_0']['mlp']['c_fc']['kernel']": ["fsdp", None],
                             "['wte']['embedding']": [None, "fsdp"],
                             "['h_0']['attn']['c_attn']['bias']": [None]},
    ("gpt2-tiny", 2, 1, 4): {"['h_0']['attn']['c_attn']['kernel']": [None, "tensor"],
                             "['h_0']['attn']['c_proj']['kernel']": ["tensor", None],
                             "['h_1']['mlp']['c_fc']['bias']": ["tensor"],
                             "['wte']['embedding']": ["tensor", None]},
    ("gpt2-tiny", 2, 2, 2): {"['h_0']['attn']['c_attn']['kernel']": ["fsdp", "tensor"],
                             "['h_0']['mlp']['c_proj']['kernel']": ["tensor", "fsdp"],
                             "['wte']['embedding']": ["tensor", "fsdp"],
                             "['wpe']['embedding']": [None, "fsdp"],
                             "['ln_f']['weight']": [None]},
    ("llama-tiny", 8, 1, 1): {"['layers_0']['mlp']['gate_proj']['kernel']": [None, None],
                              "['embed_tokens']['embedding']": [None, None]},
    ("llama-tiny", 2, 1, 4): {"['layers_0']['mlp']['gate_proj']['kernel']": [None, "tensor"],
                              "['layers_0']['self_attn']['k_proj']['kernel']": [None, "tensor"],
                              "['lm_head']['kernel']": [None, "tensor"],
                              "['embed_tokens']['embedding']": ["tensor", None]},
    ("llama-tiny", 2, 2, 2): {"['layers_1']['mlp']['gate_proj']['kernel']": ["fsdp", "tensor"],
                              "['layers_1']['mlp']['down_proj']['kernel']": ["tensor", "fsdp"],
                              "['lm_head']['kernel']": ["fsdp", "tensor"],
                              "['norm']['weight']": [None]},
    ("llama-tiny", 2, 4, 1): {"['layers_0']['mlp']['gate_proj']['kernel']": ["fsdp", None],
                              "['layers_0']['self_attn']['o_proj']['kernel']": [None, "fsdp"]},
}


@pytest.fixture(scope="module")
def baseline(train, tmp_path_factory):
    """Single-device losses per preset (this process has exactly one device)."""
    import jax

    assert jax.device_count() == 1
    cache = {}

    def get(preset):
        if preset not in cache:
            _, rows = train(tmp_path_factory.mktemp(preset), f"--model.preset={preset}",
                            DATA, f"--trainer.steps={STEPS}")
            cache[preset] = [r["loss"] for r in rows]
        return cache[preset]

    return get


def run_worker(runs, root, base_args, python, subprocess_env, xla_flags):
    spec = {"root": str(root), "runs": [list(r) for r in runs],
            "base": [*base_args, DATA, f"--trainer.steps={STEPS}",
                     f"--checkpoint.save_every={STEPS}"]}
    env = subprocess_env(XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"))
    proc = subprocess.run([python, str(WORKER), json.dumps(spec)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(runs, report, baseline):
    for run in runs:
        name = "{}-{}x{}x{}".format(*run)
        got = report[name]
        assert got["mesh"] == dict(zip(("data", "fsdp", "tensor"), run[1:]))
        np.testing.assert_allclose(got["losses"], baseline(run[0]), rtol=1e-5, err_msg=name)
        assert got["mismatches"] == [], (name, got["mismatches"])
        assert got["eval_loss"] is not None and np.isfinite(got["eval_loss"]), name
        assert got["moments"] == 2 * len(got["params"])  # Adam mu and nu for every leaf
        for leaf, spec in EXPECTED[run].items():
            assert got["params"][leaf]["actual"] == spec, (name, leaf, got["params"][leaf])
        if run[2] > 1:  # FSDP really shards: most of the weights carry the fsdp axis
            fsdp = [k for k, v in got["params"].items() if "fsdp" in v["actual"]]
            assert len(fsdp) >= len(got["params"]) // 2, (name, fsdp)


def test_sharded_training_matches_single_device(tmp_path, base_args, python, subprocess_env,
                                                xla_flags, baseline):
    """data=8 (GPT-2) and data2xfsdp2xtensor2 (Llama): same per-step losses as one device (to
    1e-5 relative), every parameter and Adam moment of the final state that
    ``main`` holds is sharded exactly as ``logical_to_mesh_spec`` prescribes, and the final
    evaluation runs even when the held-out rows do not divide over the devices."""
    runs = run_worker(DEFAULT_RUNS, tmp_path, base_args, python, subprocess_env, xla_flags)
    check(DEFAULT_RUNS, runs, baseline)


@pytest.mark.slow
def test_sharded_training_full_matrix(tmp_path, base_args, python, subprocess_env, xla_flags,
                                      baseline):
    """The same check for both models on all four meshes."""
    rest = [r for r in ALL_RUNS if r not in DEFAULT_RUNS]
    check(rest, run_worker(rest, tmp_path, base_args, python, subprocess_env, xla_flags), baseline)


def test_rules_replicate_what_does_not_divide():
    """The rules table on an abstract mesh: a dim that does not divide its mesh axes is
    replicated, batch rows use data and fsdp together, and size-1 axes are dropped."""
    mesh = AbstractMesh((1, 4, 2), ("data", "fsdp", "tensor"))
    assert logical_to_mesh_spec(P("embed", "mlp"), (6, 10), mesh) == P(None, "tensor")
    assert logical_to_mesh_spec(P("embed", "mlp"), (8, 10), mesh) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(P("vocab", "embed"), (129, 64), mesh) == P(None, "fsdp")
    assert logical_to_mesh_spec(P("batch", "seq"), (8, 5), mesh) == P("fsdp", None)
    assert logical_to_mesh_spec(P("norm"), (64,), mesh) == P(None)
    mesh = AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))
    assert logical_to_mesh_spec(P("batch", None), (8, 3), mesh) == P(("data", "fsdp"), None)
    assert logical_to_mesh_spec(P("batch"), (2,), mesh) == P(None)
