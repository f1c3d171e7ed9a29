"""The embedded world's base model, shared by every study that runs on the word-problem world.

The neuron lens, K/V transplant and planning-token studies all need a model that has really
learned something, with no downloads. That model is the small Llama of
``configs/world_base.yaml`` trained from scratch on the word-problem world
(:mod:`jaxreason.tasks.word_problems_lm`), exported as a HuggingFace directory with the world's
tokenizer beside the weights. It is trained once and cached in its run directory: the first
study that needs it trains it (``jaxreason.train`` with ``resume: auto``, so a killed
training continues), every later study and rerun loads the export.

A study config names its model in one field, ``model_path``; an empty value means "the world
base model", found (or trained) through ``world_train_config``. A user with a real
checkpoint sets ``model_path`` to its local directory and the world config is never read.

Each new export is checked once against the bar the studies rely on (:func:`check_export`):
greedy 4-shot exact match on 100 held-out 2-step problems with full chain-of-thought
demonstrations, at least 80%. The recipe learns to copy numbers from the question in some
runs and not in others, depending on the initial weights and on how the CPU rounds: seeds 0-3
reached 96%, 66%, 96% and 33% on an AMD EPYC (AVX2) and 93%, 96%, 97% and 41% on an Intel
Xeon (AVX-512); with a 60-step warmup instead of 300, seed 0 gave 90% on the EPYC and
59% on the Xeon, seeds 1-3 38%, 39% and 59% on the EPYC, and 1,600 steps left seed 1 at 38%.
A model under the bar would make every study's figures those of a model that cannot solve
the problems, so an export under it is not used while a fallback seed
(:data:`FALLBACK_SEEDS`) remains: the same recipe is trained from each in a run directory of
its own and checked in turn, and the first that passes is the model; when none does, the best
one is used and named in a warning rather than found out from the reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

from jaxreason.atomic import write_json
from jaxreason.config_io import ConfigError
from jaxreason.models import load_pretrained, load_tokenizer
from jaxreason.studies.base import check_model_dir
from jaxreason.tasks.word_problems import make_splits
from jaxreason.tasks.word_problems_eval import evaluate_prompt_type
from jaxreason.train.config import load_train_config
from jaxreason.train.loop import main

#: the training config of the world base model, relative to the repository root
WORLD_TRAIN_CONFIG = "configs/world_base.yaml"
#: the file a finished HF export of a jaxreason run holds (besides the weights)
_EXPORT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
#: the check of an export, written beside it in the run directory
CHECK_FILE = "world_check.json"
#: exact match on held-out 2-step problems (cot_prompt, 4-shot) the studies rely on
CHECK_BAR = 0.8
#: held-out 2-step problems a check decodes (the README's accuracy table uses the same 100)
CHECK_PROBLEMS = 100


#: the seeds trained, in turn, when the configured run's export fails its check (the same
#: recipe from other initial weights, each in ``<run_dir>-seed<S>``). With the configured
#: 300-step warmup, seeds 0-3 reached 96%, 66%, 96% and 33% on an AMD EPYC (AVX2) and 93%,
#: 96%, 97% and 41% on an Intel Xeon (AVX-512): seed 2 passed on both, seed 1 on one, seed 3
#: on neither. On another machine each run is a new draw.
FALLBACK_SEEDS = (2, 1)


@dataclasses.dataclass(frozen=True)
class WorldModelFields:
    """Config fields of a study that may run on the world base model (mix into its config).

    ``model_path``: a local HF checkpoint directory (config.json + safetensors, and its
    tokenizer); empty: the world base model of ``world_train_config``, trained first when its
    export does not exist yet. ``world_fallbacks``: how many of the :data:`FALLBACK_SEEDS` may
    be trained when the world base model's export fails its check (0: none; each costs one
    more training run, ~13 min on a 2-core CPU)."""

    model_path: str = ""
    world_train_config: str = WORLD_TRAIN_CONFIG
    world_fallbacks: int = len(FALLBACK_SEEDS)


def export_dir_of(train_config) -> Path:
    """Where the training run of ``train_config`` (a TrainConfig) writes its HF export."""
    return Path(train_config.trainer.run_dir).expanduser() / "hf"


def is_finished_export(path) -> bool:
    """Whether ``path`` holds a complete HF export with its tokenizer (the export is written
    atomically, so a directory that has these files is whole)."""
    p = Path(path)
    return all((p / name).is_file() for name in _EXPORT_FILES)


def world_base_model(train_config: str = WORLD_TRAIN_CONFIG, overrides: Sequence[str] = (),
                     train: bool = True, check_problems: int = CHECK_PROBLEMS,
                     fallbacks: int = len(FALLBACK_SEEDS)) -> Path:
    """The HF directory of the world base model of ``train_config`` (a YAML path plus dotted
    ``overrides``), trained first when its export is missing and ``train`` is true.

    A finished export is returned without reading any checkpoint; a partial run continues from
    its newest checkpoint (``checkpoint.resume: auto``). Each export is checked with
    ``check_problems`` problems (:func:`check_export`; 0 skips the check and the fallbacks).
    Under the bar, the same recipe from the first ``fallbacks`` seeds of
    :data:`FALLBACK_SEEDS` is tried in turn (trained when ``train`` is true, each in
    ``<run_dir>-seed<S>``) until one passes; the first that passes is returned, else the best
    of those tried, with a warning."""
    if not 0 <= fallbacks <= len(FALLBACK_SEEDS):
        raise ConfigError(f"world_fallbacks = {fallbacks!r}: it must be 0 to "
                          f"{len(FALLBACK_SEEDS)} (the fallback seeds there are)")
    configs = candidate_configs(train_config, overrides, fallbacks if check_problems else 0)
    tried = []
    for i, config in enumerate(configs):
        hf_dir = export_dir_of(config)
        if not is_finished_export(hf_dir):
            if not train:
                if i == 0:
                    raise FileNotFoundError(
                        f"the world base model has no export at {hf_dir}; train it with: "
                        f"python -m jaxreason.train --config {train_config}")
                break
            if i:
                print(f"jaxreason: training the world base model again from seed "
                      f"{config.trainer.seed} (fallback {i} of {len(configs) - 1}) into "
                      f"{config.trainer.run_dir}", file=sys.stderr, flush=True)
            _train(config, hf_dir, train_config)
        if not check_problems:
            return hf_dir
        done = _checked(hf_dir, check_problems)
        tried.append((hf_dir, done))
        if done["passed"]:
            break
        if i + 1 < len(configs):
            print(f"jaxreason: world base model {hf_dir}: {_figure(done)}, under the "
                  f"{CHECK_BAR:.0%} bar", file=sys.stderr, flush=True)
    hf_dir, done = max(tried, key=lambda t: t[1]["exact_match"])  # a passing one is the last
    _report(done, hf_dir, train_config, tried=len(tried), untried=len(configs) - len(tried))
    return hf_dir


def candidate_configs(train_config: str, overrides: Sequence[str] = (), fallbacks: int = 0):
    """The TrainConfigs of the world base model: the configured run, then the same recipe
    from the first ``fallbacks`` seeds of :data:`FALLBACK_SEEDS` other than its own, each
    writing to ``<run_dir>-seed<S>`` (the world's tokenizer directory is shared: it is the
    same tokenizer)."""
    path = Path(train_config)
    if not path.is_file():
        raise ConfigError(f"world_train_config = {train_config!r} is not a file; it must name "
                          f"the world base model's training config (default "
                          f"{WORLD_TRAIN_CONFIG!r}, relative to the repository root)")
    config = load_train_config(path, overrides)
    if not config.checkpoint.export_hf or not config.checkpoint.export_tokenizer:
        raise ConfigError(f"{train_config}: the world base model's config must set "
                          f"checkpoint.export_hf: true and checkpoint.export_tokenizer, so the "
                          f"studies load model and tokenizer from one directory")
    seeds = [s for s in FALLBACK_SEEDS if s != config.trainer.seed][:fallbacks]
    return [config] + [
        load_train_config(path, [*overrides, f"--trainer.seed={seed}",
                                 f"--trainer.run_dir={config.trainer.run_dir}-seed{seed}"])
        for seed in seeds]


def _train(config, hf_dir: Path, train_config: str) -> None:
    main(dataclasses.replace(config, checkpoint=dataclasses.replace(
        config.checkpoint, resume="auto")))
    if not is_finished_export(hf_dir):
        raise RuntimeError(f"training {train_config} finished but left no complete export "
                           f"in {hf_dir}")


def _weights_stamp(hf_dir: Path) -> list[int]:
    stat = (hf_dir / "model.safetensors").stat()
    return [stat.st_size, stat.st_mtime_ns]


def check_export(hf_dir, problems: int = CHECK_PROBLEMS,
                 train_config: str = WORLD_TRAIN_CONFIG) -> dict:
    """Exact match of the export in ``hf_dir`` on the first ``problems`` held-out 2-step test
    problems (greedy, 4-shot, full chain-of-thought demonstrations), written to
    ``world_check.json`` in its run directory; a warning names a result under
    :data:`CHECK_BAR` and what to do. Once per export: a check file of the same weights (size
    and modification time) is read back instead (about 15 s on a 2-core CPU otherwise), and
    reported again, so every study run on a model under the bar says so."""
    hf_dir = Path(hf_dir)
    done = _checked(hf_dir, problems)
    _report(done, hf_dir, train_config)
    return done


def _checked(hf_dir: Path, problems: int) -> dict:
    """The stored check of these weights with ``problems`` problems, else a new one (stored)."""
    done = stored_check(hf_dir)
    if done is None or done.get("problems") != problems:
        done = _run_check(hf_dir, problems)
        write_json(hf_dir.parent / CHECK_FILE, done, indent=1)
    return done


def _run_check(hf_dir: Path, problems: int) -> dict:
    chosen = [p for p in make_splits()["test"] if p.n_steps == 2][:problems]
    if len(chosen) < problems:
        raise ValueError(f"check_problems = {problems}: the test split has only "
                         f"{len(chosen)} 2-step problems")
    model, params = load_pretrained(hf_dir)
    result = evaluate_prompt_type(model, params, load_tokenizer(hf_dir), chosen, "cot_prompt",
                                  batch_size=min(problems, 100))
    return {"export": str(hf_dir), "weights": _weights_stamp(hf_dir), "split": "test",
            "steps": 2, "prompt_type": "cot_prompt", "n_shots": result["n_shots"],
            "problems": problems, "exact_match": result["accuracy"], "bar": CHECK_BAR,
            "passed": result["accuracy"] >= CHECK_BAR}


def _figure(done: dict) -> str:
    return (f"{done['exact_match']:.0%} exact match on {done['problems']} held-out 2-step "
            f"problems (greedy, 4-shot, full chain of thought)")


def _report(done: dict, hf_dir: Path, train_config: str, tried: int = 1,
            untried: int = 0) -> None:
    """One line on stderr for a model over the bar; a warning with the remedy under it
    (``tried`` seeds were checked, ``untried`` fallback seeds were not trained)."""
    if done["passed"]:
        print(f"jaxreason: world base model {hf_dir}: {_figure(done)}", file=sys.stderr,
              flush=True)
        return
    tries = (f"the best of {tried} seeds tried (configured and fallbacks), it" if tried > 1
             else "it")
    left = (f"; {untried} fallback seed(s) not trained yet (a study with training allowed "
            f"trains them)" if untried else "")
    warnings.warn(f"the world base model {hf_dir} reached {_figure(done)}, under the "
                  f"{CHECK_BAR:.0%} the studies rely on: their figures would be those of a "
                  f"model that cannot solve the problems. Whether this recipe learns depends "
                  f"on the initial weights (see the README's embedded-world section); "
                  f"{tries} is used{left}. Train {train_config} again into a fresh run_dir "
                  f"with another --trainer.seed, or set model_path to a model of your own",
                  stacklevel=3)


def stored_check(hf_dir) -> dict | None:
    """The check of the export in ``hf_dir`` (:func:`check_export`) when its run directory
    holds one for these very weights, else None (a model of the user's own, not checked yet,
    or a check file that cannot be read, which counts as no check)."""
    hf_dir = Path(hf_dir)
    try:
        done = json.loads((hf_dir.parent / CHECK_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or not (hf_dir / "model.safetensors").is_file() \
            or done.get("weights") != _weights_stamp(hf_dir):
        return None
    return done


def check_sentence(check: dict | None) -> str:
    """The sentence a study report gives its model's check: the figure, the bar and whether
    it passed, so a report on a model under the bar says so where its numbers are read."""
    if check is None:
        return ""
    verdict = "passed" if check["passed"] else (
        "UNDER THE BAR: the figures below are those of a model that has not learnt the task")
    return (f" World base model check: {check['exact_match']:.0%} exact match on "
            f"{check['problems']} held-out 2-step problems (greedy, 4-shot, full chain of "
            f"thought; bar {check['bar']:.0%}): {verdict}.")


def resolve_model_path(config, train: bool = True) -> Path:
    """The checkpoint directory a study config (with :class:`WorldModelFields`) runs on:
    ``model_path`` when set (checked to be a local HF folder), else the world base model."""
    if config.model_path:
        return check_model_dir(config.model_path)
    return world_base_model(config.world_train_config, train=train,
                            fallbacks=config.world_fallbacks)


def cli(argv: Sequence[str] | None = None) -> Path:
    """``python -m jaxreason.studies.world_model``: the world base model the studies use,
    trained, checked and (under the bar) trained again from another seed, as a study would; its
    HF directory is printed on stdout. Further ``--section.key=value`` arguments override the
    training config, as for ``python -m jaxreason.train``."""
    ap = argparse.ArgumentParser(prog="python -m jaxreason.studies.world_model",
                                 description=cli.__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=WORLD_TRAIN_CONFIG, help="the training config")
    ap.add_argument("--fallbacks", type=int, default=len(FALLBACK_SEEDS),
                    help=f"fallback seeds that may be trained (0 to {len(FALLBACK_SEEDS)})")
    ap.add_argument("--check_problems", type=int, default=CHECK_PROBLEMS,
                    help="held-out 2-step problems of the check (0: no check, no fallbacks)")
    args, overrides = ap.parse_known_args(argv)
    hf_dir = world_base_model(args.config, overrides, check_problems=args.check_problems,
                              fallbacks=args.fallbacks)
    print(hf_dir)
    return hf_dir


if __name__ == "__main__":
    cli()
