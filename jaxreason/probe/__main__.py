"""``python -m jaxreason.probe --config configs/mechprobe_kth.yaml [--key=value ...]``

Runs a study from a YAML config: the file's ``study:`` key picks the study from
``jaxreason.registry.STUDIES`` (which imports only that study's package), the study trains
the model it names (unless ``skip_training``), probes it, writes ``metrics.json``, PNG
figures and ``report.md`` to ``run_dir``, and the summary it declares is printed."""

from __future__ import annotations

import argparse
import json
import sys


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxreason.probe", description=__doc__)
    parser.add_argument("--config", required=True)
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    # imported here so that `--help` answers at once and the study registry loads on demand
    from jaxreason.config_io import ConfigError
    from jaxreason.studies.base import load_study

    try:
        config, study = load_study(args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    metrics = study.run(config)
    print(json.dumps(study.summary(metrics), indent=2))
    print(f"report: {config.run_dir}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
