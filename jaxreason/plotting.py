"""The one plotting convention of the package: figures are ``matplotlib.figure.Figure``
objects on the Agg canvas, never ``pyplot``.

``pyplot`` keeps a process-wide registry of open figures and a global backend; a library that
uses it changes the backend of the user's notebook and leaks figures when an exception skips
``plt.close``. A bare ``Figure`` is garbage-collected like any object and renders headless.
Every writer creates the parent folder, saves a PNG (viewable and diffable in a review) and
returns the path.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(figsize) -> Figure:
    """A figure of ``figsize`` inches on its own Agg canvas."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path, dpi: int = 110) -> Path:
    """Lay out ``fig`` and write it to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
