"""Chapter 2, "ZeroMQ RPC breakdown": split inference with the linear work on an RPC server, step by step.

The server (:class:`ipcbench.rpc.RpcServer`) runs on MPI rank 1 and the client
(:class:`ipcbench.rpc.SplitDecoder`, the "TEE" side) on rank 0, one core each, BLAS
on one thread. The model has Qwen3-0.6B's shapes with fewer layers and a smaller
vocabulary (:func:`parameters` says how many). Each configuration of the
optimization ladder generates a prompt of P tokens and D new ones; before any
timing its teacher-forced logits are checked against the single-process reference.

Rounds: the first checks every configuration; each later round runs every
configuration once (a fresh client: Init, an untimed warm-up generation of 2
tokens, one timed generation), in an order rotated per round, so slow drift spreads over all of them. The check
round also warms both processes up for every configuration at full length: without it the first timed round runs
slower than the next ones, and with 6 samples a 95% interval's ends are the extreme samples.
The last round's timed generation of each configuration is also written as a
per-call log in the source's format.

Per decode token (a timed generation's decode steps, averaged per round, one sample
per round): ``token`` (wall), ``client_compute`` (wall minus time inside RPCs),
``server_compute`` (the server's own compute time), ``serialize`` and
``deserialize`` (client + server), ``transfer`` (Send + Recv minus the server's
whole handling: the bytes moving and the processes waking), ``other`` (the rest of
the calls' time), and ``overhead`` = token - client compute - server compute.
Per call: ``overhead_vs_bare_zmq`` = (call total - server compute) / the bare ZeroMQ
round trip of the same bytes from chapter 0 (one-way(sent) + one-way(received),
interpolated log-log between its measured sizes, same transport), and
``overhead_vs_bare_own`` = the same over the bare round trip of the call's own
transport measured in the same round by the server's process (a ZeroMQ ROUTER echo;
gRPC's ``Empty`` and ``Echo`` unary calls). Beside the book's RPC on ZeroMQ the ladder
runs what a deployment would pick instead: msgspec's msgpack (vLLM's codec) and gRPC
with protobuf messages (:mod:`ipcbench.rpc.grpc_transport`), unary and streaming.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile

import numpy as np
import pandas as pd

from .. import claims, model, profiles, results
from ..measure import Replicated, gc_paused, summarize
from ..rpc import RpcClient, RpcServer, SplitDecoder, analyze, perflog
from ._common import (
    REPLICATES,
    Replicates,
    machine_state,
    pick_row,
    progress,
    require_engines,
    run_meta,
    run_point,
    within_target,
)

CHAPTER = "rpc_breakdown"
F32_TOL = 1e-4  # max |logit - reference| / max |reference logit|, float32 on the wire
F16_TOL = 2e-2  # the same, float16 on the wire
BF16_TOL = 5e-2  # the same, bfloat16 on the wire (8 bits of mantissa; the page states the error the check measured)
TOLERANCE = {"float32": F32_TOL, "float16": F16_TOL, "bfloat16": BF16_TOL}
STOP_TAG, STATS_TAG = 4242, 4243
PHASES = ("client_compute", "server_compute", "serialize", "transfer", "deserialize", "other")
SPIN_S = 0.02  # busy-poll window of the last step (s): longer than any wait between calls here
# name: (transport, codec, granularity, wire dtype, what changes); the busy-poll step is BUSY_POLL
LADDER = {
    "baseline": ("ipc", "msgpack", "per_op", "float32", "the source's set-up: ipc, msgpack + tobytes, 6 RPCs/layer"),
    "tcp": ("tcp", "msgpack", "per_op", "float32", "baseline over tcp:// loopback instead of ipc://"),
    "multipart": ("ipc", "multipart", "per_op", "float32", "zero-copy multipart frames instead of msgpack"),
    "shm": ("ipc", "shm", "per_op", "float32", "shared-memory tensors, metadata over ZeroMQ"),
    "fused_msgpack": ("ipc", "msgpack", "fused", "float32", "baseline with 1 fused RPC per layer"),
    "fused": ("ipc", "shm", "fused", "float32", "shared memory + 1 fused RPC per layer"),
    "fused_multipart": ("ipc", "multipart", "fused", "float32", "multipart frames + 1 fused RPC per layer"),
    "float16": ("ipc", "shm", "fused", "float16", "shared memory + fused + float16 on the wire"),
    "bfloat16": ("ipc", "shm", "fused", "bfloat16", "shared memory + fused + bfloat16 on the wire (ml_dtypes)"),
    "busy_poll": ("ipc", "shm", "fused", "float32", "shared memory + fused, both sides busy-poll instead of sleeping"),
    # what a deployment would pick instead: msgspec's msgpack (vLLM's codec), and gRPC with protobuf messages
    "msgspec": ("ipc", "msgspec", "per_op", "float32", "msgspec's msgpack with out-of-band tensor frames (vLLM's codec)"),
    "fused_msgspec": ("ipc", "msgspec", "fused", "float32", "msgspec + 1 fused RPC per layer"),
    "grpc": ("grpc", "protobuf", "per_op", "float32", "gRPC unary calls, protobuf messages, Unix socket, 6 RPCs/layer"),
    "grpc_fused": ("grpc", "protobuf", "fused", "float32", "gRPC unary + 1 fused RPC per layer"),
    "grpc_stream_fused": ("grpc_stream", "protobuf", "fused", "float32",
                          "gRPC, one bidirectional stream per session + 1 fused RPC per layer"),
}
GRPC_TRANSPORTS = {"grpc": "unary", "grpc_stream": "stream"}
BARE_CALLS = 100
"""Bare round trips per size and transport in each timed round (a sample is their mean)."""
BUSY_POLL = {"busy_poll"}
BASELINE = "baseline"
TARGET_OVERHEAD_CUT = 5.0
TARGET_BARE_RATIO = 1.5


def parameters(profile: str | None = None) -> dict:
    """Return a profile's model cut and sweep."""
    name = profiles.profile_name(profile)
    base = {"preset": "qwen3-0.6b", "seed": 0, "ladder": list(LADDER), "replicates": REPLICATES}
    if name == "quick":
        return {**base, "layers": 2, "vocab": 8192, "prompt": 16, "decode": 8, "samples": 6, "clients": [1, 4]}
    if name == "standard":
        # the chapter shows decode calls and tokens; the prompt only starts each generation (a timed generation and its
        # warm-up each pay one prefill): 16 tokens, as chapter 6 and quick
        return {**base, "layers": 4, "vocab": 16384, "prompt": 16, "decode": 16, "samples": 6, "clients": [1, 2, 8]}
    return {**base, "layers": 8, "vocab": 32768, "prompt": 64, "decode": 32, "samples": 15, "clients": [1, 2, 4, 8, 16]}


def model_config(params: dict) -> model.Config:
    """Return the model configuration of a parameter set (Qwen3-0.6B's shapes, cut)."""
    return model.preset(params["preset"], layers=params["layers"], vocab=params["vocab"])


# ------------------------------------------------------------- SPMD: on the engines

_WEIGHTS: dict = {}


def _weights(params: dict) -> model.Weights:
    key = (params["preset"], params["layers"], params["vocab"], params["seed"])
    if key not in _WEIGHTS:
        _WEIGHTS.clear()
        _WEIGHTS[key] = model.init_weights(model_config(params), params["seed"])
    return _WEIGHTS[key]


def _reference(params: dict, weights: model.Weights) -> tuple[list[int], list[np.ndarray]]:
    """Return the single-process reference generation (tokens, logits), made once per engine like the weights."""
    key = ("reference", *(params[k] for k in ("preset", "layers", "vocab", "seed", "prompt", "decode")))
    if key not in _WEIGHTS:
        _WEIGHTS[key] = model.generate(weights, prompt_of(params), params["decode"])
    return _WEIGHTS[key]


def release(comm) -> None:
    """Drop the weights (and reference) an engine cached between rounds."""
    _WEIGHTS.clear()


def prompt_of(params: dict) -> list[int]:
    """Return the prompt's token ids (random, from the seed)."""
    return np.random.default_rng(params["seed"] + 1).integers(0, params["vocab"], params["prompt"]).tolist()


def _step_rows(dec: SplitDecoder, client: RpcClient, labels: dict) -> tuple[list[dict], list[dict]]:
    steps, calls = [], []
    for st in dec.steps:
        recs = client.records[st.first_call : st.first_call + st.calls]
        in_calls = sum(r.total_s for r in recs)
        client_phases = sum(r.serialize_s + r.send_s + r.recv_s + r.deserialize_s for r in recs)
        server_other = sum(r.server_total_s - r.server_deserialize_s - r.server_compute_s - r.server_serialize_s
                           for r in recs)  # fmt: skip
        row = {**labels, "step": st.index, "phase": st.phase, "tokens": st.tokens, "token": st.wall_s,
               "client_compute": st.wall_s - in_calls,
               "server_compute": sum(r.server_compute_s for r in recs),
               "serialize": sum(r.serialize_s + r.server_serialize_s for r in recs),
               "transfer": sum(r.send_s + r.recv_s - r.server_total_s for r in recs),
               "deserialize": sum(r.deserialize_s + r.server_deserialize_s for r in recs),
               "other": in_calls - client_phases + server_other,
               "rpcs": len(recs), "bytes": sum(r.sent_B + r.recv_B for r in recs),
               "wire_bytes": sum(r.wire_sent_B + r.wire_recv_B for r in recs)}  # fmt: skip
        row["overhead"] = row["token"] - row["client_compute"] - row["server_compute"]
        steps.append(row)
        calls += [{**labels, "phase": st.phase, **r.as_dict()} for r in recs]
    return steps, calls


def make_client(endpoints: dict, transport: str, codec: str, wire_dtype: str, shm_bytes: int, spin_s: float = 0.0,
                timeout_s: float = 120):  # fmt: skip
    """Return the client of a ladder configuration: ZeroMQ (:class:`RpcClient`) or gRPC (unary or stream)."""
    if transport in GRPC_TRANSPORTS:
        from ..rpc.grpc_transport import GrpcClient

        return GrpcClient(endpoints["grpc"], wire_dtype, mode=GRPC_TRANSPORTS[transport], timeout_s=timeout_s)
    return RpcClient(endpoints[transport], codec, wire_dtype, timeout_s=timeout_s, shm_bytes=shm_bytes, spin_s=spin_s)


def bare_sizes(cfg: model.Config) -> list[int]:
    """Return the payload sizes (B) of the bare round trips: empty, and a fused decode call's hidden state."""
    return [0, cfg.hidden * 4]


BARE_VARIANTS = {"ipc": "ZeroMQ ipc", "ipc_cold": "ZeroMQ ipc, after compute", "grpc": "gRPC unary"}
"""The bare round trips' names on the page: back to back (hot), and each after a decode call's compute (cold)."""
COLD_CONFIG = "fused"
"""The configuration whose per-call compute the cold bare round trip repeats: ZeroMQ ipc, one fused call per layer."""


def compute_between_calls(steps: list[dict], calls: list[dict], config: str = COLD_CONFIG) -> dict | None:
    """Return the compute on each side of one decode call of ``config`` in a round: the client's (its decode steps'
    compute per call) and the server's (its median fused layer's), in seconds; None where the round has none."""
    st = [s for s in steps if s["config"] == config and s["phase"] == "decode" and s["rpcs"]]
    cs = [c["server_compute_s"] for c in calls
          if c["config"] == config and c["phase"] == "decode" and c["method"] == "FusedLayer"]
    if not st or not cs:
        return None
    return {"client_compute_s": float(np.median([s["client_compute"] / s["rpcs"] for s in st])),
            "server_compute_s": float(np.median(cs))}  # fmt: skip


def busy_compute(seconds: float, work: np.ndarray, x: np.ndarray) -> float:
    """Multiply ``x`` by ``work`` until ``seconds`` have passed (none at 0); return the time it took."""
    from ..measure import now_s

    t0 = now_s()
    t = 0.0
    while t < seconds:
        x @ work
        t = now_s() - t0
    return t


def layer_matrix(cfg: model.Config) -> np.ndarray:
    """The server's work for :func:`busy_compute`: a matrix of one layer's up projection (hidden x intermediate,
    float32), streamed from memory as a layer's weights are."""
    return np.full((cfg.hidden, cfg.intermediate), 1e-3, np.float32)


def client_matrix(cfg: model.Config) -> np.ndarray:
    """The client's work for :func:`busy_compute`: a hidden x head_dim matrix (float32), a working set that stays in
    the caches as the client's attention over a short KV cache does."""
    return np.full((cfg.hidden, cfg.head_dim), 1e-3, np.float32)


_COLD = struct.Struct("<d")


def _bare_round_trips(endpoints: dict, rnd: int, sizes: list[int], cold: dict | None = None,
                      cfg: model.Config | None = None) -> list[dict]:  # fmt: skip
    """Time bare round trips of each transport's own (ZeroMQ DEALER to a ROUTER echo; gRPC Empty / Echo), one sample
    per transport and size, after as many untimed calls: ZeroMQ's median call of :data:`BARE_CALLS`, gRPC's mean.

    With ``cold`` (:func:`compute_between_calls`) ZeroMQ's round trip is also timed as a decode call meets it
    (``ipc_cold``): the client computes for the client's time per call before each send, and the echo computes for the
    server's time before it answers; the sample is the median call less the echo's compute, which it reports."""
    import zmq

    from ..measure import now_s
    from ..rpc.grpc_transport import GrpcClient

    rows = []
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoints["bare_ipc"])
    poller = zmq.Poller()  # one for every call, as the RPC client's
    poller.register(sock, zmq.POLLIN)
    try:
        with GrpcClient(endpoints["grpc"], timeout_s=30) as g:
            for n in sizes:
                payload = bytes(n)
                for timed in (False, True):
                    each = np.empty(BARE_CALLS)
                    for i in range(BARE_CALLS):
                        t0 = now_s()
                        sock.send(payload, copy=n < 65536)
                        if not poller.poll(30_000):
                            raise TimeoutError("the bare ZeroMQ echo did not answer within 30 s")
                        sock.recv(copy=False)
                        each[i] = now_s() - t0
                    if timed:  # the median call, as a call's overhead is the median call of its round
                        rows.append({"round": rnd, "transport": "ipc", "bytes": n, "round_trip": float(np.median(each))})
                g.bare(n, BARE_CALLS)
                rows.append({"round": rnd, "transport": "grpc", "bytes": n, "round_trip": g.bare(n, BARE_CALLS)})
            if cold is not None:
                rows += cold_round_trips(sock, rnd, sizes, cold, cfg)
    finally:
        sock.close(linger=0)
    return rows


def cold_round_trips(sock, rnd: int, sizes: list[int], cold: dict, cfg: model.Config, calls: int = BARE_CALLS) -> list[dict]:
    """Time ZeroMQ round trips through ``sock`` (a DEALER connected to the bare echo) as a decode call meets them: the
    client computes for ``cold["client_compute_s"]`` before each send, the echo for ``cold["server_compute_s"]``
    before it answers. One row per size (after an untimed pass of as many calls): the median call's round trip less
    the echo's compute, and the median computes as they ran."""
    import zmq

    from ..measure import now_s

    work = client_matrix(cfg)
    x = np.ones((1, cfg.hidden), np.float32)
    spec = _COLD.pack(cold["server_compute_s"])
    poller = zmq.Poller()  # one for every call, as the RPC client's
    poller.register(sock, zmq.POLLIN)
    rows = []
    for n in sizes:
        payload = bytes(n)
        for timed in (False, True):
            each, client_c, server_c = np.empty(calls), np.empty(calls), np.empty(calls)
            for i in range(calls):
                client_c[i] = busy_compute(cold["client_compute_s"], work, x)
                t0 = now_s()
                sock.send_multipart([spec, payload], copy=n < 65536)
                if not poller.poll(30_000):
                    raise TimeoutError("the bare ZeroMQ echo did not answer within 30 s")
                reply = sock.recv_multipart(copy=False)
                each[i] = now_s() - t0
                if len(reply) != 2 or len(reply[0]) != _COLD.size or len(reply[1]) != n:
                    raise AssertionError(f"the bare ZeroMQ echo answered {[len(f) for f in reply]} B to a cold call of {n} B")
                server_c[i] = _COLD.unpack(reply[0].bytes)[0]
            if timed:  # the median call, the echo's compute taken out of each
                rows.append({"round": rnd, "transport": "ipc_cold", "bytes": n,
                             "round_trip": float(np.median(each - server_c)),
                             "client_compute_s": float(np.median(client_c)),
                             "server_compute_s": float(np.median(server_c))})  # fmt: skip
    return rows


WARM_CODECS = ("msgpack", "msgspec", "shm")
WARM_CALLS = 200


def _warm_codec(cfg: model.Config, rnd: int) -> list[dict]:
    """Encode a fused decode call's request and decode a reply of the same shape :data:`WARM_CALLS` times back to back,
    in the client's process: the same Python as a call's client encode and decode, warm (nothing runs between two
    of them), to set beside what a call pays in the run, after the server's compute and the wait."""
    from ..measure import now_s
    from ..rpc import wire

    x = np.ones((1, cfg.hidden), np.float32)
    rows = []
    for codec in WARM_CODECS:
        arena = wire.Arena(size=1 << 20) if codec == "shm" else None
        try:
            header = {"method": "FusedLayer", "id": 1, "layer": 0, "start": 0}
            frames, _ = wire.encode(codec, header, {"x": x}, "float32", arena)
            frames = [bytes(memoryview(f)) for f in frames]
            for _pass in ("warm-up", "kept"):  # the second pass's times are the sample
                t0 = now_s()
                for _ in range(WARM_CALLS):
                    wire.encode(codec, header, {"x": x}, "float32", arena)
                t1 = now_s()
                for _ in range(WARM_CALLS):
                    wire.decode(wire.decode_header(frames[0]), frames[1:], arena, own=True)
                t2 = now_s()
            rows.append({"round": rnd, "codec": codec, "encode": (t1 - t0) / WARM_CALLS, "decode": (t2 - t1) / WARM_CALLS})
        finally:
            if arena is not None:
                arena.close()
    return rows


def check_config(dec: SplitDecoder, name: str, wire_dtype: str, prompt: list[int], decode: int, ref_tokens, ref_logits) -> dict:
    """Check a configuration against the reference (teacher-forced logits within its tolerance, and its greedy choice
    at every step); raise AssertionError when the logits differ; return the check's row. Nothing is timed.

    Teacher forcing runs generation's own steps (the prompt, then one token at a time) on the reference's tokens, so
    where its greedy choice is the reference's token at every step, a free generation feeds itself the same tokens
    and makes the same choices: ``tokens_identical`` without generating once more (every timed generation checks
    its tokens again)."""
    forced = dec.teacher_forced(prompt, ref_tokens)
    err = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(forced, ref_logits, strict=True))
    tol = TOLERANCE[wire_dtype]
    if not err <= tol:
        raise AssertionError(f"{name}: logits differ from the reference by {err:.2e} of the largest (> {tol:g})")
    choices = [int(np.argmax(f)) for f in forced][:decode]
    return {"config": name, "max_rel_logit_error": err, "tolerance": tol, "tokens_identical": choices == list(ref_tokens)}


def timed_generation(dec: SplitDecoder, client, prompt: list[int], decode: int, ref_tokens, labels: dict):
    """Warm up (2 tokens, untimed: first touch of buffers, arenas, caches), then time one generation of ``decode``
    tokens (never with the per-call log on); return its per-step and per-call rows with ``labels``."""
    dec.generate(prompt, 2)
    client.records.clear()
    dec.steps.clear()
    tokens, _ = dec.generate(prompt, decode)
    return _step_rows(dec, client, {**labels, "tokens_identical": tokens == ref_tokens})


def _drive(params: dict, weights: model.Weights, endpoints: dict, rnd: int, check: bool, logdir: str | None) -> dict:
    prompt = prompt_of(params)
    ref_tokens, ref_logits = _reference(params, weights)
    names = list(params["ladder"])
    k = rnd % len(names)
    order = names[k:] + names[:k]
    out = {"steps": [], "calls": [], "checks": [], "logs": {}, "ref_tokens": ref_tokens}
    arena = 8 * 2**20 + 16 * params["prompt"] * weights.config.intermediate
    for name in order:
        transport, codec, gran, wdt, _ = LADDER[name]
        spin = SPIN_S if name in BUSY_POLL else 0.0
        with make_client(endpoints, transport, codec, wdt, arena, spin) as client:
            dec = SplitDecoder(client, gran)
            if check:
                out["checks"].append(check_config(dec, name, wdt, prompt, params["decode"], ref_tokens, ref_logits))
                continue
            s, c = timed_generation(dec, client, prompt, params["decode"], ref_tokens, {"config": name, "round": rnd})
            out["steps"] += s
            out["calls"] += c
            if logdir is not None and transport not in GRPC_TRANSPORTS:  # the log and its report come from one more
                # generation, outside the timed ones (the log in the source's format is the ZeroMQ client's)
                client.start_log(os.path.join(logdir, f"{name}.log"))
                dec.generate(prompt, params["decode"])
                client.stop_log()
        if logdir is not None and transport not in GRPC_TRANSPORTS:
            with open(os.path.join(logdir, f"{name}.log"), encoding="utf-8") as f:
                out["logs"][name] = f.read()
    out["monitor"] = [] if check else _monitor_cost(params, endpoints, prompt, rnd, logdir_base=tempfile.gettempdir())
    cold = None if check else compute_between_calls(out["steps"], out["calls"])
    out["bare"] = [] if check else _bare_round_trips(endpoints, rnd, bare_sizes(weights.config), cold, weights.config)
    out["warm"] = [] if check else _warm_codec(weights.config, rnd)
    return out


MONITOR_MODES = {"off": None, "all calls": "all", "BatchLinear + Matmul": ("BatchLinear", "Matmul")}
"""The per-call log's modes whose cost is measured: none, every call, and the source's "only BatchLinear and Matmul"."""
MONITOR_CONFIG = BASELINE
"""The configuration the monitor's cost is measured on: the source's set-up (the most calls per token)."""


def _monitor_cost(params: dict, endpoints: dict, prompt: list[int], rnd: int, logdir_base: str) -> list[dict]:
    """Time one generation per log mode (rotated per round) with the baseline; return per-mode decode token times."""
    transport, codec, gran, wdt, _ = LADDER[MONITOR_CONFIG]
    modes = list(MONITOR_MODES)
    k = rnd % len(modes)
    rows = []
    logdir = tempfile.mkdtemp(prefix="ipcbench-rpclogs-", dir=logdir_base)
    try:
        for mode in modes[k:] + modes[:k]:
            with RpcClient(endpoints[transport], codec, wdt, timeout_s=120) as client:
                dec = SplitDecoder(client, gran)
                dec.generate(prompt, 2)
                dec.steps.clear()
                sel = MONITOR_MODES[mode]
                if sel is not None:
                    client.start_log(os.path.join(logdir, f"monitor-{rnd}.log"), None if sel == "all" else sel)
                dec.generate(prompt, params["decode"])
                client.stop_log()
                decode = [st.wall_s for st in dec.steps if st.phase == "decode"]
                rows.append({"mode": mode, "round": rnd, "token": float(np.mean(decode))})
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return rows


CLIENTS_CONFIG = "fused_msgpack"
"""The configuration several clients run against one server: fused layers, msgpack over ipc:// (no arenas to share)."""
CLIENTS_DECODE, CLIENTS_ROUNDS = 8, 6
"""Decode tokens per client and round, and rounds (6: the fewest with a 95% interval), of the several-clients runs."""


def clients_point(comm, params: dict, n_clients: int, rounds: int) -> dict | None:
    """Rank 1 serves; rank 0 runs ``n_clients`` client processes for ``rounds`` rounds; rank 0 returns the rows."""
    from ..rpc.load import run_clients

    def drive(endpoints):
        transport, codec, gran, wdt, _ = LADDER[CLIENTS_CONFIG]
        return {"rows": run_clients(endpoints[transport], n_clients, codec, gran, wdt, prompt_of(params),
                                    min(params["decode"], CLIENTS_DECODE), rounds)}  # fmt: skip

    return _with_server(comm, params, drive)


def ladder_round(comm, params: dict, rnd: int, check: bool = False, keep_logs: bool = False) -> dict | None:
    """One round of the ladder: rank 1 serves, rank 0 runs every configuration; rank 0 returns steps and calls."""

    def drive(endpoints):
        logdir = tempfile.mkdtemp(prefix="ipcbench-rpclogs-") if keep_logs else None
        try:
            with gc_paused():
                return _drive(params, _weights(params), endpoints, rnd, check, logdir)
        finally:
            if logdir is not None:
                shutil.rmtree(logdir, ignore_errors=True)

    return _with_server(comm, params, drive)


def _with_server(comm, params: dict, drive, bind: list[str] | None = None) -> dict | None:
    """Rank 1 serves the model until rank 0 has run ``drive(endpoints)``; rank 0 returns its result and the server's
    counts. ``bind``: serve only the ZeroMQ server, on these endpoints (``endpoints["zmq"]`` is the first one bound),
    e.g. a host's own address across emulated hosts; default: the ladder's ipc://, tcp:// loopback, gRPC and echo."""
    from threadpoolctl import threadpool_limits

    if comm.size < 2:
        raise ValueError("the RPC chapter needs 2 ranks: a server and a client")
    threadpool_limits(1)  # one BLAS thread per process: client and server have a core each
    weights = _weights(params)
    result = None
    if comm.rank == 1:
        from ..rpc.grpc_transport import GrpcServer

        tmpdir = tempfile.mkdtemp(prefix=f"ipcbench-zmq-{os.getpid()}-")  # the library's leftover check sees it
        server = gserver = echo = None
        try:
            server = RpcServer(weights, bind or [f"ipc://{tmpdir}/rpc.ipc", "tcp://127.0.0.1:*"])
            if bind is None:
                gserver = GrpcServer(weights, f"unix:{tmpdir}/grpc.sock")
                echo = _BareEcho(f"ipc://{tmpdir}/bare.ipc", weights.config)
        except Exception as exc:
            comm.bcast(f"the server could not bind: {exc}", root=1)
            for x in (server, gserver, echo):
                if x is not None:
                    x.close()
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        try:
            if bind is None:
                comm.bcast({"ipc": server.endpoints[0], "tcp": server.endpoints[1], "grpc": gserver.address,
                            "bare_ipc": echo.endpoint}, root=1)  # fmt: skip
            else:
                comm.bcast({"zmq": server.endpoints[0]}, root=1)
            with gc_paused():  # as in every chapter: no cyclic collection lands inside a timed call
                server.serve(stop=lambda: comm.Iprobe(source=0, tag=STOP_TAG), poll_ms=50)
            comm.recv(source=0, tag=STOP_TAG)
        finally:
            for x in (echo, gserver, server):
                if x is not None:
                    x.close()
            shutil.rmtree(tmpdir, ignore_errors=True)
        servers = [x for x in (server, gserver) if x is not None]
        comm.send({"served": sum(x.served for x in servers), "errors": sum(x.errors for x in servers)},
                  dest=0, tag=STATS_TAG)  # fmt: skip
    elif comm.rank == 0:
        endpoints = comm.bcast(None, root=1)
        if isinstance(endpoints, str):
            raise RuntimeError(endpoints)
        try:
            result = drive(endpoints)
        finally:
            comm.send(None, dest=1, tag=STOP_TAG)
        result["server"] = comm.recv(source=1, tag=STATS_TAG)
    else:
        comm.bcast(None, root=1)
    return result


class _BareEcho:
    """A ZeroMQ ROUTER on its own thread that sends every message straight back: the bare round trip of the RPC's own
    transport, served by the server's process (its poll, like the server's, sleeps in the kernel).

    A message of two frames (a float64 of seconds, the payload) is answered after computing that long on a layer-sized
    matrix (:func:`busy_compute`), with the compute's own time in place of the seconds."""

    def __init__(self, endpoint: str, cfg: model.Config | None = None):
        import threading

        import zmq

        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._work = layer_matrix(cfg) if cfg is not None else None
        self._x = np.ones((1, cfg.hidden), np.float32) if cfg is not None else None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="bare-zmq-echo", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import zmq

        poller = zmq.Poller()  # one for the loop, as the server's (Socket.poll builds a new Poller on every call)
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop:
            if poller.poll(50):
                frames = self.sock.recv_multipart(copy=False)
                if len(frames) == 3 and self._work is not None and len(frames[1]) == _COLD.size:
                    took = busy_compute(_COLD.unpack(frames[1].bytes)[0], self._work, self._x)
                    frames[1] = _COLD.pack(took)
                self.sock.send_multipart(frames, copy=False)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close(linger=0)


# ------------------------------------------------------------------- chapter 0


def bare_zmq(summary0: pd.DataFrame) -> dict:
    """Return {transport: (sizes B, one-way latency s)} of chapter 0's ZeroMQ ping-pong."""
    out = {}
    for transport, variant in (("ipc", "zmq_ipc"), ("tcp", "zmq_tcp")):
        d = summary0.query("experiment == 'pingpong' and metric == 'one_way_latency' and variant == @variant")
        if d.empty:
            raise results.ResultsError(f"chapter 0 has no {variant} ping-pong: run chapter 0 first")
        d = d.sort_values("size_bytes")
        out[transport] = (d["size_bytes"].to_numpy(float), d["median"].to_numpy(float))
    return out


def own_bare_s(bare: pd.DataFrame, transport: str, calls: pd.DataFrame, curves: dict) -> np.ndarray:
    """Return, per call, the bare round trip of its own transport in its own round: the mean of the bytes it sent and
    received, interpolated linearly between the bare sizes measured (clamped beyond them). tcp has no bare round trip
    in the round: chapter 0's curve."""
    if bare.empty or transport not in set(bare["transport"]):
        return bare_round_trip_s(curves, transport, calls["sent_B"], calls["recv_B"])
    b = bare[bare["transport"] == transport]
    mean_b = (calls["sent_B"].to_numpy(float) + calls["recv_B"].to_numpy(float)) / 2
    out = np.empty(len(calls))
    for i, (rnd, nb) in enumerate(zip(calls["round"].to_numpy(), mean_b, strict=True)):
        g = b[b["round"] == rnd].sort_values("bytes")
        out[i] = np.interp(nb, g["bytes"].to_numpy(float), g["round_trip"].to_numpy(float))
    return out


def bare_round_trip_s(curves: dict, transport: str, sent_B, recv_B) -> np.ndarray:
    """Return one-way(sent) + one-way(received) from chapter 0's curve (log-log interpolation, clamped at its ends)."""
    sizes, lat = curves[transport]
    lx, ly = np.log(sizes), np.log(lat)

    def one_way(b):
        return np.exp(np.interp(np.log(np.clip(np.asarray(b, float), sizes[0], sizes[-1])), lx, ly))

    return one_way(sent_B) + one_way(recv_B)


# ---------------------------------------------------------------------- driver


def _summ(values, labels: dict, metric: str, unit: str, rounds=None, replicate_of: dict | None = None,
          **extra) -> tuple[dict, list[dict]]:  # fmt: skip
    """Return the summary and sample rows of one value per round (``rounds``: their round numbers, labelled with the
    replicate each round ran in by ``replicate_of``)."""
    if rounds is not None and replicate_of:
        values = Replicated(np.asarray(values, dtype=float), [replicate_of.get(int(r), 0) for r in rounds])
    lab = {**labels, "metric": metric, "unit": unit}
    extra.setdefault("stop_reason", f"fixed: {len(values)} samples")  # the chapter's rule: a fixed count of rounds
    return results.summary_row(summarize(values), **lab, **extra), results.sample_rows(values, **lab)


def engines(profile: str | None = None) -> int:
    """Return the MPI engines this chapter needs: a client and a server."""
    return 2


def run(cluster, profile: str | None = None) -> pd.DataFrame:
    """Run chapter 2 on >= 2 engines (server on rank 1, client on rank 0); write its results; return the summary."""
    name = profiles.profile_name(profile)
    params = parameters(name)
    require_engines(cluster, engines(name), CHAPTER, "a server and a client")
    cluster.require_one_host("the ipc:// endpoint and the shared-memory arenas of the ladder")
    curves = bare_zmq(results.read("machine_limits").summary)  # chapter 0's bare ZeroMQ round trips (drive checked it ran)
    started = results.now_iso()
    machine_start = machine_state(cluster)  # CPU steal, load and two calibration kernels, again at the end
    checks, steps, calls, logs, served, monitor, clients, bare_rows, warm = [], [], [], {}, [], [], [], [], []
    # the timed rounds in replicates spread over the run, the last in fresh engines (client and server), each
    # replicate's first round after a check round that also warms both processes up (its times are not kept)
    plan = Replicates(cluster, params["replicates"])
    timed = list(range(1, params["samples"] + 1))
    chunks = [timed[r * len(timed) // plan.n:(r + 1) * len(timed) // plan.n] for r in range(plan.n)]
    round_rep: dict[int, int] = {}
    try:
        fresh_checks = 1 if plan.n > 1 and cluster.owned else 0
        bar = iter(progress(range(params["samples"] + 1 + fresh_checks), "RPC ladder: check, then timed rounds"))
        for rep in plan.passes():
            check_rounds = [0] if rep == 0 else ([-rep] if rep in plan.fresh else [])
            for rnd in check_rounds + chunks[rep]:
                next(bar, None)
                out = run_point(cluster, ladder_round, params, rnd, check=rnd <= 0, keep_logs=rnd == params["samples"],
                                ranks=2, timeout=900)[0]  # fmt: skip
                if rnd <= 0 and rnd != 0:  # a fresh replicate's warm-up check: its checks are kept, nothing timed
                    checks += out["checks"]
                    continue
                round_rep[rnd] = rep
                checks += out["checks"]
                steps += out["steps"]
                calls += out["calls"]
                monitor += out["monitor"]
                bare_rows += out["bare"]
                warm += out["warm"]
                logs.update(out["logs"])
                served.append(out["server"])
        for _ in bar:
            pass
        for n in progress(params["clients"], "several clients, one server"):
            out = run_point(cluster, clients_point, params, n, CLIENTS_ROUNDS, ranks=2, timeout=900)[0]
            clients += out["rows"]
    finally:
        try:  # best effort: after a failure the engines may have been restarted already
            cluster.run(release, ranks=2, timeout=60)
        except Exception:  # noqa: BLE001 - never mask the run's own error
            pass
    steps_df, calls_df, checks_df = pd.DataFrame(steps), pd.DataFrame(calls), pd.DataFrame(checks)
    bare_df = pd.DataFrame(bare_rows)
    cfg = model_config(params)
    payload = f"{cfg.name} shapes, {cfg.layers} layers, vocab {cfg.vocab}"
    base = {"chapter": CHAPTER, "payload": payload, "size_bytes": None, "ranks": 2, "oversubscribed": cluster.oversubscribed_at(2)}
    rows, samples = [], []
    for conf in params["ladder"]:
        transport, codec, gran, wdt, what = LADDER[conf]
        extra = {"transport": transport, "codec": codec, "granularity": gran, "wire_dtype": wdt, "change": what,
                 "prompt_tokens": params["prompt"], "decode_tokens": params["decode"]}  # fmt: skip
        d = steps_df[steps_df["config"] == conf]
        dec = d[d["phase"] == "decode"].groupby("round")
        per_round = dec[["token", *PHASES, "overhead", "rpcs", "bytes", "wire_bytes"]].mean()
        lab = {**base, "experiment": "per_token", "variant": conf}
        rr = {"rounds": per_round.index, "replicate_of": round_rep}
        for metric in ("token", *PHASES, "overhead"):
            r, s = _summ(per_round[metric].to_numpy(), lab, metric, "s", **rr, **extra)
            rows.append(r)
            samples += s
        for metric, unit in (("rpcs", "1"), ("bytes", "B"), ("wire_bytes", "B")):
            r, s = _summ(per_round[metric].to_numpy(), lab, metric + "_per_token", unit, **rr, **extra)
            rows.append(r)
            samples += s
        pre = d[d["phase"] == "prefill"]
        for metric in ("token", "overhead"):
            r, s = _summ(pre[metric].to_numpy(), {**base, "experiment": "prefill", "variant": conf},
                         "prompt" if metric == "token" else "overhead", "s", rounds=pre["round"], replicate_of=round_rep,
                         **extra)  # fmt: skip
            rows.append(r)
            samples += s
        c = calls_df[(calls_df["config"] == conf) & (calls_df["phase"] == "decode")]
        over = (c["total_s"] - c["server_compute_s"]).to_numpy()
        bare = bare_round_trip_s(curves, "ipc" if transport in GRPC_TRANSPORTS else transport, c["sent_B"], c["recv_B"])
        own = own_bare_s(bare_df, "grpc" if transport in GRPC_TRANSPORTS else transport, c, curves)
        per_call = pd.DataFrame({"round": c["round"].to_numpy(), "call_overhead": over, "bare_zmq_round_trip": bare,
                                 "overhead_vs_bare_zmq": over / bare, "bare_own_round_trip": own,
                                 "overhead_vs_bare_own": over / own})  # fmt: skip
        cold_metrics = ()
        if transport == "ipc" and not bare_df.empty and "ipc_cold" in set(bare_df["transport"]):
            cold = own_bare_s(bare_df, "ipc_cold", c, curves)
            per_call["bare_cold_round_trip"], per_call["overhead_vs_bare_cold"] = cold, over / cold
            cold_metrics = (("bare_cold_round_trip", "s"), ("overhead_vs_bare_cold", "x"))
        # one sample per round (its median call): the calls of one round share its conditions, so pooling them
        # would make an interval far narrower than the rounds justify
        per_round_call = per_call.groupby("round").median()
        lab = {**base, "experiment": "per_call", "variant": conf}
        for metric, unit in (("call_overhead", "s"), ("bare_zmq_round_trip", "s"), ("overhead_vs_bare_zmq", "x"),
                             ("bare_own_round_trip", "s"), ("overhead_vs_bare_own", "x"), *cold_metrics):  # fmt: skip
            r, s = _summ(per_round_call[metric].to_numpy(), lab, metric, unit, rounds=per_round_call.index,
                         replicate_of=round_rep, **extra, calls=len(per_call))  # fmt: skip
            rows.append(r)
            samples += s
    # the bare round trips of the RPC's own transports, measured in every timed round beside the ladder
    for (transport, n), g in bare_df.groupby(["transport", "bytes"]):
        lab = {**base, "experiment": "bare_round_trip", "variant": BARE_VARIANTS[transport], "size_bytes": int(n)}
        g = g.sort_values("round")
        extra = {}
        if transport == "ipc_cold":  # the compute each call sat between, as it ran (each round's median call, then over rounds)
            extra = {"client_compute_s": float(g["client_compute_s"].median()),
                     "server_compute_s": float(g["server_compute_s"].median()), "compute_of": COLD_CONFIG}  # fmt: skip
        r, s = _summ(g["round_trip"].to_numpy(), lab, "round_trip", "s", rounds=g["round"], replicate_of=round_rep,
                     transport=transport, calls=BARE_CALLS, **extra)  # fmt: skip
        rows.append(r)
        samples += s
    # waking up: the cold round trip less the hot one, paired by round (both ran in the same round, same echo)
    if not bare_df.empty and "ipc_cold" in set(bare_df["transport"]):
        hot = bare_df[bare_df["transport"] == "ipc"].set_index(["round", "bytes"])["round_trip"]
        cold = bare_df[bare_df["transport"] == "ipc_cold"].set_index(["round", "bytes"])["round_trip"]
        wake = (cold - hot).dropna().reset_index()
        for n, g in wake.groupby("bytes"):
            g = g.sort_values("round")
            r, s = _summ(g["round_trip"].to_numpy(), {**base, "experiment": "wake_up", "variant": "ZeroMQ ipc",
                                                      "size_bytes": int(n)}, "wake_up", "s", rounds=g["round"],
                         replicate_of=round_rep, transport="ipc", calls=BARE_CALLS)  # fmt: skip
            rows.append(r)
            samples += s
    # the client's encode and decode of a fused call, warm (back to back), one sample per round
    for codec, g in pd.DataFrame(warm).groupby("codec", sort=False):
        for metric in ("encode", "decode"):
            gs = g.sort_values("round")
            r, s = _summ(gs[metric].to_numpy(), {**base, "experiment": "warm_codec", "variant": codec},
                         metric, "s", rounds=gs["round"], replicate_of=round_rep, codec=codec, calls=WARM_CALLS)  # fmt: skip
            rows.append(r)
            samples += s
    # the per-call log's own cost (the baseline, one generation per mode and round, modes rotated per round)
    mon = pd.DataFrame(monitor)
    for mode, g in mon.groupby("mode", sort=False):
        g = g.sort_values("round")
        lab = {**base, "experiment": "monitor", "variant": mode}
        for metric, vals, unit in (("token", g["token"].to_numpy(), "s"), ("tokens_per_s", 1 / g["token"].to_numpy(), "1/s")):
            r, s = _summ(vals, lab, metric, unit, rounds=g["round"], replicate_of=round_rep, config=MONITOR_CONFIG)
            rows.append(r)
            samples += s
    # several clients on one server: throughput and the median call, per round (processes on this host's cores)
    cl = pd.DataFrame(clients)
    for n, g in cl.groupby("clients"):
        lab = {**base, "experiment": "clients", "variant": f"{n} clients", "ranks": 2,
               "oversubscribed": bool(n + 1 > cluster.hosts[cluster.ranks[0]["host"]]["cores"])}  # fmt: skip
        for metric, col, unit in (("throughput", "throughput", "1/s"), ("call_median", "call_median_s", "s")):
            r, s = _summ(g.sort_values("round")[col].to_numpy(), lab, metric, unit, config=CLIENTS_CONFIG, clients=int(n))
            rows.append(r)
            samples += s
    summary = results.frame(rows)
    samples_df = pd.DataFrame(samples)
    reports = {k: analyze.analyze(perflog.parse(v, source=f"{k}.log")) for k, v in logs.items()}
    for k, v in logs.items():
        results.write_text(CHAPTER, f"logs/{k}.log", v)
        results.write_text(CHAPTER, f"logs/{k}.report.txt", reports[k].text())
    seeds_dir = results.seeds_path("rpc_example_report.txt").parent
    ex = analyze.example_checks((seeds_dir / "rpc_example_report.txt").read_text(encoding="utf-8"),
                                (seeds_dir / "rpc_example_log.txt").read_text(encoding="utf-8"))  # fmt: skip
    summary = results.frame(rows + derived_rows(summary, samples_df, calls_df, ex, cfg.layers))
    tg = targets(summary, steps_df)
    meta = run_meta(name, cluster, params, started, machine_start=machine_start, definitions={
        "token": "wall time of one decode step (embedding to logits), averaged over the D-1 decode steps of a "
                 "generation; one sample per round",
        "client_compute": "token - time inside RPC calls (client side)",
        "server_compute": "the server's compute time (its own clock), summed over the step's calls",
        "serialize / deserialize": "client + server encoding / decoding (float16 conversion and shared-memory copies included)",
        "transfer": "client Send + Recv - the server's whole handling of the call",
        "other": "call time the four client phases and the server's phases leave unaccounted",
        "overhead": "token - client_compute - server_compute",
        "overhead_vs_bare_zmq": "(call total - server compute) / (chapter 0 one-way(sent B) + one-way(received B)), "
                                "same transport (gRPC over its Unix socket: ZeroMQ ipc), decode calls; per_call rows: "
                                "one sample per round (its median call)",
        "overhead_vs_bare_own": "(call total - server compute) / the bare round trip of the call's own transport in the "
                                "same round (ZeroMQ ipc: a ROUTER echo in the server's process; gRPC: Empty / Echo "
                                "unary calls; tcp: chapter 0), at the mean of the bytes sent and received",
        "round_trip": "experiment bare_round_trip: 100 bare round trips of the given bytes each way per timed round, one "
                      "sample per round: ZeroMQ's median call (as a call's overhead is the median call of its round), "
                      "gRPC's mean; 'after compute' (cold): each call sent after the client computed for the "
                      f"client's compute per decode call of '{COLD_CONFIG}' in that round (a hidden x head_dim matrix "
                      "product, repeated: a working set in the caches), and answered after the echo computed for that "
                      "configuration's median fused-layer compute (a hidden x intermediate matrix product, repeated: "
                      "streamed from memory), the echo's compute subtracted",
        "wake_up": "experiment wake_up: the bare ZeroMQ round trip after compute less the one back to back, per round "
                   "(paired), at each size",
        "overhead_vs_bare_cold": "(call total - server compute) / the cold bare ZeroMQ round trip of the same round, at "
                                 "the mean of the bytes sent and received (ZeroMQ ipc configurations)",
        "warm_codec": "the client's encode of a fused decode call's request and decode of its reply, 200 back to back "
                      "in the client's process (warm), mean per call, one sample per timed round",
        "bytes": "bytes the calls moved by any path (socket frames + shared memory); wire_bytes: socket frames only",
        "KB / MB in logs": "KB = 10^3 B, MB = 10^6 B",
        "monitor": "decode token time and tokens/s of the baseline with the per-call log off, on for every call, or on "
                   "for BatchLinear and Matmul only (the source's advice); one generation per mode and round",
        "clients": "N client processes (fused, msgpack, ipc) released together against one server, per round: all "
                   "clients' decode tokens / (last end - first start), and the median call; N + 1 processes on this "
                   "host's cores (oversubscribed when more than its cores)",
    }) | {"model": cfg.as_dict(), "targets": tg, "servers": served, "ladder": {k: list(v) for k, v in LADDER.items()}}
    meta["replicates"] = {**plan.record(), "rounds": {str(r): rep for r, rep in sorted(round_rep.items())}}
    results.write(CHAPTER, summary, samples_df, meta,
                  extra={"steps": steps_df, "calls": calls_df, "checks": checks_df, "example_checks": ex,
                         "monitor": mon, "clients": cl})  # fmt: skip
    claims.record(CHAPTER)
    return summary


# ------------------------------------------------------------- tables & targets


def per_token_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Return per configuration: the per-token split (ms, medians), overhead with its CI, RPCs and KB per token."""
    out = []
    for conf in summary.query("experiment == 'per_token'")["variant"].unique():
        g = lambda m, conf=conf: pick_row(summary, experiment="per_token", variant=conf, metric=m)  # noqa: E731
        row = {"config": conf, "change": g("token")["change"]}
        for m in ("token", *PHASES):
            row[f"{m} (ms)"] = g(m)["median"] * 1e3
        o = g("overhead")
        row["overhead (ms)"], row["overhead CI low"], row["overhead CI high"] = o["median"] * 1e3, o["ci_low"] * 1e3, o["ci_high"] * 1e3
        row["RPCs/token"] = g("rpcs_per_token")["median"]
        row["KB/token"] = g("bytes_per_token")["median"] / 1e3
        row["wire KB/token"] = g("wire_bytes_per_token")["median"] / 1e3
        b = pick_row(summary, experiment="per_call", variant=conf, metric="overhead_vs_bare_zmq")
        row["call overhead / bare ZeroMQ"] = b["median"]
        out.append(row)
    return pd.DataFrame(out)


def targets(summary: pd.DataFrame, steps: pd.DataFrame) -> dict:
    """Return the chapter's targets: the best configuration's overhead cut, and its per-call ratio to the bare ZeroMQ
    round trip of chapter 0, of the same rounds back to back, and of the same rounds after compute (with the floors
    and the cost of waking up)."""
    tok = steps[steps["phase"] == "decode"].groupby("config")["tokens_identical"].all()
    over = summary.query("experiment == 'per_token' and metric == 'overhead'").set_index("variant")
    # the book's own RPC (ZeroMQ): gRPC stands beside it as the alternative, measured against its own bare round trip
    eligible = [c for c in over.index if bool(tok.get(c, False)) and LADDER.get(c, ("ipc",))[0] not in GRPC_TRANSPORTS]
    best = min(eligible, key=lambda c: over.loc[c, "median"])
    b, base = over.loc[best], over.loc[BASELINE]
    ratio = pick_row(summary, experiment="per_call", variant=best, metric="overhead_vs_bare_zmq")
    own = pick_row(summary, experiment="per_call", variant=best, metric="overhead_vs_bare_own")
    cold = summary.query("experiment == 'per_call' and variant == @best and metric == 'overhead_vs_bare_cold'")
    hot_rt = summary.query("experiment == 'bare_round_trip' and variant == @BARE_VARIANTS['ipc'] and size_bytes == 0")
    cold_rt = summary.query("experiment == 'bare_round_trip' and variant == @BARE_VARIANTS['ipc_cold'] and size_bytes == 0")
    wake = summary.query("experiment == 'wake_up' and size_bytes == 0")
    cold_out = {}
    if not cold.empty and not hot_rt.empty and not cold_rt.empty and not wake.empty:
        c, w = cold.iloc[0], wake.iloc[0]
        cold_out = {"cold_ratio_x": float(c["median"]), "cold_ratio_ci": [float(c["ci_low"]), float(c["ci_high"])],
                    "cold_ratio_met": within_target(c, TARGET_BARE_RATIO),
                    "hot_empty_s": float(hot_rt["median"].iloc[0]), "cold_empty_s": float(cold_rt["median"].iloc[0]),
                    "wake_up_s": float(w["median"]), "wake_up_ci": [float(w["ci_low"]), float(w["ci_high"])],
                    "best_call_s": float(pick_row(summary, experiment="per_call", variant=best,
                                                  metric="call_overhead")["median"])}  # fmt: skip
    return {
        "best": best,
        "best_tokens_identical": bool(tok[best]),
        "baseline_overhead_s": float(base["median"]),
        "best_overhead_s": float(b["median"]),
        "overhead_cut_x": float(base["median"] / b["median"]),
        "overhead_cut_conservative_x": float(base["ci_low"] / b["ci_high"]),
        "overhead_cut_met": bool(base["median"] / b["median"] >= TARGET_OVERHEAD_CUT),
        "bare_ratio_x": float(ratio["median"]),
        "bare_ratio_ci": [float(ratio["ci_low"]), float(ratio["ci_high"])],
        "bare_ratio_met": bool(ratio["median"] <= TARGET_BARE_RATIO),
        "own_ratio_x": float(own["median"]),
        "own_ratio_ci": [float(own["ci_low"]), float(own["ci_high"])],
        "own_ratio_met": bool(own["median"] <= TARGET_BARE_RATIO),
        **cold_out,
    }


CALL_PARTS = {
    "client encode": lambda c: c["serialize_s"],
    "send call": lambda c: c["send_s"],
    "transfer + wake-ups": lambda c: c["recv_s"] - c["server_total_s"],
    "server decode + dispatch": lambda c: c["server_total_s"] - c["server_compute_s"] - c["server_serialize_s"],
    "server encode": lambda c: c["server_serialize_s"],
    "client decode": lambda c: c["deserialize_s"],
}
"""One call's overhead (its time minus the server's compute) in parts: the client's encode, its send call, the bytes
moving and the processes waking (Send + Recv - the server's whole handling, minus the send call), the server's
receive, decode and dispatch (its handling minus compute and encode), the server's encode, the client's decode."""


def call_decomposition(calls: pd.DataFrame, configs: list[str], methods=("Embedding", "FusedLayer")) -> pd.DataFrame:
    """Return, per configuration and method, the median of each part of a decode call's overhead (µs), its bare round
    trip and the parts' sum; one value per part = the median over rounds of each round's median call."""
    rows = []
    c = calls[(calls["phase"] == "decode") & calls["config"].isin(configs) & calls["method"].isin(methods)]
    for (conf, method), g in c.groupby(["config", "method"], sort=False):
        row = {"config": conf, "method": method, "bytes sent": float(g["sent_B"].median()),
               "bytes received": float(g["recv_B"].median())}  # fmt: skip
        for part, fn in CALL_PARTS.items():
            row[part] = float(g.assign(v=fn(g)).groupby("round")["v"].median().median() * 1e6)
        row["overhead (sum)"] = sum(row[p] for p in CALL_PARTS)
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out["largest part"] = out[list(CALL_PARTS)].idxmax(axis=1)
    return out


# ------------------------------------------------------------ derived rows (analysis)

CALL_PHASES = {"Serialize": "serialize_s", "Send": "send_s", "Receive": "recv_s", "Deserialize": "deserialize_s"}
"""The per-call log's four client phases (the source's report) and the call columns that hold them."""


def derived_rows(summary: pd.DataFrame, samples: pd.DataFrame, calls: pd.DataFrame, ex: pd.DataFrame,
                 layers: int) -> list[dict]:  # fmt: skip
    """Return the shares, ratios and counts seed 001's claims read, each with its own interval.

    Pure: from this chapter's summary, raw samples, timed calls and the checks of the source's example
    report. Shares are per round (one sample per timed round, over its decode calls), like the report.
    """
    from ._common import derived_row, exact_row, sample_values

    out = []
    for phase, suffix in (("prefill", "_prefill"), ("decode", "")):
        # the source's report averages a whole run's calls: decode calls (the most) and the prompt's prefill calls (the
        # largest) each give the shares and the bytes per call
        calls_of = calls[(calls["config"] == BASELINE) & (calls["phase"] == phase)]
        if calls_of.empty:
            continue
        g = calls_of.groupby("round")
        for name, col in CALL_PHASES.items():
            share = (g[col].sum() / g["total_s"].sum() * 100).to_numpy()
            out.append(results.summary_row(summarize(share), chapter=CHAPTER, experiment="derived",
                                           variant=f"share_{name.lower()}{suffix}", metric=f"share_{name.lower()}{suffix}",
                                           unit="%", ranks=2, oversubscribed=False,
                                           inputs=f"baseline {phase} calls, {name} as % of the call's total, per round"))  # fmt: skip
        for col, what in (("sent_B", "sent"), ("recv_B", "received")):
            out.append(exact_row(float(calls_of[col].mean()), f"bytes_{what}_per_call{suffix}", "B", CHAPTER,
                                 f"baseline {phase} calls: mean bytes {what} per call (the same in every round)"))  # fmt: skip
    per_generation = calls[calls["config"] == BASELINE].groupby("round").size()
    if not per_generation.empty:  # what the source's report counts: the RPC calls of one monitored generation
        out.append(exact_row(float(per_generation.median()), "calls_per_generation", "1", CHAPTER,
                             "baseline: RPC calls of one timed generation (prefill and decode), as the report counts them"))  # fmt: skip
    base = calls[(calls["config"] == BASELINE) & (calls["phase"] == "decode")]
    per_round = base.groupby("round")
    total = per_round["total_s"].sum()
    other = (100 - sum(per_round[c].sum() for c in CALL_PHASES.values()) / total * 100).to_numpy()
    out.append(results.summary_row(summarize(other), chapter=CHAPTER, experiment="derived", variant="share_other",
                                   metric="share_other", unit="%", ranks=2, oversubscribed=False,
                                   inputs="baseline decode calls, total minus the four phases, as % of the total, per round"))  # fmt: skip
    transfer_share = ((per_round["send_s"].sum() + per_round["recv_s"].sum() - per_round["server_total_s"].sum())
                      / (per_round["send_s"].sum() + per_round["recv_s"].sum()) * 100).to_numpy()  # fmt: skip
    out.append(results.summary_row(summarize(transfer_share), chapter=CHAPTER, experiment="derived",
                                   variant="share_transfer_of_send_receive", metric="share_transfer_of_send_receive",
                                   unit="%", ranks=2, oversubscribed=False,
                                   inputs="baseline decode calls: (Send + Receive - the server's handling) / (Send + Receive), per round"))  # fmt: skip

    def tok(conf, metric):
        return sample_values(summary, samples, experiment="per_token", variant=conf, metric=metric)

    out.append(derived_row(lambda a, b: a / b, [tok("float16", "bytes_per_token"), tok("fused", "bytes_per_token")],
                           "bytes_float16_over_float32", "x", CHAPTER, paired=True,
                           inputs="bytes per decode token, float16 on the wire over float32 (fused, shared memory)"))  # fmt: skip
    out.append(derived_row(lambda a, b: a / b * 100, [tok("shm", "serialize"), tok(BASELINE, "serialize")],
                           "serialize_shm_pct_of_msgpack", "%", CHAPTER, paired=True,
                           inputs="serialize time per decode token, shared memory as % of msgpack (6 RPCs per layer)"))  # fmt: skip
    mon = summary[summary["experiment"] == "monitor"]
    if not mon.empty:
        off = sample_values(summary, samples, experiment="monitor", variant="off", metric="tokens_per_s")
        for mode in [m for m in MONITOR_MODES if m != "off"]:
            on = sample_values(summary, samples, experiment="monitor", variant=mode, metric="tokens_per_s")
            out.append(derived_row(lambda a, b: (a / b - 1) * 100, [on, off], "monitor_cost", "%", CHAPTER, paired=True,
                                   inputs=f"decode tokens/s with the per-call log on ({mode}) over off, minus 1, per round",
                                   payload=mode))  # fmt: skip
    cl = summary[summary["experiment"] == "clients"]
    if len(cl) > 1:
        most = int(cl["clients"].max())
        t1 = sample_values(summary, samples, experiment="clients", variant="1 clients", metric="throughput")
        tn = sample_values(summary, samples, experiment="clients", variant=f"{most} clients", metric="throughput")
        out.append(derived_row(lambda a, b: a / b, [tn, t1], "clients_throughput_ratio", "x", CHAPTER,
                               inputs=f"tokens/s of {most} clients together over 1 client, one server", clients=most))  # fmt: skip
    fused_rpcs = float(pick_row(summary, experiment="per_token", variant="fused_msgpack", metric="rpcs_per_token")["median"])
    out.append(exact_row((fused_rpcs - 2) / layers, "fused_rpcs_per_layer", "1", CHAPTER,
                         "RPCs per layer with fusion: (RPCs per token - Embedding - LMHead) / layers"))  # fmt: skip
    for chk in ex.itertuples():
        slug = re.sub(r"[^a-z0-9]+", "_", chk.check.lower()).strip("_")
        for which, v in (("stated", chk.stated), ("computed", chk.computed)):
            out.append(exact_row(float(v), f"example_{which}", "1", CHAPTER, f"the source's example report: {chk.check}",
                                 payload=slug))  # fmt: skip
    return out


def reanalyze(res: results.Results) -> list[dict]:
    """Return this chapter's derived rows recomputed from its results on disk."""
    measured = res.summary[res.summary["experiment"] != "derived"]
    return derived_rows(measured, res.samples, res.extra("calls"), res.extra("example_checks"), int(res.meta["model"]["layers"]))
