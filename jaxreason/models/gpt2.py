"""GPT-2 in Flax linen: learned positions, pre-LayerNorm, fused QKV, ``gelu_new``, tied head.

Submodule and parameter names mirror HuggingFace's ``GPT2LMHeadModel`` (``wte``, ``wpe``,
``h_{i}``, ``ln_1``, ``attn.c_attn``, ``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``,
``ln_f``), so converting checkpoints is a rename rule. Kernels are (in, out), which is also
how HF's Conv1D stores them. All activation reading and editing goes through the shared
pieces in ``layers.py``. ``FAMILY`` at the bottom describes these names (and the rest of what
code outside the module needs to know about GPT-2) for ``jaxreason.models.families``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from typing import Any

from jaxreason.hooks import HOOK_TEMPLATES
from jaxreason.models.block_stack import open_block, run_blocks
from jaxreason.models.config import GPT2Config, dtype_of
from jaxreason.models.family import Family
from jaxreason.models.layers import (Context, LayerNorm, attention_core, dense, logical,
                                     residual_block, tied_logits)

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


class GPT2Attention(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, view, h):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        b, t, d = h.shape
        qkv = dense(3 * d, "c_attn", ("embed", "qkv"), use_bias=True, dtype=dt,
                    param_dtype=pdt)(h)  # (B, T, 3D)
        q, k, v = (a.reshape(b, t, c.num_heads, c.head_dim) for a in jnp.split(qkv, 3, axis=-1))
        z = attention_core(view, q, k, v)  # (B, T, H, E)
        return dense(d, "c_proj", ("heads", "embed"), use_bias=True, dtype=dt, param_dtype=pdt,
                     std=0.02 / (2 * c.num_layers) ** 0.5)(z.reshape(b, t, d))


class GPT2MLP(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, view, h):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        pre = dense(c.intermediate_size, "c_fc", ("embed", "mlp"), use_bias=True, dtype=dt,
                    param_dtype=pdt)(h)
        pre = view.hook("mlp.hook_pre", pre)
        post = view.hook("mlp.hook_post", ACTIVATIONS[c.activation](pre))
        return dense(c.hidden_size, "c_proj", ("mlp", "embed"), use_bias=True, dtype=dt,
                     param_dtype=pdt, std=0.02 / (2 * c.num_layers) ** 0.5)(post)


class GPT2Block(nn.Module):
    """One block; ``layer`` is None under scan (see ``models/block_stack.py``)."""

    config: GPT2Config
    ctx: Any
    layer: int | None = None

    @nn.compact
    def __call__(self, carry, xs):
        c = self.config
        pdt = dtype_of(c.param_dtype)
        view, x = open_block(self.ctx, self.layer, carry, xs)
        attn = GPT2Attention(c, name="attn")
        mlp = GPT2MLP(c, name="mlp")
        x = residual_block(view, x, LayerNorm(c.layer_norm_epsilon, pdt, name="ln_1"),
                           lambda h: attn(view, h),
                           LayerNorm(c.layer_norm_epsilon, pdt, name="ln_2"),
                           lambda h: mlp(view, h))
        return view.close(x)


def final_norm(c: GPT2Config, name: str | None = None) -> LayerNorm:
    """The final LayerNorm (``ln_f``), shared by the module and the family description."""
    return LayerNorm(c.layer_norm_epsilon, dtype_of(c.param_dtype), name=name)


class GPT2Module(nn.Module):
    """The whole GPT-2; ``__call__`` returns logits (B, T, V) in float32."""

    config: GPT2Config

    @nn.compact
    def __call__(self, ctx: Context, input_ids):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        wte = nn.Embed(c.vocab_size, c.hidden_size, dtype=dt, param_dtype=pdt, name="wte",
                       embedding_init=logical(nn.initializers.normal(0.02), ("vocab", "embed")))
        wpe = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=dt, param_dtype=pdt,
                       name="wpe",
                       embedding_init=logical(nn.initializers.normal(0.01), (None, "embed")))
        x = ctx.hooks("hook_embed", wte(input_ids))
        x = x + ctx.hooks("hook_pos_embed", wpe(ctx.positions))
        x = run_blocks(ctx, x, GPT2Block, c, FAMILY.block, FAMILY.stacked_block)
        x = final_norm(c, name="ln_f")(x)
        x = ctx.hooks("ln_final.hook_normalized", x)
        return tied_logits(x, wte.embedding).astype(jnp.float32)


FAMILY = Family(
    name="gpt2", title="GPT-2", config_class=GPT2Config, module_class=GPT2Module,
    hf_model_types=("gpt2",),
    presets={"gpt2-tiny": GPT2Config.tiny, "gpt2-small": GPT2Config.small, "gpt2": GPT2Config},
    hook_templates=frozenset(HOOK_TEMPLATES) - {"blocks.{i}.attn.hook_rot_q",
                                                "blocks.{i}.attn.hook_rot_k",
                                                "blocks.{i}.mlp.hook_pre_linear"},
    # ``c_proj`` is both ``attn.c_proj`` and ``mlp.c_proj``.
    lora_targets=("c_attn", "c_proj", "c_fc"),
    block="h_{i}", embedding=("wte", "embedding"), lm_head=None,
    down_proj=("mlp", "c_proj"), final_norm=("ln_f",), make_final_norm=final_norm,
    learned_positions=True,
    # HF's Conv1D already stores (in, out); the original OpenAI files lack "transformer.".
    hf_block="h.{i}", hf_prefix="transformer.", hf_transposed=False, hf_prefix_optional=True,
    hf_buffers=(r"(^|\.)attn\.bias$", r"(^|\.)attn\.masked_bias$"),
)
