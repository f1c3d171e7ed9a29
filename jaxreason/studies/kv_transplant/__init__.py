"""CoT correctness by K/V transplant (MMacDougall06, cot-correctness-detection-test): a
chooser reads two chains of thought through an arguer's transplanted keys and values and a
LoRA adapter shared by both is trained to pick the correct one.

:mod:`.config` holds the settings, :mod:`.prompts` the prompts and windows, :mod:`.batching`
the padded arrays and index maps, :mod:`.transplant` the hook interventions and the two-pass
loss, :mod:`.train` the original's schedule, :mod:`.adapters` LoRA and PEFT adapters,
:mod:`.run` the pipeline and :mod:`.report` the curves and ``report.md``.
"""

from jaxreason.registry import STUDIES
from jaxreason.studies.base import Study
from jaxreason.studies.kv_transplant.config import KVTransplantConfig
from jaxreason.studies.kv_transplant.run import run as run_study


def summary(metrics: dict) -> dict:
    return metrics["summary"]


STUDIES.register("kv_transplant", Study(KVTransplantConfig, run_study, summarize=summary))
