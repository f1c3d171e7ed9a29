"""The generation runner on a tiny random Llama with a char codec: it reproduces direct
``generate`` calls, trims at stop strings, resumes a killed run to identical files, reuses a
prefix as if it were prepended, scores every record, aligns captures with records and runs
data parallel over 4 fake devices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxreason.generation_runner import (DecodeSettings, batch_seed, generate_batch,
                                         run_generation)
from jaxreason.models import LlamaConfig, from_config
from jaxreason.models.generate import generate
from jaxreason.probe.array_store import open_arrays

HOOK = "blocks.0.hook_resid_post"
N_NEW = 8


def decode(ids) -> str:
    return "".join(chr(97 + int(i) % 26) for i in ids)


@pytest.fixture(scope="module")
def setup():
    model, params = from_config(LlamaConfig.tiny(), seed=1)
    rng = np.random.default_rng(0)
    # lengths 2..6, with a 6 in every batch of 3 and of 4: one prompt width, one compile
    lengths = [6 if i in (0, 3, 4, 6, 8, 9) else int(rng.integers(2, 6)) for i in range(10)]
    records = [{"id": i, "prompt": rng.integers(1, 128, n).tolist()}
               for i, n in enumerate(lengths)]
    return model, params, records


def _encode(rec):
    return rec["prompt"]


def _direct(model, params, prompts, **kw):
    """An independent batch: right padded here (generate re-aligns it), one call."""
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, :len(p)], mask[r, :len(p)] = p, 1
    out = generate(model, params, ids, mask, max_new_tokens=N_NEW, **kw)
    return (np.asarray(out.generated), np.asarray(out.num_generated),
            {k: np.asarray(v) for k, v in out.captured.items()})


@pytest.fixture(scope="module")
def plain(setup, tmp_path_factory):
    """Greedy run, batches of 4 (the last one short), capture at HOOK, scored."""
    model, params, records = setup
    calls = []

    def score(rec, text, ids):
        calls.append(rec["id"])
        return {"record": rec["id"], "length": len(ids), "even": np.bool_(len(ids) % 2 == 0)}
    out_dir = tmp_path_factory.mktemp("plain")
    out = run_generation(model, params, records, _encode, DecodeSettings(N_NEW, batch_size=4),
                         decode=decode, capture=[HOOK], score=score, out_dir=out_dir,
                         identity={"model": "tiny"}, progress=False)
    return out, out_dir, calls


def test_results_equal_direct_generate(setup, plain):
    model, params, records = setup
    out, out_dir, _ = plain
    store = open_arrays(out.store)
    for lo in (0, 4, 8):
        prompts = [r["prompt"] for r in records[lo:lo + 4]]
        gen, n_gen, cap = _direct(model, params, prompts, capture=[HOOK])
        np.testing.assert_array_equal(store.read("generated", rows=slice(lo, lo + 4)), gen)
        for r in range(len(prompts)):
            assert out.results[lo + r]["text"] == decode(gen[r]) and n_gen[r] == N_NEW
        # captures align with records: the chunk holds this batch's rows, slot for slot
        chunk = store.chunk(HOOK, lo // 4)
        np.testing.assert_allclose(chunk, cap[HOOK][:len(prompts)], atol=1e-6)
        assert store.chunks[lo // 4]["prompt_width"] == max(map(len, prompts))


def test_capture_row_starts_at_its_own_prompt(setup, plain):
    """Slot prompt_width - prompt_length of a row is its first prompt token: equal to a
    forward of that prompt alone."""
    model, params, records = setup
    store = open_arrays(plain[0].store)
    lengths = store.read("prompt_length")
    rows = (0, 5, 9)
    width = max(len(records[i]["prompt"]) for i in rows)
    ids = np.zeros((3, width), np.int32)  # right padded: causal attention ignores the tail
    for r, i in enumerate(rows):
        ids[r, :lengths[i]] = records[i]["prompt"]
    alone = np.asarray(model.jit_apply(params, ids, capture=[HOOK]).captured[HOOK])
    for r, i in enumerate(rows):
        chunk = store.chunks[i // 4]
        row = store.chunk(HOOK, i // 4)[i - chunk["row_start"]]
        first = chunk["prompt_width"] - lengths[i]
        np.testing.assert_allclose(row[first:first + lengths[i]], alone[r, :lengths[i]],
                                   atol=1e-5)


def test_score_called_once_per_record_and_results_file(plain):
    out, out_dir, calls = plain
    assert calls == list(range(10))
    lines = [json.loads(x) for x in (out_dir / "results.jsonl").read_text().splitlines()]
    assert lines == out.results and [r["index"] for r in lines] == list(range(10))
    assert all(r["record"] == r["index"] and r["length"] == N_NEW and r["even"] is True
               for r in lines)


def test_stop_tokens_and_stop_strings_trim(setup, plain):
    model, params, records = setup
    full = [r["text"] for r in plain[0].results]
    stop_tok = int(np.asarray(open_arrays(plain[0].store).read("generated"))[1, 3])
    stop_str = full[2][3:5]
    settings = DecodeSettings(N_NEW, batch_size=4, stop_tokens=(stop_tok,),
                              stop_strings=(stop_str, "\x00never"))
    out = run_generation(model, params, records, _encode, settings, decode=decode,
                         progress=False)
    gen_full = open_arrays(plain[0].store).read("generated")
    for i, row in enumerate(out.results):
        ids = gen_full[i].tolist()
        k = ids.index(stop_tok) + 1 if stop_tok in ids else N_NEW  # the stop token is kept
        text = decode(ids[:k])
        cut = text.find(stop_str)
        want = text if cut < 0 else text[:cut]
        assert row["text"] == want, i
        # num_tokens: the fewest tokens whose text holds the stop string
        need = k if cut < 0 else next(j for j in range(1, k + 1) if stop_str in decode(ids[:j]))
        assert row["num_tokens"] == need, i
    # not vacuous: some row was cut by the string, some by the token
    assert any(r["text"] != t and r["num_tokens"] < N_NEW and t.find(stop_str) >= 0
               for r, t in zip(out.results, full))
    assert out.results[1]["num_tokens"] <= 4


def test_generate_batch_stops_early_once_every_row_has_stopped(setup):
    """Every letter is a stop string, so every row has stopped after its first token; the
    host check (after every compiled chunk of steps) then ends decoding long before 40."""
    from jaxreason.models.generate import DEFAULT_STEPS_PER_CALL as chunk

    model, params, records = setup
    prompts = [r["prompt"] for r in records[:3]]
    seen = []

    def counting_decode(ids):
        seen.append(len(ids))
        return decode(ids)
    letters = tuple(chr(97 + i) for i in range(26))
    b = generate_batch(model, params, prompts, DecodeSettings(40, stop_strings=letters),
                       decode=counting_decode)
    assert chunk < 40 and seen[0] == chunk and max(seen) < 40
    assert b.generated.shape == (3, 40) and (b.generated[:, chunk:] == 0).all()  # never decoded
    assert b.texts == ["", "", ""] and b.num_tokens.tolist() == [1, 1, 1]


def _files(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sampled", [False, True])
def test_resume_after_a_kill_gives_identical_files(setup, tmp_path, sampled):
    model, params, records = setup
    settings = DecodeSettings(N_NEW, batch_size=3, temperature=1.0 if sampled else 0.0,
                              top_p=0.9, seed=5)
    kw = dict(decode=decode, capture=[HOOK], progress=False,
              score=lambda rec, text, ids: {"first": int(ids[0])})
    whole = run_generation(model, params, records, _encode, settings,
                           out_dir=tmp_path / "whole", **kw)

    def kill_after(k):
        seen = []

        def on_batch(batch):
            seen.append(batch.start)
            if len(seen) == k:
                raise KeyboardInterrupt
        return on_batch, seen
    on_batch, _ = kill_after(2)
    with pytest.raises(KeyboardInterrupt):
        run_generation(model, params, records, _encode, settings, out_dir=tmp_path / "killed",
                       on_batch=on_batch, **kw)
    # a kill between the results lines and the store chunk of the next batch
    with open(tmp_path / "killed" / "results.jsonl", "a") as f:
        f.write(json.dumps({"index": 6, "text": "half"}) + "\n" + '{"index": 7, "te')
    on_batch, seen = kill_after(99)
    again = run_generation(model, params, records, _encode, settings,
                           out_dir=tmp_path / "killed", on_batch=on_batch, **kw)
    assert seen == [6, 9] and again.skipped == 6  # only the unwritten batches run again
    assert again.results == whole.results
    assert _files(tmp_path / "killed") == _files(tmp_path / "whole")
    with pytest.raises(ValueError, match="differs from the given"):
        run_generation(model, params, records, _encode, DecodeSettings(N_NEW, batch_size=3),
                       out_dir=tmp_path / "killed", **kw)


def test_sampling_seed_is_per_batch(setup, plain):
    model, params, records = setup
    settings = DecodeSettings(N_NEW, batch_size=4, temperature=1.0, seed=2)
    out = run_generation(model, params, records, _encode, settings, decode=decode,
                         progress=False)
    prompts = [r["prompt"] for r in records[4:8]]
    gen, _, _ = _direct(model, params, prompts, temperature=1.0, seed=batch_seed(2, 4))
    assert [r["text"] for r in out.results[4:8]] == [decode(g) for g in gen]
    assert batch_seed(2, 4) != batch_seed(2, 8) != batch_seed(3, 4)


def test_prefix_reuse_equals_the_prefix_prepended(setup, plain):
    model, params, records = setup
    prefix = [9, 8, 7, 6, 5]
    settings = DecodeSettings(N_NEW, batch_size=4)
    with_prefix = run_generation(model, params, records, _encode, settings, decode=decode,
                                 prefix=prefix, progress=False)
    prepended = run_generation(model, params, records, lambda r: prefix + r["prompt"],
                               settings, decode=decode, progress=False)
    assert [r["text"] for r in with_prefix.results] == [r["text"] for r in prepended.results]
    assert with_prefix.results != plain[0].results  # the prefix mattered
    b1 = generate_batch(model, params, [r["prompt"] for r in records[:4]], settings,
                        decode=decode, prefix=prefix, capture=[HOOK])
    b2 = generate_batch(model, params, [prefix + r["prompt"] for r in records[:4]], settings,
                        decode=decode, capture=[HOOK])
    # the prefix run captures from the prompt on; the prepended run has the prefix inside
    w1, w2 = b1.prompt_ids.shape[1], b2.prompt_ids.shape[1]
    for r in range(4):
        n = len(records[r]["prompt"]) + N_NEW - 1
        np.testing.assert_allclose(b1.captured[HOOK][r, w1 - b1.prompt_lengths[r]:][:n],
                                   b2.captured[HOOK][r, w2 - b2.prompt_lengths[r] + 5:][:n],
                                   atol=2e-5)


def test_bad_arguments(setup):
    model, params, records = setup
    with pytest.raises(ValueError, match="batch_size=0"):
        DecodeSettings(4, batch_size=0)
    with pytest.raises(ValueError, match="need a decode"):
        generate_batch(model, params, [[1, 2]], DecodeSettings(4, stop_strings=("x",)))
    with pytest.raises(ValueError, match="record 1 of the batch is empty"):
        generate_batch(model, params, [[1, 2], []], DecodeSettings(4))
    with pytest.raises(ValueError, match=r"reserved result fields \['text'\]"):
        run_generation(model, params, records[:2], _encode, DecodeSettings(2), progress=False,
                       score=lambda rec, text, ids: {"text": "x"})


def test_data_parallel_over_four_devices(fake_devices):
    r = fake_devices(Path(__file__).with_name("_generation_runner_worker.py"), 4)
    assert r["devices"] == 4 and r["data_axis"] == 4
    assert r["results_equal"] and r["ids_equal"]
    assert r["max_capture_diff"] < 1e-4
