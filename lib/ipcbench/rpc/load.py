"""Several clients against one RPC server: each client its own process, all released together, round by round.

A GPU server serves many TEE clients; this measures what one server gives N of them. Each client process
connects, warms up, then for every round waits at a shared barrier, generates ``decode`` tokens (the
same greedy generation as :class:`~ipcbench.rpc.SplitDecoder`) and reports its start, end, tokens and its
calls' times. Per round: throughput = all clients' decode tokens / (last end - first start), on the one clock
the processes of a machine share, and the median call's time over all clients.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod

import numpy as np

from ..clock import now_ns


class LoadError(RuntimeError):
    """A client process failed or did not report in time; the message names it and says why."""


def _client(index: int, endpoint: str, codec: str, granularity: str, wire_dtype: str, prompt: list[int], decode: int,
            rounds: int, barrier, out, timeout_s: float) -> None:  # fmt: skip
    import os

    from threadpoolctl import threadpool_limits

    from .client import RpcClient
    from .split import SplitDecoder

    threadpool_limits(1)
    if hasattr(os, "sched_setaffinity"):  # the parent engine is pinned to one core: clients may use every core
        try:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        except OSError:
            pass
    try:
        with RpcClient(endpoint, codec, wire_dtype, timeout_s=timeout_s) as client:
            dec = SplitDecoder(client, granularity)
            dec.generate(prompt, 2)  # warm-up: this session's first calls, buffers, caches
            for rnd in range(rounds):
                client.records.clear()
                dec.steps.clear()
                barrier.wait(timeout=timeout_s)
                t0 = now_ns()
                tokens, _ = dec.generate(prompt, decode)
                t1 = now_ns()
                calls = [r.total_s for r in client.records if r.step >= 1]  # decode steps only
                out.put(("ok", index, rnd, t0, t1, len(tokens) - 1, calls))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises with it
        out.put(("error", index, f"{type(exc).__name__}: {exc}"))
        barrier.abort()


def run_clients(endpoint: str, n_clients: int, codec: str, granularity: str, wire_dtype: str, prompt: list[int],
                decode: int, rounds: int, timeout_s: float = 120.0) -> list[dict]:  # fmt: skip
    """Run ``n_clients`` client processes for ``rounds`` rounds; return one row per round (throughput, calls)."""
    ctx = mp.get_context("spawn")  # a clean interpreter per client (no MPI state of the parent's engine)
    barrier = ctx.Barrier(n_clients)
    out = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(i, endpoint, codec, granularity, wire_dtype, prompt, decode, rounds,
                                                barrier, out, timeout_s), daemon=True)
             for i in range(n_clients)]  # fmt: skip
    for p in procs:
        p.start()
    got: dict[int, list] = {}
    try:
        for _ in range(n_clients * rounds):
            try:
                msg = out.get(timeout=timeout_s)
            except queue_mod.Empty:
                dead = [i for i, p in enumerate(procs) if not p.is_alive()]
                raise LoadError(f"no report from the {n_clients} clients within {timeout_s:g} s "
                                f"(client processes that died: {dead or 'none'})") from None  # fmt: skip
            if msg[0] == "error":
                raise LoadError(f"client {msg[1]} of {n_clients} failed: {msg[2]}")
            got.setdefault(msg[2], []).append(msg)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    rows = []
    for rnd in sorted(got):
        msgs = got[rnd]
        start, end = min(m[3] for m in msgs), max(m[4] for m in msgs)
        calls = np.concatenate([np.asarray(m[6]) for m in msgs])
        rows.append({"round": rnd, "clients": n_clients, "tokens": sum(m[5] for m in msgs),
                     "wall_s": (end - start) * 1e-9, "throughput": sum(m[5] for m in msgs) / ((end - start) * 1e-9),
                     "call_median_s": float(np.median(calls)), "call_p99_s": float(np.percentile(calls, 99))})  # fmt: skip
    return rows
