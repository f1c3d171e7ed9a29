"""Greedy KV-cache generation parity with HuggingFace ``generate(do_sample=False)``.

A batch of three left-padded prompts of different lengths is decoded for 12 tokens; jaxreason
must produce HF's tokens exactly, stop rows at EOS the way HF does (pad afterwards), give the
same continuation when a shared prefix is prefilled once, and return captures whose slot j is
the activation of ``tokens[:, j]`` in a plain forward pass over the whole sequence.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_parity_utils import VOCAB, assert_close, jax_forward, padded_batch
from jaxreason.models.generate import generate, prefill_prefix

N_NEW = 12
PAD = 0
SEED = 2  # a weight draw whose greedy continuations do not collapse onto one token
CASES = ["gpt2", "llama_gqa"]


def prompts(seed=0):
    ids, mask, rows = padded_batch([8, 5, 3], 8, "left", seed=seed)
    return ids, mask, rows


@torch.no_grad()
def hf_generate(hf, ids, mask, eos=None) -> np.ndarray:
    out = hf.generate(torch.as_tensor(ids, dtype=torch.long),
                      attention_mask=torch.as_tensor(mask, dtype=torch.long),
                      max_new_tokens=N_NEW, do_sample=False, pad_token_id=PAD,
                      eos_token_id=eos, use_cache=True)
    return out.numpy()


@pytest.mark.parametrize("case", CASES)
def test_greedy_matches_hf(make_pair, case):
    """Greedy tokens equal HF's token for token on a left-padded batch of 3 prompts."""
    hf, model, params, _ = make_pair(case, SEED)
    ids, mask, _ = prompts()
    ref = hf_generate(hf, ids, mask)
    out = generate(model, params, ids, mask, max_new_tokens=N_NEW, pad_token_id=PAD)
    assert ref.shape == (3, 8 + N_NEW)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    np.testing.assert_array_equal(np.asarray(out.generated), ref[:, 8:])
    np.testing.assert_array_equal(np.asarray(out.num_generated), [N_NEW] * 3)
    # the rows do not all collapse onto one repeated token (else the check would be weak)
    assert len(np.unique(ref[:, 8:])) > 3


@pytest.mark.parametrize("case", CASES)
def test_eos_stops_rows_like_hf(make_pair, case):
    """With an EOS id that the greedy run really produces, rows stop early exactly where HF's
    do, and every slot after a row's EOS holds the pad id."""
    hf, model, params, _ = make_pair(case, SEED)
    ids, mask, _ = prompts()
    free = hf_generate(hf, ids, mask)[:, 8:]
    eos = int(free[0, 2])  # row 0 emits it by step 2
    assert eos != PAD
    first = [int(np.flatnonzero(r == eos)[0]) if eos in r else None for r in free]
    assert first[0] is not None and first[0] < N_NEW - 1
    ref = hf_generate(hf, ids, mask, eos=eos)
    out = generate(model, params, ids, mask, max_new_tokens=N_NEW, eos_token_id=eos,
                   pad_token_id=PAD)
    toks = np.asarray(out.tokens)
    assert toks.shape == (3, 8 + N_NEW)
    np.testing.assert_array_equal(toks[:, :ref.shape[1]], ref)
    assert np.all(toks[:, ref.shape[1]:] == PAD)
    gen = np.asarray(out.generated)
    for r in range(3):
        n = N_NEW if first[r] is None else first[r] + 1
        assert out.num_generated[r] == n
        np.testing.assert_array_equal(gen[r, :n], free[r, :n])  # same tokens up to EOS
        assert np.all(gen[r, n:] == PAD)


@pytest.mark.parametrize("case", CASES)
def test_prefix_cache_matches_full_prompt(make_pair, case):
    """Prefilling a shared prefix once and generating from the suffixes gives the same tokens
    as generating from the concatenated prompts (and as HF on those)."""
    hf, model, params, _ = make_pair(case, SEED)
    rng = np.random.default_rng(3)
    prefix = rng.integers(1, VOCAB, size=4).astype(np.int32)
    # full prompts are 8 wide like prompts(), so the plain run reuses the compiled programs
    suf_ids, suf_mask, sufs = padded_batch([4, 2, 3], 4, "left", seed=4)
    full = [np.concatenate([prefix, s]) for s in sufs]
    t = max(map(len, full))
    full_ids = np.zeros((3, t), np.int32)
    full_mask = np.zeros((3, t), np.int32)
    for r, row in enumerate(full):
        full_ids[r, t - len(row):], full_mask[r, t - len(row):] = row, 1

    cache = prefill_prefix(model, params, prefix)
    with_prefix = generate(model, params, suf_ids, suf_mask, max_new_tokens=N_NEW,
                           pad_token_id=PAD, prefix=cache)
    plain = generate(model, params, full_ids, full_mask, max_new_tokens=N_NEW, pad_token_id=PAD)
    assert with_prefix.capture_start == len(prefix)
    np.testing.assert_array_equal(np.asarray(with_prefix.generated), np.asarray(plain.generated))
    np.testing.assert_array_equal(np.asarray(plain.generated),
                                  hf_generate(hf, full_ids, full_mask)[:, t:])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_eos", [False, True])
def test_generate_captures_line_up_with_tokens(make_pair, case, with_eos):
    """``captured[name][:, j]`` is the activation of ``tokens[:, j]``: resid_post and attention
    rows from cached decoding equal a plain forward pass over the final token sequence (masked
    the same way) at every real slot, also when rows stopped at EOS."""
    _, model, params, _ = make_pair(case, SEED)
    ids, mask, _ = prompts()
    eos = None
    if with_eos:
        free = np.asarray(generate(model, params, ids, mask, max_new_tokens=N_NEW).generated)
        eos = int(free[1, 3])
    names = ("blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern")
    out = generate(model, params, ids, mask, max_new_tokens=N_NEW, eos_token_id=eos,
                   pad_token_id=PAD, capture=names)
    total = 8 + N_NEW
    n_gen = np.asarray(out.num_generated)
    if with_eos:
        assert n_gen.min() < N_NEW
    gen_mask = (np.arange(N_NEW)[None] < n_gen[:, None]).astype(np.int32)
    full_mask = np.concatenate([np.asarray(out.prompt_mask), gen_mask], axis=1)
    real = full_mask.astype(bool)
    _, ref = jax_forward(model, params, np.asarray(out.tokens), full_mask, capture=names)
    d, h = model.config.hidden_size, model.config.num_heads
    for i in range(model.config.num_layers):
        name = f"blocks.{i}.hook_resid_post"
        assert out.captured[name].shape == (3, total, d)
        assert_close(np.asarray(out.captured[name])[real], np.asarray(ref[name])[real], 1e-5,
                     name)
        name = f"blocks.{i}.attn.hook_pattern"
        assert out.captured[name].shape == (3, h, total, total)
        got = np.transpose(np.asarray(out.captured[name]), (0, 2, 1, 3))[real]
        want = np.transpose(np.asarray(ref[name]), (0, 2, 1, 3))[real]
        assert_close(got, want, 1e-5, name)
