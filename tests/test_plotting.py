"""The one figure writer: the pixels ``Figure.savefig`` would write, at the asked resolution,
without changing the figure."""

import numpy as np
from PIL import Image

from jaxreason.plotting import new_figure, save_png


def _figure():
    fig = new_figure((6, 3))
    for i in range(2):
        ax = fig.add_subplot(1, 2, i + 1)
        im = ax.imshow(np.arange(64.0).reshape(8, 8))
        fig.colorbar(im, ax=ax)
        ax.set_title(f"panel {i}")
    return fig


def test_writes_what_savefig_writes_and_leaves_the_figure_as_it_was(tmp_path):
    fig = _figure()
    path = save_png(fig, tmp_path / "new" / "dir" / "f.png", dpi=80)
    assert path == tmp_path / "new" / "dir" / "f.png" and fig.dpi == 100
    reference = _figure()
    reference.tight_layout()
    reference.savefig(tmp_path / "reference.png", dpi=80)
    ours, theirs = Image.open(path), Image.open(tmp_path / "reference.png")
    assert ours.size == theirs.size == (480, 240)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    assert round(ours.info["dpi"][0]) == round(theirs.info["dpi"][0]) == 80
