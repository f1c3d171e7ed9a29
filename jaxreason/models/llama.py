"""The Llama family in Flax linen: RMSNorm, RoPE, grouped-query attention, SwiGLU.

One implementation serves Llama 1-3, Mistral and Qwen2/2.5: their differences are config
fields (``kv_heads``, ``rope_type``, ``sliding_window``, ``qkv_bias``/``o_bias``), not code.
Names mirror HuggingFace's ``LlamaForCausalLM`` (``embed_tokens``, ``layers_{i}``,
``input_layernorm``, ``self_attn.{q,k,v,o}_proj``, ``post_attention_layernorm``,
``mlp.{gate,up,down}_proj``, ``norm``, ``lm_head``); kernels are stored (in, out). ``FAMILY``
at the bottom describes these names (and the rest of what code outside the module needs to
know about the family) for ``jaxreason.models.families``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from typing import Any

from jaxreason.hooks import HOOK_TEMPLATES
from jaxreason.models.block_stack import open_block, run_blocks
from jaxreason.models.config import LlamaConfig, dtype_of
from jaxreason.models.family import Family
from jaxreason.models.layers import (Context, RMSNorm, attention_core, dense, logical,
                                     residual_block, rope_inv_freq, tied_logits)


class LlamaAttention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, view, h):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        b, t, _ = h.shape
        e, nh, nk = c.head_dim, c.num_heads, c.num_kv_heads
        proj = lambda n, name, bias: dense(n * e, name, ("embed", "heads"), use_bias=bias,  # noqa: E731
                                           dtype=dt, param_dtype=pdt)
        q = proj(nh, "q_proj", c.qkv_bias)(h).reshape(b, t, nh, e)
        k = proj(nk, "k_proj", c.qkv_bias)(h).reshape(b, t, nk, e)
        v = proj(nk, "v_proj", c.qkv_bias)(h).reshape(b, t, nk, e)
        z = attention_core(view, q, k, v, rope_inv_freq(c))  # (B, T, H, E)
        return dense(c.hidden_size, "o_proj", ("heads", "embed"), use_bias=c.o_bias, dtype=dt,
                     param_dtype=pdt)(z.reshape(b, t, nh * e))


class LlamaMLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, view, h):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        up = lambda name: dense(c.intermediate_size, name, ("embed", "mlp"),  # noqa: E731
                                use_bias=c.mlp_bias, dtype=dt, param_dtype=pdt)
        gate = view.hook("mlp.hook_pre", up("gate_proj")(h))
        lin = view.hook("mlp.hook_pre_linear", up("up_proj")(h))
        post = view.hook("mlp.hook_post", jax.nn.silu(gate) * lin)
        return dense(c.hidden_size, "down_proj", ("mlp", "embed"), use_bias=c.mlp_bias, dtype=dt,
                     param_dtype=pdt)(post)


class LlamaBlock(nn.Module):
    """One block; ``layer`` is None under scan (see ``models/block_stack.py``)."""

    config: LlamaConfig
    ctx: Any
    layer: int | None = None

    @nn.compact
    def __call__(self, carry, xs):
        c = self.config
        pdt = dtype_of(c.param_dtype)
        view, x = open_block(self.ctx, self.layer, carry, xs)
        attn = LlamaAttention(c, name="self_attn")
        mlp = LlamaMLP(c, name="mlp")
        x = residual_block(view, x, RMSNorm(c.rms_norm_eps, pdt, name="input_layernorm"),
                           lambda h: attn(view, h),
                           RMSNorm(c.rms_norm_eps, pdt, name="post_attention_layernorm"),
                           lambda h: mlp(view, h))
        return view.close(x)


def final_norm(c: LlamaConfig, name: str | None = None) -> RMSNorm:
    """The final RMSNorm (``norm``), shared by the module and the family description."""
    return RMSNorm(c.rms_norm_eps, dtype_of(c.param_dtype), name=name)


class LlamaModule(nn.Module):
    """The whole Llama-family model; ``__call__`` returns logits (B, T, V) in float32."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, ctx: Context, input_ids):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=dt, param_dtype=pdt,
                         name="embed_tokens",
                         embedding_init=logical(nn.initializers.normal(0.02), ("vocab", "embed")))
        x = ctx.hooks("hook_embed", embed(input_ids))
        x = run_blocks(ctx, x, LlamaBlock, c, FAMILY.block, FAMILY.stacked_block)
        x = final_norm(c, name="norm")(x)
        x = ctx.hooks("ln_final.hook_normalized", x)
        if c.tie_word_embeddings:
            return tied_logits(x, embed.embedding).astype(jnp.float32)
        return dense(c.vocab_size, "lm_head", ("embed", "vocab"), use_bias=False, dtype=dt,
                     param_dtype=pdt)(x).astype(jnp.float32)


FAMILY = Family(
    name="llama", title="Llama", config_class=LlamaConfig, module_class=LlamaModule,
    hf_model_types=LlamaConfig.MODEL_TYPES,
    presets={"llama-tiny": LlamaConfig.tiny, "llama": LlamaConfig},
    hook_templates=frozenset(HOOK_TEMPLATES) - {"hook_pos_embed"},
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    block="layers_{i}", embedding=("embed_tokens", "embedding"), lm_head=("lm_head", "kernel"),
    down_proj=("mlp", "down_proj"), final_norm=("norm",), make_final_norm=final_norm,
    learned_positions=False,
    # nn.Linear stores (out, in); the head sits outside HF's "model." prefix.
    hf_block="layers.{i}", hf_prefix="model.", hf_transposed=True,
    hf_unprefixed=frozenset({"lm_head"}), hf_buffers=(r"(^|\.)rotary_emb\.inv_freq$",),
)
