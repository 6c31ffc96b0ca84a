"""``ipcbench`` command line: run a chapter headless, print the environment record, and the RPC tools.

The RPC tools mirror the source's workflow (chapter 2): ``rpc-serve`` starts the
"GPU" server, ``rpc-run`` runs the "TEE" client and writes the per-call log,
``analyze-log`` prints the log's report (and exports CSV).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import profiles


def _cmd_run(args) -> int:
    from . import experiments, results
    from .cluster import ClusterError
    from .experiments._common import EnginesError
    from .lifecycle import ForeignRunError

    if args.plan:
        print(json.dumps(experiments.plan(args.chapter, args.profile), indent=2, sort_keys=True))
        return 0
    try:
        summary = experiments.drive(args.chapter, args.profile, args.engines, args.cluster_profile)
    except (EnginesError, ForeignRunError, ClusterError) as exc:
        print(f"ipcbench run: {exc}", file=sys.stderr)
        return 2
    print(f"ipcbench: {len(summary)} summary rows written to {results.chapter_dir(args.chapter)}")
    return 0


def results_tree_problem(path: str) -> str | None:
    """Return why ``path`` is not a results tree (missing, not a directory, no chapter's results in it), or None."""
    from pathlib import Path

    from . import results

    root = Path(path)
    if not root.exists():
        return f"the results tree {root} does not exist"
    if not root.is_dir():
        return f"the results tree {root} is not a directory"
    if not any((root / ch / "summary.csv").exists() for ch in results.CHAPTERS):
        return (f"{root} holds no chapter's results (no <chapter>/summary.csv for any of {', '.join(results.CHAPTERS)}): "
                "is it the results tree (for example data/results)?")
    return None


def _cmd_analyze(args) -> int:
    from . import claims, experiments, results

    try:
        n = experiments.reanalyze(args.chapter)
    except (results.ResultsError, claims.ClaimsError) as exc:
        print(f"ipcbench analyze: {exc}", file=sys.stderr)
        return 2
    print(f"ipcbench: {n} derived rows recomputed for {args.chapter} from its results on disk"
          + ("" if args.chapter == "machine_limits" else "; its claims re-judged"))
    return 0


def _cmd_ledger(args) -> int:
    import os

    from . import claims, results

    if args.results:
        problem = results_tree_problem(args.results)
        if problem:
            print(f"ipcbench ledger: {problem}", file=sys.stderr)
            return 2
        os.environ["IPCBENCH_RESULTS_DIR"] = args.results
    try:
        led = claims.judge_all(rules_file=args.rules)
    except (claims.ClaimsError, results.ResultsError) as exc:
        print(f"ipcbench ledger: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        led[claims.LEDGER_COLUMNS].to_csv(sys.stdout, index=False)
        return 0
    counts = claims.verdict_counts(led)
    import pandas as pd

    shown = pd.DataFrame({  # the numbers as the book writes them; the CSV keeps them whole
        "id": led["id"], "verdict": led["verdict"],
        "measured [95% CI] (n)": [claims.measured_text({**r, "measured_unit": r["unit"]}) for r in led.to_dict("records")],
        "claimed": led["claimed"].fillna(""), "chapter": led["chapter"],
    })  # fmt: skip
    if args.format == "markdown":
        print(claims.markdown_table(counts.reset_index()))
        print()
        print(claims.markdown_table(shown.assign(evidence=led["evidence"])))
        return 0
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 90, "display.width", 200):
        print(shown.to_string(index=False, justify="left"))
        print()
        print(counts.to_string())
    return 0


def _cmd_compare(args) -> int:
    from . import claims, compare, results

    try:
        c = compare.compare_trees(args.a, args.b, bootstrap=not args.no_bootstrap, rules_file=args.rules)
    except (compare.CompareError, results.ResultsError, claims.ClaimsError) as exc:
        print(f"ipcbench compare: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(compare.as_text(c, args.format))
    flips = c.flips()
    if args.fail_on_flip and not flips.empty:
        print(f"ipcbench compare: {len(flips)} claim(s) confirmed in one tree and refuted in the other: "
              f"{', '.join(flips['id'])}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _cmd_env(args) -> int:
    from .environment import capture_environment

    print(json.dumps(capture_environment(args.profile), indent=2, default=str))
    return 0


def _model_args(p) -> None:
    p.add_argument("--preset", default="qwen3-0.6b", help="model shapes: tiny or qwen3-0.6b (default)")
    p.add_argument("--layers", type=int, default=2, help="decoder layers (qwen3-0.6b has 28; default 2)")
    p.add_argument("--vocab", type=int, default=8192, help="vocabulary size (qwen3-0.6b has 151 936; default 8192)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (server and --check must agree)")


def _weights(args):
    from . import model

    cfg = model.preset(args.preset, layers=args.layers, vocab=args.vocab if args.preset != "tiny" else None)
    return model.init_weights(cfg, args.seed)


def _cmd_rpc_serve(args) -> int:
    import signal

    from .rpc import RpcServer

    weights = _weights(args)
    stop = {"now": False}

    def _on_signal(signum, frame):
        stop["now"] = True

    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with RpcServer(weights, args.endpoint or ["ipc:///tmp/ipcbench_rpc.ipc"],
                       max_request_bytes=args.max_request_bytes) as server:  # fmt: skip
            print(f"ipcbench rpc-serve: {weights.config.name} ({weights.config.layers} layers, vocab "
                  f"{weights.config.vocab}, {weights.nbytes() / 1e6:.0f} MB of weights) on "
                  f"{', '.join(server.endpoints)}", file=sys.stderr, flush=True)  # fmt: skip
            server.serve(stop=lambda: stop["now"], poll_ms=100)
            print(f"ipcbench rpc-serve: stopped after {server.served} requests ({server.errors} errors)",
                  file=sys.stderr)  # fmt: skip
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    return 0


def _cmd_rpc_run(args) -> int:
    import time

    import numpy as np

    from .rpc import RpcClient, RpcError, RpcTimeout, SplitDecoder

    try:
        with RpcClient(args.endpoint, args.codec, args.dtype, timeout_s=args.timeout, log=args.log) as client:
            dec = SplitDecoder(client, args.granularity)
            prompt = np.random.default_rng(args.seed + 1).integers(0, dec.cfg.vocab, args.prompt_tokens).tolist()
            t0 = time.perf_counter()
            tokens, logits = dec.generate(prompt, args.new_tokens)
            wall = time.perf_counter() - t0
            calls = len(client.records)
    except (RpcTimeout, RpcError) as exc:
        print(f"ipcbench rpc-run: {exc}", file=sys.stderr)
        return 1
    print(f"generated {tokens} in {wall * 1e3:.1f} ms ({calls} RPCs, {args.codec}, {args.granularity}, "
          f"{args.dtype}); per-call log: {args.log}")  # fmt: skip
    if args.check:
        from . import model

        ref_tokens, ref_logits = model.generate(_weights(args), prompt, args.new_tokens)
        err = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(logits, ref_logits, strict=False))
        same = tokens == ref_tokens
        print(f"reference check: tokens {'identical' if same else 'DIFFER'}, max logit error {err:.2e} of the largest")
        return 0 if same else 1
    return 0


def _cmd_analyze_log(args) -> int:
    from .rpc import analyze, perflog

    try:
        parsed = perflog.read(args.log)
    except FileNotFoundError as exc:
        print(f"ipcbench analyze-log: {exc}", file=sys.stderr)
        return 2
    print(analyze.analyze(parsed).text())
    if args.csv:
        perflog.to_csv(parsed, args.csv)
        print(f"CSV: {args.csv} ({len(parsed.calls)} calls)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``ipcbench`` command."""
    from . import experiments

    p = argparse.ArgumentParser(prog="ipcbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one chapter headless and write its results under data/results/")
    run.add_argument("chapter", choices=sorted(experiments.CHAPTERS), help="chapter id")
    run.add_argument("--profile", choices=profiles.PROFILES, default=None, help="default: IPCBENCH_PROFILE or standard")
    run.add_argument("--engines", type=int, default=None,
                     help="MPI engines to start (default: what the chapter needs in the profile; never fewer)")
    run.add_argument(
        "--cluster-profile",
        default=None,
        help="connect to this running ipyparallel profile instead of starting engines (or IPCBENCH_CLUSTER_PROFILE)",
    )
    run.add_argument("--plan", action="store_true",
                     help="print what the run would measure (profile, engines, the sweep's parameters) as JSON; run nothing")
    run.set_defaults(func=_cmd_run)
    ana = sub.add_parser("analyze", help="recompute a chapter's derived rows and verdicts from its results on disk")
    ana.add_argument("chapter", choices=sorted(experiments.CHAPTERS), help="chapter id")
    ana.set_defaults(func=_cmd_analyze)
    led = sub.add_parser("ledger", help="judge every claim from the results on disk (nothing is re-run) and print the ledger")
    led.add_argument("--results", default=None, help="results tree (default: IPCBENCH_RESULTS_DIR or data/results)")
    led.add_argument("--rules", default=None, help="claim rules file (default: data/seeds/claim_rules.yaml)")
    led.add_argument("--format", choices=("table", "csv", "markdown"), default="table",
                     help="csv: one row per claim, no counts (parses as one table)")
    led.set_defaults(func=_cmd_ledger)
    cmp_ = sub.add_parser("compare", help="set two results trees side by side: rows, claims, environments")
    cmp_.add_argument("a", help="results tree A (e.g. data/reference/<machine> or another build's data/results)")
    cmp_.add_argument("b", help="results tree B")
    cmp_.add_argument("--format", choices=("table", "csv", "markdown"), default="table",
                      help="csv: the row table alone (every row present in both trees)")
    cmp_.add_argument("--fail-on-flip", action="store_true",
                      help="exit 1 where a claim is confirmed in one tree and refuted in the other")
    cmp_.add_argument("--no-bootstrap", action="store_true",
                      help="ratio intervals from the rows' intervals only (fast), not from both trees' samples")
    cmp_.add_argument("--rules", default=None, help="claim rules file (default: data/seeds/claim_rules.yaml)")
    cmp_.set_defaults(func=_cmd_compare)
    env = sub.add_parser("env", help="print the environment record as JSON")
    env.add_argument("--profile", choices=profiles.PROFILES, default=None)
    env.set_defaults(func=_cmd_env)

    from .rpc import CODECS, GRANULARITIES, WIRE_DTYPES

    srv = sub.add_parser("rpc-serve", help="serve a model's linear layers over ZeroMQ until SIGINT/SIGTERM")
    srv.add_argument("--endpoint", action="append", help="ipc://PATH or tcp://HOST:PORT (repeatable)")
    srv.add_argument("--max-request-bytes", type=int, default=256 * 2**20, help="larger requests get an error reply")
    _model_args(srv)
    srv.set_defaults(func=_cmd_rpc_serve)
    cl = sub.add_parser("rpc-run", help="generate tokens with the split decoder against rpc-serve; write the per-call log")
    cl.add_argument("--endpoint", default="ipc:///tmp/ipcbench_rpc.ipc")
    cl.add_argument("--log", default="zmq_performance.log", help="per-call log (default: zmq_performance.log)")
    cl.add_argument("--codec", choices=CODECS, default="msgpack")
    cl.add_argument("--granularity", choices=GRANULARITIES, default="per_op")
    cl.add_argument("--dtype", choices=WIRE_DTYPES, default="float32", help="dtype of activations on the wire")
    cl.add_argument("--prompt-tokens", type=int, default=16)
    cl.add_argument("--new-tokens", type=int, default=8)
    cl.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for any reply")
    cl.add_argument("--check", action="store_true", help="compare with the single-process reference (same model args)")
    _model_args(cl)
    cl.set_defaults(func=_cmd_rpc_run)
    an = sub.add_parser("analyze-log", help="print the report of a per-call log")
    an.add_argument("log", help="the log file")
    an.add_argument("--csv", default=None, help="also export the calls as CSV here")
    an.set_defaults(func=_cmd_analyze_log)
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
