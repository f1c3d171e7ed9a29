"""GPT-2 in Flax linen: learned positions, pre-LayerNorm, fused QKV, ``gelu_new``, tied head.

Submodule and parameter names mirror HuggingFace's ``GPT2LMHeadModel`` (``wte``, ``wpe``,
``h_{i}``, ``ln_1``, ``attn.c_attn``, ``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``,
``ln_f``), so the converter in ``hf.py`` is a short rename table. Kernels are (in, out), which
is also how HF's Conv1D stores them. All activation reading and editing goes through the
shared pieces in ``layers.py``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxreason.hooks import block_name
from jaxreason.models.config import GPT2Config, dtype_of
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
    layer: int

    @nn.compact
    def __call__(self, ctx: Context, h):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        b, t, d = h.shape
        qkv = dense(3 * d, "c_attn", ("embed", "qkv"), use_bias=True, dtype=dt,
                    param_dtype=pdt)(h)  # (B, T, 3D)
        q, k, v = (a.reshape(b, t, c.num_heads, c.head_dim) for a in jnp.split(qkv, 3, axis=-1))
        z = attention_core(ctx, self.layer, q, k, v)  # (B, T, H, E)
        return dense(d, "c_proj", ("heads", "embed"), use_bias=True, dtype=dt, param_dtype=pdt,
                     std=0.02 / (2 * c.num_layers) ** 0.5)(z.reshape(b, t, d))


class GPT2MLP(nn.Module):
    config: GPT2Config
    layer: int

    @nn.compact
    def __call__(self, ctx: Context, h):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        pre = dense(c.intermediate_size, "c_fc", ("embed", "mlp"), use_bias=True, dtype=dt,
                    param_dtype=pdt)(h)
        pre = ctx.hooks(block_name(self.layer, "mlp.hook_pre"), pre)
        post = ctx.hooks(block_name(self.layer, "mlp.hook_post"), ACTIVATIONS[c.activation](pre))
        return dense(c.hidden_size, "c_proj", ("mlp", "embed"), use_bias=True, dtype=dt,
                     param_dtype=pdt, std=0.02 / (2 * c.num_layers) ** 0.5)(post)


class GPT2Block(nn.Module):
    config: GPT2Config
    layer: int

    @nn.compact
    def __call__(self, ctx: Context, x):
        c = self.config
        pdt = dtype_of(c.param_dtype)
        attn = GPT2Attention(c, self.layer, name="attn")
        mlp = GPT2MLP(c, self.layer, name="mlp")
        return residual_block(ctx, self.layer, x,
                              LayerNorm(c.layer_norm_epsilon, pdt, name="ln_1"),
                              lambda h: attn(ctx, h),
                              LayerNorm(c.layer_norm_epsilon, pdt, name="ln_2"),
                              lambda h: mlp(ctx, h))


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
        for i in range(c.num_layers):
            x = GPT2Block(c, i, name=f"h_{i}")(ctx, x)
        x = LayerNorm(c.layer_norm_epsilon, pdt, name="ln_f")(x)
        x = ctx.hooks("ln_final.hook_normalized", x)
        return tied_logits(x, wte.embedding).astype(jnp.float32)
