"""Think-to-Talk decoding, export and patching on a tiny random Llama: captured states line
up with the tokens, the cached prompt changes nothing, patching semantics hold, and a killed
export resumes to the same result."""

import numpy as np
import pytest

from jaxreason.hooks import hidden_state_hook
from jaxreason.models import from_config
from jaxreason.models.config import LlamaConfig
from jaxreason.models.generate import prefill_prefix
from jaxreason.probe.activation_store import ActivationWriter, open_store
from jaxreason.studies.think_to_talk import patching as ttt_patching
from jaxreason.studies.think_to_talk.decode import decode_batch, decode_problems, hidden_indices
from jaxreason.tasks import formulas as fm
from jaxreason.tasks.formula_tokens import FormulaTokenizer


class StopAt(FormulaTokenizer):
    """The formula tokenizer with another stop id (a random model must not stop at random)."""

    def __init__(self, eos_id: int):
        super().__init__()
        self.eos_id = eos_id


@pytest.fixture(scope="module")
def setup():
    codec = StopAt(FormulaTokenizer().vocab_size)  # an id no model can emit: never stops
    model, params = from_config(LlamaConfig.tiny(vocab_size=codec.vocab_size, num_layers=3,
                                                 max_position_embeddings=512), seed=3)
    splits = fm.make_splits("2step", {"train": 100, "valid": 20, "test": 12, "probing_train": 8})
    prompt = codec.encode(fm.few_shot_prompt(splits["train"], 2))
    prefix = prefill_prefix(model, params, prompt)
    return codec, model, params, splits, prompt, prefix


def test_hidden_indices_follow_the_layer_step():
    assert hidden_indices(28, 4) == (0, 4, 8, 12, 16, 20, 24, 28)
    with pytest.raises(ValueError, match="divide"):
        hidden_indices(28, 5)
    assert [hidden_state_hook(i, 3) for i in (0, 1, 3)] == [
        "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "ln_final.hook_normalized"]
    with pytest.raises(ValueError, match="outside 0..3"):
        hidden_state_hook(4, 3)


def test_captured_states_line_up_with_tokens(setup):
    """State at position p equals a plain full forward over prompt + the row's tokens, at
    every hidden index, for source and generated positions alike."""
    codec, model, params, splits, prompt, prefix = setup
    problems = splits["test"][:4]
    res = decode_batch(model, params, codec, prefix, problems, indices=(0, 1, 2, 3),
                       max_new_tokens=6)
    src = codec.encode(problems[0].source)
    assert res.tokens[:, :len(src)].tolist() == [codec.encode(p.source) for p in problems]
    names = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post",
             "ln_final.hook_normalized"]
    for r in range(len(problems)):
        n = int(res.lengths[r])
        assert n == len(src) + 6 - 1  # nothing stops an untrained model: S + generated - 1
        ids = np.asarray([prompt + res.tokens[r, :n].tolist()])
        full = model.apply(params, ids, capture=names).captured
        for index, name in zip((0, 1, 2, 3), names):
            want = np.asarray(full[name])[0, len(prompt):]
            np.testing.assert_allclose(res.states[index][r, :n], want, atol=2e-4, rtol=1e-4)
        # the generated tokens are the greedy continuation of that same forward
        logits = np.asarray(model.apply(params, ids).logits)[0, len(prompt) + len(src) - 1:]
        assert res.generated[r, :6].tolist()[:n - len(src) + 1] == logits.argmax(-1).tolist()


def test_rows_stop_at_the_newline_and_are_trimmed(setup):
    _, model, params, splits, prompt, prefix = setup
    codec = StopAt(0)
    # a zero final-norm scale makes every logit 0, so greedy decoding picks id 0 at once
    p = {**params, "norm": {k: np.zeros_like(v) for k, v in params["norm"].items()}}
    res = decode_batch(model, p, codec, prefill_prefix(model, p, prompt), splits["test"][:2],
                       indices=(0,), max_new_tokens=5)
    s = len(codec.encode(splits["test"][0].source))
    assert res.lengths.tolist() == [s, s]  # S + 1 generated (the newline) - 1
    assert res.generated[:, 0].tolist() == [0, 0]
    assert res.states[0].shape[1] == s


def test_patching_with_the_runs_own_states_changes_nothing(setup):
    codec, model, params, splits, prompt, prefix = setup
    problems = splits["test"][:3]
    plain = decode_batch(model, params, codec, prefix, problems, indices=(0, 3),
                         source_indices=(1, 2, 3), max_new_tokens=5)
    edits = ttt_patching.patch_interventions(plain.source_states, 3, 1, 13, 14, len(prompt))
    patched = decode_batch(model, params, codec, prefix, problems, indices=(0, 3),
                           interventions=edits, max_new_tokens=5)
    assert patched.texts == plain.texts
    for i in (0, 3):
        np.testing.assert_allclose(patched.states[i], plain.states[i], atol=1e-5)


def test_patching_every_source_state_transfers_the_base_run(setup):
    """Overwriting every source position from the embeddings up makes the edited problem's
    run the base run exactly: the patch reaches the output."""
    codec, model, params, splits, prompt, prefix = setup
    pairs = fm.make_edit_pairs(3, seed=5)
    base = decode_batch(model, params, codec, prefix, [p.base for p in pairs], indices=(),
                        source_indices=(0, 1, 2, 3), max_new_tokens=5)
    edited = decode_batch(model, params, codec, prefix, [p.edited for p in pairs], indices=(3,),
                          max_new_tokens=5)
    edits = ttt_patching.patch_interventions(base.source_states, 3, 0, 0, 17, len(prompt))
    patched = decode_batch(model, params, codec, prefix, [p.edited for p in pairs], indices=(3,),
                           interventions=edits, max_new_tokens=5)
    assert patched.texts == base.texts
    # only the prefill is patched: a late-layer patch of the last position alone still moves
    # the states there, and positions before the patch keep the edited run's values
    late = ttt_patching.patch_interventions(base.source_states, 3, 3, 17, 17, len(prompt))
    partial = decode_batch(model, params, codec, prefix, [p.edited for p in pairs], indices=(3,),
                           interventions=late, max_new_tokens=5)
    np.testing.assert_allclose(partial.states[3][:, :17], edited.states[3][:, :17], atol=1e-5)
    np.testing.assert_allclose(partial.states[3][:, 17], base.source_states[3][:, 17], atol=1e-5)


def test_run_patching_scores_and_teacher_forcing(setup, tmp_path):
    codec, model, params, splits, prompt, prefix = setup
    pairs = fm.make_edit_pairs(4, seed=6)
    writer = ActivationWriter(tmp_path / "tf", (0, 3), model.config.hidden_size)
    ttt_patching.run_patching(model, params, codec, prefix, pairs, start_layer=1, start=13,
                              end=14, indices=(0, 3), batch_size=2, max_new_tokens=3,
                              teacher_force=38, writer=writer, progress=False)
    writer.close()
    store = open_store(tmp_path / "tf")
    s = len(codec.encode(pairs[0].base.source))
    # the forced gold prefix is part of the input: it sits in the stored tokens
    gold = [codec.encode(p.edited.target)[:38] for p in pairs]
    assert store.tokens()[:, s:s + 38].tolist() == gold
    summary = ttt_patching.summarize((), store)
    assert summary["pairs"] == 4 and 0.0 <= summary["accuracy"] <= 1.0


def test_patch_positions_are_checked_against_the_tokenizer(setup):
    codec = setup[0]
    pairs = fm.make_edit_pairs(5, seed=1)
    assert ttt_patching.check_patch_positions(codec, pairs, 13, 14, ("<edited>", ";"))[1] == ";"
    assert ttt_patching.check_patch_positions(codec, pairs, 15, 17, ("<query>", "=", "?")) == [
        pairs[0].base.query, "=", "?"]
    with pytest.raises(ValueError, match="patch position 12 holds"):
        ttt_patching.check_patch_positions(codec, pairs, 12, 13, ("<edited>", ";"))
    with pytest.raises(ValueError, match="source length"):
        ttt_patching.check_patch_positions(codec, pairs, 16, 18, ("=", "?", "x"))
    with pytest.raises(ValueError, match="2 entries"):
        ttt_patching.check_patch_positions(codec, pairs, 13, 15, ("<edited>", ";"))


def test_killed_export_resumes_to_the_same_store(setup, tmp_path):
    codec, model, params, splits, prompt, prefix = setup
    problems = splits["test"][:6]
    kw = dict(indices=(0, 2), batch_size=2, max_new_tokens=4, progress=False)

    def export(path, stop_after=None):
        writer = ActivationWriter(path, (0, 2), model.config.hidden_size, resume=True)
        calls = []

        def on_batch(lo, res):
            calls.append(lo)
            if stop_after is not None and len(calls) == stop_after:
                raise KeyboardInterrupt

        decode_problems(model, params, codec, prefix, problems, writer=writer,
                        on_batch=on_batch, **kw)
        writer.close()
        return calls

    export(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        export(tmp_path / "killed", stop_after=2)
    assert export(tmp_path / "killed") == [4]  # only the batch never written is decoded
    a, b = open_store(tmp_path / "whole"), open_store(tmp_path / "killed")
    assert a.num_rows == b.num_rows == 6
    np.testing.assert_array_equal(a.tokens(), b.tokens())
    np.testing.assert_array_equal(a.layer(2), b.layer(2))
    np.testing.assert_array_equal(a.extra("correct"), b.extra("correct"))


def test_exports_record_which_weights_wrote_them(setup, tmp_path):
    """A retrained model must not resume another model's export: the study stores a weights
    digest in the export's meta, and the store refuses a different one."""
    from jaxreason.studies.think_to_talk.run import weights_fingerprint

    _, model, params, *_ = setup
    same = weights_fingerprint(params)
    assert same == weights_fingerprint({k: v for k, v in params.items()})
    moved = {**params, "norm": {k: v * 1.01 for k, v in params["norm"].items()}}
    assert weights_fingerprint(moved) != same
    ActivationWriter(tmp_path / "s", (0,), 4, meta={"weights": same}).close()
    with pytest.raises(ValueError, match="differs from the given meta"):
        ActivationWriter(tmp_path / "s", (0,), 4, meta={"weights": weights_fingerprint(moved)})
