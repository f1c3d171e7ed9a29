"""Small helpers on parameter trees (nested dicts keyed by HF-like module names), shared by
the HF converter, LoRA, new-token embeddings and the optimizer masks."""

from __future__ import annotations

from typing import Any


def unwrap_params(params):
    """Accept either the bare parameter tree or Flax's ``{"params": tree}``."""
    if isinstance(params, dict) and set(params) == {"params"}:
        return params["params"]
    return params


def flatten(tree: dict, prefix: tuple = ()) -> dict[tuple[str, ...], Any]:
    """``{("h_0", "attn", "c_attn", "kernel"): leaf, ...}`` for a nested dict."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    """Inverse of :func:`flatten`."""
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def copy_tree(tree: dict) -> dict:
    """A copy of the dict structure sharing the leaves (for edits that must not mutate)."""
    return {k: copy_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}


def path_names(path) -> tuple[str, ...]:
    """The key names of a ``jax.tree_util`` key path."""
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def path_str(path) -> str:
    """``"h_0/attn/c_attn/kernel"`` for a ``jax.tree_util`` key path."""
    return "/".join(path_names(path))


def get_path(tree: dict, path) -> Any:
    """The node at ``path`` (a sequence of keys); a KeyError names the missing key."""
    node = tree
    for i, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"parameter tree has no {'/'.join(map(str, path[:i + 1]))!r}")
        node = node[key]
    return node
