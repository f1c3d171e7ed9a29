"""The neuron lens (Rai & Yao, ACL 2024, "An Investigation of Neuron Activation as a Unified
Lens to Explain Chain-of-Thought Eliciting Arithmetic Reasoning of LLMs"): dominant FFN
neurons per decoding step, what they promote in vocabulary space, concept neurons, and the
accuracy cost of knocking them out, on GSM8K-style prompts with seven few-shot variants.

:mod:`.config` holds the settings, :mod:`.run` the pipeline (:mod:`.data`, :mod:`.decoding`,
:mod:`.neurons`, :mod:`.concepts`, :mod:`.ablation`, :mod:`.variants`), :mod:`.report` the
tables, figures and ``report.md``.
"""

from jaxreason.registry import STUDIES
from jaxreason.studies.base import Study
from jaxreason.studies.neuron_lens.config import NeuronLensConfig
from jaxreason.studies.neuron_lens.run import run as run_study


def summary(metrics: dict) -> dict:
    """The console summary ``run`` stores: mode, accuracy per prompt type, concept-neuron
    counts, the ablation table, seconds."""
    return metrics["summary"]


STUDIES.register("neuron_lens", Study(NeuronLensConfig, run_study, summarize=summary))
