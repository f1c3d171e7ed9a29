"""KV-cache generation with capture and interventions.

A jitted prefill writes the prompt into the cache, then a jitted chunk of decoding steps (a
``lax.fori_loop`` over one-token steps, ``steps_per_call`` of them) decodes; the Python loop
between chunks shows a progress bar and stops once every row has hit EOS. Keeping the
per-token work (padding finished rows, recording tokens and captures, sampling, the EOS test)
inside the compiled chunk means the host is not in the loop of every token, which is what
bounds a small model on a GPU. Both programs are compiled once per (model, capture request,
sampling settings) and reused; the number of steps in a chunk is traced, so the last, shorter
chunk reuses the program too.

Prompts are left-padded (right-padded prompts are re-aligned for you), so every row's next
token sits in the same slot. A prompt prefix shared by the whole batch (a few-shot prompt,
say) can be prefilled once with :func:`prefill_prefix` and passed as ``prefix=``: its cache
is broadcast to the batch, and the rows' own tokens follow it.

Capture returns, for every requested hook, the values at every slot from the end of the
prefix on (prompt then generated tokens): ``out.captured[name][:, j]`` belongs to slot
``out.capture_start + j`` and token ``out.tokens[:, j]``. Attention patterns are
(B, H, T, S) with S the cache length. A hook may instead map to a reduction
(``jaxreason.reductions``), e.g. ``{"blocks.*.mlp.hook_post": TopK(20, scale=norms)}``: it is
computed inside the jitted prefill and step, so only its small result is kept per step, and
its leaves are concatenated along axis 1 just the same. A reduction's ``positions`` choose
which prompt slots the prefill records (all when None); every decoding step is recorded after
them. Interventions apply during the prefill only
(``intervene_on="prefill"``) or also at every decoding step (``"all"``); their positions are
absolute slots, so the prefix counts.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm.auto import tqdm

from jaxreason.hooks import (captured_position_axis, check_positions, check_request_positions,
                             make_plan, normalize_capture)
from jaxreason.models.families import family_of
from jaxreason.models.layers import KVCache
from jaxreason.models.lm import CausalLM
from jaxreason.reductions import Reduction
from jaxreason.runtime_checks import raise_if_failed
from jaxreason.sharding import batch_sharding, replicated


DEFAULT_STEPS_PER_CALL = 16  # decoding steps per compiled call (see generate's steps_per_call)


@struct.dataclass
class GenerateOutput:
    """Result of :func:`generate`.

    tokens: (B, T + N) the (left-aligned) prompt followed by generated tokens; after a row's
      EOS the rest is ``pad_token_id``.
    prompt_mask: (B, T) 1 for real prompt tokens.
    generated: (B, N) generated tokens only.
    num_generated: (B,) tokens generated per row, EOS included.
    captured: hook name -> values over slots ``capture_start ..`` (a reduction with
      ``positions``: its chosen prompt slots, then one entry per generated token).
    capture_start: slot of ``tokens[:, 0]`` (the prefix length).
    """

    tokens: Any
    prompt_mask: Any
    generated: Any
    num_generated: Any
    captured: dict
    capture_start: int = struct.field(pytree_node=False, default=0)


def extend_cache(cache: KVCache, max_len: int) -> KVCache:
    """Give a cache more empty slots (a prefix cache is built exactly as long as the prefix)."""
    extra = max_len - cache.max_len
    if extra < 0:
        raise ValueError(f"cannot shrink a cache of {cache.max_len} slots to {max_len}")
    if extra == 0:
        return cache
    return cache.with_free_slots(extra)  # per-layer or stacked (scanned models) layout


def left_align(input_ids, attention_mask):
    """Move each row's padding to the left (numpy, on concrete arrays)."""
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask).astype(bool)
    if mask[:, -1].all():
        return ids, mask.astype(np.int32)
    out_ids, out_mask = np.zeros_like(ids), np.zeros_like(mask)
    for r in range(ids.shape[0]):
        real = ids[r][mask[r]]
        if real.size:
            out_ids[r, -real.size:] = real
            out_mask[r, -real.size:] = True
    return out_ids, out_mask.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("model", "capture_key"))
def _checked_prefill(model: CausalLM, params, cache, input_ids, attention_mask, interventions,
                     capture_key, capture_requests):
    # checked: the intervention arrays are traced here (a neuron past F must not pass); the
    # decoding steps reuse the same specs, so checking the prefill covers them too
    err, out = model.checked_apply(params, input_ids, attention_mask, cache=cache,
                                   capture=dict(zip(capture_key, capture_requests)) or None,
                                   interventions=interventions)
    return err, (out.logits[:, -1], out.cache, out.captured)


def _prefill(*args):
    """The jitted prefill; raises ``ValueError`` for an index its runtime checks refuse."""
    err, result = _checked_prefill(*args)
    raise_if_failed(err)
    return result


def _sample(logits, key, temperature: float, top_p: float):
    """Greedy when temperature is 0; otherwise temperature and nucleus (top-p) sampling."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        kept = jnp.where(before < top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _decode_step(model: CausalLM, params, cache, token, live, interventions, key, capture_key,
                 capture_requests, temperature, top_p):
    out = model.apply(params, token[:, None], live[:, None].astype(jnp.int32), cache=cache,
                      capture=dict(zip(capture_key, capture_requests)) or None,
                      interventions=interventions)
    nxt = _sample(out.logits[:, -1], key, temperature, top_p)
    return nxt, out.cache, out.captured


@functools.partial(jax.jit, static_argnames=("model", "capture_key", "temperature", "top_p",
                                             "chunk"),
                   donate_argnames=("cache",))
def _decode_chunk(model: CausalLM, params, cache, token, live, key, steps, eos, pad_token_id,
                  interventions, capture_key, capture_requests, temperature, top_p, chunk):
    """``steps`` (<= ``chunk``, traced) decoding steps in one program, so the host is not
    involved between them. Each step pads finished rows, records the token and whether its
    row was live, feeds the token back (which records its activations when capturing and
    samples the next one) and retires rows that just produced an EOS.

    Returns (next token, live, key, cache, tokens (chunk, B), lives (chunk, B), captured: per
    hook, every leaf stacked on a leading (chunk,) axis); slots from ``steps`` on are zeros.
    """
    def one(cache, token, live, key):
        return _decode_step(model, params, cache, token, live, interventions, key, capture_key,
                            capture_requests, temperature, top_p)

    shapes = jax.eval_shape(one, cache, token, live, key)[2]
    zeros = lambda a: jnp.zeros((chunk, *a.shape), a.dtype)  # noqa: E731
    buffers = (jnp.zeros((chunk, *token.shape), jnp.int32), jnp.zeros((chunk, *live.shape), bool),
               jax.tree_util.tree_map(zeros, shapes))

    def body(i, carry):
        token, live, key, cache, (toks, lives, caps) = carry
        token = jnp.where(live, token, pad_token_id)
        toks, lives = toks.at[i].set(token), lives.at[i].set(live)
        key, sub = jax.random.split(key)
        nxt, cache, captured = one(cache, token, live, sub)
        caps = jax.tree_util.tree_map(lambda b, v: b.at[i].set(v), caps, captured)
        live = live & ~jnp.isin(token, eos)
        return nxt, live, key, cache, (toks, lives, caps)

    token, live, key, cache, (toks, lives, caps) = jax.lax.fori_loop(
        0, steps, body, (token, live, key, cache, buffers))
    return token, live, key, cache, toks, lives, caps


def _steps_to_positions(stacked, steps: int, axis: int):
    """A chunk's stacked captures (chunk, ..., 1 at ``axis``, ...) -> the first ``steps`` of
    them laid along ``axis``, as the prefill lays its positions."""
    def one(leaf):
        x = jnp.moveaxis(leaf[:steps], 0, axis + 1)  # (..., 1, steps, ...)
        shape = x.shape[:axis] + (steps,) + x.shape[axis + 2:]
        return x.reshape(shape)
    return jax.tree_util.tree_map(one, stacked)


def _shard_rows(tree, batch: int, mesh):
    """Split every array whose leading axis is the batch over (data, fsdp); replicate the rest."""
    def put(x):
        if getattr(x, "ndim", 0) >= 1 and x.shape[0] == batch:
            return jax.device_put(x, batch_sharding(mesh, x.ndim))
        return jax.device_put(x, replicated(mesh))
    return jax.tree_util.tree_map(put, tree)


def _all_stopped(live, token_chunks, eos_token_id, stop_when) -> bool:
    """Whether every row has hit EOS or is finished by ``stop_when`` (a host sync).
    ``token_chunks``: the (steps, B) tokens of each decoded chunk so far."""
    if eos_token_id is None and stop_when is None:
        return False
    done = ~np.asarray(live)
    if stop_when is not None and not done.all():
        tokens = np.concatenate([np.asarray(t) for t in token_chunks], axis=0).T
        done |= np.asarray(stop_when(tokens), bool)
    return bool(done.all())


def prefill_prefix(model: CausalLM, params, prefix_ids: Sequence[int] | jax.Array, *,
                   interventions=None) -> KVCache:
    """Run a prompt prefix shared by a whole batch once; pass the result as ``prefix=``."""
    ids = jnp.asarray(prefix_ids, jnp.int32).reshape(1, -1)
    cache = model.init_cache(1, ids.shape[1])
    _, cache, _ = _prefill(model, params, cache, ids, jnp.ones_like(ids), interventions, (),
                           ())
    return cache


def _generate_capture(capture) -> dict:
    """The capture request of :func:`generate`: names, or per-position reductions."""
    cap = normalize_capture(capture)
    for pattern, request in cap.items():
        if request is not None and not isinstance(request, Reduction):
            raise ValueError(f"generate captures every slot; pass hook names only and select "
                             f"positions from the result (got positions for {pattern!r}), or "
                             f"give a reduction whose positions choose the prompt slots")
        if isinstance(request, Reduction) and not request.keeps_positions:
            raise ValueError(f"capture of {pattern!r}: {type(request).__name__} has no position "
                             f"axis to extend at each decoding step; use a per-position "
                             f"reduction (TopK, Norm), or model.apply on out.tokens")
    return cap


def _check_prompt_slots(cap: dict, start: int, t: int) -> None:
    """A reduction's positions must be prompt slots: ``start .. start + t - 1``."""
    for pattern, request in cap.items():
        positions = getattr(request, "positions", None)
        if positions is None:
            continue
        where = f"capture of {pattern!r}"
        check_positions(positions, start + t, where)
        p = np.asarray(positions)
        if p.size and p.min() < start:
            raise ValueError(f"{where}: position {int(p.min())} is not a prompt slot; the "
                             f"prompt fills slots {start}..{start + t - 1} (the prefix comes "
                             f"before it, and every decoding step is recorded anyway)")


def _join_steps(parts: list, axis: int, max_new_tokens: int):
    """Concatenate the prefill's and each step's captures (arrays or pytrees of arrays) along
    the position axis. When decoding stopped early, the slots never decoded (pad after every
    row's EOS) are zero-filled so the captures stay aligned with ``tokens`` slot for slot."""
    width = jax.tree_util.tree_leaves(parts[0])[0].shape[axis] + max_new_tokens

    def join(*leaves):
        value = jnp.concatenate(leaves, axis=axis)
        widths = [(0, 0)] * value.ndim
        widths[axis] = (0, width - value.shape[axis])
        return jnp.pad(value, widths)
    return jax.tree_util.tree_map(join, *parts)


def generate(model: CausalLM, params, input_ids, attention_mask=None, *, max_new_tokens: int,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int = 0,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, capture=None,
             interventions=None, intervene_on: str = "prefill", prefix: KVCache | None = None,
             progress: bool = False, mesh=None,
             stop_when: Callable[[np.ndarray], np.ndarray] | None = None,
             params_for_call: Callable[[int], Any] | None = None,
             steps_per_call: int = DEFAULT_STEPS_PER_CALL) -> GenerateOutput:
    """Decode up to ``max_new_tokens`` per row with a KV cache.

    Args:
      model, params: the model and its parameters.
      input_ids: (B, T) prompts; attention_mask: (B, T) 1 for real tokens (any padding side).
      max_new_tokens: steps to decode; rows stop at their first EOS.
      eos_token_id: one id or several; None decodes the full length.
      temperature, top_p, seed: sampling; temperature 0 is greedy.
      capture: hook names or patterns to record at every prompt and generated slot, or a
        dict name -> None or a per-position reduction (``TopK``, ``Norm``) whose
        ``positions`` may choose the prompt slots to record.
      interventions: hook specs; applied during the prefill only, or at every step too when
        ``intervene_on="all"``.
      prefix: a batch-1 cache from :func:`prefill_prefix` that every row continues from.
      progress: show a progress bar over decoding steps (advanced once per chunk).
      mesh: a ``jax.sharding.Mesh``; rows (prompts, cache, captures) are split over its
        ``data``/``fsdp`` axes for data-parallel decoding. Place ``params`` with
        ``jaxreason.sharding.model_shardings`` first. The batch must divide those axes.
      stop_when: a host-side stop rule (stop strings, say): given the (B, n) tokens generated
        so far as NumPy, it returns (B,) bool, True for rows it considers finished. Checked
        every 4 steps with the EOS check; decoding stops once every row has hit EOS or is
        finished. It does not end rows early (they still run to EOS): trimming is the
        caller's, so the output does not depend on when the rule was checked.
      params_for_call: weights that change while decoding (the cumulative value-vector
        corruption of Rai & Yao, 2024): ``params_for_call(n)`` gives the parameters of forward
        call ``n`` (0 the prefill, n the n-th decoding step), in place of ``params``. They must
        keep the structure, shapes and dtypes of ``params`` (then nothing recompiles). With
        it, every compiled call decodes one step (``steps_per_call`` is taken as 1).
      steps_per_call: decoding steps run in one compiled call (a ``lax.fori_loop``) before
        the host looks again (progress bar, EOS and ``stop_when`` checks). Larger means fewer
        host round trips (what bounds small models on a GPU), at up to this many steps
        decoded past the point where every row had stopped.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
            or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, (int, np.integer)) \
            or steps_per_call < 1:
        raise ValueError(f"steps_per_call must be an int >= 1, got {steps_per_call!r}")
    if intervene_on not in ("prefill", "all"):
        raise ValueError(f"intervene_on={intervene_on!r}; allowed: 'prefill', 'all'")
    if not 0.0 < top_p <= 1.0 or temperature < 0.0:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    cap = _generate_capture(capture)
    capture_key = tuple(sorted(cap))
    prefill_requests = tuple(cap[k] for k in capture_key)
    # a decoding step holds one slot: it is always recorded, whatever the prompt positions
    step_requests = tuple(None if r is None else r.replace(positions=None)
                          for r in prefill_requests)
    ids = np.asarray(input_ids)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    model._check_inputs(ids, mask, None, None)  # shapes, dtype, token ids in the vocabulary
    ids, mask = left_align(ids, mask)
    b, t = ids.shape
    start = 0 if prefix is None else prefix.max_len
    total = start + t + max_new_tokens
    limit = family_of(model).position_limit(model.config)
    if limit is not None and total > limit:
        raise ValueError(f"prefix + prompt + max_new_tokens = {total} exceeds "
                         f"{family_of(model).title}'s {limit} positions")
    check_request_positions(None, interventions, total)
    _check_prompt_slots(cap, start, t)
    if prefix is None:
        cache = model.init_cache(b, total)
    else:
        cache = extend_cache(prefix.broadcast(b) if prefix.batch == 1 else prefix, total)
    eos = jnp.asarray(np.atleast_1d(-1 if eos_token_id is None else eos_token_id), jnp.int32)
    step_edits = interventions if intervene_on == "all" else None
    ids_in, mask_in = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    if mesh is not None:
        ids_in, mask_in, cache = _shard_rows((ids_in, mask_in, cache), b, mesh)

    weights = (lambda n: params) if params_for_call is None else params_for_call  # noqa: E731
    if params_for_call is not None:  # new weights for every call: one step per call
        steps_per_call = 1
    last_logits, cache, captured = _prefill(model, weights(0), cache, ids_in, mask_in,
                                            interventions, capture_key, prefill_requests)
    key = jax.random.PRNGKey(seed)
    key, sub = jax.random.split(key)
    token = _sample(last_logits, sub, temperature, top_p)
    live = jnp.ones((b,), bool)
    requests = make_plan(cap, None, model.hook_names).capture
    axes = {name: captured_position_axis(name, requests[name]) for name in captured}
    pieces = {n: [v] for n, v in captured.items()}
    token_chunks, live_chunks = [], []
    bar = tqdm(total=max_new_tokens, desc="generating", disable=not progress, leave=False)
    done = 0
    while done < max_new_tokens:
        steps = min(steps_per_call, max_new_tokens - done)
        if params_for_call is not None and not capture_key and done == max_new_tokens - 1:
            # the last token is sampled already; feeding it back would only spend one more
            # forward call of the changing weights (which a caller may count), so record it
            token_chunks.append(jnp.where(live, token, pad_token_id)[None])
            live_chunks.append(live[None])
            done += 1
            bar.update(1)
            break
        # the last fed token's step is wasted when nothing is captured (its sample is
        # dropped); running it keeps one program for every chunk
        token, live, key, cache, toks, lives, caps = _decode_chunk(
            model, weights(done + 1), cache, token, live, key, jnp.asarray(steps, jnp.int32), eos,
            jnp.asarray(pad_token_id, jnp.int32), step_edits, capture_key, step_requests,
            temperature, top_p, steps_per_call)
        token_chunks.append(toks[:steps])
        live_chunks.append(lives[:steps])
        for name, v in caps.items():
            pieces[name].append(_steps_to_positions(v, steps, axes[name]))
        done += steps
        bar.update(steps)
        if done < max_new_tokens and _all_stopped(live, token_chunks, eos_token_id, stop_when):
            break
    bar.close()
    generated = jnp.concatenate(token_chunks, axis=0).T
    n_gen = jnp.concatenate(live_chunks, axis=0).sum(0)
    steps = generated.shape[1]
    if steps < max_new_tokens:  # stopped early: pad to the requested width
        generated = jnp.pad(generated, ((0, 0), (0, max_new_tokens - steps)),
                            constant_values=pad_token_id)
    out_captured = {name: _join_steps(parts, axes[name], max_new_tokens)
                    for name, parts in pieces.items()}
    return GenerateOutput(tokens=jnp.concatenate([jnp.asarray(ids), generated], axis=1),
                          prompt_mask=jnp.asarray(mask), generated=generated,
                          num_generated=n_gen, captured=out_captured, capture_start=start)
