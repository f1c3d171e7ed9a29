"""MechanisticProbe (Hou et al., 2023): reasoning trees read from attention.

Two studies share this package: ``mechprobe_kth`` (:mod:`.kth`, the k-th smallest task with
a GPT-2 trained here) and ``mechprobe_llama`` (:mod:`.llama`, ProofWriter and ARC with a local
Llama-family checkpoint); :mod:`.config` holds their settings, :mod:`.report` their
``report.md`` writers and :mod:`.objectives` the original's training loss.
"""

from jaxreason.registry import STUDIES
from jaxreason.studies.base import Study
from jaxreason.studies.mechprobe import kth, llama
from jaxreason.studies.mechprobe.config import MechProbeConfig, MechProbeLlamaConfig

# what `python -m jaxreason.probe` prints of the metrics
SUMMARY_KEYS = ("mode", "test_accuracy", "S_P1", "S_P2", "f1_p1_trained", "f1_p1_random",
                "f1_p2_trained", "f1_p2_random", "seconds")

STUDIES.register("mechprobe_kth", Study(MechProbeConfig, kth.run, SUMMARY_KEYS))
STUDIES.register("mechprobe_llama", Study(MechProbeLlamaConfig, llama.run, SUMMARY_KEYS))
