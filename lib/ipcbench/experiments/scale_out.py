"""Chapter 6, "Beyond one machine": the book's experiments across emulated hosts, and its models tested there.

The hosts are network namespaces on this machine (:mod:`ipcbench.hosts`), one MPI engine per host, started by
ipyparallel through ``mpiexec`` with a launcher that enters each host's namespace; the controller listens on the
hosts' bridge, as on a real cluster. MPICH moves the bytes over TCP on the emulated links (its shared-memory
transports are switched off), which the interface counters confirm for every experiment. The links are re-shaped
between link models while the engines stay up. Everything runs on this machine's cores, so the chapter tests the
communication models, not how compute scales.

Per link model (``link`` column; ``hosts`` = hosts the run spans):
- ``link_probe``: one-byte TCP round trips and a bulk TCP transfer with plain sockets (the link as it is), for every
  link model first; the probes decide which link models the experiments below sweep (:func:`links_to_sweep`: not
  one faster than a link the machine already could not reach);
- ``pingpong``: chapter 0's MPI buffer ping-pong between two hosts, and its alpha-beta fit (``alpha_beta``);
- ``collective``: chapter 5's Allgather and Allreduce across 2 (and 4) hosts;
- ``mlp``: chapter 5's S1/S2/S3 MLP at TP = 2 (and 4) across as many hosts (prefill shape);
- ``broadcast``: chapter 3's old path, the source's change and its best alternative, one request at a time across 2
  (and 4) hosts;
- ``rpc``: chapter 2's split-inference RPC with the client on one host and the server on another over ``tcp://``;
- ``fs_transfer``: chapter 1's channels that can cross a host (ZeroMQ PUSH over ``tcp://``, MPI ``bcast`` and
  ``Bcast``), the writer on h0: the 10 000 records and raw arrays of chapter 1's sizes, on the 1GbE link model.

Projections (analysis, from results on disk): the ring model with this link's own ping-pong fit, and with chapter 5's
stated network parameters (alpha = 25 µs, beta = 0.9 x the configured rate), against the measured collectives and the
MLP's communication; RPC tokens/s projected to added link latency from the measured calls per token.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd

from .. import claims, profiles, results
from .. import hosts as hostslib
from .. import tensor_parallel as tp
from ..measure import fit_alpha_beta, summarize
from ._common import progress, run_meta, run_point

CHAPTER = "scale_out"
KiB, MiB = 2**10, 2**20
STATED_ALPHA_S = 25e-6
"""Chapter 5's stated TCP per-message latency (its "25 GbE (TCP)" network), used with each shaped link's rate."""
STATED_EFFICIENCY = 0.9
"""Chapter 5's stated share of a link's rate that TCP delivers."""
MODEL_TOLERANCE = 0.25
"""A projection within this relative error of the measured time "holds" (the book's threshold)."""
RPC_CONFIGS = {
    # name: (codec, granularity, wire dtype, what it is) -- the ladder's rungs that can cross hosts (no shared memory)
    "baseline": ("msgpack", "per_op", "float32", "the source's set-up over tcp://: msgpack + tobytes, 6 RPCs/layer"),
    "fused": ("msgpack", "fused", "float32", "1 fused RPC per layer, msgpack"),
    "best": ("multipart", "fused", "float16", "1 fused RPC per layer, zero-copy multipart frames, float16 on the wire"),
}
REACHED_FRACTION = 0.8
"""A shaped link whose TCP probe carries at least this share of its configured rate is shaped by ``tbf``; below it,
the machine (copies on its own cores) is the limit, not the link model."""
ADDED_LATENCY_S = [0.0, 50e-6, 0.5e-3, 5e-3, 25e-3]
"""One-way latencies added to the link in the RPC projection: none, a rack, a campus, a region, a continent."""


def parameters(profile: str | None = None) -> dict:
    """Return a profile's sweep: hosts, link models, message sizes, MLP shape, RPC model cut."""
    name = profiles.profile_name(profile)
    base = {
        "hosts": 2, "links": ["1GbE"],
        "pingpong_sizes": [8, 64 * KiB, 256 * KiB, 1 * MiB],  # (two sizes from 256 KiB up: the two-regime fit)
        "collective_sizes": [8, 64 * KiB, 1 * MiB],
        "collective_ranks": [2], "mlp_ranks": [2],
        "mlp": {"t": 128, "h": 1024, "i": 2048}, "strategies": list(tp.STRATEGIES),
        "probe_rounds": 200, "probe_bytes": 32 * MiB,
        # chapter 3: the old path (raw_bcast), the source's change (object_bcast) and the best of its alternatives
        "bcast_strategies": ["raw_bcast", "object_bcast", "hashes_xxh3_oob"], "bcast_class": ["large_image", 2_000_000],
        "bcast_ranks": [2], "pool_bytes": 32_000_000, "seed": 3,
        "rpc": {"preset": "qwen3-0.6b", "seed": 0, "layers": 2, "vocab": 8192, "prompt": 16, "decode": 8},
        "rpc_rounds": 3,
        # chapter 1's channels that cross a host (ZeroMQ over tcp://, MPI), on the 1GbE link model: the 10 000 records
        # (pickle 5; with 3 readers too where 4 hosts run) and raw arrays, rounds of 2 messages in a rotated order
        "fs_link": "1GbE", "fs_array_sizes": [64, 64 * KiB, 1 * MiB, 16 * MiB], "fs_records": 10_000, "fs_rounds": 3,
        # a link model faster than a slower one this machine already could not reach is probed, not swept: its
        # sweeps would measure the same machine ceiling again (None: sweep every link model)
        "unreachable_swept": 1,
    }  # fmt: skip
    if name == "quick":
        return base
    if name == "standard":
        return {**base, "hosts": 4, "links": ["unshaped", "25GbE", "10GbE", "1GbE"],
                "pingpong_sizes": [8, 1 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB],
                "collective_sizes": [8, 64 * KiB, 1 * MiB, 4 * MiB],
                "collective_ranks": [2, 4], "bcast_ranks": [2, 4], "mlp_ranks": [2, 4],
                "probe_bytes": 64 * MiB,
                # chapter 2's model cut and prompt (the same calls per token), a shorter generation
                "rpc": {**base["rpc"], "layers": 4, "vocab": 16384, "prompt": 16, "decode": 8},
                "rpc_rounds": 6,
                # a shaped link this machine cannot fill is probed (its probe shows the ceiling); the full profile
                # sweeps one such link too
                "unreachable_swept": 0}  # fmt: skip
    return {**base, "hosts": 4, "links": ["unshaped", "25GbE", "10GbE", "1GbE"],
            "pingpong_sizes": [8 * 4**k for k in range(12)], "collective_sizes": [8 * 8**k for k in range(8)],
            "collective_ranks": [2, 4], "bcast_ranks": [2, 4], "mlp_ranks": [2, 4], "probe_bytes": 256 * MiB,
            "rpc": {**base["rpc"], "layers": 8, "vocab": 32768, "prompt": 64, "decode": 32}, "rpc_rounds": 10,
            "unreachable_swept": None}  # fmt: skip


def engines(profile: str | None = None) -> int:
    """Return the MPI engines (one per emulated host) this chapter runs."""
    return int(parameters(profile)["hosts"])


@contextlib.contextmanager
def make_cluster(profile: str | None = None):
    """Yield the chapter's cluster: one MPI engine on each of the profile's emulated hosts (first link model); the
    driver uses it instead of a local cluster, and everything is torn down on the way out."""
    from ..cluster import Cluster

    problem = hostslib.requirements_problem()
    if problem:
        raise hostslib.HostsError(f"the scale-out chapter cannot run here: {problem}")
    params = parameters(profile)
    n = params["hosts"]
    with hostslib.EmulatedHosts(n, params["links"][0]) as h, Cluster(n=n, hosts=h, ranks_per_host=[1] * n) as cl:
        yield cl


# ------------------------------------------------------------------ SPMD: RPC across hosts


def rpc_round(comm, params: dict, address: str, rnd: int, check: bool = False) -> dict | None:
    """Rank 1 serves the split model on ``tcp://address`` (chapter 2's server); rank 0 runs every RPC configuration
    (rotated per round) as chapter 2 does. With ``check`` each configuration is checked against the reference first
    (nothing timed). Rank 0 returns per-step rows, per-call rows and the checks."""
    from ..measure import gc_paused
    from ..rpc import RpcClient, SplitDecoder
    from . import rpc_breakdown as rb

    def drive(endpoints):
        weights = rb._weights(params)
        prompt = rb.prompt_of(params)
        ref_tokens, ref_logits = rb._reference(params, weights)  # made once per engine
        names = list(RPC_CONFIGS)
        k = rnd % len(names)
        out = {"steps": [], "calls": [], "checks": []}
        with gc_paused():
            for name in names[k:] + names[:k]:
                codec, gran, wdt, _ = RPC_CONFIGS[name]
                with RpcClient(endpoints["zmq"], codec, wdt, timeout_s=120) as client:
                    dec = SplitDecoder(client, gran)
                    if check:
                        out["checks"].append(rb.check_config(dec, name, wdt, prompt, params["decode"], ref_tokens, ref_logits))
                        continue
                    s, c = rb.timed_generation(dec, client, prompt, params["decode"], ref_tokens,
                                               {"config": name, "round": rnd})  # fmt: skip
                    out["steps"] += s
                    out["calls"] += c
        return out

    return rb._with_server(comm, params, drive, bind=[f"tcp://{address}:*"])


# ------------------------------------------------------------------ the run


def _labels(link: str, hosts_n: int, **kw) -> dict:
    return {"chapter": CHAPTER, "link": link, "hosts": hosts_n, **kw}


def _stat(values, labels: dict, metric: str, unit: str, stop_reason: str = "") -> tuple[dict, list[dict]]:
    st = summarize(values, stop_reason)
    lab = {**labels, "metric": metric, "unit": unit}
    return results.summary_row(st, **lab), results.sample_rows(values, **lab)


def links_to_sweep(links: list[str], probed_Bps: dict[str, float], unreachable_swept: int | None = 1) -> dict[str, str]:
    """Return, per link model, why it is swept or only probed, from each link's probed TCP bandwidth (B/s).

    The unshaped link is always swept (the machine's own ceiling). Shaped links are taken from the slowest up: one
    whose probe reaches :data:`REACHED_FRACTION` of its configured rate is swept; of those that do not, the first
    ``unreachable_swept`` are swept (they show what the machine does through a shaped link) and every faster one is
    probed only: its rate is above one the machine already could not carry, so its sweeps would repeat the same
    ceiling. ``unreachable_swept=None`` sweeps every link model. A value starting with "swept" means swept.
    """
    out: dict[str, str] = {}
    shaped = sorted((k for k in links if hostslib.LINKS[k].rate_bps), key=lambda k: hostslib.LINKS[k].rate_bps)
    unreachable: list[str] = []  # the shaped links the machine could not fill, slowest first
    swept_unreachable = 0
    for k in shaped:
        ratio = probed_Bps[k] / (hostslib.LINKS[k].rate_bps / 8)
        if ratio >= REACHED_FRACTION:
            out[k] = f"swept: TCP reaches {ratio:.2f} x the configured rate"
            continue
        if unreachable_swept is None or swept_unreachable < unreachable_swept:
            out[k] = f"swept: TCP reaches {ratio:.2f} x the configured rate (the machine's limit)"
            swept_unreachable += 1
        elif unreachable:
            out[k] = (f"probed only: TCP reaches {ratio:.2f} x the configured rate, and {', '.join(unreachable)} "
                      "(slower) already could not be reached: its sweeps would measure the same machine ceiling")
        else:
            out[k] = (f"probed only: TCP reaches {ratio:.2f} x the configured rate: the machine cannot fill it, and "
                      "its sweeps would measure the machine's ceiling, which the probe and the unshaped link show")
        unreachable.append(k)
    for k in links:
        out.setdefault(k, "swept: unshaped (the machine's own ceiling)")
    return {k: out[k] for k in links}


def run(cluster, profile: str | None = None) -> pd.DataFrame:
    """Run chapter 6 on a cluster of one engine per emulated host (:func:`make_cluster`), write results, return the
    summary."""
    from . import machine_limits as ml
    from . import tensor_parallel as tpx

    h = getattr(cluster, "emulated", None)
    if h is None:
        raise ValueError("the scale-out chapter runs on engines on emulated hosts: give it the cluster of "
                         "`scale_out.make_cluster()` (as `ipcbench run scale_out` does)")  # fmt: skip
    name = profiles.profile_name(profile)
    rule = profiles.stopping_rule(name)
    params = parameters(name)
    if h.n < params["hosts"]:
        raise ValueError(f"the {name} profile runs on {params['hosts']} emulated hosts; the cluster has {h.n}")
    started = results.now_iso()
    rows: list[dict] = []
    samples: list[dict] = []
    probes, crossed, calls, checks = [], [], [], []
    cl = cluster
    setup = h.describe()
    checked = False
    # 1. every link itself, with plain sockets; then which link models the experiments sweep
    for link in progress(params["links"], "link probes"):
        h.set_link(link)
        model = hostslib.LINKS[link]
        pr = hostslib.probe_link(h, 0, 1, rounds=params["probe_rounds"], nbytes=params["probe_bytes"])
        lab = _labels(link, 2, experiment="link_probe", variant="tcp_socket", payload="bytes", ranks=2,
                      oversubscribed=False)  # fmt: skip
        r, s = _stat(np.asarray(pr["rtt_s"]) / 2, {**lab, "size_bytes": 1}, "one_way_latency", "s")
        rows.append(r)
        samples += s
        r, s = _stat(pr["bulk_Bps"], {**lab, "size_bytes": pr["bulk_bytes"]}, "bandwidth", "B/s")
        rows.append(r)
        samples += s
        probes.append({"link": link, "configured_Bps": (model.rate_bps or np.nan) / 8,
                       "tbf_burst_bytes": h.burst_bytes(), "gso_max_bytes": h.gso_bytes if model.rate_bps else None,
                       "bulk_bytes": pr["bulk_bytes"], "bandwidth_Bps": pr["bandwidth_Bps"],
                       "rtt_median_s": float(np.median(pr["rtt_s"])), "crossed_bytes": pr["crossed_bytes"]["h0"]})  # fmt: skip
    decision = links_to_sweep(params["links"], {p["link"]: p["bandwidth_Bps"] for p in probes}, params["unreachable_swept"])
    for p in probes:
        p["sweep"] = decision[p["link"]]
    swept = [k for k in params["links"] if decision[k].startswith("swept")]

    for link in progress(swept, "link models"):
        h.set_link(link)

        # 2. MPI ping-pong between two hosts
        before = h.counters()
        for size in progress(params["pingpong_sizes"], f"ping-pong ({link})"):
            pt = run_point(cl, ml.pingpong_point, "mpi_buffer", size, rule, timeout=600, ranks=2)[0]
            lab = _labels(link, 2, experiment="pingpong", variant="mpi_buffer", payload="numpy", ranks=2,
                          oversubscribed=cl.oversubscribed_at(2), size_bytes=size)  # fmt: skip
            r, s = _stat(pt["samples"], lab, "one_way_latency", "s", pt["stop_reason"])
            rows.append(r)
            samples += s
        after = h.counters()
        crossed.append({"link": link, "experiment": "pingpong",
                        **{f"{k}_tx_bytes": after[k]["tx_bytes"] - before[k]["tx_bytes"] for k in h.names}})  # fmt: skip
        _require_crossed(crossed[-1], ["h0", "h1"], sum(params["pingpong_sizes"]))

        # 3. collectives across 2 (and 4) hosts
        before = h.counters()
        pts = [(p, op, size) for p in params["collective_ranks"] for op in ("Allgather", "Allreduce")
               for size in params["collective_sizes"]]  # fmt: skip
        for p, op, size in progress(pts, f"collectives ({link})"):
            pt = run_point(cl, tpx.collective_point, op, size, rule, timeout=600, ranks=p)[0]
            lab = _labels(link, p, experiment="collective", variant=op, payload="float32", ranks=p,
                          oversubscribed=cl.oversubscribed_at(p), size_bytes=size)  # fmt: skip
            r, s = _stat(pt["total"], lab, "total", "s", pt.get("stop_reason", ""))
            rows.append(r)
            samples += s
        after = h.counters()
        crossed.append({"link": link, "experiment": "collective",
                        **{f"{k}_tx_bytes": after[k]["tx_bytes"] - before[k]["tx_bytes"] for k in h.names}})  # fmt: skip

        # 4. the MLP strategies at TP = 2 (and 4) across as many hosts
        m = params["mlp"]
        pts = [(p, st) for p in params["mlp_ranks"] for st in params["strategies"]]
        for p, strat in progress(pts, f"MLP ({link})"):
            pt = run_point(cl, tpx.mlp_point, strat, "numpy", m["t"], m["h"], m["i"], rule, timeout=600, ranks=p)[0]
            lab = _labels(link, p, experiment="mlp", variant=strat, payload="numpy", ranks=p,
                          oversubscribed=cl.oversubscribed_at(p), tokens=m["t"], hidden=m["h"],
                          intermediate=m["i"])  # fmt: skip
            for part in ("total", "compute", "communication", "in_collectives_min"):
                r, s = _stat(pt[part], lab, part, "s", pt.get("stop_reason", ""))
                rows.append(r)
                samples += s
            calls += [{"link": link, "strategy": strat, "ranks": p, **c} for c in pt["calls"]]

        # 5. chapter 3's broadcast strategies across 2 (and 4) hosts, one request at a time
        from . import broadcast as bc

        cls, fb = params["bcast_class"]
        pts = [(p, st) for p in params["bcast_ranks"] for st in params["bcast_strategies"]]
        for p, st in progress(pts, f"broadcast ({link})"):
            pt = run_point(cl, bc.latency_point, st, fb, rule, params["seed"], params["pool_bytes"], timeout=600,
                           ranks=p)[0]  # fmt: skip
            lab = _labels(link, p, experiment="broadcast", variant=st, payload="float32 features [patches, 1176]",
                          ranks=p, oversubscribed=cl.oversubscribed_at(p), size_bytes=fb, payload_class=cls)  # fmt: skip
            r, s = _stat(pt["samples"], lab, "end_to_end", "s", pt["stop_reason"])
            rows.append(r)
            samples += s
        run_point(cl, bc.drop_pools)

        # 6. split-inference RPC, client on h0, server on h1, over tcp://
        before = h.counters()
        if not checked:
            checks = run_point(cl, rpc_round, params["rpc"], h.addresses[1], 0, True, timeout=600, ranks=2)[0]["checks"]
            checked = True
        steps = []
        for rnd in progress(range(params["rpc_rounds"]), f"RPC ({link})"):
            out = run_point(cl, rpc_round, params["rpc"], h.addresses[1], rnd, timeout=600, ranks=2)[0]
            if out["server"]["errors"]:
                raise RuntimeError(f"the RPC server answered {out['server']['errors']} calls with errors")
            steps += out["steps"]
        after = h.counters()
        crossed.append({"link": link, "experiment": "rpc",
                        **{f"{k}_tx_bytes": after[k]["tx_bytes"] - before[k]["tx_bytes"] for k in h.names}})  # fmt: skip
        # (each direction carries part of the calls' bytes: an eighth of them is a bound a shortcut cannot reach)
        _require_crossed(crossed[-1], ["h0", "h1"], int(sum(st["wire_bytes"] for st in steps)) // 8)
        r, s = _rpc_rows(pd.DataFrame(steps), link)
        rows += r
        samples += s
        # 7. chapter 1's channels that cross a host, the writer on h0 (on one link model)
        if link == params["fs_link"]:
            before = h.counters()
            r, s = _fs_transfer(cl, params, h)
            rows += r
            samples += s
            after = h.counters()
            crossed.append({"link": link, "experiment": "fs_transfer",
                            **{f"{k}_tx_bytes": after[k]["tx_bytes"] - before[k]["tx_bytes"] for k in h.names}})  # fmt: skip
            _require_crossed(crossed[-1], ["h0"], params["fs_records"] * 40 + sum(params["fs_array_sizes"]))
    run_point(cl, release_rpc, ranks=2)

    summary = results.frame(rows)
    fit = fits(summary)
    meta = run_meta(name, cl, params, started, definitions={
        "link": "the link model every host's link was shaped to (tbf on both directions); host to host crosses two",
        "hosts": "emulated hosts (network namespaces) the measured run spans, one MPI rank each",
        "one_way_latency": "round trip / 2",
        "tokens_per_s": "decode tokens per second of the split model (client on h0, server on h1), per round",
        "calls_per_token": "RPCs per decode token",
    })  # fmt: skip
    meta["emulation"] = setup
    meta["links"] = {k: {**hostslib.LINKS[k].describe(), "sweep": decision[k]} for k in params["links"]}
    meta["netem"] = hostslib.has_netem()
    results.write(CHAPTER, summary, pd.DataFrame(samples), meta, extra={
        "alpha_beta": fit, "link_probe": pd.DataFrame(probes), "crossed": pd.DataFrame(crossed),
        "mlp_calls": pd.DataFrame(calls), "rpc_checks": pd.DataFrame(checks)})  # fmt: skip
    # source claims judged again on these runs (rules: ``across_hosts`` in the rules file; the same judge)
    results.write_table(CHAPTER, "claims_across_hosts", claims.judge_across_hosts())
    return summary


def fs_configs(params: dict, hosts_n: int) -> list[tuple]:
    """Return chapter 1's configurations across hosts: (backend, codec, kind, size, readers), ZeroMQ over tcp:// and
    MPI for the records (pickle 5) and the arrays (raw buffers; pickled for lowercase bcast, as in chapter 1)."""
    out = [(b, "pickle5", "records", params["fs_records"], 1) for b in ("zmq", "mpi_bcast", "mpi_Bcast")]
    if hosts_n >= 4:  # the source's topology: 1 writer + 3 readers
        out += [(b, "pickle5", "records", params["fs_records"], 3) for b in ("zmq", "mpi_bcast", "mpi_Bcast")]
    for size in params["fs_array_sizes"]:
        out += [("zmq", "raw", "array", size, 1), ("mpi_Bcast", "raw", "array", size, 1),
                ("mpi_bcast", "pickle5", "array", size, 1)]  # fmt: skip
    return out


def _fs_transfer(cl, params: dict, h) -> tuple[list[dict], list[dict]]:
    """Run chapter 1's transfer points across hosts: per round, every configuration once in a rotated order (two
    messages each, one warm-up); return summary and sample rows (end to end and transfer per message, the slowest
    reader). One-way times are read on one clock, as chapter 1 reads them: the emulated hosts share this machine's."""
    from . import fair_serialization as fs
    from ._common import per_message, round_order

    cfgs = fs_configs(params, h.n)
    got: dict[tuple, list] = {c: [] for c in cfgs}
    link = params["fs_link"]
    for rnd in progress(range(params["fs_rounds"]), f"chapter 1's channels ({link})"):
        for i in round_order(len(cfgs), rnd):
            backend, codec, kind, size, readers = cfgs[i]
            opts = {"transport": "tcp", "address": h.addresses[0]} if backend == "zmq" else None
            out = run_point(cl, fs.transfer_point, backend, codec, kind, size, 2, 1, opts, ranks=1 + readers,
                            timeout=600)[0]  # fmt: skip
            df = pd.DataFrame(out["per_reader"]).groupby("message")[["end_to_end", "transfer"]].max()
            got[cfgs[i]].append((rnd, df, out["nbytes"]))
    rows, samples = [], []
    for (backend, codec, kind, size, readers), per in got.items():
        lab = _labels(link, 1 + readers, experiment="fs_transfer", variant=backend, payload=f"{kind}:{codec}",
                      ranks=1 + readers, oversubscribed=cl.oversubscribed_at(1 + readers), size_bytes=per[0][2],
                      kind=kind, codec=codec, readers=readers, transport="tcp" if backend == "zmq" else "mpi",
                      n_records=size if kind == "records" else None, array_bytes=size if kind == "array" else None)  # fmt: skip
        for metric in ("end_to_end", "transfer"):
            r, s = _stat(per_message([(rnd, df[metric].to_numpy()) for rnd, df, _ in per]), lab, metric, "s",
                         f"fixed: {2 * len(per)} messages in {len(per)} rounds")  # fmt: skip
            rows.append(r)
            samples += s
    return rows, samples


def _require_crossed(row: dict, names: list[str], at_least: int) -> None:
    """Raise unless each of ``names`` sent ``at_least`` bytes on its emulated link in the experiment of ``row`` (a run
    whose bytes took a shortcut, e.g. MPICH through shared memory, must not be reported as crossing a network)."""
    short = {n: row[f"{n}_tx_bytes"] for n in names if row[f"{n}_tx_bytes"] < at_least}
    if short:
        raise RuntimeError(f"{row['experiment']} on {row['link']}: hosts {sorted(short)} sent only {short} bytes on their "
                           f"emulated links, fewer than the {at_least} B the experiment moved: the bytes did not cross")  # fmt: skip


def release_rpc(comm) -> None:
    """Drop the RPC model's weights the engines cached."""
    from . import rpc_breakdown as rb

    rb.release(comm)


def _rpc_rows(steps: pd.DataFrame, link: str) -> tuple[list[dict], list[dict]]:
    """Per configuration, one sample per round: decode tokens/s, calls and bytes per token, overhead per token."""
    rows, samples = [], []
    dec = steps[steps["phase"] == "decode"]
    if not dec["tokens_identical"].all():
        bad = sorted(set(dec.loc[~dec["tokens_identical"], "config"]))
        raise AssertionError(f"RPC configurations {bad} generated other tokens than the reference across hosts")
    for conf, sub in dec.groupby("config", sort=False):
        per_round = sub.groupby("round").agg(token=("token", "mean"), rpcs=("rpcs", "mean"), bytes=("bytes", "mean"),
                                             overhead=("overhead", "mean"))  # fmt: skip
        lab = _labels(link, 2, experiment="rpc", variant=conf, payload=RPC_CONFIGS[conf][2], ranks=2,
                      oversubscribed=False)  # fmt: skip
        for metric, unit, vals in (("tokens_per_s", "1/s", 1.0 / per_round["token"]),
                                   ("token", "s", per_round["token"]),
                                   ("overhead", "s", per_round["overhead"]),
                                   ("calls_per_token", "1", per_round["rpcs"]),
                                   ("bytes_per_token", "B", per_round["bytes"])):  # fmt: skip
            r, s = _stat(vals.to_numpy(), lab, metric, unit)
            rows.append(r)
            samples += s
    return rows, samples


# ------------------------------------------------------------------ analysis


LARGE_FROM = 256 * KiB
"""The two-regime fit takes beta from ping-pong sizes of this many bytes and more (four token buckets and up)."""


def fits(summary: pd.DataFrame) -> pd.DataFrame:
    """Return per link the alpha-beta fit of the two-host MPI ping-pong, beside the link's configured rate.

    ``alpha_s``/``beta_Bps``: chapter 0's fit (every size, relative weights). ``alpha_small_s``/``beta_large_Bps``: the
    two-regime fit, alpha the smallest message's one-way time and beta fitted on sizes >= :data:`LARGE_FROM` only,
    where a shaped link's token bucket no longer carries a noticeable share of the message.
    """
    out = []
    pp = summary.query("experiment == 'pingpong' and metric == 'one_way_latency'")
    for link, sub in pp.groupby("link", sort=False):
        sub = sub.sort_values("size_bytes")
        alpha, beta = fit_alpha_beta(sub["size_bytes"], sub["median"])
        large = sub[sub["size_bytes"] >= LARGE_FROM]
        beta_large = fit_alpha_beta(large["size_bytes"], large["median"])[1] if len(large) >= 2 else np.nan
        rate = hostslib.LINKS[link].rate_bps if link in hostslib.LINKS else None
        out.append({"link": link, "alpha_s": alpha, "beta_Bps": beta,
                    "alpha_small_s": float(sub["median"].iloc[0]), "beta_large_Bps": beta_large,
                    "configured_Bps": rate / 8 if rate else np.nan,
                    "beta_over_configured": beta / (rate / 8) if rate else np.nan,
                    "beta_large_over_configured": beta_large / (rate / 8) if rate else np.nan, "sizes": len(sub)})  # fmt: skip
    return pd.DataFrame(out)


def _link_params(fit: pd.DataFrame, link: str) -> dict[str, tuple[float, float] | None]:
    """Return the (alpha, beta) pairs a projection for ``link`` uses: this link's ping-pong fit (chapter 0's way and
    two-regime), chapter 5's stated parameters with the link's rate."""
    f = fit.set_index("link").loc[link]
    rate = hostslib.LINKS[link].rate_bps if link in hostslib.LINKS else None
    two = (float(f["alpha_small_s"]), float(f["beta_large_Bps"])) if f["beta_large_Bps"] == f["beta_large_Bps"] else None
    return {"ping-pong fit": (float(f["alpha_s"]), float(f["beta_Bps"])), "two-regime fit": two,
            "stated (chapter 5)": (STATED_ALPHA_S, STATED_EFFICIENCY * rate / 8) if rate else None}  # fmt: skip


def projection_errors(summary: pd.DataFrame, calls: pd.DataFrame) -> pd.DataFrame:
    """Return the ring model's projection against every measured collective and MLP communication time, per link.

    Both are out of sample: the ping-pong fit never saw a collective. The MLP is compared on the time the
    last-arriving rank spent in its collectives (``in_collectives_min``), as in chapter 5.
    """
    fit = fits(summary)
    out = []
    for link in fit["link"]:
        params = _link_params(fit, link)
        coll = summary.query("experiment == 'collective' and metric == 'total' and link == @link")
        for r in coll.itertuples():
            for src, ab in params.items():
                if ab is None:
                    continue
                pred = tp.ring_time(r.variant, r.size_bytes, int(r.ranks), *ab)
                out.append({"link": link, "what": f"{r.variant} {int(r.ranks)} hosts", "size_bytes": r.size_bytes,
                            "model": src, "measured_s": r.median, "ci_low": r.ci_low, "ci_high": r.ci_high,
                            "predicted_s": pred})  # fmt: skip
        mlp = summary.query("experiment == 'mlp' and metric == 'in_collectives_min' and link == @link")
        for r in mlp.itertuples():
            p = int(r.ranks)
            c = calls.query("link == @link and strategy == @r.variant") if not calls.empty else calls
            if "ranks" in c:
                c = c[c["ranks"] == p]
            for src, ab in params.items():
                if ab is None or c.empty:
                    continue
                pred = sum(tp.ring_time(op, nb, p, *ab) for op, nb in zip(c["op"], c["result_bytes"], strict=True))
                out.append({"link": link, "what": f"MLP {r.variant} ({p} hosts)", "size_bytes": int(c["result_bytes"].sum()),
                            "model": src, "measured_s": r.median, "ci_low": r.ci_low, "ci_high": r.ci_high,
                            "predicted_s": pred})  # fmt: skip
    df = pd.DataFrame(out)
    if df.empty:
        return df
    df["error"] = df["predicted_s"] / df["measured_s"] - 1
    # the measured interval decides whether a miss is a miss: within tolerance of some value inside it
    df["holds"] = (df["predicted_s"] >= df["ci_low"] * (1 - MODEL_TOLERANCE)) & (df["predicted_s"] <= df["ci_high"] * (1 + MODEL_TOLERANCE))
    return df


def broadcast_projection(summary: pd.DataFrame) -> pd.DataFrame:
    """Return chapter 3's projection from TP = 2 to more ranks, per link: the latency measured across 2 hosts plus the
    growth of the broadcast in the alpha-beta model (MPICH's algorithms, this link's ping-pong fit), against the
    latency measured across that many hosts. The broadcast's bytes are taken as the feature bytes (the pickled request
    is a few kB larger)."""
    from .broadcast import bcast_model

    fit = fits(summary).set_index("link")
    lat = summary.query("experiment == 'broadcast' and metric == 'end_to_end'")
    out = []
    for (link, st), sub in lat.groupby(["link", "variant"], sort=False):
        two = sub.query("ranks == 2")
        if two.empty or link not in fit.index:
            continue
        a, b = float(fit.loc[link, "alpha_s"]), float(fit.loc[link, "beta_Bps"])
        nb = float(two["size_bytes"].iloc[0])
        for r in sub.query("ranks > 2").itertuples():
            growth = bcast_model(nb, int(r.ranks), a, b) - bcast_model(nb, 2, a, b)
            pred = float(two["median"].iloc[0]) + growth
            out.append({"link": link, "variant": st, "ranks": int(r.ranks), "measured_2_s": float(two["median"].iloc[0]),
                        "growth_s": growth, "predicted_s": pred, "measured_s": r.median, "ci_low": r.ci_low,
                        "ci_high": r.ci_high, "oversubscribed": bool(r.oversubscribed),
                        "error": pred / r.median - 1,
                        "holds": (pred >= r.ci_low * (1 - MODEL_TOLERANCE)) and (pred <= r.ci_high * (1 + MODEL_TOLERANCE))})  # fmt: skip
    return pd.DataFrame(out)


def small_collective_growth(summary: pd.DataFrame, op: str = "Allgather", size: int = 8) -> dict | None:
    """Return how the smallest collective grows from 2 to 4 hosts: the measured ratio of medians (median over links)
    and the ring model's (alpha only: (p - 1) steps for an Allgather, 2 (p - 1) for an Allreduce); None without 4-host
    runs."""
    q = summary.query("experiment == 'collective' and variant == @op and size_bytes == @size and metric == 'total'")
    m = q.set_index(["link", "ranks"])["median"]
    ratios = [m[(k, 4)] / m[(k, 2)] for k in dict.fromkeys(q["link"]) if (k, 4) in m.index and (k, 2) in m.index]
    if not ratios:
        return None
    return {"measured": float(np.median(ratios)), "model": tp.ring_time(op, 0, 4, 1.0, 1.0) / tp.ring_time(op, 0, 2, 1.0, 1.0),
            "links": len(ratios)}  # fmt: skip


def rpc_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Return per link and RPC configuration: tokens/s [CI], calls and bytes per token, overhead per token."""
    q = summary.query("experiment == 'rpc'")
    out = []
    for (link, conf), sub in q.groupby(["link", "variant"], sort=False):
        m = sub.set_index("metric")
        out.append({"link": link, "config": conf, "tokens_per_s": m.loc["tokens_per_s", "median"],
                    "ci_low": m.loc["tokens_per_s", "ci_low"], "ci_high": m.loc["tokens_per_s", "ci_high"],
                    "n": int(m.loc["tokens_per_s", "n"]), "calls_per_token": m.loc["calls_per_token", "median"],
                    "bytes_per_token": m.loc["bytes_per_token", "median"], "token_s": m.loc["token", "median"],
                    "overhead_s": m.loc["overhead", "median"]})  # fmt: skip
    return pd.DataFrame(out)


def latency_projection(summary: pd.DataFrame, link: str | None = None, added=ADDED_LATENCY_S) -> pd.DataFrame:
    """Project decode tokens/s to links with added one-way latency: each call pays one more round trip (2 x added).

    A projection from the measured token time and calls per token of ``link`` (default: the fastest measured link),
    not a measurement: this kernel has no netem to add the latency.
    """
    tab = rpc_table(summary)
    if link is None:
        link = tab.groupby("link")["tokens_per_s"].max().idxmax()
    out = []
    for r in tab.query("link == @link").itertuples():
        for a in added:
            t = r.token_s + r.calls_per_token * 2 * a
            out.append({"link": link, "config": r.config, "added_one_way_s": a, "calls_per_token": r.calls_per_token,
                        "tokens_per_s": 1.0 / t})  # fmt: skip
    return pd.DataFrame(out)
