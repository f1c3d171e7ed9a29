"""Run on 8 fake CPU devices (the test sets XLA_FLAGS): capture, generation and HF loading
with sharded parameters must give the single-device results. Prints one JSON line."""

import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxreason import sharding as sh
from jaxreason.models import LlamaConfig, GPT2Config, from_config, load_pretrained, save_pretrained
from jaxreason.models.generate import generate, prefill_prefix


def main():
    assert jax.device_count() == 8, jax.devices()
    report = {}
    meshes = (sh.MeshConfig(data=8), sh.MeshConfig(data=2, fsdp=2, tensor=2))
    # Llama on pure data parallelism and on the mesh with all three axes; GPT-2 and the blocks
    # under scan (stacked parameters and cache) on the mixed mesh only (the data-only mesh
    # runs the same sharding code for every family)
    for config, mesh_cfgs in ((GPT2Config.tiny(), meshes[1:]), (LlamaConfig.tiny(), meshes),
                              (LlamaConfig.tiny(scan_layers=True), meshes[1:])):
        model, params = from_config(config, seed=3)
        ids = np.random.default_rng(0).integers(3, 128, (8, 10)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[::2, :3] = 0  # left padding on half the rows
        names = {"blocks.*.hook_resid_post", "blocks.1.attn.hook_pattern"}
        ref = model.jit_apply(params, jnp.asarray(ids), jnp.asarray(mask), capture=names)
        prefix = prefill_prefix(model, params, [4, 5, 6])
        ref_gen = generate(model, params, ids, mask, max_new_tokens=6, prefix=prefix,
                           capture="blocks.0.hook_resid_post")
        for mesh_cfg in mesh_cfgs:
            mesh = sh.make_mesh(mesh_cfg)
            shardings = sh.model_shardings(model, mesh)
            p = sh.place(params, shardings)
            batch = sh.global_batch(ids, mesh), sh.global_batch(mask, mesh)
            with sh.activation_rules(mesh):
                out = model.jit_apply(p, *batch, capture=names)
            gen = generate(model, p, ids, mask, max_new_tokens=6, mesh=mesh,
                           prefix=prefill_prefix(model, p, [4, 5, 6]),
                           capture="blocks.0.hook_resid_post")
            with tempfile.TemporaryDirectory() as d:
                save_pretrained(model, params, d)
                _, loaded = load_pretrained(d, shardings=shardings,
                                            scan_layers=config.scan_layers)
            name = config.family + ("-scan" if config.scanned else "")
            key = f"{name}/{mesh_cfg.data}x{mesh_cfg.fsdp}x{mesh_cfg.tensor}"
            report[key] = {
                "logits": float(jnp.abs(out.logits - ref.logits).max()),
                "captures": max(float(jnp.abs(out.captured[k] - ref.captured[k]).max())
                                for k in ref.captured),
                "capture_batch_sharded": out.captured["blocks.0.hook_resid_post"].sharding.spec[0]
                is not None,
                "generate_tokens_equal": bool((np.asarray(gen.tokens)
                                               == np.asarray(ref_gen.tokens)).all()),
                "generate_capture": float(jnp.abs(gen.captured["blocks.0.hook_resid_post"]
                                                  - ref_gen.captured["blocks.0.hook_resid_post"]).max()),
                "loaded_shardings_match": all(
                    a.sharding == s for a, s in zip(jax.tree_util.tree_leaves(loaded),
                                                    jax.tree_util.tree_leaves(shardings))),
                "some_param_split": any(not a.sharding.is_fully_replicated
                                        for a in jax.tree_util.tree_leaves(loaded)),
            }
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
