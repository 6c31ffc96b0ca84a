"""Chapter 5, "MPI tensor parallelism and SIMD": does communication volume, not SIMD, decide the winner?

Measured on MPI engines (one per core; 4 ranks on this machine's 2 cores are
labelled oversubscribed):

* **collectives**: ``Allgather`` and ``Allreduce`` alone, against result size, at
  TP = 2, beside the ring model with chapter 0's alpha-beta fit;
* **MLP**: strategies S1/S2/S3 (:mod:`ipcbench.tensor_parallel`) x kernels
  (numpy/BLAS, numba fastmath, numba strict, plus a pure-Python loop for scale) x
  TP = 1, 2 (4), at seed 004's shapes (t = 128, h = 1024, i = 2048) and
  Qwen3-0.6B's (i = 3072), prefill (t = 128) and decode (t = 1): time per call split
  into compute and communication, bytes counted per collective;
* **decoder**: the whole forward of :mod:`ipcbench.model` (``qwen3-0.6b`` shapes,
  layers and vocabulary cut per profile) with sequence-parallel attention (the
  seed's layout) and each MLP strategy, and head-parallel attention with S3:
  prefill of a 128-token prompt and decode steps, tokens/s;
* **model**: every strategy's communication time predicted with the ring model and
  chapter 0's alpha-beta, against the measurement, and projected to TP = 8 on one
  node and to two nodes over stated networks.

Every point checks its output against the single-process reference before it is
timed. BLAS is pinned to one thread per rank so ranks do not fight over cores.

Time split per sample (:func:`ipcbench.measure.repeat_split`): every rank times
the call and the time it spent inside collectives; ``total`` is the slowest
rank's wall time, ``compute`` the largest per-rank time outside collectives,
``communication`` = total - compute (time in collectives including waiting for
the slower rank).
"""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pandas as pd

from .. import claims, model, profiles, results
from .. import tensor_parallel as tp
from ..measure import (
    Replicated,
    StoppingRule,
    calibrate_inner_collective,
    now_ns,
    repeat_split,
    summarize,
)
from ._common import (
    REPLICATES,
    Replicates,
    add_time,
    machine_state,
    per_message,
    pick_row,
    progress,
    require_engines,
    run_meta,
    run_point,
)

CHAPTER = "tensor_parallel"
KiB, MiB = 2**10, 2**20
SEED_SHAPE = {"t": 128, "h": 1024, "i": 2048}  # seed 004's volume table
QWEN_I = 3072  # Qwen3-0.6B's intermediate size
MLP_TOL = 1e-4  # max |out - ref| <= MLP_TOL * max |ref|
SOURCE_PAIR = (("s1", "numba_scalar"), ("s2", "numba_simd"))
"""The source's decoder pair: the plain MPI version (S1 layout, loops the compiler cannot vectorise, in the MLP and in
the online-softmax attention) against the MPI + AVX2 version (S2 layout, the same loops vectorised)."""
DECODER_PARTS = tp.TPDecoder.PARTS  # the decoder's time split (rows of every decoder point)
THREADS_PER_RANK = 2
"""BLAS threads of the one-rank decoder set against two single-threaded ranks."""
LOGIT_TOL = 1e-3  # the same, for the decoder's logits (several layers of float32 in a different order)
# stated networks for the two-node projection (assumptions, not measurements)
NETWORKS = {
    "25 GbE (TCP)": {"alpha_s": 25e-6, "beta_Bps": 25e9 / 8 * 0.9},
    "200 Gb/s InfiniBand": {"alpha_s": 2e-6, "beta_Bps": 200e9 / 8 * 0.9},
}


def parameters(profile: str | None = None) -> dict:
    """Return a profile's sweep."""
    name = profiles.profile_name(profile)
    base = {
        "shapes": [dict(SEED_SHAPE), {**SEED_SHAPE, "i": QWEN_I}],
        "tokens": [1, 128],
        "collective_sizes": [8, 512, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB],
        "prompt": 128,
        "seed": 0,
        "tp_oversubscribed": 4,
        "python_shape": {"t": 2, "h": 64, "i": 128},
        "oversubscribed_strategies": list(tp.STRATEGIES),  # at TP = 4, oversubscribed on 2 cores (the full profile)
        "source_pair_prompt": 128,  # the source's prompt: the pair's prefill (t = 128) and its decode steps after it
        "threads_per_rank": THREADS_PER_RANK,
        "replicates": REPLICATES,
    }
    if name == "quick":
        return {**base, "collective_sizes": [8, 4 * KiB, 64 * KiB, 256 * KiB, MiB, 4 * MiB],
                "slow_kernel_tokens": 16, "layers": 2, "vocab": 4096, "decode_steps": 8,
                "decoder_samples": 6, "oversubscribed_strategies": ["s3"], "source_pair_prompt": 16}  # fmt: skip
    if name == "standard":
        # 6 samples per decoder point: the fewest that give a 95% interval of the median
        # TP = 4 oversubscribes 2 cores: the S3 layout only there, labelled oversubscribed, as in quick
        return {**base, "slow_kernel_tokens": 128, "layers": 4, "vocab": 16384, "decode_steps": 16,
                "decoder_samples": 6, "oversubscribed_strategies": ["s3"]}  # fmt: skip
    return {**base, "slow_kernel_tokens": 128, "layers": 28, "vocab": 151_936, "decode_steps": 32,
            "decoder_samples": 10}  # fmt: skip


# ------------------------------------------------------------- SPMD: on the engines


def _pin_blas(threads: int = 1) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)  # one BLAS thread per rank by default: ranks already fill the cores


def collective_point(comm, op: str, nbytes: int, rule: StoppingRule) -> dict | None:
    """Time one ``Allgather`` or ``Allreduce`` with an ``nbytes`` result on all ranks; rank 0 returns samples (s)."""
    p = comm.size
    cc = tp.CountingComm(comm)
    n = max(nbytes // 4, p)
    n -= n % p
    rng = np.random.default_rng(comm.rank)
    if op == "Allgather":
        send = rng.standard_normal(n // p, dtype=np.float32)
        recv = np.empty(n, dtype=np.float32)
        gathered = comm.allgather(send)

        def call():
            cc.Allgather(send, recv)

        call()
        if not np.array_equal(recv, np.concatenate(gathered)):
            raise AssertionError(f"Allgather of {nbytes} B returned wrong data")
    elif op == "Allreduce":
        send = rng.standard_normal(n, dtype=np.float32)
        recv = np.empty(n, dtype=np.float32)
        parts = comm.allgather(send)

        def call():
            cc.Allreduce(send, recv)

        call()
        if not np.allclose(recv, np.sum(parts, axis=0, dtype=np.float32), rtol=1e-5, atol=1e-5):
            raise AssertionError(f"Allreduce of {nbytes} B returned wrong data")
    else:
        raise ValueError(f"unknown collective {op!r}")
    # several calls per sample for small messages (a sample >= 100 µs), the same count on every rank
    inner = calibrate_inner_collective(comm, call)

    def step():
        t0 = now_ns()
        for _ in range(inner):
            call()
        dt = (now_ns() - t0) * 1e-9 / inner
        return dt, dt

    out = repeat_split(comm, step, rule)
    if out is not None:
        out.update(inner=inner, result_bytes=int(recv.nbytes), ring_bytes=float(cc.records[0].ring_bytes))
    return out


_CACHE: dict = {}
"""What an engine keeps between points: the MLP's weights of one shape, the decoder's weights and its references
(:func:`release` drops them all)."""


def _mlp_weights(h: int, i: int, seed: int):
    """Return an MLP's (gate, up, down) and 1024 input rows, made once per engine for a shape (every MLP point of the
    shape uses the same ones; nothing writes to them). One shape at a time is kept."""
    key = ("mlp", h, i, seed)
    if key not in _CACHE:
        for k in [k for k in _CACHE if k[0] == "mlp"]:
            del _CACHE[k]
        _CACHE[key] = _make_mlp_weights(h, i, seed)
    return _CACHE[key]


def _make_mlp_weights(h: int, i: int, seed: int):
    rng = np.random.default_rng(seed)
    gate = (rng.standard_normal((h, i), dtype=np.float32) / np.sqrt(h)).astype(np.float32)
    up = (rng.standard_normal((h, i), dtype=np.float32) / np.sqrt(h)).astype(np.float32)
    down = (rng.standard_normal((i, h), dtype=np.float32) / np.sqrt(i)).astype(np.float32)
    x = rng.standard_normal((1024, h), dtype=np.float32)
    return gate, up, down, x


def mlp_point(comm, strategy: str, kernel: str, t: int, h: int, i: int, rule: StoppingRule, seed: int = 0) -> dict | None:
    """Check one sharded MLP against the reference, then time it; rank 0 returns samples and counted bytes."""
    _pin_blas()
    cc = tp.CountingComm(comm)
    gate, up, down, xs = _mlp_weights(h, i, seed)
    x = np.ascontiguousarray(xs[:t])
    mlp = tp.ShardedMLP(cc, gate, up, down, strategy, kernel)
    ref = model.swiglu_mlp(x, gate, up, down)
    cc.reset()
    out = mlp(x)
    err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
    errs = comm.allgather(err)
    if max(errs) > MLP_TOL:
        raise AssertionError(f"{strategy}/{kernel} t={t}: relative error {max(errs):.2e} > {MLP_TOL} (per rank {errs})")
    calls = [{"op": r.op, "tag": r.tag, "send_bytes": r.send_bytes, "result_bytes": r.recv_bytes,
              "peer_bytes": r.peer_bytes, "ring_bytes": r.ring_bytes} for r in cc.records]  # fmt: skip
    # bytes allocated by one call (numpy arrays are traced by tracemalloc)
    tracemalloc.start()
    mlp(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    def step():
        cc.reset()
        t0 = now_ns()
        mlp(x)
        return (now_ns() - t0) * 1e-9, cc.seconds()

    slow = kernel != "numpy"
    out = repeat_split(comm, step, rule, warmup=1 if slow else None)
    if out is not None:
        out.update(calls=calls, max_rel_error=max(errs), peak_alloc_bytes=int(peak))
    return out


def kernel_scale_point(comm, kernel: str, t: int, h: int, n: int, rule: StoppingRule) -> dict | None:
    """Time one (t, h) @ (h, n) product with a kernel on rank 0 alone (others wait); return samples and GFLOP/s."""
    if comm.rank != 0:
        comm.Barrier()
        return None
    try:
        _pin_blas()
        rng = np.random.default_rng(1)
        x = rng.standard_normal((t, h), dtype=np.float32)
        w = rng.standard_normal((h, n), dtype=np.float32)
        wt = np.ascontiguousarray(w.T)
        f = tp.matmul(kernel)
        if not np.allclose(f(x, w, wt), x @ w, rtol=1e-3, atol=1e-3):
            raise AssertionError(f"kernel {kernel} computes a wrong product")
        for _ in range(2):
            f(x, w, wt)
        samples = []
        t0 = now_ns()
        while True:
            s = now_ns()
            f(x, w, wt)
            samples.append((now_ns() - s) * 1e-9)
            reason = rule.decide(samples, (now_ns() - t0) * 1e-9)
            if reason:
                break
        return {"samples": samples, "stop_reason": reason, "flops": 2 * t * h * n}
    finally:
        comm.Barrier()


def simd_info(comm) -> dict | None:
    """Rank 0: numpy's CPU feature view and the packed instructions in the numba kernels."""
    if comm.rank != 0:
        return None
    return {"cpu": tp.cpu_simd_features(),
            "kernels": [tp.simd_report("numba_simd"), tp.simd_report("numba_scalar")],
            "attention_kernels": [tp.simd_report("numba_simd", "attention"), tp.simd_report("numba_scalar", "attention")]}  # fmt: skip


def _weights(cfg, seed: int):
    """Return the decoder's weights, made once per engine for a configuration (every decoder point uses the same
    ones: made afresh per point, they were a large part of each point's set-up). Nothing writes to
    them: the TP decoder copies its shards."""
    key = ("weights", cfg.layers, cfg.vocab, seed)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = model.init_weights(cfg, seed)
    return _CACHE[key]


def _reference(w, key: tuple, prompt: list[int], steps: int):
    """Return the one-process reference generation (tokens, logits) for a prompt, made once per engine."""
    k = ("reference", *key, tuple(prompt), steps)
    if k not in _CACHE:
        _CACHE[k] = model.generate(w, prompt, steps)
    return _CACHE[k]


def release(comm) -> None:
    """Drop the MLP's and the decoder's weights and references an engine cached between points."""
    _CACHE.clear()


def decoder_point(comm, mlp: str, attention: str, layers: int, vocab: int, prompt_len: int, decode_steps: int,
                  samples: int, seed: int = 0, kernel: str = "numpy", prefill: bool = True,
                  threads: int = 1) -> dict | None:  # fmt: skip
    """Check a TP decoder's greedy generation against the reference, then time prefill and decode steps.

    Rank 0 returns per-sample (total, compute, communication and the decoder's parts:
    attention, attention_kernel, mlp) for prefill (one forward of the prompt, logits of
    the last row; None when ``prefill`` is False) and for decode steps; each part is the
    largest time any rank spent in it, its collectives included. ``kernel`` is the MLP's matrix-product
    kernel and the attention's kernel on every rank (:func:`ipcbench.tensor_parallel.attention_kernel`);
    ``threads`` the BLAS threads per rank.
    """
    _pin_blas(threads)
    if kernel != "numpy":
        tp.matmul(kernel)  # compile the numba kernels before anything is checked or timed
        tp.attention_kernel(kernel)
    cfg = model.preset("qwen3-0.6b", layers=layers, vocab=vocab)
    w = _weights(cfg, seed)
    prompt = np.random.default_rng(seed + 1).integers(0, cfg.vocab, prompt_len).tolist()
    cc = tp.CountingComm(comm)
    dec = tp.TPDecoder(cc, w, mlp=mlp, attention=attention, kernel=kernel)
    check_steps = min(decode_steps, 4)
    ref_tokens, ref_logits = _reference(w, (cfg.layers, cfg.vocab, seed), prompt, check_steps)
    got_tokens, got_logits = dec.generate(prompt, check_steps)
    err = max(float(np.max(np.abs(a - b)) / np.max(np.abs(a))) for a, b in zip(ref_logits, got_logits, strict=True))
    errs = comm.allgather((err, got_tokens == ref_tokens))
    if max(e for e, _ in errs) > LOGIT_TOL or not all(ok for _, ok in errs):
        raise AssertionError(f"decoder {attention}/{mlp}: logits differ from the reference (per rank {errs})")

    def prefill_once():
        dec.reset()
        cc.reset()
        dec.reset_parts()
        t0 = now_ns()
        dec.forward(prompt, last_only=True)
        return (now_ns() - t0) * 1e-9, cc.seconds(), [dec.part_s[x] for x in DECODER_PARTS]

    # exactly ``samples`` samples (a budget of 0 s would stop at 5: StoppingRule's floor for budget stops); no warm-up:
    # the check's generation above has just run this prompt's prefill on every rank
    rule = StoppingRule(rel_ci=0.05, min_samples=samples, max_samples=samples, time_budget_s=math.inf, warmup=0)
    pre = repeat_split(comm, prefill_once, rule, parts=DECODER_PARTS) if prefill else None
    tok = [0]

    def decode():
        if dec.length >= prompt_len + decode_steps:
            dec.rewind(prompt_len)  # back to the prompt's cache (the same entries a prefill makes; untimed)
        cc.reset()
        dec.reset_parts()
        t0 = now_ns()
        dec.forward([tok[0]], last_only=True)
        tok[0] = (tok[0] + 1) % cfg.vocab
        return (now_ns() - t0) * 1e-9, cc.seconds(), [dec.part_s[x] for x in DECODER_PARTS]

    dec.reset()
    dec.forward(prompt, last_only=True)
    drule = StoppingRule(rel_ci=0.05, min_samples=samples * decode_steps, max_samples=samples * decode_steps,
                         time_budget_s=math.inf, warmup=2)  # fmt: skip
    dcd = repeat_split(comm, decode, drule, parts=DECODER_PARTS)
    if comm.rank != 0:
        return None
    return {"prefill": pre, "decode": dcd, "max_rel_error": max(e for e, _ in errs), "tokens_identical": True,
            "kernel": kernel, "threads": threads, "collectives_per_decode_step": len(cc.records),
            "config": cfg.as_dict()}  # fmt: skip


# ------------------------------------------------------------------------ the run


def _claims_read_mlp(point: tuple, params: dict) -> bool:
    """Return whether seed 004's claims read an MLP point (directly or through a derived row): the seed's shape at the
    most tokens, at TP = 1 and 2 (BLAS, and the compiled kernels at their token count)."""
    _strategy, _kernel, t, shape, p = point
    return shape["i"] == SEED_SHAPE["i"] and t == max(params["tokens"]) and p <= 2


def _merge(per_replicate: list[tuple[int, dict]]) -> dict:
    """Return one point from its replicates' results ([(replicate, point), ...]): every list of samples concatenated
    and labelled with its replicate, everything else (counts, errors, the stop reason) from the first, and the largest
    error of any."""
    first = per_replicate[0][1]
    out = dict(first)
    for key, value in first.items():
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            out[key] = per_message([(rep, pt[key]) for rep, pt in per_replicate])
    if "max_rel_error" in first:
        out["max_rel_error"] = max(pt["max_rel_error"] for _, pt in per_replicate)
    return out


def _rows(point: dict, labels: dict, parts=("total", "compute", "communication", "in_collectives_min")) -> tuple[list[dict], list[dict]]:
    rows, samples = [], []
    for part in parts:
        s = summarize(point[part], point.get("stop_reason", ""))
        lab = {**labels, "metric": part, "unit": "s"}
        rows.append(results.summary_row(s, **lab))
        samples += results.sample_rows(point[part], **lab)
    return rows, samples


def engines(profile: str | None = None) -> int:
    """Return the MPI engines this chapter needs: the oversubscribed TP degree of the profile."""
    return int(parameters(profile)["tp_oversubscribed"])


def run(cluster, profile: str | None = None) -> pd.DataFrame:
    """Run chapter 5 on ``cluster`` (>= 2 engines; 4 for the oversubscribed TP = 4 points), write results, return the summary."""
    name = profiles.profile_name(profile)
    rule = profiles.stopping_rule(name)
    params = parameters(name)
    require_engines(cluster, engines(name), CHAPTER, f"TP = 1, 2 and the oversubscribed TP = {params['tp_oversubscribed']}")
    started = results.now_iso()
    machine_start = machine_state(cluster)  # CPU steal, load and two calibration kernels, again at the end
    tps = [1, 2, params["tp_oversubscribed"]]

    def over(p):
        return cluster.oversubscribed_at(p)

    base = {"chapter": CHAPTER}
    rows: list[dict] = []
    samples: list[dict] = []
    calls: list[dict] = []
    simd = run_point(cluster, simd_info, ranks=1)[0]
    plan = Replicates(cluster, params["replicates"])

    # the points the claims read run in every replicate (spread over the run, the last in fresh engines), a
    # comparison's configurations in a rotated order: the collectives at TP = 2, the MLP at TP = 1 and 2, the source's
    # decoder pair; the rest (tiny kernels, TP = 4, the decoder's other layouts) in the first replicate only
    ps = params["python_shape"]
    points = []  # MLP strategies x kernels x TP
    for shape in params["shapes"]:
        for t in params["tokens"]:
            for p in tps:
                strategies = ["s3"] if p == 1 else tp.STRATEGIES if p == 2 else params["oversubscribed_strategies"]
                for s_ in strategies:  # at TP = 1 every strategy is the same local MLP
                    points.append((s_, "numpy", t, shape, p))
        # kernels: the seed's shape only; slow kernels at a token count the profile can afford
        if shape["i"] == SEED_SHAPE["i"]:
            slow_t = params["slow_kernel_tokens"]
            extra = [] if slow_t in params["tokens"] else ["numpy"]  # BLAS at the slow kernels' size too
            for kern in ["numba_simd", "numba_scalar"] + extra:
                for t in (1, slow_t) if kern != "numpy" else (slow_t,):
                    for p in (1, 2):
                        for s_ in tp.STRATEGIES if p > 1 else ["s3"]:
                            points.append((s_, kern, t, shape, p))
    mlp_groups: dict[str, list] = {}
    for pt_ in points:
        s_, kern, t, shape, p = pt_
        mlp_groups.setdefault(f"mlp/{kern}/{t}/{shape['i']}/{p}", []).append(pt_)
    # the whole decoder: the layouts with the numpy (BLAS) kernel; the source's own pair (S1 with the plain scalar
    # kernel against S2 with the vectorised kernel, decode steps, a shorter prompt); one rank with 2 BLAS threads
    configs = [(m, "sequence") for m in tp.STRATEGIES] + [("s3", "heads")]
    dpoints = [(m, a, p, "numpy", params["prompt"], True, 1) for p in tps for m, a in (configs if p > 1 else [("s3", "heads")])
               if p <= 2 or m in params["oversubscribed_strategies"]]  # fmt: skip
    pair = [(m, "sequence", 2, kern, params["source_pair_prompt"], True, 1) for m, kern in SOURCE_PAIR]
    dpoints += [("s3", "heads", 1, "numpy", params["prompt"], True, params["threads_per_rank"])]
    per_rep_samples = max(2, -(-params["decoder_samples"] // plan.n))
    coll_got: dict[tuple, list] = {}
    mlp_got: dict[tuple, list] = {}
    dec_got: dict[tuple, list] = {}
    steps = plan.n * (2 + len(mlp_groups) + 1) + len(tp.KERNELS) + len(dpoints)  # (a bar's tick per group)
    ticks = iter(progress(range(steps), "collectives, kernels, MLP, decoder (every replicate)"))
    for rep in plan.passes():
        r_rule = plan.rule(rule, rep)
        # 1. collectives alone at TP = 2
        for op in ("Allgather", "Allreduce"):
            next(ticks, None)
            for n in plan.order(f"collective/{op}", list(params["collective_sizes"]), rep):
                t0 = time.perf_counter()
                coll_got.setdefault((op, n), []).append((rep, run_point(cluster, collective_point, op, n, r_rule, ranks=2)[0]))
                add_time("collectives", time.perf_counter() - t0)
        # 2. kernels at a tiny size, for scale (one rank), first replicate only
        if rep == 0:
            for k in tp.KERNELS:
                next(ticks, None)
                pt = run_point(cluster, kernel_scale_point, k, ps["t"], ps["h"], ps["i"], rule, ranks=2)[0]
                st = summarize(pt["samples"], pt["stop_reason"])
                lab = {**base, "experiment": "kernel_scale", "variant": k, "payload": f"({ps['t']},{ps['h']})@({ps['h']},{ps['i']})",
                       "size_bytes": None, "ranks": 1, "oversubscribed": False, "metric": "time", "unit": "s"}  # fmt: skip
                rows.append(results.summary_row(st, **lab, flops=pt["flops"]))
                samples += results.sample_rows(pt["samples"], **lab)
        # 3. MLP strategies x kernels x TP (TP = 4, oversubscribed, in the first replicate)
        for g, members in mlp_groups.items():
            next(ticks, None)
            if rep > 0 and not _claims_read_mlp(members[0], params):
                continue
            for s_, kern, t, shape, p in plan.order(g, members, rep, label=lambda x: x[0]):
                t0 = time.perf_counter()
                pt = run_point(cluster, mlp_point, s_, kern, t, shape["h"], shape["i"], r_rule if p <= 2 else rule, ranks=p)[0]
                add_time("MLP", time.perf_counter() - t0)
                mlp_got.setdefault((s_, kern, t, shape["h"], shape["i"], p), []).append((rep, pt))
        # 4. the decoder: the source's pair in every replicate, the other layouts in the first
        next(ticks, None)
        for dp in (plan.order("decoder/source_pair", pair, rep, label=lambda x: f"{x[0]}/{x[3]}")
                   + ([] if rep else dpoints)):  # fmt: skip
            m, a, p, kern, prompt_len, with_prefill, threads = dp
            if rep == 0 and dp in dpoints:
                next(ticks, None)
            t0 = time.perf_counter()
            pt = run_point(cluster, decoder_point, m, a, params["layers"], params["vocab"], prompt_len,
                           params["decode_steps"], per_rep_samples if dp in pair else params["decoder_samples"],
                           params["seed"], kern, with_prefill, threads, ranks=p, timeout=600)[0]  # fmt: skip
            add_time("decoder", time.perf_counter() - t0)
            dec_got.setdefault(dp, []).append((rep, pt))
    for _ in ticks:
        pass

    for (op, _n), got in coll_got.items():
        pt = _merge(got)
        r, s_ = _rows(pt, {**base, "experiment": "collective", "variant": op, "payload": "float32",
                           "size_bytes": pt["result_bytes"], "ranks": 2, "oversubscribed": False}, parts=("total",))  # fmt: skip
        r[0]["ring_bytes"] = pt["ring_bytes"]
        rows += r
        samples += s_
    for (s_name, kern, t, h, i, p), got in mlp_got.items():
        pt = _merge(got)
        labels = {**base, "experiment": "mlp", "variant": s_name if p > 1 else "tp1", "payload": kern, "size_bytes": None,
                  "ranks": p, "oversubscribed": over(p), "tokens": t, "hidden": h, "intermediate": i}  # fmt: skip
        r, smp = _rows(pt, labels)
        for row in r:
            row.update(max_rel_error=pt["max_rel_error"], peak_alloc_bytes=pt["peak_alloc_bytes"],
                       collectives=len(pt["calls"]), result_bytes=sum(c["result_bytes"] for c in pt["calls"]),
                       ring_bytes=sum(c["ring_bytes"] for c in pt["calls"]))  # fmt: skip
        rows += r
        samples += smp
        if kern == "numpy":
            calls += [{**c, "strategy": s_name, "ranks": p, "tokens": t, "hidden": h, "intermediate": i} for c in pt["calls"]]
    for (m, a, p, kern, prompt_len, with_prefill, threads), got in dec_got.items():
        variant = f"{a}/{m}" if p > 1 else "tp1"
        if kern != "numpy":
            variant += f"/{kern}"
        if threads > 1:
            variant += f"/{threads}threads"
        for phase in ("prefill", "decode") if with_prefill else ("decode",):
            pt = _merge([(rep, x[phase]) for rep, x in got])
            labels = {**base, "experiment": f"decoder_{phase}", "variant": variant,
                      "payload": "qwen3-0.6b", "size_bytes": None, "ranks": p, "oversubscribed": over(p * threads),
                      "tokens": prompt_len if phase == "prefill" else 1}  # fmt: skip
            extra = {"max_rel_error": max(x["max_rel_error"] for _, x in got), "kernel": kern, "threads": threads,
                     "prompt": prompt_len}  # fmt: skip
            r, smp = _rows(pt, labels, parts=("total", "compute", "communication", "in_collectives_min", *DECODER_PARTS))
            for row in r:
                row.update(extra)
            rows += r
            samples += smp
            tok = labels["tokens"]
            st = summarize(Replicated([tok / x for x in pt["total"]], pt["total"].replicate), pt["stop_reason"])
            rows.append(results.summary_row(st, **{**labels, "metric": "tokens_per_s", "unit": "1/s"}, **extra))
    run_point(cluster, release)

    samples_df = pd.DataFrame(samples)
    summary = results.frame(rows)
    summary = results.frame(rows + derived_rows(summary, samples_df, pd.DataFrame(calls)))
    model_tab = comm_model(summary, calls)
    meta = run_meta(name, cluster, params, started, machine_start=machine_start, definitions={
        "total": "slowest rank's wall time of one call (s)",
        "compute": "largest per-rank time outside collectives (s)",
        "communication": "total - compute: time in collectives, waiting for the slower rank included (s)",
        "in_collectives_min": "the least time any rank spent inside collectives in a call: close to pure transfer (s)",
        "result_bytes": "bytes of the result buffers handed to the collectives (counted by CountingComm)",
        "ring_bytes": "bytes one rank receives under ring algorithms: Allgather (p-1)/p n, Allreduce 2(p-1)/p n",
        "tokens_per_s": "prefill: prompt tokens / prefill time; decode: 1 / time per decode step",
        "attention": "decoder: the largest time any rank spent in attention (projections, kernel, its collective) (s)",
        "attention_kernel": "decoder: the largest time any rank spent in the attention kernel alone (scores, softmax, weighted sum) (s)",
        "mlp": "decoder: the largest time any rank spent in the MLP, its collectives included (s)",
        "mlp tolerance": f"max |out - ref| <= {MLP_TOL} x max |ref|",
        "decoder tolerance": f"max |logits - ref| <= {LOGIT_TOL} x max |ref| and the same greedy tokens",
    })  # fmt: skip
    meta["simd"] = simd
    meta["networks"] = NETWORKS
    meta["replicates"] = plan.record()
    results.write(CHAPTER, summary, samples_df, meta,
                  extra={"calls": pd.DataFrame(calls), "model": model_tab, "collective_fit": collective_fit(summary),
                         "projection": projection(summary)})  # fmt: skip
    claims.record(CHAPTER)
    return summary


# ------------------------------------------------------------------------ analysis


def _alpha_beta() -> tuple[float, float]:
    from .machine_limits import alpha_beta

    return alpha_beta("mpi_buffer")


FIT_MIN_BYTES = 64 * KiB  # the collective fit uses results of this size and more (the MLP's prefill regime)


def collective_fit(summary: pd.DataFrame) -> pd.DataFrame:
    """Fit per-link (alpha, beta) of the ring model to the measured TP = 2 collectives of >= 64 KiB, per operation.

    At p = 2 the ring model is ``alpha + n / (2 beta)`` for Allgather and
    ``2 alpha + n / beta`` for Allreduce; a straight line ``a + n / b`` fitted to
    the measured times gives the link's alpha and beta. Chapter 0's ping-pong fit is
    listed beside them.
    """
    from .. import measure

    a0, b0 = _alpha_beta()
    out = [{"source": "chapter 0 ping-pong (mpi_buffer)", "op": "any", "alpha_s": a0, "beta_Bps": b0}]
    coll = summary.query("experiment == 'collective' and metric == 'total' and size_bytes >= @FIT_MIN_BYTES")
    for op, sub in coll.groupby("variant"):
        a, b = measure.fit_alpha_beta(sub["size_bytes"], sub["median"])
        alpha, beta = (a, b / 2) if op == "Allgather" else (a / 2, b)
        out.append({"source": "TP = 2 collectives >= 64 KiB", "op": op, "alpha_s": alpha, "beta_Bps": beta})
    return pd.DataFrame(out)


def _links(fit: pd.DataFrame) -> dict:
    f = fit.set_index(["source", "op"])
    ch0 = f.xs("chapter 0 ping-pong (mpi_buffer)", level="source").loc["any"]
    out = {"ch0": {op: (ch0["alpha_s"], ch0["beta_Bps"]) for op in ("Allgather", "Allgatherv", "Allreduce")}}
    coll = f.xs("TP = 2 collectives >= 64 KiB", level="source")
    out["fit"] = {op: (coll.loc[base, "alpha_s"], coll.loc[base, "beta_Bps"])
                  for op, base in (("Allgather", "Allgather"), ("Allgatherv", "Allgather"), ("Allreduce", "Allreduce"))}  # fmt: skip
    return out


def comm_model(summary: pd.DataFrame, calls: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Return ring-model predictions against measured times, with chapter 0's parameters and with the collective fit.

    Collective rows at >= 64 KiB are in-sample for the fit; MLP rows (a strategy's
    communication per call, at TP = 2) are out of sample for both.
    """
    links = _links(collective_fit(summary))
    out = []

    def pred(which, ops_bytes):
        return sum(tp.ring_time(op, n, 2, *links[which][op]) for op, n in ops_bytes)

    coll = summary.query("experiment == 'collective' and metric == 'total'")
    for r in coll.itertuples():
        ob = [(r.variant, r.size_bytes)]
        out.append({"what": "collective", "variant": r.variant, "tokens": None, "intermediate": None,
                    "result_bytes": r.size_bytes, "measured_s": r.median, "ci_low": r.ci_low, "ci_high": r.ci_high,
                    "predicted_ch0_s": pred("ch0", ob), "predicted_fit_s": pred("fit", ob),
                    "in_fit": bool(r.size_bytes >= FIT_MIN_BYTES)})  # fmt: skip
    calls = pd.DataFrame(calls)
    if not calls.empty:
        # the model is of moving data: compare with the time the last-arriving rank spent inside the collectives
        mlp = summary.query("experiment == 'mlp' and metric == 'in_collectives_min' and payload == 'numpy' and ranks == 2")
        for r in mlp.itertuples():
            c = calls.query("strategy == @r.variant and ranks == 2 and tokens == @r.tokens and intermediate == @r.intermediate")
            ob = list(zip(c["op"], c["result_bytes"], strict=True))
            out.append({"what": "mlp", "variant": r.variant, "tokens": r.tokens, "intermediate": r.intermediate,
                        "result_bytes": int(c["result_bytes"].sum()), "measured_s": r.median, "ci_low": r.ci_low,
                        "ci_high": r.ci_high, "predicted_ch0_s": pred("ch0", ob), "predicted_fit_s": pred("fit", ob),
                        "in_fit": False})  # fmt: skip
    df = pd.DataFrame(out)
    df["error_ch0"] = df["predicted_ch0_s"] / df["measured_s"] - 1
    df["error_fit"] = df["predicted_fit_s"] / df["measured_s"] - 1
    return df


def projection(summary: pd.DataFrame, ranks=(2, 8)) -> pd.DataFrame:
    """Project each strategy's MLP time per call to TP = 8 on one node and on two nodes over :data:`NETWORKS`.

    Compute: the measured TP = 1 compute time divided by p (ideal scaling, so a
    lower bound on time). Communication: the ring model over the strategy's
    collectives (their result sizes do not depend on p), with the TP = 2 collective
    fit for one node and the stated parameters of each network for two nodes (the
    ring's slowest link sets each step's time).
    """
    links = {"one node (TP = 2 collective fit)": _links(collective_fit(summary))["fit"]}
    for name, n in NETWORKS.items():
        links[f"two nodes, {name}"] = {op: (n["alpha_s"], n["beta_Bps"]) for op in ("Allgather", "Allgatherv", "Allreduce")}
    mlp = summary.query("experiment == 'mlp' and payload == 'numpy'")
    out = []
    for (t, i), sub in mlp.groupby(["tokens", "intermediate"]):
        t1 = sub.query("ranks == 1 and metric == 'compute'")["median"]
        if t1.empty:
            continue
        forms = tp.volume_formulas(int(t), int(sub["hidden"].iloc[0]), int(i), 2)
        for s in tp.STRATEGIES:
            for p in ranks:
                for where, link in links.items():
                    if p == 2 and not where.startswith("one node"):
                        continue
                    comm_s = sum(tp.ring_time(c["op"], c["result_bytes"], p, *link[c["op"]]) for c in forms[s]["calls"])
                    meas = sub.query("ranks == @p and variant == @s and metric == 'total'")["median"]
                    out.append({"tokens": int(t), "intermediate": int(i), "strategy": s, "TP": p, "where": where,
                                "compute (ms)": float(t1.iloc[0]) / p * 1e3, "communication (ms)": comm_s * 1e3,
                                "total (ms)": (float(t1.iloc[0]) / p + comm_s) * 1e3,
                                "communication share": comm_s / (float(t1.iloc[0]) / p + comm_s),
                                "measured total (ms)": float(meas.iloc[0]) * 1e3 if len(meas) else np.nan})  # fmt: skip
    return pd.DataFrame(out)


def volume_table(calls: pd.DataFrame, t: int = 128, h: int = 1024, i: int = 2048, p: int = 2) -> pd.DataFrame:
    """Return per strategy: counted collectives and bytes beside the formulas and seed 004's table (which mixes units)."""
    forms = tp.volume_formulas(t, h, i, p)
    seed = {"s1": (4, 2_097_152), "s2": (3, 2_621_440), "s3": (None, None)}
    out = []
    for s in tp.STRATEGIES:
        c = calls.query("strategy == @s and ranks == @p and tokens == @t and intermediate == @i")
        out.append({
            "strategy": tp.STRATEGY_LABELS[s],
            "collectives (counted)": len(c),
            "collectives (formula)": forms[s]["collectives"],
            "result floats (counted)": int(c["result_bytes"].sum() // 4),
            "result floats (formula)": int(forms[s]["result_bytes"] // 4),
            "ring floats received per rank (counted)": float(c["ring_bytes"].sum() / 4),
            "ring floats (formula)": forms[s]["ring_bytes"] / 4,
            "seed's collectives": seed[s][0],
            "seed's 'floats' (really bytes of t x 1024 or t x 2048)": seed[s][1],
        })  # fmt: skip
    return pd.DataFrame(out)


def split_table(summary: pd.DataFrame, tokens: int, intermediate: int = 2048) -> pd.DataFrame:
    """Return compute and communication medians (ms) per kernel, strategy and TP at one token count."""
    m = summary.query("experiment == 'mlp' and tokens == @tokens and intermediate == @intermediate")
    piv = m.pivot_table(index=["payload", "ranks", "variant"], columns="metric", values="median", aggfunc="first")
    piv = (piv[["compute", "communication", "total"]] * 1e3).rename(columns=lambda c: f"{c} (ms)")
    piv["communication share"] = piv["communication (ms)"] / piv["total (ms)"]
    return piv.reset_index().rename(columns={"payload": "kernel", "variant": "strategy"})


def tokens_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Return tokens/s (median [CI]) for prefill and decode per layout and TP, with the communication share."""
    out = []
    for phase in ("prefill", "decode"):
        d = summary[summary["experiment"] == f"decoder_{phase}"]
        for (var, p), sub in d.groupby(["variant", "ranks"], sort=False):
            tps = sub.query("metric == 'tokens_per_s'").iloc[0]
            tot = sub.query("metric == 'total'").iloc[0]
            com = sub.query("metric == 'communication'").iloc[0]
            out.append({"phase": phase, "layout (attention/MLP)": var, "TP": int(p),
                        "oversubscribed": bool(tot["oversubscribed"]),
                        "tokens/s": tps["median"], "CI low": tps["ci_low"], "CI high": tps["ci_high"],
                        "ms per forward": tot["median"] * 1e3, "communication share": com["median"] / tot["median"]})  # fmt: skip
    return pd.DataFrame(out)


def decode_split(summary: pd.DataFrame) -> pd.DataFrame:
    """Return a decode step's time split per decoder layout (ms, medians with their intervals): the step, attention (its
    projections, kernel and collective), the attention kernel alone, the MLP, and the rest (norms, embedding, LM head:
    the step's median minus the two parts' medians). Empty for results without the split."""
    d = summary[summary["experiment"] == "decoder_decode"]
    out = []
    for (var, p), sub in d.groupby(["variant", "ranks"], sort=False):
        got = {m: sub[sub["metric"] == m] for m in ("total", *DECODER_PARTS)}
        if any(g.empty for g in got.values()):
            continue
        row = {"variant": var, "TP": int(p), "oversubscribed": bool(got["total"].iloc[0]["oversubscribed"])}
        for m, g in got.items():
            r = g.iloc[0]
            row[m], row[f"{m} low"], row[f"{m} high"] = (float(r[c]) * 1e3 for c in ("median", "ci_low", "ci_high"))
        row["rest"] = max(row["total"] - row["attention"] - row["mlp"], 0.0)
        row["attention share"] = row["attention"] / row["total"]
        row["kernel share of attention"] = row["attention_kernel"] / row["attention"]
        out.append(row)
    return pd.DataFrame(out)


def targets(summary: pd.DataFrame, model_tab: pd.DataFrame) -> dict:
    """Return the chapter's targets: S3 least data and fastest at TP = 2 (seed's shapes), model within 25% at >= 64 KiB."""
    t, i = SEED_SHAPE["t"], SEED_SHAPE["i"]
    tot = {s: pick_row(summary, experiment="mlp", payload="numpy", tokens=t, intermediate=i, ranks=2, variant=s,
                   metric="total") for s in tp.STRATEGIES}  # fmt: skip
    fastest = min(tot, key=lambda s: tot[s]["median"])
    least = min(tot, key=lambda s: tot[s]["ring_bytes"])
    big = model_tab.query("result_bytes >= @FIT_MIN_BYTES")
    oos = big.query("what == 'mlp'")
    return {
        "s3_least_data": least == "s3",
        "s3_fastest": fastest == "s3",
        "fastest": fastest,
        "s3_ci_clear": bool(all(tot["s3"]["ci_high"] < tot[s]["ci_low"] for s in ("s1", "s2"))),
        "ch0_model_max_abs_error": float(big["error_ch0"].abs().max()),
        "fit_model_max_abs_error_collectives": float(big.query("what == 'collective'")["error_fit"].abs().max()),
        "fit_model_max_abs_error_mlp": float(oos["error_fit"].abs().max()),
        "model_within_25pct_64k": bool((big["error_fit"].abs() <= 0.25).all()),
    }


def derived_rows(summary: pd.DataFrame, samples: pd.DataFrame, calls: pd.DataFrame) -> list[dict]:
    """Return the counted volumes and the time ratios seed 004's claims read (counts are exact; times carry intervals).

    Pure: from this chapter's summary, raw samples and the collective calls counted by CountingComm.
    Volumes are those of the seed's shapes at TP = 2 (t, h, i = 128, 1024, 2048).
    """
    from ._common import derived_row, exact_row, sample_values

    out = []
    t, h, i = SEED_SHAPE["t"], SEED_SHAPE["h"], SEED_SHAPE["i"]
    c = calls.query("ranks == 2 and tokens == @t and intermediate == @i")
    lab = {"tokens": t, "hidden": h, "intermediate": i, "ranks": 2}
    for strat in tp.STRATEGIES:
        mine = c[c["strategy"] == strat]
        out.append(exact_row(len(mine), "collectives", "1", CHAPTER, f"collectives per {strat} MLP call (counted)",
                             payload=strat, **lab))  # fmt: skip
        out.append(exact_row(float(mine["result_bytes"].sum()) / 4, "result_floats", "1", CHAPTER,
                             f"floats (4 B) of every result buffer of one {strat} MLP call (counted)", payload=strat, **lab))  # fmt: skip
        for tag, b in mine.groupby("tag")["result_bytes"].sum().items():
            out.append(exact_row(float(b), "result_bytes", "B", CHAPTER, f"bytes of the {tag} collective's result in {strat}",
                                 payload=f"{strat}:{tag}", **lab))  # fmt: skip
            out.append(exact_row(float(b) / 4, "result_floats", "1", CHAPTER, f"floats of the {tag} collective's result in {strat}",
                                 payload=f"{strat}:{tag}", **lab))  # fmt: skip
    n1, n2 = (len(c[c["strategy"] == x]) for x in ("s1", "s2"))
    b1, b2 = (float(c[c["strategy"] == x]["result_bytes"].sum()) for x in ("s1", "s2"))
    out.append(exact_row(n2 - n1, "s2_extra_collectives", "1", CHAPTER, "collectives of S2 minus those of S1 (counted)", **lab))
    out.append(exact_row((b2 / b1 - 1) * 100, "s2_more_floats", "%", CHAPTER, "result floats of S2 over S1, minus 1 (counted)", **lab))

    mlp = summary.query("experiment == 'mlp'")
    slow_t = int(mlp.query("payload == 'numba_scalar'")["tokens"].max())

    def m(strategy, kernel, tokens, metric="total", p=2):
        return sample_values(summary, samples, experiment="mlp", variant=strategy if p > 1 else "tp1", payload=kernel,
                             tokens=tokens, intermediate=i, ranks=p, metric=metric)  # fmt: skip

    def add(fn, sets, name, unit, inputs, **labels):
        out.append(derived_row(fn, sets, name, unit, CHAPTER, inputs=inputs, **labels))

    for kernel in ("numpy", "numba_simd", "numba_scalar"):
        row = pick_row(mlp, variant="s1", payload=kernel, tokens=slow_t, intermediate=i, ranks=2, metric="total")
        out.append(exact_row(float(row["result_bytes"]), "s1_call_result_bytes", "B", CHAPTER,
                             f"bytes of every result buffer of one S1 MLP call with the {kernel} kernel (counted)",
                             payload=kernel, tokens=slow_t, intermediate=i, ranks=2))  # fmt: skip
    add(lambda sc, sv: sc / sv, [m("tp1", "numba_scalar", slow_t, "compute", 1), m("tp1", "numba_simd", slow_t, "compute", 1)],
        "simd_speedup", "x", "the same compiled MLP loops, strict IEEE (scalar) over fastmath (vectorised), one rank",
        tokens=slow_t, intermediate=i, ranks=1)  # fmt: skip
    for kernel, tokens in (("numpy", t), ("numba_simd", slow_t), ("numba_scalar", slow_t)):
        add(lambda a, b: a / b, [m("s1", kernel, tokens), m("s2", kernel, tokens)], "s1_over_s2", "x",
            "one MLP call at TP = 2, S1 (4 Allgathers) over S2 (the AVX2 version's layout)", payload=kernel,
            tokens=tokens, intermediate=i, ranks=2)  # fmt: skip
    add(lambda a, b: a / b, [m("s1", "numba_simd", slow_t), m("s1", "numba_scalar", slow_t)], "proposal1_over_plain", "x",
        "one S1 MLP call at TP = 2 with the vectorised kernel over the plain (scalar) kernel", tokens=slow_t,
        intermediate=i, ranks=2)  # fmt: skip
    add(lambda s2, s3: s2 - s3, [m("s2", "numba_simd", slow_t), m("s3", "numba_simd", slow_t)], "gain_layout", "s",
        "time saved per MLP call at TP = 2 by the communication change, S2 -> S3 (vectorised kernel)", tokens=slow_t,
        intermediate=i, ranks=2)  # fmt: skip
    add(lambda sc, sv: sc - sv, [m("s2", "numba_scalar", slow_t), m("s2", "numba_simd", slow_t)], "gain_kernel", "s",
        "time saved per MLP call at TP = 2 by the compute change, scalar -> vectorised kernel (S2 layout)",
        tokens=slow_t, intermediate=i, ranks=2)  # fmt: skip
    d1 = sample_values(summary, samples, experiment="decoder_prefill", variant="sequence/s1", ranks=2, metric="total")
    d2 = sample_values(summary, samples, experiment="decoder_prefill", variant="sequence/s2", ranks=2, metric="total")
    add(lambda a, b: (a / b - 1) * 100, [d2, d1], "s2_decoder_slower", "%",
        "decoder prefill at TP = 2, S2 MLP layout's time over S1's, minus 1 (the same numpy kernel in both)", ranks=2)
    (m1, k1), (m2, k2) = SOURCE_PAIR
    plain = sample_values(summary, samples, experiment="decoder_decode", variant=f"sequence/{m1}/{k1}", ranks=2, metric="total")
    simd_ = sample_values(summary, samples, experiment="decoder_decode", variant=f"sequence/{m2}/{k2}", ranks=2, metric="total")
    add(lambda a, b: (a / b - 1) * 100, [simd_, plain], "source_pair_decoder_slower", "%",
        f"decode step at TP = 2, the source's pair: {m2.upper()} with the vectorised kernel ({k2}) over {m1.upper()} with "
        f"the plain kernel ({k1}), time over time minus 1", ranks=2)  # fmt: skip
    pre_plain = summary[(summary["experiment"] == "decoder_prefill") & (summary["variant"] == f"sequence/{m1}/{k1}")]
    if not pre_plain.empty:  # the same pair on the source's 128-token prompt: one forward of the whole prompt
        plain_p = sample_values(summary, samples, experiment="decoder_prefill", variant=f"sequence/{m1}/{k1}", ranks=2,
                                metric="total")  # fmt: skip
        simd_p = sample_values(summary, samples, experiment="decoder_prefill", variant=f"sequence/{m2}/{k2}", ranks=2,
                               metric="total")  # fmt: skip
        t_p = int(pre_plain["tokens"].iloc[0])
        add(lambda a, b: (a / b - 1) * 100, [simd_p, plain_p], "source_pair_prefill_slower", "%",
            f"prefill of a {t_p}-token prompt at TP = 2, the source's pair: {m2.upper()} with the vectorised kernel over "
            f"{m1.upper()} with the plain kernel, time over time minus 1", ranks=2, tokens=t_p)  # fmt: skip
    split = summary[(summary["experiment"] == "decoder_decode") & (summary["metric"] == "mlp")]
    if not split.empty:  # (results from before the decoder timed its parts have no split)

        def part(m_, k_, metric):
            return sample_values(summary, samples, experiment="decoder_decode", variant=f"sequence/{m_}/{k_}", ranks=2,
                                 metric=metric)  # fmt: skip

        for metric, words in (("mlp", "MLP"), ("attention", "attention")):
            add(lambda a, b: np.abs(a - b), [part(m2, k2, metric), part(m1, k1, metric)], f"source_pair_{metric}_change",
                "s", f"decode step at TP = 2, the source's pair: how much the {words} time differs between the two "
                f"versions (either way), |{m2.upper()} + {k2} - {m1.upper()} + {k1}|", ranks=2)  # fmt: skip
        add(lambda a, b: a / b, [part(m1, k1, "attention_kernel"), part(m2, k2, "attention_kernel")],
            "source_pair_attention_kernel_speedup", "x", f"decode step at TP = 2, the source's pair: time in the "
            f"attention kernel of the plain version ({k1} loop) over the AVX2 version's ({k2} loop)", ranks=2)  # fmt: skip
    for phase in ("decode", "prefill"):  # the attention block in the sequence layout against the head-parallel one
        seq_a = sample_values(summary, samples, experiment=f"decoder_{phase}", variant="sequence/s3", ranks=2,
                              metric="attention")  # fmt: skip
        heads_a = sample_values(summary, samples, experiment=f"decoder_{phase}", variant="heads/s3", ranks=2,
                                metric="attention")  # fmt: skip
        add(lambda a, b: a / b, [seq_a, heads_a], f"sequence_over_heads_attention_{phase}", "x",
            f"{phase} at TP = 2 (S3 MLP in both): time in attention per step, the sequence layout (every rank projects q "
            "and the output in full) over the head-parallel layout (each rank projects its own heads)", ranks=2)  # fmt: skip
    one = sample_values(summary, samples, experiment="decoder_decode", variant="heads/s3", ranks=2, metric="total")
    thr = sample_values(summary, samples, experiment="decoder_decode", variant=f"tp1/{THREADS_PER_RANK}threads", ranks=1,
                        metric="total")  # fmt: skip
    add(lambda a, b: a / b, [thr, one], "threads_over_ranks_decode", "x",
        f"decode step: 1 rank x {THREADS_PER_RANK} BLAS threads over 2 ranks x 1 thread (heads/S3), time over time",
        ranks=2)  # fmt: skip
    one_p = sample_values(summary, samples, experiment="decoder_prefill", variant="heads/s3", ranks=2, metric="total")
    thr_p = sample_values(summary, samples, experiment="decoder_prefill", variant=f"tp1/{THREADS_PER_RANK}threads",
                          ranks=1, metric="total")  # fmt: skip
    add(lambda a, b: a / b, [thr_p, one_p], "threads_over_ranks_prefill", "x",
        f"prefill: 1 rank x {THREADS_PER_RANK} BLAS threads over 2 ranks x 1 thread (heads/S3), time over time",
        ranks=2)  # fmt: skip
    return out


def reanalyze(res: results.Results) -> list[dict]:
    """Return this chapter's derived rows recomputed from its results on disk."""
    return derived_rows(res.summary[res.summary["experiment"] != "derived"], res.samples, res.extra("calls"))
