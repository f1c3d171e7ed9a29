"""generate's decode loop runs ``steps_per_call`` steps per compiled call: the chunking must
not change the tokens, the sampled stream, the EOS handling or the captures, and the host
checks (stop rules) happen between chunks."""

from __future__ import annotations

import numpy as np
import pytest

from jaxreason.models import LlamaConfig, from_config
from jaxreason.models.generate import generate

N_NEW = 7


@pytest.fixture(scope="module")
def lm():
    model, params = from_config(LlamaConfig.tiny(), seed=0)
    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, (2, 5), dtype=np.int32)
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # a left-padded row
    return model, params, ids, mask


def _run(lm, steps_per_call, **kw):
    model, params, ids, mask = lm
    return generate(model, params, ids, mask, max_new_tokens=N_NEW, temperature=1.0, seed=3,
                    capture=["blocks.0.hook_resid_post"], steps_per_call=steps_per_call, **kw)


def test_chunk_size_changes_nothing(lm):
    """One step per call is the old host loop; 3 per call gives two full chunks and a 1-step
    remainder. Same sampled tokens, same captures, same EOS cut."""
    ref = _run(lm, 1)
    eos = int(np.asarray(ref.generated)[0, 2])  # row 0 stops at its third token
    ref_eos = _run(lm, 1, eos_token_id=eos)
    for k in (3,):
        got = _run(lm, k)
        np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(ref.tokens))
        name = "blocks.0.hook_resid_post"
        np.testing.assert_allclose(np.asarray(got.captured[name]), np.asarray(ref.captured[name]),
                                   atol=1e-5 * np.abs(np.asarray(ref.captured[name])).max())
        got_eos = _run(lm, k, eos_token_id=eos)
        np.testing.assert_array_equal(np.asarray(got_eos.generated),
                                      np.asarray(ref_eos.generated))
        np.testing.assert_array_equal(np.asarray(got_eos.num_generated),
                                      np.asarray(ref_eos.num_generated))
    g = np.asarray(ref_eos.generated)
    assert ref_eos.num_generated[0] <= 3 and (g[0, int(ref_eos.num_generated[0]):] == 0).all()


def test_stop_rule_is_checked_between_chunks(lm):
    calls = []

    def stop_all(tokens):
        calls.append(tokens.shape[1])
        return np.ones(tokens.shape[0], bool)

    out = _run(lm, 3, stop_when=stop_all)
    assert calls == [3]  # after the first chunk; decoding then ends
    assert out.generated.shape == (2, N_NEW) and (np.asarray(out.generated)[:, 3:] == 0).all()
    with pytest.raises(ValueError, match="steps_per_call must be an int >= 1, got 0"):
        _run(lm, 0)
