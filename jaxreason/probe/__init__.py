"""MechanisticProbe (Hou et al. 2023) building blocks: attention features, kNN probes, head
entropies and masks, and plots.

* :mod:`jaxreason.probe.features`: attention rows of the prediction token (JAX, jitted and
  batched) and the GPT-2 / LLaMA feature matrices built from them (numpy).
* :mod:`jaxreason.probe.knn`: the kNN probes (scikit-learn, CPU), the faithful and fixed
  train/test splits, probing scores and the P1/P2 row assembly.
* :mod:`jaxreason.probe.entropy`: per-head attention by position and by size rank, head
  entropies, and head masks for the causal (pruning) analysis.
* :mod:`jaxreason.probe.plots`: PNG figures.

Every place where the original code has a quirk offers a ``faithful`` behaviour (reproduces
it) and a ``fixed`` one; the module docstrings say which is which. The specification is
``shared/specs/mechprobe.md``.
"""
