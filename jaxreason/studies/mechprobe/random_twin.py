"""The random baseline of MechanisticProbe: an untrained twin of the probed model, initialised
the way HuggingFace initialises a fresh model.

The original's baseline is ``GPT2LMHeadModel(GPT2Config())``, whose weights come from
HuggingFace's ``_init_weights``: every linear kernel and every embedding (the positions
``wpe`` as well as the tokens ``wte``) from N(0, 0.02) (``initializer_range``), every bias
zero, every LayerNorm weight one, and then, for GPT-2 only, the two projections back into the
residual stream of each block (``attn.c_proj`` and ``mlp.c_proj``) redrawn from
N(0, 0.02 / sqrt(2 L)) for L layers (the GPT-2 paper's scaled initialisation). Llama-family
models follow the same rule without the scaled projections.

jaxreason's own initialisation (``jaxreason.models.from_config``) draws GPT-2's ``wpe`` from
N(0, 0.01), so the twin is drawn here from the rule above, leaf by leaf, rather than from
the model's own initialisers; the probing score's denominator depends on this baseline.
Both study modes use it: HuggingFace's initialisation is what the baseline is, not a quirk.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxreason.models import CausalLM
from jaxreason.models.families import family_of
from jaxreason.tree_utils import flatten, unflatten

HF_INITIALIZER_RANGE = 0.02  # GPT2Config().initializer_range (LlamaConfig's too)
SCALED_PROJECTIONS = {"gpt2": ("c_proj",)}  # family -> modules drawn at std / sqrt(2 L)


def hf_init_rule(path: tuple[str, ...], family: str, num_layers: int) -> tuple[str, float]:
    """How HuggingFace initialises the parameter at ``path`` (jaxreason names):
    ``("normal", std)``, ``("zeros", 0.0)`` or ``("ones", 1.0)``."""
    leaf = path[-1]
    if leaf in ("kernel", "embedding"):
        std = HF_INITIALIZER_RANGE
        if len(path) >= 2 and path[-2] in SCALED_PROJECTIONS.get(family, ()):
            std /= math.sqrt(2 * num_layers)
        return "normal", std
    if leaf == "bias":
        return "zeros", 0.0
    if leaf == "weight":  # jaxreason's norms name their gain "weight", like HF's
        return "ones", 1.0
    raise ValueError(f"parameter {'/'.join(path)} of a {family} model: no HuggingFace "
                     f"initialisation rule for a leaf named {leaf!r} (known: kernel, "
                     "embedding, bias, weight)")


def hf_init_params(model: CausalLM, seed: int = 0) -> dict:
    """A fresh parameter tree for ``model`` drawn by HuggingFace's rule
    (:func:`hf_init_rule`) in ``param_dtype``: the normal leaves come from one numpy
    generator seeded with ``seed``, in the sorted order of their paths (numpy rather than
    ``jax.random``, so no small program is compiled per leaf shape)."""
    family = family_of(model).name
    rng = np.random.default_rng(seed)
    out = {}
    for path, spec in sorted(flatten(model.param_shapes()).items()):
        kind, value = hf_init_rule(path, family, model.config.num_layers)
        if kind == "normal":
            leaf = value * rng.standard_normal(spec.shape, np.float32)
        else:
            leaf = np.full(spec.shape, value, np.float32)
        out[path] = jnp.asarray(leaf, spec.dtype)
    return unflatten(out)


def random_twin(config, seed: int = 0) -> tuple[CausalLM, dict]:
    """An untrained model of ``config``'s architecture with HuggingFace's initialisation."""
    model = CausalLM(config)
    return model, hf_init_params(model, seed)
