"""Training curves as a PNG: loss (train and eval) and every eval metric against step."""

from __future__ import annotations

from pathlib import Path

from jaxreason.plotting import new_figure, save_png


def plot_curves(rows: list[dict], path: str | Path) -> Path:
    steps = [r["step"] for r in rows]
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    metric_names = sorted({k for r in evals for k in r if k.startswith("eval_") and k != "eval_loss"})
    fig = new_figure((5 + 4 * bool(metric_names), 3.5))
    axes = fig.subplots(1, 1 + bool(metric_names))
    axes = axes if metric_names else [axes]
    axes[0].plot(steps, [r["loss"] for r in rows], label="train")
    if evals and "eval_loss" in evals[0]:
        axes[0].plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
    axes[0].set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    axes[0].legend()
    for name in metric_names:
        axes[1].plot([r["step"] for r in evals], [r.get(name) for r in evals], "o-",
                     label=name.removeprefix("eval_"))
    if metric_names:
        axes[1].set(xlabel="step", title="held-out metrics")
        axes[1].legend()
    return save_png(fig, path)
