"""Reading a run directory's metrics log, shared by the training tests and their workers."""

from pathlib import Path

from jaxreason.train.loop import MetricsLog


def losses(run_dir) -> list[float]:
    """Training losses by logged step."""
    return [r["loss"] for r in MetricsLog.read(Path(run_dir) / "metrics.jsonl")]
