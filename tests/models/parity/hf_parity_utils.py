"""Helpers for the HuggingFace parity tests (the ``make_pair`` fixture is in conftest.py).

Every reference model is a tiny randomly initialised ``transformers`` model built inside the
test (no downloads): vocab 100, hidden 64, 2 layers, 4 heads. HF's own init is tiny (std 0.02,
norm scales 1, biases 0), which would let a missing bias or a wrong norm scale pass unnoticed,
so :func:`perturb` redraws every weight with a larger spread and shifts every 1-D parameter
(norm scales, biases) by noise. The model is saved with HF's ``save_pretrained`` and loaded
back with jaxreason's ``load_pretrained``.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import torch
import transformers

VOCAB = 100
SEQ = 20  # longer than the llama3 case's original_max_position_embeddings (16)
COMMON = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=0)
LLAMA = dict(COMMON, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)

# name -> (HF config class, kwargs)
CASES = {
    "gpt2": (transformers.GPT2Config,
             dict(COMMON, n_embd=64, n_layer=2, n_head=4, n_positions=64)),
    "llama_mha": (transformers.LlamaConfig, dict(LLAMA, num_key_value_heads=4)),
    "llama_gqa": (transformers.LlamaConfig, dict(LLAMA, num_key_value_heads=2)),
    "llama_mqa": (transformers.LlamaConfig, dict(LLAMA, num_key_value_heads=1)),
    "llama_tied": (transformers.LlamaConfig,
                   dict(LLAMA, num_key_value_heads=2, tie_word_embeddings=True)),
    "llama3_rope": (transformers.LlamaConfig, dict(
        LLAMA, num_key_value_heads=2, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama_bias": (transformers.LlamaConfig,
                   dict(LLAMA, num_key_value_heads=2, attention_bias=True, mlp_bias=True)),
    "qwen2": (transformers.Qwen2Config, dict(LLAMA, num_key_value_heads=2)),
    "mistral_window": (transformers.MistralConfig,
                       dict(LLAMA, num_key_value_heads=2, sliding_window=4)),
    "llama_head_dim": (transformers.LlamaConfig,
                       dict(LLAMA, num_key_value_heads=2, head_dim=32)),
}


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    """Make every parameter matter: weights ~ N(0, 0.12^2), 1-D params shifted by N(0, 0.2^2).

    Tied parameters appear once in ``parameters()``, so tying survives.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if p.ndim >= 2:
            p.copy_(0.12 * noise)
        else:
            p.add_(0.2 * noise)


def build_hf(case: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny eval-mode HF causal LM of the given case, with eager attention."""
    cls, kwargs = CASES[case]
    config = cls(**{**kwargs, **overrides})
    config._attn_implementation = "eager"  # so output_attentions returns the patterns
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    perturb(model, seed)
    return model.eval()


def hf_layers(model):
    """The decoder blocks of a HF model (GPT-2 or Llama family)."""
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


@torch.no_grad()
def hf_forward(model, ids, mask=None, position_ids=None) -> dict:
    """HF logits, hidden states, attention patterns and each block's output (as numpy)."""
    outs = []
    handles = [layer.register_forward_hook(
        lambda mod, args, out: outs.append(out[0] if isinstance(out, tuple) else out))
        for layer in hf_layers(model)]
    t = lambda a: None if a is None else torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    try:
        res = model(t(ids), attention_mask=t(mask), position_ids=t(position_ids),
                    output_hidden_states=True, output_attentions=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {"logits": res.logits.float().numpy(),
            "hidden": [h.float().numpy() for h in res.hidden_states],
            "attn": [a.float().numpy() for a in res.attentions],
            "block_out": [o.float().numpy() for o in outs]}


def max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def assert_close(a, b, atol=1e-5, what=""):
    d = max_diff(a, b)
    assert d <= atol, f"{what}: max abs diff {d:.3g} > {atol:g}"


def random_ids(batch: int, seq: int, seed: int = 0) -> np.ndarray:
    # avoid id 0 (the pad id) so padding is visible in the token ids too
    return np.random.default_rng(seed).integers(1, VOCAB, size=(batch, seq)).astype(np.int32)


def padded_batch(lengths, seq: int, side: str, seed: int = 0):
    """(ids, mask, rows): a padded batch and each row's unpadded token list."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), seq), np.int32)
    mask = np.zeros((len(lengths), seq), np.int32)
    rows = []
    for r, n in enumerate(lengths):
        row = rng.integers(1, VOCAB, size=n).astype(np.int32)
        sl = slice(seq - n, seq) if side == "left" else slice(0, n)
        ids[r, sl], mask[r, sl] = row, 1
        rows.append(row)
    return ids, mask, rows


@functools.partial(jax.jit, static_argnames=("model", "capture"))
def _jit_forward(model, params, ids, mask, position_ids, capture):
    out = model.apply(params, ids, mask, position_ids=position_ids, capture=list(capture) or None)
    return out.logits, out.captured


def jax_forward(model, params, ids, mask=None, position_ids=None, capture=()):
    """jaxreason forward under one module-level jit, so every test using an equal config and
    input shapes shares the compiled program. Returns numpy (logits, captured)."""
    logits, cap = _jit_forward(model, params, ids, mask, position_ids, tuple(capture))
    return np.asarray(logits), {k: np.asarray(v) for k, v in cap.items()}
