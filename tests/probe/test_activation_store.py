"""Activation store (the Think-to-Talk residual-stream export) and its heat maps, on small
random data."""

from __future__ import annotations

import json
import shutil
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from jaxreason.probe.activation_store import ActivationWriter, open_store
from jaxreason.probe.heatmaps import (display_token, plot_accuracy_by_position,
                                      plot_probe_heatmap)

LAYERS = (0, 4, 8)
D = 6


def _batch(rng, b, p, row0):
    """One decoded batch: states, tokens, lengths (some rows short) and extras."""
    states = {l: rng.standard_normal((b, p, D)).astype(np.float32) for l in LAYERS}
    tokens = rng.integers(0, 1000, (b, p))
    lengths = rng.integers(1, p + 1, b)
    lengths[0] = p  # at least one full row
    extra = {"correct": rng.random(b) < 0.5, "problem_id": np.arange(row0, row0 + b),
             "answer": rng.integers(0, 10, (b, 2))}
    return states, tokens, lengths, extra


def _write(path, batches, dtype="float32", **kw):
    with ActivationWriter(path, LAYERS, D, dtype=dtype, meta={"task": "2step"}, **kw) as w:
        for batch in batches:
            w.write(*batch)
    return batches


def _batches(seed=0, shapes=((3, 5), (2, 9), (4, 7))):
    rng = np.random.default_rng(seed)
    out, row0 = [], 0
    for b, p in shapes:
        out.append(_batch(rng, b, p, row0))
        row0 += b
    return out


def _expected_layer(batches, layer, p_max, cast):
    rows = []
    for states, _, lengths, _ in batches:
        x = cast(states[layer])
        x = np.where(np.arange(x.shape[1])[None, :, None] < lengths[:, None, None], x, 0)
        rows.append(np.pad(x, ((0, 0), (0, p_max - x.shape[1]), (0, 0))))
    return np.concatenate(rows)


# ----------------------------------------------------------------------------- roundtrip


@pytest.mark.parametrize("dtype,cast", [
    ("float32", lambda x: x),
    ("float16", lambda x: x.astype(np.float16).astype(np.float32)),
    ("bfloat16", lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32)),
])
def test_roundtrip_all_dtypes_ragged_chunks(tmp_path, dtype, cast):
    batches = _write(tmp_path / "s", _batches(), dtype=dtype)
    st = open_store(tmp_path / "s")
    assert (st.num_rows, st.layers, st.d_model, st.max_positions) == (9, LAYERS, D, 9)
    assert st.meta == {"task": "2step"} and st.dtype == dtype
    lengths = np.concatenate([b[2] for b in batches])
    np.testing.assert_array_equal(st.lengths(), lengths)
    valid = st.valid()
    assert valid.shape == (9, 9) and (valid.sum(1) == lengths).all()
    tok = st.tokens(pad_id=-7)
    for r0, (_, t, ln, _) in zip((0, 3, 5), batches):
        for i in range(len(ln)):
            np.testing.assert_array_equal(tok[r0 + i, :ln[i]], t[i, :ln[i]])
            assert (tok[r0 + i, ln[i]:] == -7).all()
    for name in ("correct", "problem_id", "answer"):
        np.testing.assert_array_equal(st.extra(name), np.concatenate([b[3][name] for b in batches]))
    assert st.extra("correct").dtype == bool and st.extra("answer").shape == (9, 2)
    for layer in LAYERS:
        got = st.layer(layer)
        assert got.shape == (9, 9, D) and got.dtype == np.float32
        np.testing.assert_array_equal(got, _expected_layer(batches, layer, 9, cast))
    # position slices (contiguous and strided) agree with slicing the full array
    full = st.layer(4)
    np.testing.assert_array_equal(st.layer(4, positions=slice(4, 8)), full[:, 4:8])
    np.testing.assert_array_equal(st.layer(4, positions=slice(1, None, 3)), full[:, 1::3])
    assert st.layer(0, dtype=np.float16).dtype == np.float16
    if dtype == "bfloat16":
        man = json.loads((tmp_path / "s" / "manifest.json").read_text())
        assert man["storage_dtype"] == "uint16"
        assert np.load(tmp_path / "s" / "chunk_00000" / "layer_0.npy").dtype == np.uint16


def test_manifest_and_files(tmp_path):
    _write(tmp_path / "s", _batches())
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert man["complete"] is True and man["num_rows"] == 9 and man["layers"] == list(LAYERS)
    assert [(c["name"], c["row_start"], c["rows"], c["positions"]) for c in man["chunks"]] == [
        ("chunk_00000", 0, 3, 5), ("chunk_00001", 3, 2, 9), ("chunk_00002", 5, 4, 7)]
    files = sorted(p.name for p in (tmp_path / "s" / "chunk_00001").iterdir())
    assert files == ["extra_answer.npy", "extra_correct.npy", "extra_problem_id.npy",
                     "layer_0.npy", "layer_4.npy", "layer_8.npy", "lengths.npy", "tokens.npy"]


def test_padding_not_trusted_and_caller_array_untouched(tmp_path):
    states = {l: np.full((2, 4, D), 5.0, np.float32) for l in LAYERS}
    with ActivationWriter(tmp_path / "s", LAYERS, D) as w:
        w.write(states, np.ones((2, 4), int), np.array([4, 1]))
    assert (states[0] == 5.0).all()  # writer zeroes padding on a copy
    x = open_store(tmp_path / "s").layer(8)
    assert (x[0] == 5).all() and (x[1, :1] == 5).all() and (x[1, 1:] == 0).all()


# ----------------------------------------------------------------------------- memory


def test_layer_load_is_memory_bounded(tmp_path):
    rng = np.random.default_rng(1)
    d, layers = 256, tuple(range(0, 32, 4))  # 8 layers on disk
    with ActivationWriter(tmp_path / "s", layers, d, dtype="bfloat16") as w:
        for _ in range(8):
            x = rng.standard_normal((16, 40, d)).astype(np.float32)
            w.write({l: x for l in layers}, np.zeros((16, 40), int), np.full(16, 40))
    st = open_store(tmp_path / "s")
    one_layer = st.num_rows * st.max_positions * d * 4  # float32 output: 5.2 MB
    tracemalloc.start()
    try:
        out = st.layer(12)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.nbytes == one_layer
    # the whole store as float32 would be 8x this; allow one chunk's worth of slack
    assert peak < 1.25 * one_layer, (peak, one_layer)


# ----------------------------------------------------------------------------- resume


def test_resume_after_kill_ignores_half_chunk(tmp_path):
    path = tmp_path / "s"
    batches = _batches(shapes=((3, 5), (2, 9), (4, 7)))
    w = ActivationWriter(path, LAYERS, D, meta={"task": "2step"})
    w.write(*batches[0])
    w.write(*batches[1])
    # simulated kill: chunk_00001 was renamed but its progress entry never written, and the
    # next chunk was half written into its temp dir; neither may be trusted
    prog = json.loads((path / "progress.json").read_text())
    prog["chunks"] = prog["chunks"][:1]
    (path / "progress.json").write_text(json.dumps(prog))
    shutil.copytree(path / "chunk_00001", path / ".tmp_chunk_00002")
    (path / ".tmp_chunk_00002" / "layer_8.npy").unlink()
    del w  # killed: never closed

    with pytest.raises(ValueError, match="incomplete.*resume=True"):
        open_store(path)
    w = ActivationWriter(path, LAYERS, D, resume=True)
    assert w.done_rows() == 3
    assert not (path / ".tmp_chunk_00002").exists() and not (path / "chunk_00001").exists()
    w.write(*batches[1])
    w.write(*batches[2])
    assert w.done_rows() == 9
    w.close()
    st = open_store(path)
    assert st.num_rows == 9 and st.meta == {"task": "2step"}
    np.testing.assert_array_equal(st.extra("problem_id"), np.arange(9))
    np.testing.assert_array_equal(st.layer(4), _expected_layer(batches, 4, 9, lambda x: x))


def test_resume_closed_store_appends_and_reopens(tmp_path):
    batches = _batches()
    _write(tmp_path / "s", batches[:2])
    with ActivationWriter(tmp_path / "s", LAYERS, D) as w:
        assert w.done_rows() == 5
        w.write(*batches[2])
    assert open_store(tmp_path / "s").num_rows == 9


def test_exception_inside_context_leaves_store_incomplete(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ActivationWriter(tmp_path / "s", LAYERS, D) as w:
            w.write(*_batches()[0])
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="incomplete"):
        open_store(tmp_path / "s")


def test_resume_mismatch_refused(tmp_path):
    _write(tmp_path / "s", _batches()[:1])
    with pytest.raises(ValueError, match=r"layers=\[0, 4, 8\].*layers=\[0, 4\]"):
        ActivationWriter(tmp_path / "s", (0, 4), D)
    with pytest.raises(ValueError, match="d_model=6"):
        ActivationWriter(tmp_path / "s", LAYERS, D + 1)
    with pytest.raises(ValueError, match="'bfloat16'"):
        ActivationWriter(tmp_path / "s", LAYERS, D, dtype="bfloat16")
    with pytest.raises(ValueError, match="meta"):
        ActivationWriter(tmp_path / "s", LAYERS, D, meta={"task": "3step"})
    with pytest.raises(FileExistsError, match="resume=False"):
        ActivationWriter(tmp_path / "s", LAYERS, D, resume=False)
    (tmp_path / "empty").mkdir()
    ActivationWriter(tmp_path / "empty", LAYERS, D, resume=False).close()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an activation store"):
        ActivationWriter(tmp_path / "other", LAYERS, D)


def test_open_store_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no activation store"):
        open_store(tmp_path / "nope")


# ----------------------------------------------------------------------------- validation


def test_bad_writes_refused(tmp_path):
    w = ActivationWriter(tmp_path / "s", LAYERS, D)
    states, tokens, lengths, extra = _batches()[0]  # B=3, P=5
    with pytest.raises(ValueError, match=r"missing \[8\]"):
        w.write({0: states[0], 4: states[4]}, tokens, lengths)
    with pytest.raises(ValueError, match=r"unexpected \[2\]"):
        w.write({**states, 2: states[0]}, tokens, lengths)
    with pytest.raises(ValueError, match=r"states\[4\] has shape \(3, 4, 6\)"):
        w.write({**states, 4: states[4][:, :4]}, tokens, lengths)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, P_chunk=5\]; row 1"):
        w.write(states, tokens, np.array([5, 6, 1]))
    with pytest.raises(ValueError, match=r"lengths must be \(B,\)"):
        w.write(states, tokens, lengths[:2])
    with pytest.raises(ValueError, match="tokens must be integer"):
        w.write(states, tokens.astype(float), lengths)
    with pytest.raises(ValueError, match="leading dim B=3"):
        w.write(states, tokens, lengths, {"correct": np.ones(2, bool)})
    with pytest.raises(ValueError, match="no objects"):
        w.write(states, tokens, lengths, {"obj": np.array([None] * 3, dtype=object)})
    w.write(states, tokens, lengths, extra)
    with pytest.raises(ValueError, match="differ from the earlier chunks"):
        w.write(states, tokens, lengths, {"correct": extra["correct"]})
    assert w.done_rows() == 3
    with pytest.raises(ValueError, match="dtype 'float64' is not supported"):
        ActivationWriter(tmp_path / "t", LAYERS, D, dtype="float64")
    w.close()
    st = open_store(tmp_path / "s")
    with pytest.raises(KeyError, match=r"saved layers: \[0, 4, 8\]"):
        st.layer(5)
    with pytest.raises(KeyError, match="stored extras"):
        st.extra("nope")
    with pytest.raises(TypeError, match="slice or None"):
        st.layer(0, positions=[1, 2])


def test_no_pickle_object_array_refused(tmp_path):
    _write(tmp_path / "s", _batches()[:1])
    np.save(tmp_path / "s" / "chunk_00000" / "extra_correct.npy",
            np.array([{"a": 1}, None, "x"], dtype=object), allow_pickle=True)
    np.save(tmp_path / "s" / "chunk_00000" / "layer_4.npy",
            np.array([[None]], dtype=object), allow_pickle=True)
    st = open_store(tmp_path / "s")
    with pytest.raises(ValueError, match="refusing to load .*extra_correct.npy"):
        st.extra("correct")
    with pytest.raises(ValueError, match="refusing to load .*layer_4.npy"):
        st.layer(4)


# ----------------------------------------------------------------------------- plots


def test_display_token():
    assert display_token(" ") == "␣" and display_token("\n") == "\\n"
    assert display_token(" =") == "=" and display_token("z") == "z"


def test_plots_write_png(tmp_path):
    labels = ["z", " =", " ", "0", " +", " o", " ,", "\n"]
    rng = np.random.default_rng(0)
    acc = rng.random((4, len(labels)))
    acc[0, 0] = np.nan
    p = plot_probe_heatmap(acc, [0, 4, 8, 12], labels, chance=0.18, title="v0 2step",
                           path=tmp_path / "figs" / "heat.png", markers={5: "CoT start"})
    assert p.exists() and p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"
    q = plot_accuracy_by_position({"layer 8": acc[2], "patched": acc[3]}, labels, chance=0.11,
                                  title="v1", path=tmp_path / "figs" / "curve.png")
    assert q.exists() and q.stat().st_size > 1000 and q.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="position_labels"):
        plot_probe_heatmap(acc, [0, 4, 8, 12], labels[:-1], 0.18, "x", tmp_path / "bad.png")
    with pytest.raises(ValueError, match="4 rows but 3 layers"):
        plot_probe_heatmap(acc, [0, 4, 8], labels, 0.18, "x", tmp_path / "bad.png")
    with pytest.raises(ValueError, match="marker position 99"):
        plot_probe_heatmap(acc, [0, 4, 8, 12], labels, 0.18, "x", tmp_path / "bad.png",
                           markers={99: "x"})
