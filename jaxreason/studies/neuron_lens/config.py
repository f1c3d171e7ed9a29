"""Settings of the neuron-lens study (Rai & Yao, ACL 2024): data and prompts, decoding, the
dominant-neuron extraction, the concept labelling and the ablations.

Defaults are the original's where it has one (top 20 neurons of 149 decoding steps on 20
correctly answered problems, ``random.seed(42)``, 20 promoted tokens, at least 2 seed hits,
``N(-1, 1)`` noise from ``RandomState(1)``, batches of 8, 500 new tokens, fp16 on real models);
``configs/neuron_lens.yaml`` sizes them down for the embedded world.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxreason.config_io import ConfigError
from jaxreason.llm import LLMConfig
from jaxreason.studies.base import StudyConfig, check_compute_dtype, check_sizes
from jaxreason.studies.world_model import WorldModelFields
from jaxreason.tasks.word_problem_variants import PROMPT_TYPES

ABLATION_WAYS = ("corrupt_faithful", "corrupt_clean", "zero")
RANDOM_CONTROLS = ("original", "same_count")


@dataclasses.dataclass(frozen=True)
class NeuronLensConfig(StudyConfig, WorldModelFields):
    """The study's settings (``model_path`` empty: the embedded world's base model).

    Data: ``data_path`` a GSM8K JSON-lines file or ``datasets`` folder and ``prompt_dir`` a
    folder of ``<prompt_type>.txt`` files; both empty: the embedded world's test split and
    its prompt variants (``world_shots`` demonstrations each). ``num_problems`` caps the
    problems scored per prompt type (None: all).
    """

    study: Literal["neuron_lens"] = "neuron_lens"
    run_dir: str = "runs/neuron_lens"
    dtype: str = "float16"
    data_path: str = ""
    data_split: str | None = None
    prompt_dir: str = ""
    prompt_types: tuple[str, ...] = PROMPT_TYPES
    analysis_prompt: str = "cot_prompt"  # where the concept neurons are found
    world_shots: int = 8
    world_demo_seed: int = 0
    num_problems: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 500
    # dominant neurons (Algorithm One) and their vocabulary (Algorithm Two)
    neuron_examples: int = 20
    neuron_steps: int = 149
    top_k: int = 20
    sample_seed: int = 42
    sample_correct: bool = True  # the original's flag: sample the correctly answered only
    promoted_tokens: int = 20
    projection: Literal["raw", "final_norm"] = "raw"  # the original: raw (no final norm)
    save_original_json: bool = False
    # concept neurons
    seed_words: Literal["auto", "original", "world"] = "auto"
    skip_layers: int | None = None  # None: the original's 6 of 32, scaled to depth
    min_seed_hits: int = 2
    labeller: Literal["seed_tokens", "llm"] = "seed_tokens"
    llm: LLMConfig | None = None
    # ablation
    ablation_ways: tuple[str, ...] = ABLATION_WAYS
    random_controls: tuple[str, ...] = RANDOM_CONTROLS
    random_seed: int = 42
    random_count: int = 10
    random_index_range: int = 1024
    noise_seed: int = 1
    noise_mean: float = -1.0
    noise_std: float = 1.0
    # prompt-variant activation analysis
    variant_analysis: bool = True
    data_parallel: bool = True
    progress: bool = True

    def __post_init__(self):
        check_compute_dtype(self.dtype)
        check_sizes(self, positive=("world_shots", "num_problems", "batch_size",
                                    "max_new_tokens", "neuron_examples", "neuron_steps",
                                    "top_k", "promoted_tokens", "min_seed_hits",
                                    "random_count", "random_index_range"),
                    non_negative=("skip_layers",))
        for key, values, allowed in (("prompt_types", self.prompt_types, PROMPT_TYPES),
                                     ("ablation_ways", self.ablation_ways, ABLATION_WAYS),
                                     ("random_controls", self.random_controls,
                                      RANDOM_CONTROLS)):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ConfigError(f"{key}: unknown {bad}; allowed: {list(allowed)}")
            if len(set(values)) != len(values):
                raise ConfigError(f"{key}={list(values)} repeats an entry")
        if self.analysis_prompt not in self.prompt_types:
            raise ConfigError(f"analysis_prompt={self.analysis_prompt!r} must be one of "
                              f"prompt_types {list(self.prompt_types)}")
        if self.neuron_steps < 2:
            raise ConfigError(f"neuron_steps={self.neuron_steps} must be at least 2 (the last "
                              f"prompt token and one generated token)")
        if self.labeller == "llm" and self.llm is None:
            raise ConfigError("labeller: llm needs an llm: section (model, base_url, "
                              "api_key_env, cache_dir)")
        if bool(self.data_path) != bool(self.prompt_dir):
            raise ConfigError(f"data_path={self.data_path!r} and prompt_dir="
                              f"{self.prompt_dir!r}: give both (GSM8K and the prompt files) "
                              f"or neither (the embedded world)")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std={self.noise_std} must be >= 0")
