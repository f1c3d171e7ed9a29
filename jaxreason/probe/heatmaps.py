"""PNG figures for the Think-to-Talk probes (Kudo et al.): accuracy over layer x position.

Why these choices:

* Rows are the *saved* hidden-state indices (0, k, 2k, ..., L), drawn lowest at the bottom
  so depth reads upwards as in the paper's figures.
* Columns are labelled with the token at each position, because the claims are about
  positions such as " ;" or "?" (end of input) and the CoT digit where a value is written.
  Whitespace tokens would be invisible, so a bare space shows as "␣" and a newline as "\\n".
* The chance level (≈0.18 for first-hop variables, ≈0.11 for the final one) is marked on the
  colour bar and written in the title: a cell is only interesting relative to it.

House style as :mod:`jaxreason.probe.plots`: ``matplotlib.figure.Figure`` on the Agg canvas,
never ``pyplot``; the parent folder is created and the path returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import colors

from jaxreason.plotting import new_figure, save_png

__all__ = ["plot_probe_heatmap", "plot_accuracy_by_position", "display_token"]


def display_token(label: str) -> str:
    """Make a token readable as a tick label: "␣" for a bare space, "\\n" for newlines.

    Tokens like " =" keep their text without the leading space; a token that is only
    whitespace shows each character visibly.
    """
    label = str(label)
    if label.strip() == "":
        if label == "":
            return "''"
        return "".join({" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, ch)
                       for ch in label)
    return label.strip(" ").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _tick_fontsize(n: int) -> float:
    return 8.0 if n <= 40 else 6.5 if n <= 90 else 5.0


def _check_labels(position_labels, n: int, what: str) -> list[str]:
    labels = list(position_labels)
    if len(labels) != n:
        raise ValueError(f"{what} has {n} positions but {len(labels)} position_labels were given;"
                         f" pass one token string per position")
    return [display_token(x) for x in labels]


def plot_probe_heatmap(accuracy, layers: Sequence[int], position_labels: Sequence[str],
                       chance: float, title: str, path, vmin: float = 0.0, vmax: float = 1.0,
                       markers: Mapping[int, str] | None = None) -> Path:
    """Probe accuracy heat map: saved layers on y (lowest at the bottom), positions on x.

    Args:
      accuracy: (L_saved, P) accuracies; NaN cells (no probe) are drawn grey.
      layers: the L_saved hidden-state indices of the rows, e.g. [0, 4, 8, ...].
      position_labels: P token strings, one per position (tick labels, rotated 90°).
      chance: chance accuracy; drawn as a line on the colour bar and given in the title.
      title: figure title (the chance level is appended).
      path: output PNG.
      vmin, vmax: colour scale.
      markers: ``{position: label}`` draws a dashed vertical line on the left edge of that
        column (between ``position - 1`` and ``position``), e.g. ``{S: "CoT start"}``.
    """
    acc = np.asarray(accuracy, np.float64)
    if acc.ndim != 2:
        raise ValueError(f"accuracy must be (L_saved, P), got shape {acc.shape}")
    n_layers, n_pos = acc.shape
    layers = [int(l) for l in layers]
    if len(layers) != n_layers:
        raise ValueError(f"accuracy has {n_layers} rows but {len(layers)} layers were given")
    labels = _check_labels(position_labels, n_pos, f"accuracy {acc.shape}")
    if not vmin < vmax:
        raise ValueError(f"need vmin < vmax, got vmin={vmin}, vmax={vmax}")
    markers = dict(markers or {})
    for pos in markers:
        if not 0 <= int(pos) <= n_pos:
            raise ValueError(f"marker position {pos} is outside 0..{n_pos} (P = {n_pos})")

    fig = new_figure((2.0 + 0.16 * n_pos, 1.6 + 0.32 * n_layers))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, norm=colors.Normalize(vmin, vmax),
                   origin="lower", aspect="auto", interpolation="none")
    size = _tick_fontsize(n_pos)
    ax.set_xticks(np.arange(n_pos), labels, rotation=90, fontsize=size)
    ax.set_yticks(np.arange(n_layers), [str(l) for l in layers], fontsize=8)
    ax.set_xlabel("position (token)")
    ax.set_ylabel("hidden-state index")
    # position numbers on top, every 5, so "CoT position 36" can be found
    top = ax.secondary_xaxis("top")
    top.set_xticks(np.arange(0, n_pos, 5), [str(i) for i in range(0, n_pos, 5)], fontsize=6)
    for pos, text in markers.items():
        x = int(pos) - 0.5
        ax.axvline(x, color="red", ls="--", lw=1.2)
        ax.text(x + 0.15, n_layers - 0.55, text, color="red", fontsize=7, rotation=90,
                ha="left", va="top", bbox=dict(facecolor="white", alpha=0.7, lw=0, pad=1))
    ax.set_title(f"{title}  (chance = {chance:.3g})", fontsize=10)
    inside = vmin <= chance <= vmax
    cbar = fig.colorbar(im, ax=ax, pad=0.01, label="probe accuracy"
                        + ("  (red line: chance)" if inside else ""))
    if inside:
        cbar.ax.axhline(chance, color="red", lw=2.0, zorder=10)
    return save_png(fig, path)


def plot_accuracy_by_position(curves: Mapping[str, Sequence[float]],
                              position_labels: Sequence[str], chance: float, title: str,
                              path) -> Path:
    """Accuracy against position, one line per layer or condition (e.g. patched vs unpatched),
    with a dashed chance line. NaN values leave gaps."""
    if not curves:
        raise ValueError("curves is empty; give at least one {name: accuracies}")
    n_pos = len(position_labels)
    labels = _check_labels(position_labels, n_pos, "position_labels")
    x = np.arange(n_pos)
    fig = new_figure((2.5 + 0.14 * n_pos, 4.0))
    ax = fig.add_subplot()
    for name, ys in curves.items():
        ys = np.asarray(ys, np.float64)
        if ys.shape != (n_pos,):
            raise ValueError(f"curve {name!r} has shape {ys.shape}; expected ({n_pos},), one "
                             f"accuracy per position label")
        ax.plot(x, ys, "o-", ms=3, lw=1.2, label=str(name))
    ax.axhline(chance, color="grey", ls="--", lw=1.0, label=f"chance ({chance:.3g})")
    ax.set_xticks(x, labels, rotation=90, fontsize=_tick_fontsize(n_pos))
    ax.set_xlim(-0.5, n_pos - 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("position (token)")
    ax.set_ylabel("probe accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)
