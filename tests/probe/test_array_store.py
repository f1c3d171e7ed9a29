"""The general array store: round trips of many dtypes and shapes (ragged by padding, bf16
as raw bits), resume after kills at several points, refusal of changed settings, and
manifests that lie about their chunks."""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

from jaxreason.probe.array_store import (ArrayWriter, Field, IncompleteStoreError,
                                         open_arrays)

FIELDS = {"blocks.3.hook_resid_post": Field("float16", (None, 4)),
          "bf": Field("bfloat16", (3,)),
          "topk_indices": Field("int32", (None, 2, 3), fill=-1)}


def _chunks(seed=0, sizes=((3, 5), (2, 7), (4, 2))):
    """Per chunk: a float16 ragged (B, P, 4), bf16 (B, 3), int32 (B, T, 2, 3) ragged on T,
    bool, uint8, int64 and str extras (fixed by the first chunk)."""
    rng = np.random.default_rng(seed)
    out, row = [], 0
    for b, p in sizes:
        out.append({
            "blocks.3.hook_resid_post": rng.standard_normal((b, p, 4)).astype(np.float32),
            "bf": rng.standard_normal((b, 3)).astype(np.float32),
            "topk_indices": rng.integers(0, 50, (b, p + 1, 2, 3)),
            "correct": rng.random(b) < 0.5,
            "small": rng.integers(0, 255, (b, 2)).astype(np.uint8),
            "index": np.arange(row, row + b, dtype=np.int64),
            "label": np.array([f"r{row + i}" * (i + 1) for i in range(b)]),
        })
        row += b
    return out


def _padded(parts, fill, cast=lambda x: x):
    """Independent reference: concatenate chunks padded on every trailing axis."""
    tail = [max(p.shape[a] for p in parts) for a in range(1, parts[0].ndim)]
    rows = []
    for p in parts:
        x = cast(np.asarray(p))
        rows.append(np.pad(x, [(0, 0)] + [(0, t - s) for t, s in zip(tail, x.shape[1:])],
                           constant_values=fill))
    return np.concatenate(rows)


def _write(path, chunks, **kw):
    with ArrayWriter(path, FIELDS, identity={"model": "tiny", "k": 3}, **kw) as w:
        for c in chunks:
            w.write(c)
    return chunks


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s"
    return path, _write(path, _chunks())


def test_roundtrip_every_dtype_and_ragged_shape(written):
    path, chunks = written
    st = open_arrays(path)
    assert st.num_rows == 9 and st.identity == {"model": "tiny", "k": 3}
    assert sorted(st.fields) == sorted(list(FIELDS) + ["correct", "small", "index", "label"])
    f16 = lambda x: x.astype(np.float16)  # noqa: E731
    want = {"blocks.3.hook_resid_post": _padded([c["blocks.3.hook_resid_post"] for c in chunks],
                                                0, f16),
            "topk_indices": _padded([c["topk_indices"] for c in chunks], -1),
            "correct": np.concatenate([c["correct"] for c in chunks]),
            "small": np.concatenate([c["small"] for c in chunks]),
            "index": np.arange(9),
            "label": np.concatenate([c["label"] for c in chunks])}
    for name, ref in want.items():
        got = st.read(name)
        assert got.shape == ref.shape == st.shape(name), name
        np.testing.assert_array_equal(got, ref, err_msg=name)
    assert st.read("blocks.3.hook_resid_post").dtype == np.float16
    assert st.read("topk_indices").dtype == np.int32 and st.read("small").dtype == np.uint8
    assert st.read("correct").dtype == bool and st.read("index").dtype == np.int64
    assert st.read("label")[8] == "r8" * 4


def test_bfloat16_is_raw_bits_on_disk_and_bf16_when_read(written):
    path, chunks = written
    st = open_arrays(path)
    got = st.read("bf")
    assert got.dtype == ml_dtypes.bfloat16
    ref = np.concatenate([c["bf"] for c in chunks]).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got.view(np.uint16), ref.view(np.uint16))
    assert np.load(path / "chunk_00000" / "bf.npy").dtype == np.uint16
    assert st.read("bf", dtype=np.float32).dtype == np.float32


def test_row_slices_and_memory_mapped_chunks(written):
    path, _ = written
    st = open_arrays(path)
    full = st.read("topk_indices")
    for rows in (slice(0, 3), slice(2, 7), slice(4, None), slice(8, 9), slice(5, 5)):
        np.testing.assert_array_equal(st.read("topk_indices", rows=rows), full[rows])
    assert isinstance(st.chunk("blocks.3.hook_resid_post", 1), np.memmap)
    with pytest.raises(ValueError, match="contiguous"):
        st.read("index", rows=slice(0, 9, 2))
    with pytest.raises(KeyError, match="stored fields"):
        st.read("nope")


def test_chunk_records_and_no_pickle(written, tmp_path):
    path, _ = written
    man = json.loads((path / "manifest.json").read_text())
    assert [(c["name"], c["row_start"], c["rows"]) for c in man["chunks"]] == [
        ("chunk_00000", 0, 3), ("chunk_00001", 3, 2), ("chunk_00002", 5, 4)]
    assert man["chunks"][1]["shapes"]["topk_indices"] == [8, 2, 3]
    assert man["fields"]["bf"] == {"dtype": "bfloat16", "shape": [3], "fill": 0}
    copy = tmp_path / "c"
    shutil.copytree(path, copy)
    np.save(copy / "chunk_00001" / "index.npy", np.array([None, {}], dtype=object),
            allow_pickle=True)
    with pytest.raises(ValueError, match="refusing to load .*index.npy"):
        open_arrays(copy).read("index")


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("kill", ["before_rename", "after_rename", "after_progress"])
def test_resume_after_a_kill_gives_the_same_store(tmp_path, written, kill):
    """A kill while writing chunk 1: in its temp dir, renamed but not listed, or listed."""
    chunks = _chunks()
    path = tmp_path / "s"
    w = ArrayWriter(path, FIELDS, identity={"model": "tiny", "k": 3})
    w.write(chunks[0])
    w.write(chunks[1])
    prog = json.loads((path / "progress.json").read_text())
    if kill != "after_progress":
        prog["chunks"] = prog["chunks"][:1]
        (path / "progress.json").write_text(json.dumps(prog))
    if kill == "before_rename":
        os.rename(path / "chunk_00001", path / ".tmp_chunk_00001")
        (path / ".tmp_chunk_00001" / "bf.npy").unlink()
    del w
    with pytest.raises(IncompleteStoreError, match="incomplete.*resume=True"):
        open_arrays(path)
    w = ArrayWriter(path, FIELDS, identity={"model": "tiny", "k": 3})
    done = w.done_rows()
    assert done == (5 if kill == "after_progress" else 3)
    assert not (path / ".tmp_chunk_00001").exists()
    for c in chunks[1 if done == 3 else 2:]:
        w.write(c)
    w.close()
    ref = written[0]
    for name in ("manifest.json", "progress.json"):
        assert (path / name).read_text() == (ref / name).read_text()
    for c in ("chunk_00000", "chunk_00001", "chunk_00002"):
        for f in sorted(os.listdir(ref / c)):
            assert (path / c / f).read_bytes() == (ref / c / f).read_bytes(), (c, f)


def test_resume_with_other_settings_is_refused(written, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(written[0], path)
    with pytest.raises(ValueError, match=r"differs from the given k: stored k=3, given k=4"):
        ArrayWriter(path, FIELDS, identity={"model": "tiny", "k": 4})
    with pytest.raises(ValueError, match=r"given extra, model.*stored model='tiny'"):
        ArrayWriter(path, FIELDS, identity={"model": "big", "k": 3, "extra": 1})
    with pytest.raises(ValueError, match="field 'bf' was written as .*declared as"):
        ArrayWriter(path, {**FIELDS, "bf": Field("float32", (3,))})
    with pytest.raises(FileExistsError, match="resume=False"):
        ArrayWriter(path, FIELDS, resume=False)
    w = ArrayWriter(path, FIELDS)  # identity None keeps the stored one
    assert w.identity == {"model": "tiny", "k": 3} and w.done_rows() == 9
    with pytest.raises(ValueError, match="differ from the earlier chunks"):
        w.write({k: v for k, v in _chunks()[0].items() if k != "label"})
    with pytest.raises(ValueError, match=r"field 'bf' has shape \(3, 4\), expected \(B, 3\)"):
        w.write({**_chunks()[0], "bf": np.zeros((3, 4))})
    with pytest.raises(ValueError, match="no float-to-int"):
        w.write({**_chunks()[0], "topk_indices": np.zeros((3, 2, 2, 3))})
    with pytest.raises(ValueError, match="do not fit in int32"):
        w.write({**_chunks()[0], "topk_indices": np.full((3, 2, 2, 3), 2**40)})
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an array store"):
        ArrayWriter(tmp_path / "foreign")
    with pytest.raises(ValueError, match="field name '../x'"):
        ArrayWriter(tmp_path / "bad", {"../x": Field("int32")})


# ----------------------------------------------------------------------------- attacks


def _tamper(src, dst, edit):
    shutil.copytree(src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    edit(man)
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


def test_chunks_that_do_not_add_up_are_refused(written, tmp_path):
    def drop(m):
        m["chunks"] = m["chunks"][:2]
    with pytest.raises(ValueError, match="hold 5 rows but num_rows says 9"):
        open_arrays(_tamper(written[0], tmp_path / "a", drop))

    def more(m):
        m["num_rows"] = 12
    with pytest.raises(ValueError, match="hold 9 rows but num_rows says 12"):
        open_arrays(_tamper(written[0], tmp_path / "b", more))


def test_overlapping_or_duplicate_chunks_are_refused(written, tmp_path):
    def overlap(m):
        m["chunks"][1]["row_start"] = 2
    with pytest.raises(ValueError, match="chunk 'chunk_00001' starts at row 2.*overlaps"):
        open_arrays(_tamper(written[0], tmp_path / "a", overlap))

    def duplicate(m):
        m["chunks"][2] = dict(m["chunks"][1], row_start=5)
    with pytest.raises(ValueError, match="chunk 'chunk_00001' is listed twice"):
        open_arrays(_tamper(written[0], tmp_path / "b", duplicate))

    def gap(m):
        m["chunks"][2]["row_start"] = 6
    with pytest.raises(ValueError, match="chunk 'chunk_00002' starts at row 6.*gap"):
        open_arrays(_tamper(written[0], tmp_path / "c", gap))


@pytest.mark.parametrize("name", ["../../x", "/etc", "chunk_00001/../../x", "chunk_1"])
def test_chunk_names_escaping_the_store_are_refused(written, tmp_path, name):
    def escape(m):
        m["chunks"][1]["name"] = name
    with pytest.raises(ValueError, match=f"chunk name {name!r} is not of the form"):
        open_arrays(_tamper(written[0], tmp_path / "s", escape))


def test_symlinked_chunks_are_refused(written, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(written[0] / "chunk_00001", outside)
    path = tmp_path / "s"
    shutil.copytree(written[0], path)
    shutil.rmtree(path / "chunk_00001")
    (path / "chunk_00001").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="chunk 'chunk_00001' is a link out"):
        open_arrays(path)
    # a single file linked out of the store is refused when read
    path2 = tmp_path / "s2"
    shutil.copytree(written[0], path2)
    (path2 / "chunk_00000" / "index.npy").unlink()
    (path2 / "chunk_00000" / "index.npy").symlink_to(outside / "index.npy")
    with pytest.raises(ValueError, match="index.npy is a link out of the store"):
        open_arrays(path2).read("index")
    # and a resume does not trust a progress file that escapes either
    prog = json.loads((path2 / "progress.json").read_text())
    prog["chunks"][0]["name"] = "../../x"
    (path2 / "progress.json").write_text(json.dumps(prog))
    with pytest.raises(ValueError, match=r"progress.json: chunk name '../../x'"):
        ArrayWriter(path2)
