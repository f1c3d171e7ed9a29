"""Damaged chunk files and reads outside a store: each is refused with the file (or the
valid range) named, for the general array store and the activation store. Pickled object
arrays are refused from their header, without unpickling anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxreason.probe import array_store as ast
from jaxreason.probe.activation_store import ActivationWriter, open_store

ROWS = 8


def _write_activations(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with ActivationWriter(path, (0, 2), 4) as w:
        for _ in range(2):
            w.write({l: rng.standard_normal((ROWS, 3, 4)).astype(np.float32) for l in (0, 2)},
                    rng.integers(0, 9, (ROWS, 3)), np.full(ROWS, 3))
    return path


def _write_arrays(path: Path) -> Path:
    with ast.ArrayWriter(path) as w:
        for i in range(2):
            w.write({"x": np.arange(ROWS * 2).reshape(ROWS, 2) + i})
    return path


KINDS = {"activations": (_write_activations, "layer_0.npy", lambda p: open_store(p).layer(0)),
         "arrays": (_write_arrays, "x.npy", lambda p: ast.open_arrays(p).read("x"))}


class _Marker:
    """Unpickling this touches a file: proof that a loader did unpickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _truncate(f: Path, _):
    f.write_bytes(f.read_bytes()[:-7])


def _append(f: Path, _):
    f.write_bytes(f.read_bytes() + b"\0" * 8)


def _retype(f: Path, _):
    a = np.load(f)
    np.save(f, a.astype(np.float64 if a.dtype.kind != "f" else np.int32))


def _reshape(f: Path, _):
    np.save(f, np.load(f)[:3])


def _pickle(f: Path, marker: Path):
    np.save(f, np.array([_Marker(marker)] * ROWS, dtype=object), allow_pickle=True)


def _garbage(f: Path, _):
    f.write_text("not an npy file at all")


def _delete(f: Path, _):
    f.unlink()


DAMAGE = {"truncated": (_truncate, "is truncated"), "too long": (_append, "longer than its header"),
          "wrong dtype": (_retype, "holds .* but field"), "wrong shape": (_reshape, "has shape \\(3"),
          "pickled objects": (_pickle, "holds Python objects .* would need pickle"),
          "not npy": (_garbage, "not a readable .npy file"), "missing": (_delete, "is missing")}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_chunk_file_is_refused_naming_it(tmp_path, kind, damage):
    write, fname, read = KINDS[kind]
    path = write(tmp_path / "store")
    hurt, message = DAMAGE[damage]
    marker = tmp_path / "unpickled"
    hurt(path / "chunk_00001" / fname, marker)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        read(path)
    assert str(path / "chunk_00001" / fname) in str(err.value)
    assert not marker.exists(), "the loader unpickled an object array"


def test_rows_outside_the_store_name_the_valid_range(tmp_path):
    st = ast.open_arrays(_write_arrays(tmp_path / "s"))
    full = st.read("x")
    for rows in (slice(17, 20), slice(-17, None), slice(0, -17)):
        with pytest.raises(IndexError, match=r"holds rows 0..15 \(allowed bounds: -16..16\)"):
            st.read("x", rows=rows)
    with pytest.raises(TypeError, match="rows must be a slice"):
        st.read("x", rows=3)
    for rows in (slice(0, 16), slice(-4, None), slice(16, 16), slice(5, 9), slice(12, 20)):
        np.testing.assert_array_equal(st.read("x", rows=rows), full[rows])
    with pytest.raises(IndexError, match=r"chunk index 2 .* holds chunks 0..1"):
        st.chunk("x", 2)
    with pytest.raises(IndexError, match="chunk index -1"):
        st.chunk("x", -1)


def test_positions_outside_the_activation_store_name_the_valid_range(tmp_path):
    st = open_store(_write_activations(tmp_path / "s"))
    with pytest.raises(IndexError, match=r"holds positions 0..2"):
        st.layer(0, positions=slice(4, 9))
    np.testing.assert_array_equal(st.layer(0, positions=slice(1, 3)), st.layer(0)[:, 1:3])


def test_stored_lengths_past_their_chunk_are_refused(tmp_path):
    path = _write_activations(tmp_path / "s")
    np.save(path / "chunk_00001" / "lengths.npy", np.full(ROWS, 5, np.int32))
    with pytest.raises(ValueError, match=r"chunk_00001/lengths.npy holds lengths 5..5, outside 0..3"):
        open_store(path).layer(0)
