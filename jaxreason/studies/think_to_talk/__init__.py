"""Think-to-Talk or Talk-to-Think? (Kudo et al.): when, inside a model writing a chain of
thought, is each intermediate answer of a multi-step formula decodable?

:mod:`.config` holds the settings, :mod:`.run` the pipeline (decode and export with
:mod:`.decode`, probe with :mod:`.probing`, patch with :mod:`.patching`), :mod:`.report` the
figures and ``report.md``.
"""

from jaxreason.registry import STUDIES
from jaxreason.studies.base import Study
from jaxreason.studies.think_to_talk.config import ThinkToTalkConfig
from jaxreason.studies.think_to_talk.run import run as run_study


def summary(metrics: dict) -> dict:
    """The console summary ``run`` stores: mode, exact match per task, patching, seconds."""
    return metrics["summary"]


STUDIES.register("think_to_talk", Study(ThinkToTalkConfig, run_study, summarize=summary))
