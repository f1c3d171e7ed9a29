"""Worker for test_sharded.py: train on 8 fake CPU devices and report losses and shardings.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python _sharded_worker.py SPEC``
where SPEC is JSON ``{"root": dir, "base": [overrides], "runs": [[preset, data, fsdp,
tensor], ...]}``. Prints one JSON line: for every run its per-step losses and, for the final
training state that ``main`` holds, each parameter's PartitionSpec next to the one the
logical-axis rules give, plus whether every Adam moment is sharded like its parameter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
from jax.sharding import NamedSharding

from jaxreason import sharding as sh
from jaxreason.train import checkpoint
from jaxreason.train.build import apply_peft, build_model, logical_axes
from jaxreason.train.config import load_train_config
from jaxreason.train.loop import main
from run_logs import losses


def _spec(x) -> list:
    spec = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
    return [list(a) if isinstance(a, tuple) else a for a in spec]


def _check_state(state, config) -> dict:
    """Actual vs rule-given sharding of every parameter and Adam moment of ``state``."""
    mesh = sh.make_mesh(config.mesh)
    model, params = build_model(config.model, config.trainer.seed)
    model, params, _ = apply_peft(model, params, config.peft, config.trainer.seed)
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    want = sh.param_shardings(logical_axes(model, params), shapes, mesh)
    params_out, mismatches = {}, []
    flat_want = {jax.tree_util.keystr(p): w
                 for p, w in jax.tree_util.tree_flatten_with_path(want)[0]}
    for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        key = jax.tree_util.keystr(path)
        params_out[key] = {"actual": _spec(x), "rule": _spec(jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=flat_want[key]))}
        if not x.sharding.is_equivalent_to(flat_want[key], x.ndim):
            mismatches.append(key)
    moments = 0
    for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
        key = jax.tree_util.keystr(path)
        if ".mu[" not in key and ".nu[" not in key:
            continue
        moments += 1
        param_key = "[" + key.split(".mu[" if ".mu[" in key else ".nu[", 1)[1]
        target = flat_want[param_key]
        if not isinstance(x.sharding, NamedSharding) or not x.sharding.is_equivalent_to(
                target, x.ndim):
            mismatches.append("opt_state" + key)
    return {"params": params_out, "mismatches": mismatches, "moments": moments,
            "mesh": dict(mesh.shape)}


def run() -> dict:
    spec = json.loads(sys.argv[1])
    assert jax.device_count() == 8, jax.devices()
    captured = {}

    def spy(self, step, state, **kwargs):  # the final state main() trained, as it holds it
        captured["state"] = state
        return True  # sharded saving itself is tests/train/test_checkpoint_sharded.py

    checkpoint.Checkpointer.save = spy
    out = {}
    for preset, data, fsdp, tensor in spec["runs"]:
        name = f"{preset}-{data}x{fsdp}x{tensor}"
        run_dir = Path(spec["root"]) / name
        config = load_train_config(None, [
            *spec["base"], f"--model.preset={preset}", f"--mesh.data={data}",
            f"--mesh.fsdp={fsdp}", f"--mesh.tensor={tensor}", f"--trainer.run_dir={run_dir}"])
        captured.clear()
        result = main(config)
        out[name] = {"losses": losses(run_dir), "eval_loss": result.get("eval_loss"),
                     **_check_state(captured["state"], config)}
    return out


if __name__ == "__main__":
    print(json.dumps(run()))
