"""Probing building blocks shared by the studies.

MechanisticProbe (Hou et al. 2023): attention features, kNN probes, head entropies and masks,
and plots. Think-to-Talk (Kudo et al.): vmapped linear probes, the chunked activation store
and the position x layer heat maps.

* :mod:`jaxreason.probe.features`: attention rows of the prediction token (JAX, jitted and
  batched) and the GPT-2 / LLaMA feature matrices built from them (numpy).
* :mod:`jaxreason.probe.knn`: the kNN probes (scikit-learn, CPU), the faithful and fixed
  train/test splits, probing scores and the P1/P2 row assembly.
* :mod:`jaxreason.probe.entropy`: per-head attention by position and by size rank, head
  entropies, and head masks for the causal (pruning) analysis.
* :mod:`jaxreason.probe.plots`: PNG figures.
* :mod:`jaxreason.probe.linear`: one linear probe per (layer, position, variable), all of a
  layer fitted at once with ``vmap`` (the original's full-batch GD, and an L2 logistic
  regression control).
* :mod:`jaxreason.probe.activation_store`: residual streams exported chunk by chunk to disk
  (bounded memory, resumable) and loaded back per layer as NumPy arrays.
* :mod:`jaxreason.probe.heatmaps`: accuracy heat maps over position x layer.

Every place where the original code has a quirk offers a ``faithful`` behaviour (reproduces
it) and a ``fixed`` one; the module docstrings say which is which. The originals are
MechanisticProbe (Hou et al., 2023; github.com/yifan-h/MechanisticProbe) and Think-to-Talk
(Kudo et al., arXiv 2412.01113; github.com/keitokudo/TTT).
"""
