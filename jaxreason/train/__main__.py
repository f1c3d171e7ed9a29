"""``python -m jaxreason.train --config configs/X.yaml [--section.key=value ...]``

Thin command line over :func:`jaxreason.train.loop.main`. Multi-host runs call
``jax.distributed.initialize`` first: pass ``--coordinator HOST:PORT --num-processes N
--process-id I`` on each host, or ``--distributed auto`` under a cluster manager JAX detects
(SLURM, Open MPI, Kubernetes/GKE).
"""

from __future__ import annotations

import argparse
import json
import sys


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m jaxreason.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file (see configs/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in trainer.run_dir from its newest good checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in trainer.run_dir (deletes its checkpoints, "
                             "metrics.jsonl, final_metrics.json, config.yaml, curves.png)")
    parser.add_argument("--distributed", choices=("off", "auto"), default="off")
    parser.add_argument("--coordinator", help="HOST:PORT of process 0 for multi-host runs")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    return parser.parse_known_args(argv)


def init_distributed(args) -> None:
    import jax  # jax.distributed must start before any other JAX work of this process

    if args.coordinator:
        if args.num_processes is None or args.process_id is None:
            raise SystemExit("--coordinator needs --num-processes and --process-id")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed == "auto":
        jax.distributed.initialize()


def cli(argv=None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    # the package is imported after parsing (so --help answers at once) and the training
    # loop after jax.distributed.initialize, which must come before any other JAX work
    from jaxreason.config_io import ConfigError
    from jaxreason.train.config import load_train_config

    if args.resume:
        overrides = [*overrides, "--checkpoint.resume=true"]
    if args.overwrite:
        overrides = [*overrides, "--trainer.overwrite=true"]
    try:
        config = load_train_config(args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    init_distributed(args)
    from jaxreason.data import DataError
    from jaxreason.train.checkpoint import CheckpointUnusable
    from jaxreason.train.loop import main

    try:
        result = main(config)
    except (ConfigError, DataError, CheckpointUnusable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
