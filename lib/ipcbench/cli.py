"""``ipcbench`` command line: run a chapter headless, print the environment record."""

from __future__ import annotations

import argparse
import json
import sys

from . import profiles


def _cmd_run(args) -> int:
    from . import experiments
    from .cluster import Cluster

    module = experiments.get(args.chapter)
    profile = profiles.profile_name(args.profile)
    with Cluster(n=args.engines, profile=args.cluster_profile) as cluster:
        print(f"ipcbench: chapter {args.chapter}, profile {profile}, {cluster.describe()}", file=sys.stderr)
        summary = module.run(cluster, profile)
    from . import results

    print(f"ipcbench: {len(summary)} summary rows written to {results.chapter_dir(args.chapter)}")
    return 0


def _cmd_env(args) -> int:
    from .environment import capture_environment

    print(json.dumps(capture_environment(args.profile), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``ipcbench`` command."""
    from . import experiments

    p = argparse.ArgumentParser(prog="ipcbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one chapter headless and write its results under data/results/")
    run.add_argument("chapter", choices=sorted(experiments.CHAPTERS), help="chapter id")
    run.add_argument("--profile", choices=profiles.PROFILES, default=None, help="default: IPCBENCH_PROFILE or standard")
    run.add_argument("--engines", type=int, default=None, help="MPI engines to start (default: the usable cores)")
    run.add_argument(
        "--cluster-profile",
        default=None,
        help="connect to this running ipyparallel profile instead of starting engines (or IPCBENCH_CLUSTER_PROFILE)",
    )
    run.set_defaults(func=_cmd_run)
    env = sub.add_parser("env", help="print the environment record as JSON")
    env.add_argument("--profile", choices=profiles.PROFILES, default=None)
    env.set_defaults(func=_cmd_env)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ipcbench: interrupted; engines were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
