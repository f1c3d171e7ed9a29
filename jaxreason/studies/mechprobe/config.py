"""Settings of the two MechanisticProbe studies: the k-th smallest task with a GPT-2 trained
here (``study: mechprobe_kth``) and ProofWriter / ARC with a local Llama-family checkpoint
(``study: mechprobe_llama``)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxreason.config_io import ConfigError
from jaxreason.studies.base import (StudyConfig, TrainedStudyConfig, check_compute_dtype,
                                    check_sizes)


FIXED_RANDOM_MASK_DRAWS = 3  # one random draw is noisy: a single key head can decide it


@dataclasses.dataclass(frozen=True)
class MechProbeConfig(TrainedStudyConfig):
    """The k-th smallest study; ``train`` is a full training config (or ``skip_training``
    to probe a run that already finished in ``train.trainer.run_dir``)."""

    study: Literal["mechprobe_kth"] = "mechprobe_kth"
    run_dir: str = "runs/mechprobe_kth"
    probe_examples: int = 1024
    eval_examples: int = 2000
    batch_size: int = 256
    masking_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    # random head masks drawn per masking level; None: the mode's default, 1 in faithful (the
    # original draws once) and FIXED_RANDOM_MASK_DRAWS in fixed (their mean accuracy)
    random_mask_draws: int | None = None
    random_seed: int = 1234
    seed: int = 42

    def __post_init__(self):
        check_sizes(self, positive=("probe_examples", "eval_examples", "batch_size",
                                    "random_mask_draws"))
        bad = [f for f in self.masking_fractions if not 0 <= f <= 1]
        if bad:
            raise ConfigError(f"masking_fractions={list(self.masking_fractions)}: {bad} lie "
                              f"outside [0, 1] (each is the fraction of heads masked)")

    @property
    def mask_draws(self) -> int:
        """Random head masks per masking level: ``random_mask_draws`` or the mode's default."""
        if self.random_mask_draws is not None:
            return self.random_mask_draws
        return 1 if self.mode == "faithful" else FIXED_RANDOM_MASK_DRAWS


@dataclasses.dataclass(frozen=True)
class MechProbeLlamaConfig(StudyConfig):
    """The Llama study on ProofWriter (``dataset: proofwriter``) or ARC."""

    study: Literal["mechprobe_llama"] = "mechprobe_llama"
    run_dir: str = "runs/mechprobe_llama"
    dataset: Literal["proofwriter", "arc"] = "proofwriter"
    data_dir: str = "data/proofwriter"
    model_path: str = "models/llama-7b-hf"
    dtype: str = "float32"  # compute dtype; the original runs fp16 (softmax is fp32 here)
    icl_num: int = 4
    max_examples_per_bucket: int = 1024
    keep_layers: tuple[int, ...] | None = None  # None: faithful per dataset, fixed all
    random_seed: int = 1234  # init of the random baseline
    pad_multiple: int = 64
    corrupt: bool = True
    corrupt_pool: int = 128
    corrupt_iterations: int = 16
    corrupt_subset: tuple[int, ...] = (64, 128)
    corrupt_bins: int = 8
    seed: int = 42

    def __post_init__(self):
        check_compute_dtype(self.dtype)
        check_sizes(self, positive=("max_examples_per_bucket", "pad_multiple", "corrupt_pool",
                                    "corrupt_iterations", "corrupt_subset", "corrupt_bins"),
                    non_negative=("icl_num", "keep_layers"))
