"""PNG figures for the MechanisticProbe study: head entropies and pruning curves, attention by
size rank and by position, and layer-wise probe scores.

The plots follow the original's conventions:

* attention grids (16 rows x 12 layers) use the ``seismic`` colormap. The size-rank view
  uses a ``TwoSlopeNorm`` centred on a chance level: the original uses 0.077, and 1/16 =
  0.0625 is the uniform level; pass it as ``center``. The position view uses a fixed 0–0.92
  scale (``vmin``/``vmax``).
* entropy heatmaps put heads in rows and layers in columns, with the ``hot`` colormap on
  0–1.

They are written as PNG, not PDF, so they can be viewed and diffed in a notebook or review.
Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through
``pyplot``. Plotting therefore neither changes the process-wide backend nor leaks figures.
Every writer creates the parent folder and returns the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colors

from jaxreason.plotting import new_figure, save_png

__all__ = ["plot_attention_grid", "plot_entropy_heatmap", "plot_masking_curves",
           "plot_layerwise"]



def plot_attention_grid(matrix, row_labels: Sequence[str], title: str, path, center=None, *,
                        vmin=None, vmax=None, ylabel: str = "size rank",
                        annotate: bool = True) -> Path:
    """A [rows x layers] attention heatmap (size rank x layer or position x layer).

    Args:
      matrix: (R, L) values, e.g. head-averaged last-token attention.
      row_labels: R labels (e.g. "1st", "2nd", ... or positions "1".."16").
      title: figure title.
      path: output PNG.
      center: when given, a diverging ``TwoSlopeNorm`` centred here (e.g. 1/16); otherwise
        a linear scale on ``[vmin, vmax]`` (data range when None).
      ylabel: what the rows are.
      annotate: write each cell's value (two decimals) when the grid is small.
    """
    m = np.asarray(matrix, np.float64)
    if m.ndim != 2 or len(row_labels) != m.shape[0]:
        raise ValueError(f"matrix {m.shape} needs one row label per row ({len(row_labels)} given)")
    lo = float(np.nanmin(m)) if vmin is None else vmin
    hi = float(np.nanmax(m)) if vmax is None else vmax
    if center is not None:
        eps = 1e-6
        norm = colors.TwoSlopeNorm(vcenter=center, vmin=min(lo, center - eps),
                                   vmax=max(hi, center + eps))
    else:
        norm = colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
    fig = new_figure((1.0 + 0.55 * m.shape[1], 1.2 + 0.35 * m.shape[0]))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="seismic", norm=norm, aspect="auto", interpolation="none")
    ax.set_xticks(np.arange(m.shape[1]), [str(i + 1) for i in range(m.shape[1])])
    ax.set_yticks(np.arange(m.shape[0]), list(row_labels))
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if annotate and m.size <= 400:
        for (i, j), z in np.ndenumerate(m):
            shade = float(norm(z))  # seismic is dark at both ends: white text there
            ax.text(j, i, f"{z:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if shade < 0.2 or shade > 0.8 else "black")
    fig.colorbar(im, ax=ax, label="attention")
    return save_png(fig, path)


def plot_entropy_heatmap(entropy, title: str, path) -> Path:
    """Normalised head entropies: (L, H) drawn with heads in rows and layers in columns."""
    e = np.asarray(entropy, np.float64)
    if e.ndim != 2:
        raise ValueError(f"entropy must be (L, H), got shape {e.shape}")
    grid = e.T  # (H, L)
    fig = new_figure((1.0 + 0.45 * grid.shape[1], 1.2 + 0.4 * grid.shape[0]))
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="hot", vmin=0.0, vmax=1.0, aspect="auto", interpolation="none")
    ax.set_xticks(np.arange(grid.shape[1]), [str(i + 1) for i in range(grid.shape[1])])
    ax.set_yticks(np.arange(grid.shape[0]), [str(i + 1) for i in range(grid.shape[0])])
    ax.set_xlabel("layer")
    ax.set_ylabel("attention head")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="entropy / ln S")
    return save_png(fig, path)


def plot_masking_curves(fractions: Sequence[float], accuracies: Mapping[str, Sequence[float]],
                        path, title: str = "accuracy under head masking") -> Path:
    """Accuracy against the share of masked heads, one line per selection policy.

    ``fractions`` are the x values (include 0 for the unmasked model if the curves start
    there); each ``accuracies[policy]`` has one value per fraction.
    """
    x = np.asarray(fractions, np.float64)
    fig = new_figure((5.5, 3.8))
    ax = fig.add_subplot()
    for name, acc in accuracies.items():
        acc = np.asarray(acc, np.float64)
        if acc.shape != x.shape:
            raise ValueError(f"policy {name!r}: {acc.shape[0]} accuracies for "
                             f"{x.shape[0]} fractions")
        ax.plot(100 * x, acc, "o-", label=name)
    ax.set_xlabel("heads masked (%)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)


def plot_layerwise(layers: Sequence[int], f1s: Mapping[str, Sequence[float]], path,
                   title: str = "probe F1 using layers 1..l") -> Path:
    """Layer-wise probe F1: x = number of leading layers used, one line per probe/model."""
    x = np.asarray(layers)
    fig = new_figure((5.5, 3.8))
    ax = fig.add_subplot()
    for name, ys in f1s.items():
        ys = np.asarray(ys, np.float64)
        if ys.shape != x.shape:
            raise ValueError(f"{name!r}: {ys.shape[0]} scores for {x.shape[0]} layer counts")
        ax.plot(x, ys, "o-", label=name)
    ax.set_xlabel("layers used (1..l)")
    ax.set_ylabel("macro F1")
    ax.set_xticks(x)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)
