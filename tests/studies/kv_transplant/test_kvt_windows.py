"""Windows of both modes against the token ids, for the world and the Alpaca prompts."""

from __future__ import annotations

import pytest

from jaxreason.studies.kv_transplant import prompts as P


def test_fixed_windows_are_the_argument_ids(world_tokenizer, world_items):
    tok = world_tokenizer
    item = world_items[0]
    enc = P.encode_item(tok, item, "fixed", "world")
    for j, text in enumerate(item.slots(arguer=False)):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        s, n = enc.chooser.windows[j]
        assert list(enc.chooser.ids[s:s + n]) == ids
        a = enc.arguers[j]
        (s, n), = a.windows
        assert list(a.ids[s:s + n]) == ids and s + n == len(a.ids)  # nothing follows
    assert enc.chooser.ids[0] == tok.bos_token_id
    tail = tok("\nThe answer is candidate ", add_special_tokens=False)["input_ids"]
    assert list(enc.chooser.ids[-len(tail):]) == tail


@pytest.mark.parametrize("style", ["world", "alpaca"])
def test_faithful_windows_start_at_the_delimiter_and_drop_the_last_token(world_tokenizer,
                                                                         world_items, style):
    tok = world_tokenizer
    item = world_items[1]
    fixed = P.encode_item(tok, item, "fixed", style)
    faithful = P.encode_item(tok, item, "faithful", style)
    sep = P.fence_id(tok)
    assert sep not in faithful.chooser.ids and all(sep not in a.ids for a in faithful.arguers)
    for enc_f, enc_x, windows_f, windows_x in (
            (faithful.chooser, fixed.chooser, faithful.chooser.windows, fixed.chooser.windows),
            *[(a, b, a.windows, b.windows) for a, b in zip(faithful.arguers, fixed.arguers)]):
        for (sf, nf), (sx, nx) in zip(windows_f, windows_x):
            assert nf == nx
            arg = enc_x.ids[sx:sx + nx]
            # one token earlier: the delimiter first, then every argument token but the last
            assert list(enc_f.ids[sf + 1:sf + nf]) == list(arg[:-1])
            assert enc_f.ids[sf + nf] == arg[-1]
            assert enc_f.ids[sf] == enc_x.ids[sx - 1]
    # the original's window formula on the fenced ids, computed here by hand
    fenced = tok(P.chooser_pieces(style, item.question, item.choice_argument)[0] + P.FENCE
                 + item.slots(False)[0] + P.FENCE)["input_ids"]
    g0, g1 = [c for c, t in enumerate(fenced) if t == sep]
    assert faithful.chooser.windows[0] == (g0 - 1, (g1 - 2) - (g0 - 1))


def test_unequal_windows_are_refused(world_tokenizer, world_items):
    import dataclasses
    item = dataclasses.replace(world_items[0], arguer_correct=world_items[0].arguer_correct + " So")
    with pytest.raises(ValueError, match="arguer window has"):
        P.encode_item(world_tokenizer, item, "fixed", "world")


def test_answer_ids(world_tokenizer):
    one, two = P.answer_ids(world_tokenizer, ("1", "2"))
    assert world_tokenizer.decode([one, two]) == "12"
    with pytest.raises(ValueError, match="not tokens"):
        P.answer_ids(world_tokenizer, ("1", "candidate_1"))
