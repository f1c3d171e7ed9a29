"""Pieces both model families share: norms, RoPE, the KV cache, masks, the attention core
and the hook sequence of a pre-norm residual block.

The model files (``gpt2.py``, ``llama.py``) only define parameters and projections with
HuggingFace names; everything that reads or edits activations lives here, so a hook behaves
the same way in both families. Code inside a block reaches its hooks and its slice of the
cache through a block view (``models/block_stack.py``), which is what lets the same block
run unrolled, under ``nn.scan`` or under activation checkpointing.

Shape alphabet: B batch, T query positions, S key slots, D model, H query heads,
K key/value heads, G = H // K query heads per KV head, E head width, F MLP width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jaxreason.hooks import HookRunner
from jaxreason.models.config import LlamaConfig

Initializer = Callable[..., jax.Array]


def logical(init: Initializer, axes: tuple[str | None, ...]) -> Initializer:
    """Attach logical axis names to an initializer; ``jaxreason.sharding`` maps them to a mesh."""
    return nn.with_logical_partitioning(init, axes)


def constrain(x, axes: tuple[str | None, ...]):
    """Activation sharding constraint at block boundaries (a no-op without axis rules)."""
    return nn.with_logical_constraint(x, axes)


# ----------------------------------------------------------------------------- norms

class RMSNorm(nn.Module):
    """Llama RMSNorm, computed in float32 and cast back, with HF's parameter name."""

    eps: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", logical(nn.initializers.ones, ("norm",)),
                            (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # HF casts back to the input dtype before the weight multiply; keep that order.
        return weight.astype(x.dtype) * normed.astype(x.dtype)


class LayerNorm(nn.Module):
    """GPT-2 LayerNorm in float32 with ``weight``/``bias`` parameter names."""

    eps: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        weight = self.param("weight", logical(nn.initializers.ones, ("norm",)), (d,),
                            self.param_dtype)
        bias = self.param("bias", logical(nn.initializers.zeros, ("norm",)), (d,),
                          self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def matmul(x, w):
    """(..., D) @ (D, F) as one 2-D matmul.

    XLA's CPU backend differentiates a 3-D ``dot`` into a weight gradient that contracts over
    two axes (batch and positions), which it runs about 1.6x slower than the same product
    flattened to 2-D; the reshape is free and keeps the backward pass on the fast path."""
    return jnp.dot(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])


def tied_logits(x, table):
    """Logits of a tied LM head: (..., D) against the (V, D) embedding table."""
    return matmul(x, table.T.astype(x.dtype))


class Dense(nn.Module):
    """A linear layer with an (in, out) kernel, plus an optional LoRA path.

    LoRA is a parameter-tree transform (``jaxreason.train.lora``): when the layer's params
    hold ``lora_a`` (in, r), ``lora_b`` (r, out) and the scalars ``lora_scale`` and
    ``lora_dropout``, the output gains ``scale * dropout(x) @ a @ b``. Without those leaves
    this is a plain dense layer, so base checkpoints need no special casing. Dropout only runs
    when the caller passes a ``dropout`` rng (training).
    """

    features: int
    use_bias: bool
    dtype: Any
    param_dtype: Any
    axes: tuple[str | None, str | None]
    std: float = 0.02

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", logical(nn.initializers.normal(self.std), self.axes),
                            (x.shape[-1], self.features), self.param_dtype)
        x = x.astype(self.dtype)
        y = matmul(x, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", logical(nn.initializers.zeros, (self.axes[1],)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        if self.has_variable("params", "lora_a"):
            a = self.get_variable("params", "lora_a").astype(self.dtype)
            b = self.get_variable("params", "lora_b").astype(self.dtype)
            scale = self.get_variable("params", "lora_scale").astype(self.dtype)
            h = x
            if self.has_rng("dropout"):
                rate = self.get_variable("params", "lora_dropout").astype(jnp.float32)
                keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - rate, x.shape)
                h = jnp.where(keep, x / (1.0 - rate).astype(self.dtype), 0).astype(self.dtype)
            y = y + scale * matmul(matmul(h, a), b)
        return y


def dense(features: int, name: str, axes: tuple[str | None, str | None], *, use_bias: bool,
          dtype, param_dtype, std: float = 0.02) -> Dense:
    """A linear layer named like the HF module it mirrors."""
    return Dense(features, use_bias, dtype, param_dtype, axes, std, name=name)


# ----------------------------------------------------------------------------- RoPE

def rope_inv_freq(config: LlamaConfig) -> jax.Array:
    """Inverse frequencies (E/2,) including linear and Llama-3 ``rope_scaling``."""
    e = config.head_dim
    inv = 1.0 / (config.rope_theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
    if config.rope_type == "linear":
        return inv / config.rope_factor
    if config.rope_type != "llama3":
        return inv
    factor = config.rope_factor
    old_len = config.rope_original_max_position_embeddings
    low_wavelen = old_len / config.rope_low_freq_factor
    high_wavelen = old_len / config.rope_high_freq_factor
    wavelen = 2 * math.pi / inv
    # Long wavelengths are slowed down by `factor`, short ones kept, the band between blended.
    scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - config.rope_low_freq_factor) / (
        config.rope_high_freq_factor - config.rope_low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, blended, scaled)


def apply_rope(x, positions, inv_freq):
    """Rotate (B, T, N, E) by positions (B, T), HF's half-split convention, in float32."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, E/2)
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------- KV cache

@struct.dataclass
class KVCache:
    """Keys (after RoPE) and values of every layer, plus what masks and positions need.

    ``length`` slots of ``max_len`` are filled; all rows share slot numbering (so a hook
    position means the same slot in every row), while ``next_pos`` tracks each row's own
    position id, which differs under padding.

    Unrolled models keep one (B, S, K, E) array per layer (a tuple); models whose blocks run
    under scan keep one stacked (L, B, S, K, E) array, which the scan reads and writes layer
    by layer (``stacked`` tells which).
    """

    keys: Any  # L x (B, S, K, E), or (L, B, S, K, E) stacked
    values: Any  # as keys
    key_valid: jax.Array  # (B, S) bool: slot holds a real token
    key_pos: jax.Array  # (B, S) int32: position id of the token in each slot
    length: jax.Array  # () int32: slots filled
    next_pos: jax.Array  # (B,) int32: position id of each row's next token

    @property
    def max_len(self) -> int:
        return self.key_valid.shape[1]

    @property
    def batch(self) -> int:
        return self.key_valid.shape[0]

    @property
    def stacked(self) -> bool:
        """True for the (L, B, S, K, E) layout of scanned models."""
        return not isinstance(self.keys, (tuple, list))

    @classmethod
    def create(cls, config, batch: int, max_len: int, dtype=None) -> "KVCache":
        dtype = dtype or jnp.dtype(config.dtype)
        shape = (batch, max_len, config.num_kv_heads, config.head_dim)
        if config.scanned:
            keys = jnp.zeros((config.num_layers, *shape), dtype)
            values = jnp.zeros((config.num_layers, *shape), dtype)
        else:
            keys = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
            values = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        return cls(keys=keys, values=values,
                   key_valid=jnp.zeros((batch, max_len), bool),
                   key_pos=jnp.zeros((batch, max_len), jnp.int32),
                   length=jnp.zeros((), jnp.int32), next_pos=jnp.zeros((batch,), jnp.int32))

    def _map_kv(self, fn) -> tuple:
        """``(keys, values)`` with ``fn(array, batch_axis)`` applied to every layer's."""
        if self.stacked:
            return fn(self.keys, 1), fn(self.values, 1)
        return (tuple(fn(a, 0) for a in self.keys), tuple(fn(a, 0) for a in self.values))

    def broadcast(self, batch: int) -> "KVCache":
        """Repeat a batch-1 cache (a shared prompt prefix) for ``batch`` rows."""
        if self.batch != 1:
            raise ValueError(f"only a batch-1 prefix cache can be broadcast, got batch {self.batch}")
        rep = lambda a, axis=0: jnp.repeat(a, batch, axis=axis)  # noqa: E731
        keys, values = self._map_kv(rep)
        return self.replace(keys=keys, values=values, key_valid=rep(self.key_valid),
                            key_pos=rep(self.key_pos), next_pos=rep(self.next_pos))

    def with_free_slots(self, extra: int) -> "KVCache":
        """The cache with ``extra`` more empty slots at the end."""
        def pad(a, batch_axis=0):
            widths = [(0, 0)] * a.ndim
            widths[batch_axis + 1] = (0, extra)
            return jnp.pad(a, widths)
        keys, values = self._map_kv(pad)
        return self.replace(keys=keys, values=values, key_valid=pad(self.key_valid),
                            key_pos=pad(self.key_pos))


# ----------------------------------------------------------------------------- per-call context

@dataclasses.dataclass
class Context:
    """Everything one forward call threads through the blocks (lives only during a trace).

    ``new_kv`` collects the cache after this call: a list of per-layer (keys, values) pairs
    for unrolled blocks, or the stacked (keys, values) pair a scan returns.
    ``plain_causal``: no padding mask, no cache and default positions, so the mask is the
    causal (and sliding-window) one and fused attention may build it itself.
    """

    hooks: HookRunner
    positions: jax.Array  # (B, T) position ids (RoPE / learned positions)
    mask: jax.Array  # (B, 1, T, S) bool: query may attend to key slot
    offset: Any  # int or () array: slot of the first query
    cache: KVCache | None
    plain_causal: bool = False
    sliding_window: int | None = None
    attention_impl: str = "auto"  # the config's choice; see BaseConfig.attention_impl
    scan_hooks: Any = None  # the requests as per-layer data, while blocks run under scan
    new_kv: Any = dataclasses.field(default_factory=list)


def build_context(hooks_plan, input_ids, attention_mask, position_ids, cache, sliding_window):
    """Positions, the attention mask and the hook runner for one call.

    Without a cache the keys are this call's tokens (S = T). With a cache the call's tokens
    are written at slots ``[cache.length, cache.length + T)`` and attend to every filled slot.
    """
    b, t = input_ids.shape
    mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    running = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    if cache is None:
        positions = running if position_ids is None else position_ids
        offset, key_valid, key_pos, s = 0, mask, positions, t
    else:
        if cache.batch != b:
            raise ValueError(f"cache has batch {cache.batch} but input_ids has batch {b}")
        positions = cache.next_pos[:, None] + running if position_ids is None else position_ids
        offset = cache.length
        key_valid = jax.lax.dynamic_update_slice(cache.key_valid, mask, (0, offset))
        key_pos = jax.lax.dynamic_update_slice(cache.key_pos, positions.astype(jnp.int32),
                                               (0, offset))
        s = cache.max_len
    positions = positions.astype(jnp.int32)
    slots = offset + jnp.arange(t, dtype=jnp.int32)  # (T,)
    allowed = key_valid[:, None, :] & (jnp.arange(s)[None, None, :] <= slots[None, :, None])
    if sliding_window is not None:
        allowed &= (positions[:, :, None] - key_pos[:, None, :]) < sliding_window
    runner = HookRunner(hooks_plan, slots, s, valid=mask)
    plain = attention_mask is None and position_ids is None and cache is None
    ctx = Context(hooks=runner, positions=positions, mask=allowed[:, None], offset=offset,
                  cache=cache, plain_causal=plain, sliding_window=sliding_window)
    return ctx, mask, key_valid, key_pos


def finish_cache(ctx: Context, mask, key_valid, key_pos):
    """The cache after this call, or None when decoding without one."""
    cache = ctx.cache
    if cache is None:
        return None
    if cache.stacked:
        keys, values = ctx.new_kv
    else:
        keys, values = tuple(k for k, _ in ctx.new_kv), tuple(v for _, v in ctx.new_kv)
    t = mask.shape[1]
    return cache.replace(keys=keys, values=values, key_valid=key_valid, key_pos=key_pos,
                         length=cache.length + t,
                         next_pos=cache.next_pos + mask.sum(1).astype(jnp.int32))


# ----------------------------------------------------------------------------- attention core

def explicit_attention(q, k, v, mask, hook):
    """Softmax attention with the scores and the pattern materialised at their hooks.

    q: (B, T, H, E); k, v: (B, S, K, E); mask: (B, 1, T, S) bool. Returns (B, T, H, E)."""
    b, t, h, e = q.shape
    kv = k.shape[2]
    g = h // kv
    qg = q.reshape(b, t, kv, g, e)  # query head h uses kv head h // G, as HF repeat_kv does
    scores = jnp.einsum("btkge,bske->bkgts", qg, k.astype(q.dtype),
                        preferred_element_type=jnp.float32) / math.sqrt(e)
    scores = scores.reshape(b, h, t, -1)  # (B, H, T, S)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    scores = hook("attn.hook_attn_scores", scores)
    pattern = jax.nn.softmax(scores, axis=-1)
    pattern = hook("attn.hook_pattern", pattern)
    pg = pattern.reshape(b, kv, g, t, -1).astype(v.dtype)
    return jnp.einsum("bkgts,bske->btkge", pg, v).reshape(b, t, h, e)


def fused_attention(q, k, v, mask, plain_causal: bool, sliding_window: int | None):
    """The same attention through ``jax.nn.dot_product_attention`` (cuDNN flash attention on
    GPUs where it applies, XLA elsewhere), which never hands the scores to Python.

    A plain causal call (no padding, no cache) passes ``is_causal`` and the window instead of
    the mask, the form fused kernels take."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    k, vq = k.astype(q.dtype), v.astype(q.dtype)
    if plain_causal:
        window = None if sliding_window is None else (sliding_window - 1, 0)
        z = jax.nn.dot_product_attention(q, k, vq, scale=scale, is_causal=True,
                                         local_window_size=window)
    else:
        z = jax.nn.dot_product_attention(q, k, vq, mask=mask, scale=scale)
    return z.astype(v.dtype)


def attention_core(view, q, k, v, rope_inv_freq_=None):
    """Hooks, RoPE, cache update and softmax attention for one layer.

    Args:
      view: the block's view (``models/block_stack.py``): its hooks, positions, mask, cache.
      q: (B, T, H, E) queries; k, v: (B, T, K, E) keys and values of this call's tokens.
      rope_inv_freq_: (E/2,) RoPE frequencies, or None for models with learned positions.
    Returns:
      z: (B, T, H, E) per-head outputs, after ``attn.hook_z``.
    """
    q = view.hook("attn.hook_q", q)
    k = view.hook("attn.hook_k", k)
    v = view.hook("attn.hook_v", v)
    if rope_inv_freq_ is not None:
        q = view.hook("attn.hook_rot_q", apply_rope(q, view.ctx.positions, rope_inv_freq_))
        k = view.hook("attn.hook_rot_k", apply_rope(k, view.ctx.positions, rope_inv_freq_))
    k, v = view.cache_kv(k, v)  # (B, S, K, E): the cache's keys with this call's written in
    ctx = view.ctx
    if view.fused_attention:
        plain = ctx.plain_causal and k.shape[1] == q.shape[1]
        z = fused_attention(q, k, v, ctx.mask, plain, ctx.sliding_window)
    else:
        z = explicit_attention(q, k, v, ctx.mask, view.hook)
    return view.hook("attn.hook_z", z)


def residual_block(view, x, norm1, attend, norm2, mlp):
    """The hook sequence of one pre-norm block, shared by GPT-2 and Llama.

    ``attend(h) -> (B, T, D)`` runs the attention sub-layer on the normed stream, ``mlp(h)``
    the MLP; each model supplies its own projections.
    """
    x = constrain(x, ("batch", "seq", "embed"))
    x = view.hook("hook_resid_pre", x)
    attn_out = view.hook("hook_attn_out", attend(norm1(x)))
    x = view.hook("hook_resid_mid", x + attn_out)
    mlp_out = view.hook("hook_mlp_out", mlp(norm2(x)))
    x = view.hook("hook_resid_post", x + mlp_out)
    return constrain(x, ("batch", "seq", "embed"))
