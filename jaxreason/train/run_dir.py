"""What a training run may do to its run directory: nothing it did not write itself.

A run writes ``config.yaml``, ``metrics.jsonl``, ``final_metrics.json``, ``curves.png``,
``checkpoints/`` and (with ``checkpoint.export_hf``) ``hf/`` into ``trainer.run_dir``. Before
anything is written, :func:`inspect_run_dir` looks at what is there and :func:`check_run_dir`
decides:

* a directory that already holds a run (jaxreason checkpoints, or a ``config.yaml`` that a
  run wrote, recognised by its first line :data:`CONFIG_HEADER`) is continued with
  ``checkpoint.resume``, replaced with ``trainer.overwrite`` (which deletes only the run's own
  files listed above, never other files beside them), and refused otherwise: rerunning into it
  would replace its checkpoints and truncate its metrics;
* files with a run's names that no run wrote (a user's own ``config.yaml`` or
  ``metrics.jsonl``) are never replaced, not even with ``trainer.overwrite``;
* ``checkpoint.resume`` with nothing to resume (a misspelled directory, a run that saved no
  checkpoint) is refused instead of quietly starting at step 0.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from jaxreason.config_io import ConfigError
from jaxreason.train.checkpoint import is_checkpoint_step

CONFIG_HEADER = "# jaxreason.train run config"
OWN_FILES = ("config.yaml", "metrics.jsonl", "final_metrics.json", "curves.png")
CHECKPOINTS = "checkpoints"


class RunDirError(ConfigError):
    """The run directory cannot be used as asked (it holds a run, or files a run did not
    write, or nothing to resume)."""


@dataclasses.dataclass(frozen=True)
class RunDirContents:
    path: Path
    exists: bool
    steps: tuple[int, ...]  # jaxreason checkpoint steps in checkpoints/ (damaged ones too)
    own_config: bool  # config.yaml is one a run wrote
    present: tuple[str, ...]  # which of OWN_FILES exist

    @property
    def holds_run(self) -> bool:
        return bool(self.steps) or self.own_config

    def describe(self) -> str:
        parts = []
        if self.steps:
            parts.append(f"checkpoints of steps {list(self.steps)}")
        parts += [name for name in self.present]
        return ", ".join(parts)


def inspect_run_dir(run_dir: Path) -> RunDirContents:
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINTS
    steps = tuple(sorted(int(p.name) for p in ckpt.iterdir() if is_checkpoint_step(p))
                  ) if ckpt.is_dir() else ()
    config = run_dir / "config.yaml"
    own_config = config.is_file() and _first_line(config).startswith(CONFIG_HEADER)
    present = tuple(n for n in OWN_FILES if (run_dir / n).exists())
    return RunDirContents(run_dir, run_dir.exists(), steps, own_config, present)


def _first_line(path: Path) -> str:
    with open(path, "rb") as f:
        return f.readline(200).decode("utf-8", "replace")


def check_run_dir(contents: RunDirContents, resume: bool | str, overwrite: bool,
                  report=print) -> bool:
    """Refuse (RunDirError) what would lose data or silently do something else; returns
    whether the run resumes from a checkpoint.

    ``resume="auto"`` resumes when there is a checkpoint; without one it starts at step 0
    (one line through ``report``) unless the directory holds a finished run."""
    where = f"trainer.run_dir={str(contents.path)!r}"
    if not contents.holds_run and contents.present:
        names = ", ".join(str(contents.path / n) for n in contents.present)
        raise RunDirError(
            f"{where} holds {names}, which no jaxreason run wrote (a run's config.yaml starts "
            f"with {CONFIG_HEADER!r}; there are no checkpoints), and a run writes files of those "
            "names: move them away or choose another trainer.run_dir (trainer.overwrite does "
            "not delete files a run did not write)")
    if resume == "auto" and not contents.steps:
        if "final_metrics.json" in contents.present:
            raise RunDirError(
                f"checkpoint.resume=auto: {where} holds a finished run without checkpoints, "
                "which cannot be continued; pass --overwrite (trainer.overwrite=true) to train "
                "it again or choose another trainer.run_dir")
        report(f"checkpoint.resume=auto: no checkpoint in {contents.path / CHECKPOINTS} yet; "
               "starting at step 0")
        return False
    if resume:
        if not contents.steps:
            if not contents.exists:
                state = "does not exist"
            elif contents.holds_run:
                state = ("holds a run that saved no checkpoint (checkpoints are written only "
                         "with checkpoint.save_every > 0)")
            else:
                state = "holds no checkpoints"
            raise RunDirError(
                f"checkpoint.resume (--resume): {where} {state}, so there is nothing to resume. "
                "Check the path; to start a new run leave out --resume"
                + (" and pass --overwrite (trainer.overwrite=true) to replace it"
                   if contents.holds_run else ""))
        return True
    if contents.holds_run and not overwrite:
        raise RunDirError(
            f"{where} already holds a training run ({contents.describe()}); training into it "
            "again would replace its checkpoints and metrics. Pass --resume to continue it, "
            "--overwrite (trainer.overwrite=true) to delete its checkpoints/, "
            f"{', '.join(OWN_FILES)} and start again, or choose another trainer.run_dir")
    return False


def remove_run(contents: RunDirContents) -> list[str]:
    """Delete the run's own files (``trainer.overwrite``); returns what was deleted.

    Only checkpoint step directories (and Orbax's unfinished ``*.orbax-checkpoint-tmp*``
    ones) leave ``checkpoints/``; any other file in it stays, as do files beside the run.
    An earlier ``hf/`` export is left to the export, which replaces only its own output."""
    gone = []
    ckpt = contents.path / CHECKPOINTS
    if ckpt.is_dir():
        for p in sorted(ckpt.iterdir()):
            if is_checkpoint_step(p) or ".orbax-checkpoint-tmp" in p.name:
                shutil.rmtree(p)
                gone.append(f"{CHECKPOINTS}/{p.name}")
        if not any(ckpt.iterdir()):
            ckpt.rmdir()
    for name in contents.present:
        os.unlink(contents.path / name)
        gone.append(name)
    return gone
