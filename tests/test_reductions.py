"""Capture reductions (TopK, Norm, Mean) agree with the same reduction computed with numpy on
the raw captured values, under ``apply``, ``jit_apply`` (new arrays reuse the program) and
``generate`` (each step's result is the one of a plain forward over the generated sequence);
misuse names the hook and the shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.hooks import Mean, Norm, Replace, TopK
from jaxreason.models import GPT2Config, LlamaConfig, from_config
from jaxreason.models import lm as lm_module
from jaxreason.models.generate import generate

B, T, K, N_NEW = 2, 6, 5, 6
POST = "blocks.*.mlp.hook_post"
CONFIGS = {"gpt2": GPT2Config.tiny, "llama": LlamaConfig.tiny}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request):
    model, params = from_config(CONFIGS[request.param](), seed=0)
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(1, 128, (B, T)), jnp.int32)
    mask = jnp.asarray([[1] * T, [0, 0] + [1] * (T - 2)], jnp.int32)  # row 1 left-padded
    cfg = model.config
    scale = jnp.asarray(rng.uniform(0.1, 2.0, (cfg.num_layers, cfg.intermediate_size)),
                        jnp.float32)
    return model, params, ids, mask, scale


def raw_post(model, params, ids, mask):
    """{layer: (B, T, F) numpy} of a plain forward."""
    out = model.apply(params, ids, attention_mask=mask, capture={POST})
    return {l: np.asarray(out.captured[f"blocks.{l}.mlp.hook_post"], np.float64)
            for l in range(model.config.num_layers)}


def check_topk(got, direct, k, rel_tol):
    """``got`` {"indices", "scores"} (..., k) against scores ``direct`` (..., F) computed
    independently: the scores are the k largest, each index holds its score, and where the
    top k + 1 scores are well apart the indices are argsort's."""
    idx, scores = np.asarray(got["indices"]), np.asarray(got["scores"])
    assert idx.dtype == np.int32 and scores.dtype == np.float32
    assert idx.shape == direct.shape[:-1] + (k,)
    atol = rel_tol * np.abs(direct).max()
    top = -np.sort(-direct, axis=-1)[..., :k + 1]
    np.testing.assert_allclose(scores, top[..., :k], atol=atol, rtol=0)
    np.testing.assert_allclose(np.take_along_axis(direct, idx, -1), scores, atol=atol, rtol=0)
    assert (np.diff(np.sort(idx, -1), axis=-1) > 0).all()  # k distinct neurons
    apart = (top[..., :-1] - top[..., 1:] > 10 * atol).all(-1)
    assert apart.mean() > 0.5  # the index check below must compare something
    order = np.argsort(-direct, axis=-1, kind="stable")[..., :k]
    np.testing.assert_array_equal(idx[apart], order[apart])


# ----------------------------------------------------------------------------- apply

def test_topk_with_per_layer_scale_matches_numpy(lm):
    """Under a pattern, layer l's scores use row l of an (L, F) scale (random rows, so a
    swapped or shared row would fail)."""
    model, params, ids, mask, scale = lm
    raw = raw_post(model, params, ids, mask)
    out = model.apply(params, ids, attention_mask=mask, capture={POST: TopK(K, scale=scale)})
    for l, a in raw.items():
        check_topk(out.captured[f"blocks.{l}.mlp.hook_post"], np.abs(a) * np.asarray(scale[l]),
                   K, 1e-6)


@pytest.mark.parametrize("by_abs", [True, False])
def test_topk_with_one_scale_or_none(lm, by_abs):
    model, params, ids, mask, scale = lm
    a = raw_post(model, params, ids, mask)[1]
    name = "blocks.1.mlp.hook_post"
    got = model.apply(params, ids, attention_mask=mask, capture={
        name: TopK(K, scale=scale[0], by_abs=by_abs)}).captured[name]
    check_topk(got, (np.abs(a) if by_abs else a) * np.asarray(scale[0]), K, 1e-6)
    got = model.apply(params, ids, attention_mask=mask,
                      capture={name: TopK(K, by_abs=by_abs)}).captured[name]
    check_topk(got, np.abs(a) if by_abs else a, K, 1e-6)


def test_reductions_at_positions(lm):
    """Positions (P,) or (B, P) select slots before reducing, as for raw captures."""
    model, params, ids, mask, scale = lm
    a = raw_post(model, params, ids, mask)[0]
    name = "blocks.0.mlp.hook_post"
    shared, per_row = [T - 1, 2], np.array([[1, 3], [4, 5]])
    out = model.apply(params, ids, attention_mask=mask, capture={
        name: TopK(K, scale=scale, positions=shared)})
    check_topk(out.captured[name], np.abs(a[:, shared]) * np.asarray(scale[0]), K, 1e-6)
    out = model.apply(params, ids, attention_mask=mask,
                      capture={name: TopK(K, positions=per_row)})
    check_topk(out.captured[name], np.abs(np.take_along_axis(a, per_row[..., None], 1)), K, 1e-6)


def test_mean_leaves_out_padding_and_norm_is_position_first(lm):
    model, params, ids, mask, _ = lm
    resid, pattern = "blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"
    raw = model.apply(params, ids, attention_mask=mask, capture={resid, pattern}).captured
    x, p = np.asarray(raw[resid], np.float64), np.asarray(raw[pattern], np.float64)
    real = np.asarray(mask, bool)
    want = np.stack([x[b][real[b]].mean(0) for b in range(B)])
    got = model.apply(params, ids, attention_mask=mask, capture={resid: Mean()}).captured
    tol = 1e-6 * np.abs(x).max()
    np.testing.assert_allclose(np.asarray(got[resid]), want, atol=tol, rtol=0)
    # chosen positions: slot 1 is padding in row 1, so that row averages slot 4 alone
    got = model.apply(params, ids, attention_mask=mask,
                      capture={resid: Mean(positions=[1, 4])}).captured
    np.testing.assert_allclose(np.asarray(got[resid]),
                               np.stack([x[0, [1, 4]].mean(0), x[1, 4]]), atol=tol, rtol=0)
    # a pattern is (B, H, T, S); its norm over key slots comes back (B, T, H)
    got = model.apply(params, ids, attention_mask=mask, capture={pattern: Norm()}).captured
    np.testing.assert_allclose(np.asarray(got[pattern]),
                               np.linalg.norm(p, axis=-1).transpose(0, 2, 1), atol=1e-6, rtol=0)


def test_jit_apply_traces_reduction_arrays(lm):
    """A new scale of the same shape reuses the compiled program; a new k compiles anew."""
    model, params, ids, mask, scale = lm
    raw = raw_post(model, params, ids, mask)
    model.jit_apply(params, ids, mask, capture={POST: TopK(K, scale=scale, positions=[1, 5])})
    compiled = lm_module._jitted_apply._cache_size()
    other = jnp.flip(scale, axis=1) + 0.5
    out = model.jit_apply(params, ids, mask,
                          capture={POST: TopK(K, scale=other, positions=np.array([2, 3]))})
    assert lm_module._jitted_apply._cache_size() == compiled
    for l, a in raw.items():
        check_topk(out.captured[f"blocks.{l}.mlp.hook_post"],
                   np.abs(a[:, [2, 3]]) * np.asarray(other[l]), K, 1e-5)
    model.jit_apply(params, ids, mask, capture={POST: TopK(K + 1, scale=other, positions=[2, 3])})
    assert lm_module._jitted_apply._cache_size() == compiled + 1


# ----------------------------------------------------------------------------- generate

GEN_PATTERN = "blocks.1.attn.hook_pattern"


@pytest.fixture(scope="module")
def generated(lm):
    """One greedy run capturing a TopK at the last prompt slot and a Norm at every slot."""
    model, params, ids, mask, scale = lm
    capture = {POST: TopK(K, scale=scale, positions=[T - 1]), GEN_PATTERN: Norm()}
    return capture, generate(model, params, ids, mask, max_new_tokens=N_NEW, capture=capture)


def test_generate_records_reductions_per_step(lm, generated):
    """The prefill records the chosen prompt slot, then step n the slot of generated token n;
    each equals the reduction of a plain forward over the whole generated sequence, and
    nothing F-wide comes back."""
    model, params, ids, mask, scale = lm
    _, out = generated
    full_mask = jnp.concatenate([out.prompt_mask, jnp.ones((B, N_NEW), jnp.int32)], axis=1)
    ref = model.jit_apply(params, out.tokens, full_mask, capture={POST, GEN_PATTERN}).captured
    f = model.config.intermediate_size
    assert all(f not in leaf.shape for leaf in jax.tree_util.tree_leaves(out.captured))
    for l in range(model.config.num_layers):
        a = np.asarray(ref[f"blocks.{l}.mlp.hook_post"], np.float64)
        got = out.captured[f"blocks.{l}.mlp.hook_post"]
        check_topk(got, np.abs(a[:, T - 1:T + N_NEW]) * np.asarray(scale[l]), K, 1e-5)
    p = np.asarray(ref[GEN_PATTERN], np.float64)
    want = np.linalg.norm(p, axis=-1).transpose(0, 2, 1)  # (B, T + N, H)
    real = np.asarray(full_mask, bool)
    np.testing.assert_allclose(np.asarray(out.captured[GEN_PATTERN])[real], want[real],
                               atol=1e-5 * np.abs(want).max(), rtol=0)


def test_generate_zero_fills_reductions_after_eos(lm, generated):
    """Every row stops at its first token: the steps never run are zeros, the rest aligned."""
    model, params, ids, mask, _ = lm
    capture, free = generated
    eos = np.unique(np.asarray(free.generated[:, 0])).tolist()
    out = generate(model, params, ids, mask, max_new_tokens=N_NEW, capture=capture,
                   eos_token_id=eos, steps_per_call=4)
    for key in ("indices", "scores"):
        got = np.asarray(out.captured["blocks.0.mlp.hook_post"][key])
        want = np.asarray(free.captured["blocks.0.mlp.hook_post"][key])
        assert got.shape == want.shape == (B, 1 + N_NEW, K)
        # the prompt slot and the first token's step are the same as without EOS
        np.testing.assert_array_equal(got[:, :2], want[:, :2])
        assert not got[:, 1 + 4:].any()  # the host checks for EOS after every 4-step call
        assert want[:, 1 + 4:].any()


# ----------------------------------------------------------------------------- errors

def test_reduction_shape_errors_name_the_hook(lm):
    model, params, ids, mask, scale = lm
    f, d, n = model.config.intermediate_size, model.config.hidden_size, model.config.num_layers
    post = "blocks.0.mlp.hook_post"
    with pytest.raises(ValueError, match=rf"capture of '{post}': TopK k={f + 1} must be in "
                                         rf"1\.\.{f}, the size of the hook's last axis"):
        model.apply(params, ids, capture={post: TopK(f + 1)})
    with pytest.raises(ValueError, match=rf"TopK k={f + 1} must be in"):  # also under jit
        model.jit_apply(params, ids, capture={POST: TopK(f + 1)})
    with pytest.raises(TypeError, match=r"TopK k must be an int, got 2\.0"):
        model.apply(params, ids, capture={post: TopK(2.0)})
    with pytest.raises(ValueError, match=rf"capture of '{post}': scale of shape \({f - 1},\) "
                                         rf"does not fit; expected \({f},\) or per layer "
                                         rf"\({n}, {f}\)"):
        model.apply(params, ids, capture={post: TopK(3, scale=jnp.ones(f - 1))})
    with pytest.raises(ValueError, match=rf"scale of shape \({n + 1}, {f}\) does not fit"):
        model.apply(params, ids, capture={POST: TopK(3, scale=jnp.ones((n + 1, f)))})
    with pytest.raises(ValueError, match=rf"capture of 'hook_embed': a per-layer scale of "
                                         rf"shape \({n}, {d}\) needs a hook inside a block"):
        model.apply(params, ids, capture={"hook_embed": TopK(3, scale=jnp.ones((n, d)))})
    with pytest.raises(ValueError, match=rf"capture of '{post}': position {T} is outside"):
        model.jit_apply(params, ids, capture={post: TopK(3, positions=[0, T])})


@pytest.mark.parametrize("request_", [Replace(jnp.zeros(3)), {"k": 3}, "all"],
                         ids=["intervention", "dict", "string"])
def test_capture_request_of_unknown_type(lm, request_):
    model, params, ids, _, _ = lm
    with pytest.raises(TypeError, match=r"capture of 'hook_embed' must map to None \(the whole "
                                        rf"value\), positions .* got {type(request_).__name__}"):
        model.apply(params, ids, capture={"hook_embed": request_})


def test_generate_refuses_what_it_cannot_extend(lm):
    model, params, ids, mask, _ = lm
    with pytest.raises(ValueError, match=r"capture of 'hook_embed': Mean has no position axis"):
        generate(model, params, ids, mask, max_new_tokens=2, capture={"hook_embed": Mean()})
    with pytest.raises(ValueError, match=rf"position {T} is outside the sequence"):
        generate(model, params, ids, mask, max_new_tokens=2,
                 capture={POST: TopK(2, positions=[T])})
    # with a 3-slot prefix the prompt fills slots 3.., so slot 1 is not one of its slots
    with pytest.raises(ValueError, match=rf"position 1 is not a prompt slot; the prompt fills "
                                         rf"slots 3\.\.{3 + T - 1}"):
        generate(model, params, ids, mask, max_new_tokens=2, prefix=model.init_cache(1, 3),
                 capture={POST: TopK(2, positions=[1, 4])})
