"""Decode formula problems on 4 fake CPU devices with and without a data-parallel mesh and
print how far apart the results are (run by test_ttt_data_parallel.py in a subprocess,
because the device count is fixed when JAX starts)."""

import json

import jax
import numpy as np

from jaxreason.models import from_config
from jaxreason.models.config import LlamaConfig
from jaxreason.models.generate import prefill_prefix
from jaxreason.sharding import MeshConfig, make_mesh, model_shardings, place
from jaxreason.studies.think_to_talk.decode import decode_batch
from jaxreason.tasks import formulas as fm
from jaxreason.tasks.formula_tokens import FormulaTokenizer


def main():
    codec = FormulaTokenizer()
    codec.eos_id = codec.vocab_size  # a random model must not stop at random
    model, params = from_config(LlamaConfig.tiny(vocab_size=codec.vocab_size, num_layers=2,
                                                 max_position_embeddings=320), seed=0)
    splits = fm.make_splits("2step", {"train": 100, "valid": 10, "test": 8, "probing_train": 4})
    prompt = codec.encode(fm.few_shot_prompt(splits["train"], 1))
    kw = dict(indices=(0, 2), max_new_tokens=4)
    plain = decode_batch(model, params, codec, prefill_prefix(model, params, prompt),
                         splits["test"], **kw)
    mesh = make_mesh(MeshConfig(data=-1))
    sharded_params = place(params, model_shardings(model, mesh))
    prefix = prefill_prefix(model, sharded_params, prompt)
    dp = decode_batch(model, sharded_params, codec, prefix, splits["test"], mesh=mesh, **kw)
    print(json.dumps({
        "devices": jax.device_count(), "data_axis": int(mesh.shape["data"]),
        "texts_equal": plain.texts == dp.texts,
        "lengths_equal": plain.lengths.tolist() == dp.lengths.tolist(),
        "max_state_diff": float(max(np.abs(plain.states[i] - dp.states[i]).max() for i in (0, 2))),
    }))


if __name__ == "__main__":
    main()
