"""Run the generation runner on 4 fake CPU devices with and without a data-parallel mesh and
print whether the results and stored arrays agree (run by test_generation_runner.py in a
subprocess, because the device count is fixed when JAX starts)."""

import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from jaxreason.generation_runner import DecodeSettings, run_generation
from jaxreason.models import LlamaConfig, from_config
from jaxreason.probe.array_store import open_arrays
from jaxreason.sharding import MeshConfig, make_mesh, model_shardings, place


def main():
    model, params = from_config(LlamaConfig.tiny(), seed=1)
    rng = np.random.default_rng(0)
    records = [rng.integers(1, 128, rng.integers(2, 7)).tolist() for _ in range(10)]
    settings = DecodeSettings(max_new_tokens=5, batch_size=4, stop_tokens=(7,))
    decode = lambda ids: "".join(chr(97 + int(i) % 26) for i in ids)  # noqa: E731
    kw = dict(decode=decode, prefix=[3, 4, 5], capture=["blocks.1.hook_resid_post"],
              progress=False, score=lambda rec, text, ids: {"n": len(ids)})
    mesh = make_mesh(MeshConfig(data=-1))
    with tempfile.TemporaryDirectory() as d:
        one = run_generation(model, params, records, list, settings, out_dir=Path(d) / "one",
                             **kw)
        dp = run_generation(model, place(params, model_shardings(model, mesh)), records, list,
                            settings, out_dir=Path(d) / "dp", mesh=mesh, **kw)
        a, b = open_arrays(one.store), open_arrays(dp.store)
        diff = float(np.abs(a.read("blocks.1.hook_resid_post")
                            - b.read("blocks.1.hook_resid_post")).max())
        same_ids = bool((a.read("generated") == b.read("generated")).all())
    print(json.dumps({"devices": jax.device_count(), "data_axis": int(mesh.shape["data"]),
                      "results_equal": one.results == dp.results, "ids_equal": same_ids,
                      "max_capture_diff": diff}))


if __name__ == "__main__":
    sys.exit(main())
