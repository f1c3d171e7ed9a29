"""``python -m jaxreason.probe --config configs/mechprobe_kth.yaml [--key=value ...]``

Runs a probing study from a YAML config: trains the model it names (unless
``skip_training``), probes it, and writes ``metrics.json``, PNG figures and ``report.md`` to
``run_dir``."""

from __future__ import annotations

import argparse
import json
import sys


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxreason.probe", description=__doc__)
    parser.add_argument("--config", required=True)
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    from jaxreason.config_io import ConfigError
    from jaxreason.studies.registry import load_study

    try:
        config, run = load_study(args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    metrics = run(config)
    keys = ("mode", "test_accuracy", "S_P1", "S_P2", "f1_p1_trained", "f1_p1_random",
            "f1_p2_trained", "f1_p2_random", "seconds")
    shown = metrics.get("summary") or {k: metrics[k] for k in keys if k in metrics}
    print(json.dumps(shown, indent=2))
    print(f"report: {config.run_dir}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
