"""Settings of the K/V-transplant study: the data, the prompts, the adapter, the training
schedule and the controls.

``faithful`` and ``fixed`` differ in three places, and every number names its mode:

* windows: ``faithful`` reproduces the original's fences (the window starts at the token
  before the argument and leaves out its last token); ``fixed`` tokenizes each argument once,
  splices the ids into both prompts and transplants exactly the argument's tokens;
* gradient accumulation: ``faithful`` sums the sub-batch gradients of a step and lets the
  leftover sub-batches of an epoch spill into the next epoch's first step; ``fixed`` averages
  them and closes each epoch with a step over its leftovers;
* metrics: ``faithful`` logs the original's definitions (the training lines' clamp bug, the
  test lines' mean of batch means); ``fixed`` logs true rates and the original's beside them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxreason.config_io import ConfigError
from jaxreason.studies.base import StudyConfig, check_compute_dtype, check_sizes
from jaxreason.studies.world_model import WorldModelFields

CONDITIONS = ("transplant", "no_transplant", "shuffled", "positive_control")


@dataclasses.dataclass(frozen=True)
class KVTransplantConfig(StudyConfig, WorldModelFields):
    """``data_path`` empty: rows drawn from the embedded world (``world_rows`` of its
    ``world_split`` problems, the argument favouring the correct chain with probability
    ``world_p_right``); else the user's CSV. ``prompt_style``: ``alpaca`` (the original's
    JSON prompts, for a real tokenizer) or ``world`` (the same structure in the world's
    vocabulary). ``adapter_path``: a local PEFT LoRA directory to start from (else a fresh
    adapter with B = 0). ``adapters``: ``shared`` (one parameter set for arguer and chooser,
    as the original) or ``separate`` (two independent adapters, a different experiment).
    ``steps``: optimizer steps per condition (the original never stops)."""

    study: Literal["kv_transplant"] = "kv_transplant"
    run_dir: str = "runs/kv_transplant"
    seed: int = 1
    data_path: str = ""
    stats_only: bool = False
    masked: bool = False
    unescape_newlines: bool = False
    world_rows: int = 600
    world_split: str = "test"
    world_p_right: float = 0.6
    world_steps: tuple[int, ...] = (1, 2, 3, 4)
    test_fraction: float = 0.1
    split_seed: int = 1
    val_fraction: float = 0.1
    prompt_style: Literal["alpaca", "world"] = "world"
    answer_tokens: tuple[str, str] = ("1", "2")
    max_length: int = 1024
    length_bucket: int = 32
    dtype: str = "float32"
    adapter_path: str = ""
    adapters: Literal["shared", "separate"] = "shared"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lr: float = 3e-4
    eps: float = 1e-16
    subbatch: int = 2
    subbatches_per_step: int = 64
    steps: int = 50
    test_every: int = 1
    test_batch: int = 64
    remat: bool = False
    conditions: tuple[str, ...] = CONDITIONS
    progress: bool = True

    def __post_init__(self):
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions:
            raise ConfigError(f"conditions={list(self.conditions)}: allowed are "
                              f"{list(CONDITIONS)} (at least one)")
        check_sizes(self, positive=("world_rows", "lora_rank", "subbatch", "subbatches_per_step",
                                    "steps", "test_every", "test_batch", "max_length",
                                    "length_bucket"))
        check_compute_dtype(self.dtype)
        for name in ("test_fraction", "world_p_right"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must lie in [0, 1)")
        if not self.lr > 0 or not self.eps > 0 or not self.lora_alpha > 0:
            raise ConfigError(f"lr={self.lr}, eps={self.eps}, lora_alpha={self.lora_alpha} "
                              f"must all be positive")
        if len(self.answer_tokens) != 2 or len(set(self.answer_tokens)) != 2:
            raise ConfigError(f"answer_tokens={list(self.answer_tokens)} must be two different "
                              f"tokens (slot 1's, slot 2's)")
        if "positive_control" in self.conditions and self.data_path and not self.stats_only:
            raise ConfigError("the positive control marks the embedded world's chains: drop "
                              "'positive_control' from conditions with a data_path")
