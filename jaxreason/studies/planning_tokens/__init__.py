"""Memory and reasoning planning tokens (Jin et al., "Disentangling Memory and Reasoning Ability
in Large Language Models", ACL 2025): chains of thought whose steps are announced by learned
``<memory_i>`` / ``<reason_i>`` tokens, trained with LoRA plus new token embeddings.

:mod:`.config` holds the settings, :mod:`.run` the pipeline (:mod:`.vocab` and :mod:`.model`
the new tokens, :mod:`.training` and :mod:`.objective` the training, :mod:`.evaluation` the
per-epoch generation, :mod:`.export` the saved files, :mod:`.analysis` the analyses,
:mod:`.rescore` the scoring of released outputs), :mod:`.report` the figures and ``report.md``.
The data template and the answer extractors are :mod:`jaxreason.tasks.planning`.
"""

from jaxreason.registry import STUDIES
from jaxreason.studies.base import Study
from jaxreason.studies.planning_tokens.config import PlanningTokensConfig
from jaxreason.studies.planning_tokens.run import run as run_study


def summary(metrics: dict) -> dict:
    """The console summary ``run`` stores (accuracies per variant, or the rescore figures)."""
    return metrics["summary"]


STUDIES.register("planning_tokens", Study(PlanningTokensConfig, run_study, summarize=summary))
