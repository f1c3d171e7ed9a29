"""``save_pretrained`` never deletes a file it did not write.

Each export carries ``jaxreason_export.json`` listing its own files; a directory without it
is refused unless ``overwrite=True``, and even then only the export's own files change.
"""

import json

import numpy as np
import pytest

from jaxreason.models import GPT2Config, from_config, load_pretrained, save_pretrained
from jaxreason.models.export_dir import MARKER


@pytest.fixture(scope="module")
def tiny():
    return from_config(GPT2Config.tiny(vocab_size=64, hidden_size=32, num_layers=1,
                                       intermediate_size=64, max_position_embeddings=16), seed=0)


def _marker(d):
    return json.loads((d / MARKER).read_text())


def test_a_users_file_is_refused_and_kept(tiny, tmp_path):
    model, params = tiny
    (tmp_path / "thesis.tex").write_text("my thesis")
    with pytest.raises(FileExistsError, match=r"not empty and holds no jaxreason_export\.json.*"
                                              r"thesis\.tex.*overwrite=True"):
        save_pretrained(model, params, tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "my thesis"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")]


def test_a_file_in_place_of_the_directory_is_refused(tiny, tmp_path):
    model, params = tiny
    f = tmp_path / "out"
    f.write_text("not a directory")
    with pytest.raises(FileExistsError, match="is a file, not a directory"):
        save_pretrained(model, params, f)
    assert f.read_text() == "not a directory"


def test_missing_and_empty_directories_are_fine(tiny, tmp_path):
    model, params = tiny
    (tmp_path / "empty").mkdir()
    for d in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        save_pretrained(model, params, d)
        assert _marker(d)["files"] == ["config.json", "model.safetensors"]
        _, loaded = load_pretrained(d)
        np.testing.assert_array_equal(loaded["wte"]["embedding"], params["wte"]["embedding"])


def test_a_previous_export_is_replaced_with_a_users_file_beside_it_kept(tiny, tmp_path):
    model, params = tiny
    save_pretrained(model, params, tmp_path, max_shard_bytes=20_000)  # sharded
    shards = [f for f in _marker(tmp_path)["files"] if f.startswith("model-")]
    assert len(shards) > 1
    (tmp_path / "notes.md").write_text("mine")
    changed = {k: {**v} for k, v in params.items()}
    changed["wte"] = {"embedding": params["wte"]["embedding"] + 1.0}
    save_pretrained(model, changed, tmp_path)  # one file now: old shards must go
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json", "model.safetensors", MARKER, "notes.md"])
    assert (tmp_path / "notes.md").read_text() == "mine"
    _, loaded = load_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded["wte"]["embedding"], changed["wte"]["embedding"])


def test_a_previous_export_alone_is_swapped_whole(tiny, tmp_path):
    model, params = tiny
    d = tmp_path / "hf"
    save_pretrained(model, params, d, max_shard_bytes=20_000)
    save_pretrained(model, params, d)
    assert sorted(p.name for p in d.iterdir()) == sorted(["config.json", "model.safetensors", MARKER])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp dirs left


def test_overwrite_replaces_only_the_exports_files(tiny, tmp_path):
    model, params = tiny
    (tmp_path / "thesis.tex").write_text("my thesis")
    (tmp_path / "config.json").write_text("{\"mine\": true}")
    save_pretrained(model, params, tmp_path, overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "my thesis"
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt2"
    assert _marker(tmp_path)["files"] == ["config.json", "model.safetensors"]
    # thesis.tex is still not the export's: a later export keeps it without overwrite
    save_pretrained(model, params, tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "my thesis"


def test_a_marker_listing_paths_outside_is_not_followed(tiny, tmp_path):
    model, params = tiny
    d = tmp_path / "hf"
    save_pretrained(model, params, d)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (d / MARKER).write_text(json.dumps({"format": "jaxreason-hf-export",
                                        "files": ["../victim.txt", "/etc/passwd", "x.bin"]}))
    (d / "x.bin").write_text("stale file of the old export")
    save_pretrained(model, params, d)
    assert victim.read_text() == "keep"
    assert not (d / "x.bin").exists()


def test_a_foreign_marker_is_refused(tiny, tmp_path):
    model, params = tiny
    (tmp_path / MARKER).write_text("not json")
    with pytest.raises(ValueError, match=r"jaxreason_export\.json is not a readable"):
        save_pretrained(model, params, tmp_path)


class _Tokenizer:
    """Stands in for an HF tokenizer: writes two files."""

    def save_pretrained(self, path):
        from pathlib import Path
        (Path(path) / "tokenizer.json").write_text("{}")
        (Path(path) / "tokenizer_config.json").write_text("{}")


def test_tokenizer_files_count_as_the_exports_own(tiny, tmp_path):
    model, params = tiny
    save_pretrained(model, params, tmp_path, tokenizer=_Tokenizer())
    assert _marker(tmp_path)["files"] == ["config.json", "model.safetensors", "tokenizer.json",
                                          "tokenizer_config.json"]
    (tmp_path / "extra.txt").write_text("mine")
    save_pretrained(model, params, tmp_path)  # without a tokenizer: its old files go
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json", "model.safetensors", MARKER, "extra.txt"])


def test_bad_params_and_dtype_are_refused_before_anything_is_written(tiny, tmp_path):
    model, params = tiny
    d = tmp_path / "out"
    with pytest.raises(ValueError, match=r"params do not fit this GPT-2 config: leaf "
                                         r"\S+ of shape \([\d, ]+\) is missing"):
        save_pretrained(model, {"foo": np.zeros(3)}, d)
    with pytest.raises(ValueError, match=r"dtype='int8' is not supported; allowed: "
                                         r"\['bfloat16', 'float16', 'float32'\]"):
        save_pretrained(model, params, d, dtype="int8")
    assert not d.exists()
