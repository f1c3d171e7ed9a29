"""A tampered manifest is refused, never trusted: for the general array store and for the
per-layer activation store (Think-to-Talk), every case names the store file and what is
wrong. Each case starts from a freshly written store of 4 chunks x 64 rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxreason.probe import array_store as ast
from jaxreason.probe.activation_store import ActivationWriter, open_store

ROWS, CHUNKS = 64, 4


def _write_activations(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with ActivationWriter(path, (0, 2), 4, meta={"task": "t"}) as w:
        for _ in range(CHUNKS):
            w.write({l: rng.standard_normal((ROWS, 3, 4)) for l in (0, 2)},
                    rng.integers(0, 9, (ROWS, 3)), np.full(ROWS, 3),
                    {"idx": np.arange(ROWS)})
    return path


def _write_arrays(path: Path) -> Path:
    with ast.ArrayWriter(path) as w:
        for i in range(CHUNKS):
            w.write({"x": np.arange(ROWS * 2).reshape(ROWS, 2) + i})
    return path


def _read_all_activations(path):
    st = open_store(path)
    for l in st.layers:
        st.layer(l)
    st.tokens(), st.extra("idx")
    return st.num_rows


def _read_all_arrays(path):
    return ast.open_arrays(path).read("x").shape[0]


KINDS = {"activations": (_write_activations, _read_all_activations),
         "arrays": (_write_arrays, _read_all_arrays)}


def _edit(path: Path, change) -> None:
    man = json.loads((path / "manifest.json").read_text())
    change(man)
    (path / "manifest.json").write_text(json.dumps(man))


def _shorten_consistently(m):  # drop the last chunk and fix num_rows so the list adds up
    m["chunks"] = m["chunks"][:-1]
    m["num_rows"] = ROWS * (CHUNKS - 1)


CASES = {
    "shortened chunk list": (lambda m: m.update(chunks=m["chunks"][:-1]),
                             "hold 192 rows but num_rows says 256"),
    "shortened list and num_rows": (_shorten_consistently, r"also holds \['chunk_00003'\]"),
    "two chunks with one start": (lambda m: m["chunks"][1].update(row_start=0),
                                  "chunk 'chunk_00001' starts at row 0.*overlaps"),
    "chunk name ../../x": (lambda m: m["chunks"][0].update(name="../../x"),
                           "chunk name '../../x' is not of the form"),
    "chunks swapped": (lambda m: m.update(chunks=[m["chunks"][1], m["chunks"][0],
                                                  *m["chunks"][2:]]),
                       "chunk 0 is named 'chunk_00001'"),
    "chunk record not an object": (lambda m: m["chunks"].__setitem__(0, 5),
                                   "chunk name None is not of the form"),
    "chunk shapes missing": (lambda m: m["chunks"][0].pop("shapes"),
                             "chunk 'chunk_00000' records fields None"),
    "chunk shape not a list": (lambda m: m["chunks"][0]["shapes"].update(
        {k: "x" for k in m["chunks"][0]["shapes"]}), "records shape 'x' for field"),
    "fields not an object": (lambda m: m.update(fields=[1]), "'fields' = \\[1\\] must be a JSON object"),
    "identity not an object": (lambda m: m.update(identity=[1]), "'identity' = \\[1\\] must be"),
    "num_rows a string": (lambda m: m.update(num_rows="256"), "'num_rows' = '256' must be a JSON integer"),
    **{f"missing {k}": ((lambda k: lambda m: m.pop(k))(k), f"required keys \\['{k}'\\] are missing")
       for k in ("format", "version", "identity", "fields", "chunks", "num_rows", "complete")},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES)
def test_tampered_manifest_is_refused_naming_the_store(tmp_path, kind, case):
    write, read_all = KINDS[kind]
    path = write(tmp_path / "store")
    change, message = CASES[case]
    _edit(path, change)
    with pytest.raises(ValueError, match=message) as err:
        read_all(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text,message", [("{not json", "is not valid JSON"),
                                          ("[1, 2]", "holds a list, not an object")])
def test_manifest_that_is_not_a_json_object(tmp_path, kind, text, message):
    write, read_all = KINDS[kind]
    path = write(tmp_path / "store")
    (path / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match=f"manifest.json {message}"):
        read_all(path)


@pytest.mark.parametrize("change,message", [
    (lambda m: m.pop("layers"), r"required keys \['layers'\] are missing"),
    (lambda m: m.pop("d_model"), r"required keys \['d_model'\] are missing"),
    (lambda m: m.pop("dtype"), r"required keys \['dtype'\] are missing"),
    (lambda m: m.update(layers="abc"), "'layers' = 'abc' must be a JSON list"),
    (lambda m: m.update(layers=[0, 0]), "must be distinct non-negative ints"),
    (lambda m: m.update(layers=[0, 5]), "field 'layer_2' is .* need no such field"),
    (lambda m: m.update(d_model=7), r"field 'layer_0' .* need .*'shape': \[None, 7\]"),
    (lambda m: m.update(dtype="int8"), "dtype = 'int8' one of"),
])
def test_activation_header_must_match_its_fields(tmp_path, change, message):
    path = _write_activations(tmp_path / "store")
    _edit(path, change)
    with pytest.raises(ValueError, match=message):
        open_store(path)


def test_untampered_stores_still_open(tmp_path):
    """The checks refuse only what is wrong: both stores read back all 256 rows."""
    for kind, (write, read_all) in KINDS.items():
        assert read_all(write(tmp_path / kind)) == ROWS * CHUNKS


def test_resume_refuses_a_progress_file_without_chunks(tmp_path):
    path = _write_arrays(tmp_path / "store")
    (path / "progress.json").write_text(json.dumps({"fields": None}))
    with pytest.raises(ValueError, match=r"progress.json: required keys \['chunks'\]"):
        ast.ArrayWriter(path, resume=True)
    assert (path / "chunk_00003").is_dir()  # nothing was deleted by the refusal
