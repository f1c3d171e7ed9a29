"""Settings of the Think-to-Talk study: which tasks, the model (trained here or a local
checkpoint), decoding and export, the probes, and the activation-patching settings."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxreason.config_io import ConfigError
from jaxreason.probe.linear import ProbeSettings
from jaxreason.studies.base import TrainedStudyConfig, check_compute_dtype, check_sizes
from jaxreason.tasks import formulas as fm


@dataclasses.dataclass(frozen=True)
class PatchSetting:
    """One activation-patching configuration (as the original's): hidden indices >= ``start_layer``
    at source positions ``start..end`` (inclusive); ``expect`` names the intended token at
    each position (or ``<edited>``, ``<query>``, ``<digit>``), checked against the tokenizer;
    ``teacher_force`` appends that many gold CoT tokens to the input."""

    name: str = "v2_edit"
    start_layer: int = 12
    start: int = 13
    end: int = 14
    expect: tuple[str, ...] = ("<edited>", ";")
    teacher_force: int = 0


@dataclasses.dataclass(frozen=True)
class ProbeSection:
    probes: tuple[Literal["sgd", "logreg"], ...] = ("sgd", "logreg")
    sgd_steps: int = 10_000
    sgd_lr: float = 1e-3
    logreg_l2: float = 1e-3
    logreg_steps: int = 300
    seed: int = 42
    threshold: float = 0.9  # "decodable" = accuracy at or above this (reported with chance)

    def settings(self) -> dict[str, ProbeSettings]:
        return {"sgd": ProbeSettings(kind="sgd", steps=self.sgd_steps, lr=self.sgd_lr,
                                     seed=self.seed),
                "logreg": ProbeSettings(kind="logreg", l2=self.logreg_l2,
                                        logreg_steps=self.logreg_steps, seed=self.seed)}


@dataclasses.dataclass(frozen=True)
class ThinkToTalkConfig(TrainedStudyConfig):
    """The study's settings. ``train`` trains the embedded model unless ``model_path`` names
    a local HF checkpoint (then prompted few-shot, no BOS, as in the original)."""

    study: Literal["think_to_talk"] = "think_to_talk"
    run_dir: str = "runs/think_to_talk"
    tasks: tuple[str, ...] = fm.CONFIGS
    model_path: str | None = None
    dtype: str = "float32"
    layer_step: int = 1
    shots: int = 3
    general_prompt_for: tuple[str, ...] = ()  # tasks prompted with the 50-shot general prompt
    test_size: int = 2000
    probing_train_size: int = 10_000
    batch_size: int = 250
    probe_train_on: Literal["solved", "all"] = "solved"  # the original: solved problems only
    max_new_tokens: int = 100
    export_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    probe: ProbeSection = ProbeSection()
    patch_pairs: int = 2000
    patches: tuple[PatchSetting, ...] = (
        PatchSetting("v2_edit", 12, 13, 14, ("<edited>", ";")),
        PatchSetting("v2_edit_low_acc", 12, 15, 17, ("<query>", "=", "?")),
        PatchSetting("v2_edit_teacher_force", 12, 13, 14, ("<edited>", ";"), 38))
    data_parallel: bool = True
    progress: bool = True

    def __post_init__(self):
        bad = [t for t in self.tasks if t not in fm.CONFIGS]
        if bad:
            raise ConfigError(f"tasks: unknown {bad}; known: {list(fm.CONFIGS)}")
        if self.patches and "2step" not in self.tasks:
            raise ConfigError("patching scores the patched states with the 2step probes: add "
                              "'2step' to tasks or set patches: []")
        names = [p.name for p in self.patches]
        if len(set(names)) != len(names):
            raise ConfigError(f"patches: names must be unique (each names its export), got {names}")
        for name, v in (("test_size", self.test_size), ("probing_train_size", self.probing_train_size),
                        ("batch_size", self.batch_size), ("max_new_tokens", self.max_new_tokens)):
            if v <= 0:
                raise ConfigError(f"{name}={v} must be positive")
        check_sizes(self, positive=("layer_step",), non_negative=("shots",))
        check_compute_dtype(self.dtype)
        if self.patches and self.patch_pairs < 1:
            raise ConfigError(f"patch_pairs={self.patch_pairs} must be positive while patches "
                              f"are set (or set patches: [])")
        unknown = [t for t in self.general_prompt_for if t not in self.tasks]
        if unknown:
            raise ConfigError(f"general_prompt_for: {unknown} are not in tasks {list(self.tasks)}")
        for i, p in enumerate(self.patches):
            if not 0 <= p.start <= p.end or p.start_layer < 0 or p.teacher_force < 0:
                raise ConfigError(f"patches[{i}] ({p.name!r}): start={p.start}, end={p.end}, "
                                  f"start_layer={p.start_layer}, teacher_force="
                                  f"{p.teacher_force}; allowed: 0 <= start <= end, start_layer "
                                  f">= 0, teacher_force >= 0")
            if len(p.expect) != p.end - p.start + 1:
                raise ConfigError(f"patches[{i}] ({p.name!r}): expect has {len(p.expect)} "
                                  f"entries for the {p.end - p.start + 1} positions "
                                  f"{p.start}..{p.end} (one token name per position)")
