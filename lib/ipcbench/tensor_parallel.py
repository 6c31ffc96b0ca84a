"""Tensor parallelism over MPI for the Qwen3-style decoder of :mod:`ipcbench.model`.

Three ways to shard the SwiGLU MLP ``down(silu(x @ gate) * (x @ up))`` over ``p``
ranks, for hidden size ``h``, intermediate size ``i`` and ``t`` tokens (the input
``x`` is replicated on every rank):

* **S1**, seed 004's plain version: every linear computes a slice of its output
  features and ``Allgather``s it, and so does the SwiGLU (4 Allgathers: gate, up,
  activated, down);
* **S2**, seed 004's AVX2 version: gate and up sharded on the intermediate axis,
  each ``Allgatherv``'d; SwiGLU on the full tensor (on every rank); down sharded on
  its input axis and ``Allreduce``d (3 collectives);
* **S3**, Megatron-style: column-parallel gate and up with no gather, SwiGLU on the
  local slice, row-parallel down, one ``Allreduce``.

Every collective goes through :class:`CountingComm`, which records the buffers
each call really hands to MPI, so volumes are counted, not worked out by hand.

Also here: sequence-parallel attention with online softmax (each rank holds a
block of keys/values; partial results are merged with the log-sum-exp rule),
head-parallel attention, a whole decoder forward across ranks
(:class:`TPDecoder`), the matrix-product kernels the chapter compares
(numpy/BLAS, numba with and without ``fastmath``, a pure-Python loop), and the
attention kernels (numpy, and a compiled online-softmax loop with and without
``fastmath``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from . import model
from .measure import now_ns

DTYPE = model.DTYPE
STRATEGIES = ("s1", "s2", "s3")
STRATEGY_LABELS = {
    "s1": "S1 feature-sliced linears + 4 Allgather (seed's plain MPI)",
    "s2": "S2 gate/up Allgatherv + down Allreduce (seed's AVX2 MLP)",
    "s3": "S3 column/row parallel, 1 Allreduce (Megatron)",
}
KERNELS = ("numpy", "numba_simd", "numba_scalar", "python")
KERNEL_LABELS = {
    "numpy": "numpy @ (OpenBLAS sgemm, 1 thread)",
    "numba_simd": "numba dot loop, fastmath (vectorised)",
    "numba_scalar": "numba dot loop, strict IEEE (scalar)",
    "python": "pure-Python loop",
}


class ShardError(ValueError):
    """Shapes that cannot be split over the ranks, or ranks that disagree on the shapes."""


# --------------------------------------------------------------------- counting


@dataclasses.dataclass
class CommRecord:
    """One collective call as a rank saw it."""

    op: str
    tag: str
    send_bytes: int  # this rank's send buffer
    recv_bytes: int  # this rank's result buffer
    peer_bytes: int  # bytes of the result that come from other ranks' data
    ring_bytes: float  # bytes this rank receives under the bandwidth-optimal ring algorithm
    seconds: float


class CountingComm:
    """An mpi4py communicator wrapper that counts every collective's bytes and time on this rank.

    ``ring_bytes`` uses the ring algorithms: Allgather(v) of an ``n``-byte result
    receives ``n - own`` bytes; Allreduce of ``n`` bytes receives ``2 (p-1)/p n``
    (reduce-scatter then allgather). ``peer_bytes`` is what must come from
    elsewhere whatever the algorithm (for Allreduce, the ``n`` reduced bytes).
    """

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.records: list[CommRecord] = []

    def reset(self) -> None:
        """Forget the records."""
        self.records = []

    def seconds(self) -> float:
        """Return the time spent inside collectives since the last reset."""
        return sum(r.seconds for r in self.records)

    def _log(self, op, tag, send, recv, peer, ring, t0):
        self.records.append(CommRecord(op, tag, int(send), int(recv), int(peer), float(ring), (now_ns() - t0) * 1e-9))

    def Allgather(self, send: np.ndarray, recv: np.ndarray, tag: str = "") -> None:
        """Gather equal blocks from every rank into ``recv`` (rank order along the first axis)."""
        t0 = now_ns()
        self.comm.Allgather(send, recv)
        self._log("Allgather", tag, send.nbytes, recv.nbytes, recv.nbytes - send.nbytes, recv.nbytes - send.nbytes, t0)

    def Allgatherv(self, send: np.ndarray, recv: np.ndarray, counts: list[int], tag: str = "") -> None:
        """Gather blocks of ``counts`` elements (one per rank, in rank order) into ``recv``."""
        from mpi4py import MPI

        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        t0 = now_ns()
        self.comm.Allgatherv(send, [recv, list(counts), displs, MPI.FLOAT])
        self._log("Allgatherv", tag, send.nbytes, recv.nbytes, recv.nbytes - send.nbytes, recv.nbytes - send.nbytes, t0)

    def Allreduce(self, send: np.ndarray, recv: np.ndarray | None = None, op: str = "sum", tag: str = "") -> None:
        """Reduce ``send`` over the ranks into ``recv`` (``op`` sum or max); in place in ``send`` when ``recv`` is None."""
        from mpi4py import MPI

        mop = {"sum": MPI.SUM, "max": MPI.MAX}[op]
        t0 = now_ns()
        if recv is None:
            self.comm.Allreduce(MPI.IN_PLACE, send, op=mop)
            recv = send
        else:
            self.comm.Allreduce(send, recv, op=mop)
        p = self.size
        self._log("Allreduce", tag, send.nbytes, recv.nbytes, recv.nbytes if p > 1 else 0,
                  2 * (p - 1) / p * recv.nbytes, t0)  # fmt: skip

    def agree(self, value, what: str) -> None:
        """Raise :class:`ShardError` on every rank unless every rank passed the same ``value`` (not counted)."""
        values = self.comm.allgather(value)
        if any(v != values[0] for v in values):
            raise ShardError(f"ranks disagree on {what}: {values}")


def volume_formulas(t: int, h: int, i: int, p: int, itemsize: int = 4) -> dict:
    """Return per strategy the collectives, the bytes of their result buffers and the ring bytes received per rank."""
    f = (p - 1) / p

    def gather(n):
        return {"op": "Allgather", "result_bytes": n * itemsize, "ring_bytes": f * n * itemsize}

    def reduce(n):
        return {"op": "Allreduce", "result_bytes": n * itemsize, "ring_bytes": 2 * f * n * itemsize}

    table = {
        "s1": [gather(t * i), gather(t * i), gather(t * i), gather(t * h)],
        "s2": [gather(t * i), gather(t * i), reduce(t * h)],
        "s3": [reduce(t * h)],
    }
    return {
        s: {"collectives": len(c), "result_bytes": sum(x["result_bytes"] for x in c),
            "ring_bytes": sum(x["ring_bytes"] for x in c), "calls": c}
        for s, c in table.items()
    }  # fmt: skip


def ring_time(op: str, nbytes: float, p: int, alpha: float, beta: float) -> float:
    """Return the ring model's time (s) of one collective with an ``nbytes`` result on ``p`` ranks."""
    if p < 2:
        return 0.0
    if op in ("Allgather", "Allgatherv"):
        return (p - 1) * alpha + (p - 1) / p * nbytes / beta
    if op == "Allreduce":
        return 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / beta
    raise ValueError(f"no ring model for {op!r}")


# ---------------------------------------------------------------------- kernels


def _numba_kernels():
    """Compile (once per process) the numba dot-product kernels: y = x @ w_t.T for w_t (n, k)."""
    global _NUMBA
    if _NUMBA is None:
        import numba

        def dot_kernel(x, w_t, out):
            # the seed's AVX2 form: one dot product over the hidden axis per output feature
            t, k = x.shape
            n = w_t.shape[0]
            for r in range(t):
                for j in range(n):
                    acc = np.float32(0.0)
                    for c in range(k):
                        acc += x[r, c] * w_t[j, c]
                    out[r, j] = acc

        sig = "void(float32[:, ::1], float32[:, ::1], float32[:, ::1])"
        _NUMBA = {
            # fastmath lets LLVM reassociate the sum: packed FMAs over 8 (AVX2) or 16 (AVX-512) lanes
            "numba_simd": numba.njit(sig, fastmath=True, cache=False)(dot_kernel),
            # strict IEEE order: the reduction cannot be vectorised, one scalar FMA at a time
            "numba_scalar": numba.njit(sig, fastmath=False, cache=False)(dot_kernel),
        }
    return _NUMBA


_NUMBA = None


def _python_matmul(x: np.ndarray, w_t: np.ndarray) -> np.ndarray:
    t, k = x.shape
    out = np.zeros((t, w_t.shape[0]), dtype=DTYPE)
    xl, wl = x.tolist(), w_t.tolist()
    for r in range(t):
        row = xl[r]
        for j, wrow in enumerate(wl):
            acc = 0.0
            for c in range(k):
                acc += row[c] * wrow[c]
            out[r, j] = acc
    return out


def matmul(kernel: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Return ``f(x, w, w_t) -> x @ w`` for a kernel; ``w`` is (k, n), ``w_t`` its contiguous transpose (n, k)."""
    if kernel == "numpy":
        return lambda x, w, w_t: x @ w
    if kernel in ("numba_simd", "numba_scalar"):
        fn = _numba_kernels()[kernel]

        def run(x, w, w_t):
            out = np.empty((x.shape[0], w_t.shape[0]), dtype=DTYPE)
            fn(np.ascontiguousarray(x, dtype=DTYPE), w_t, out)
            return out

        return run
    if kernel == "python":
        return lambda x, w, w_t: _python_matmul(np.asarray(x, dtype=DTYPE), w_t)
    raise ValueError(f"unknown kernel {kernel!r}; kernels are {', '.join(KERNELS)}")


def simd_report(kernel: str = "numba_simd", loop: str = "matmul") -> dict:
    """Return the packed-FMA instructions in a compiled numba kernel's assembly (ymm = AVX2, zmm = AVX-512);
    ``loop`` is ``matmul`` (the dot-product kernel) or ``attention`` (the online-softmax loop)."""
    import re

    if loop not in ("matmul", "attention"):
        raise ValueError(f"loop must be 'matmul' or 'attention', got {loop!r}")
    fn = (_numba_kernels() if loop == "matmul" else _numba_attention())[kernel]
    asm = "\n".join(fn.inspect_asm().values())
    packed = [ln for ln in asm.splitlines() if re.search(r"\bvfmadd\w*ps\b", ln)]
    return {
        "kernel": kernel,
        "loop": loop,
        "packed_fma_zmm": sum("zmm" in ln for ln in packed),
        "packed_fma_ymm": sum("ymm" in ln and "zmm" not in ln for ln in packed),
        "packed_fma_xmm": sum("xmm" in ln and "mm" not in ln.replace("xmm", "") for ln in packed),
        "scalar_float_ops": len(re.findall(r"\bv(?:fmadd\w*|add|mul)ss\b", asm)),
    }


def cpu_simd_features() -> dict:
    """Return numpy's view of the CPU: baseline SIMD it was built for, and what this CPU supports of its dispatch set."""
    try:
        from numpy._core import _multiarray_umath as mu
    except ImportError:  # numpy < 2
        from numpy.core import _multiarray_umath as mu
    feats = getattr(mu, "__cpu_features__", {})
    return {
        "baseline": list(getattr(mu, "__cpu_baseline__", [])),
        "dispatch": list(getattr(mu, "__cpu_dispatch__", [])),
        "supported": sorted(k for k, v in feats.items() if v),
    }


# --------------------------------------------------------------------- the MLP


def _split(n: int, p: int, what: str, uneven: bool) -> list[int]:
    if n < p:
        raise ShardError(f"{what} = {n} cannot be split over {p} ranks")
    if n % p and not uneven:
        raise ShardError(f"{what} = {n} is not divisible by {p} ranks; this strategy needs equal shards")
    return [len(c) for c in np.array_split(np.arange(n), p)]


class ShardedMLP:
    """This rank's shards of a SwiGLU MLP for one strategy; :meth:`__call__` runs the forward (collective).

    S1 and S3 need ``h`` and ``i`` divisible by the rank count (Allgather and
    column/row shards of equal size); S2 uses Allgatherv and accepts an uneven
    split of ``i`` (the first ``i % p`` ranks get one more column). Shapes are
    checked on every rank alike at construction, so a bad shape raises
    :class:`ShardError` everywhere and no rank is left in a collective.
    """

    def __init__(self, comm: CountingComm, gate: np.ndarray, up: np.ndarray, down: np.ndarray,
                 strategy: str = "s3", kernel: str = "numpy"):  # fmt: skip
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; strategies are {', '.join(STRATEGIES)}")
        h, i = gate.shape
        comm.agree((gate.shape, up.shape, down.shape, strategy, kernel), "the MLP's shapes, strategy and kernel")
        if up.shape != (h, i) or down.shape != (i, h):
            raise ShardError(f"gate {gate.shape}, up {up.shape}, down {down.shape} do not form an MLP")
        p, r = comm.size, comm.rank
        self.comm, self.strategy, self.kernel = comm, strategy, kernel
        self._buffers: dict = {}
        self.h, self.i, self.p = h, i, p
        self.i_counts = _split(i, p, "intermediate size", uneven=strategy == "s2")
        self.h_counts = _split(h, p, "hidden size", uneven=False) if strategy == "s1" else None
        i0 = sum(self.i_counts[:r])
        isl = slice(i0, i0 + self.i_counts[r])
        self._mm = matmul(kernel)

        def shard(w):
            w = np.ascontiguousarray(w, dtype=DTYPE)
            return w, np.ascontiguousarray(w.T)

        self.gate, self.up = shard(gate[:, isl]), shard(up[:, isl])
        if strategy == "s1":
            h0 = sum(self.h_counts[:r])
            self.down = shard(down[:, h0 : h0 + self.h_counts[r]])
            self.isl = isl
        else:
            self.down = shard(down[isl, :])

    def _gather_cols(self, local: np.ndarray, counts: list[int], tag: str) -> np.ndarray:
        """Allgather column blocks (t, n_r) from every rank into (t, sum n_r)."""
        t = local.shape[0]
        send = np.ascontiguousarray(local.T)  # (n_r, t): rank blocks then concatenate along the first axis
        recv = self._buffers.get((tag, t))
        if recv is None:  # receive buffers are kept per token count: fresh pages would be faulted in on every call
            recv = self._buffers[(tag, t)] = np.empty((sum(counts), t), dtype=DTYPE)
        if len(set(counts)) == 1:
            self.comm.Allgather(send, recv, tag=tag)
        else:
            self.comm.Allgatherv(send, recv, [c * t for c in counts], tag=tag)
        return recv.T

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Return the MLP output (t, h) on every rank for the replicated input ``x`` (t, h)."""
        if x.ndim != 2 or x.shape[1] != self.h:
            raise ShardError(f"input of shape {x.shape} does not match hidden size {self.h}")
        x = np.ascontiguousarray(x, dtype=DTYPE)
        mm = self._mm
        g = mm(x, *self.gate)
        u = mm(x, *self.up)
        if self.strategy == "s1":
            g = self._gather_cols(g, self.i_counts, "gate")
            u = self._gather_cols(u, self.i_counts, "up")
            act = model.silu(g[:, self.isl]) * u[:, self.isl]  # SwiGLU on this rank's slice, then gathered
            act = self._gather_cols(act, self.i_counts, "activated")
            out = mm(act, *self.down)
            return np.ascontiguousarray(self._gather_cols(out, self.h_counts, "down"))
        if self.strategy == "s2":
            g = self._gather_cols(g, self.i_counts, "gate")
            u = self._gather_cols(u, self.i_counts, "up")
            act = model.silu(g) * u  # every rank runs SwiGLU on the full (t, i) tensor
            r = self.comm.rank
            i0 = sum(self.i_counts[:r])
            part = mm(np.ascontiguousarray(act[:, i0 : i0 + self.i_counts[r]]), *self.down)
        else:
            part = mm(np.ascontiguousarray(model.silu(g) * u), *self.down)
        self.comm.Allreduce(part, tag="down")  # in place: the partial sums become the output
        return part


# -------------------------------------------------------------------- attention


def _gqa_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Return scaled scores (heads, t, s) for q (heads, t, d) and k (kv_heads, s, d) without repeating k."""
    heads, t, d = q.shape
    kv = k.shape[0]
    g = heads // kv
    s = (q.reshape(kv, g * t, d) @ k.transpose(0, 2, 1)) / np.sqrt(DTYPE(d))
    return s.reshape(heads, t, k.shape[1])


def _gqa_apply(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    heads, t, s = w.shape
    kv = v.shape[0]
    return (w.reshape(kv, (heads // kv) * t, s) @ v).reshape(heads, t, v.shape[2])


def attention_block(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_positions, k_positions) -> tuple[np.ndarray, np.ndarray]:
    """Attention of all queries over one block of keys: return (normalised output, log-sum-exp), causal by position.

    ``lse`` is ``-inf`` where no key of the block is visible to a query (its output is then 0).
    """
    scores = _gqa_scores(q, k).astype(np.float32)
    mask = np.asarray(k_positions)[None, :] > np.asarray(q_positions)[:, None]
    scores = np.where(mask[None], -np.inf, scores)
    m = np.max(scores, axis=-1, keepdims=True) if scores.shape[-1] else np.full(scores.shape[:-1] + (1,), -np.inf)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(scores - m_safe)
    den = np.sum(e, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, _gqa_apply(e.astype(DTYPE), v) / np.where(den > 0, den, 1), 0.0)
        lse = np.where(den > 0, m_safe + np.log(np.where(den > 0, den, 1)), -np.inf)
    return out.astype(DTYPE), lse[..., 0].astype(np.float32)


def _numba_attention():
    """Compile (once per process) the online-softmax attention loops, vectorised and strict IEEE."""
    global _NUMBA_ATTENTION
    if _NUMBA_ATTENTION is None:
        import math

        import numba

        def online_softmax(q, k, v, q_pos, k_pos, out, lse):
            # one pass over the keys per (head, query): running maximum, running denominator, running weighted sum
            heads, t, d = q.shape
            kv_heads, s = k.shape[0], k.shape[1]
            group = heads // kv_heads
            scale = np.float32(1.0) / np.float32(math.sqrt(d))
            acc = np.empty(d, dtype=np.float32)
            for hd in range(heads):
                kh = hd // group
                for r in range(t):
                    seen = False
                    m = np.float32(0.0)
                    den = np.float32(0.0)
                    for c in range(d):
                        acc[c] = np.float32(0.0)
                    for j in range(s):
                        if k_pos[j] > q_pos[r]:
                            continue
                        sc = np.float32(0.0)
                        for c in range(d):
                            sc += q[hd, r, c] * k[kh, j, c]
                        sc *= scale
                        if not seen:
                            m, seen = sc, True
                        elif sc > m:
                            corr = np.float32(math.exp(m - sc))
                            den *= corr
                            for c in range(d):
                                acc[c] *= corr
                            m = sc
                        w = np.float32(math.exp(sc - m))
                        den += w
                        for c in range(d):
                            acc[c] += w * v[kh, j, c]
                    if seen:
                        for c in range(d):
                            out[hd, r, c] = acc[c] / den
                        lse[hd, r] = m + np.float32(math.log(den))
                    else:  # no visible key in this block: a zero output that merge_lse weighs 0
                        for c in range(d):
                            out[hd, r, c] = np.float32(0.0)
                        lse[hd, r] = -np.inf

        sig = ("void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1], int64[::1], int64[::1], "
               "float32[:, :, ::1], float32[:, ::1])")  # fmt: skip
        _NUMBA_ATTENTION = {
            # reassociation and contraction let LLVM vectorise the dot products and the weighted sum over head_dim;
            # no 'nnan'/'ninf': the loop writes -inf for a query that sees no key of the block
            "numba_simd": numba.njit(sig, fastmath={"reassoc", "contract", "nsz", "arcp"}, cache=False)(online_softmax),
            "numba_scalar": numba.njit(sig, fastmath=False, cache=False)(online_softmax),
        }
    return _NUMBA_ATTENTION


_NUMBA_ATTENTION = None
ATTENTION_KERNEL_LABELS = {
    "numpy": "numpy: scores, softmax and weighted sum as whole-array operations",
    "numba_simd": "numba online-softmax loop, fastmath (vectorised over head_dim)",
    "numba_scalar": "numba online-softmax loop, strict IEEE (scalar)",
}


def attention_kernel(kernel: str) -> Callable:
    """Return ``block(q, k, v, q_positions, k_positions) -> (out, lse)`` for an attention kernel.

    ``numba_simd`` and ``numba_scalar`` are the compiled online-softmax loop (one
    pass over the keys, as the seed's attention); any other kernel name gives the
    numpy :func:`attention_block` (the matrix-product kernels ``numpy`` and
    ``python`` have no attention of their own).
    """
    if kernel not in ("numba_simd", "numba_scalar"):
        return attention_block
    fn = _numba_attention()[kernel]

    def block(q, k, v, q_positions, k_positions):
        heads, t, d = q.shape
        out = np.empty((heads, t, d), dtype=DTYPE)
        lse = np.empty((heads, t), dtype=np.float32)
        fn(np.ascontiguousarray(q, dtype=DTYPE), np.ascontiguousarray(k, dtype=DTYPE), np.ascontiguousarray(v, dtype=DTYPE),
           np.ascontiguousarray(q_positions, dtype=np.int64), np.ascontiguousarray(k_positions, dtype=np.int64), out, lse)  # fmt: skip
        return out, lse

    return block


def merge_lse(outs: np.ndarray, lses: np.ndarray) -> np.ndarray:
    """Merge per-block attention results with the log-sum-exp rule: outs (b, heads, t, d), lses (b, heads, t)."""
    m = np.max(lses, axis=0)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(lses - m_safe)  # (b, heads, t); 0 for blocks that saw no key
    tot = np.sum(w, axis=0)
    return (np.sum(w[..., None] * outs, axis=0) / np.where(tot > 0, tot, 1)[..., None]).astype(DTYPE)


def attention_sequence_parallel(comm: CountingComm, q: np.ndarray, k_local: np.ndarray, v_local: np.ndarray,
                                q_positions, k_positions_local, block: Callable = attention_block) -> np.ndarray:  # fmt: skip
    """Sequence-parallel causal GQA: each rank holds a block of keys/values; return the full output on every rank.

    Every rank computes its block's normalised output and log-sum-exp for all
    queries (online softmax, with ``block``: see :func:`attention_kernel`), one
    ``Allgather`` exchanges them (``heads * t * (d + 1)`` floats per rank), and each
    rank merges them with :func:`merge_lse`.
    """
    out, lse = block(q, k_local, v_local, q_positions, k_positions_local)
    heads, t, d = out.shape
    send = np.empty((heads, t, d + 1), dtype=DTYPE)
    send[..., :d], send[..., d] = out, lse
    recv = np.empty((comm.size, heads, t, d + 1), dtype=DTYPE)
    comm.Allgather(send, recv, tag="attention lse")
    return merge_lse(recv[..., :d], recv[..., d])


# ----------------------------------------------------------------- the decoder


class TPDecoder:
    """The whole decoder of :mod:`ipcbench.model` across the ranks of ``comm`` (collective calls).

    * ``attention="heads"``: q/k/v projections column-parallel by KV-head group,
      attention local, ``o_proj`` row-parallel and ``Allreduce``d (Megatron);
    * ``attention="sequence"``: the seed's layout: q and ``o_proj`` replicated, each
      rank keeps the keys/values of the positions it owns (prompt in contiguous
      blocks, decoded tokens round-robin), :func:`attention_sequence_parallel`.

    The MLP uses :class:`ShardedMLP` with ``mlp`` (s1, s2 or s3). ``kernel`` is the
    MLP's matrix-product kernel and the attention's kernel (:func:`attention_kernel`:
    the compiled online-softmax loop for the numba kernels, numpy otherwise).
    Embedding, norms and the LM head are replicated (no communication).

    ``part_s`` holds this rank's wall seconds in attention (projections, the
    kernel and its collective), in the attention kernel alone (scores, softmax and
    weighted sum) and in the MLP since the last :meth:`reset_parts`.
    """

    PARTS = ("attention", "attention_kernel", "mlp")

    def __init__(self, comm: CountingComm, weights: model.Weights, mlp: str = "s3", attention: str = "heads",
                 kernel: str = "numpy"):  # fmt: skip
        cfg = weights.config
        if attention not in ("heads", "sequence"):
            raise ValueError(f"attention must be 'heads' or 'sequence', got {attention!r}")
        comm.agree((dataclasses.astuple(cfg)[:7], mlp, attention, kernel), "the model configuration")
        p, r = comm.size, comm.rank
        if attention == "heads":
            _split(cfg.kv_heads, p, "KV heads", uneven=False)
        self.comm, self.w, self.cfg, self.attention = comm, weights, cfg, attention
        self._kernel_ns = 0
        inner = attention_kernel(kernel)

        def block(*args):
            t0 = now_ns()
            got = inner(*args)
            self._kernel_ns += now_ns() - t0
            return got

        self.block = block
        self.reset_parts()
        self.mlps = [ShardedMLP(comm, L.gate_proj, L.up_proj, L.down_proj, mlp, kernel) for L in weights.layers]
        self.kv_local = cfg.kv_heads // p if attention == "heads" else cfg.kv_heads
        self.heads_local = self.kv_local * (cfg.heads // cfg.kv_heads)
        d = cfg.head_dim
        if attention == "heads":
            q0, kv0 = r * self.heads_local * d, r * self.kv_local * d
            self.attn = [
                (np.ascontiguousarray(L.q_proj[:, q0 : q0 + self.heads_local * d]),
                 np.ascontiguousarray(L.k_proj[:, kv0 : kv0 + self.kv_local * d]),
                 np.ascontiguousarray(L.v_proj[:, kv0 : kv0 + self.kv_local * d]),
                 np.ascontiguousarray(L.o_proj[q0 : q0 + self.heads_local * d, :]))
                for L in weights.layers
            ]  # fmt: skip
        self.reset()

    def reset_parts(self) -> None:
        """Start counting the attention, attention-kernel and MLP seconds afresh."""
        self.part_s = dict.fromkeys(self.PARTS, 0.0)

    def reset(self) -> None:
        """Drop the KV cache."""
        self.k = [None] * self.cfg.layers
        self.v = [None] * self.cfg.layers
        self.kpos = [np.zeros(0, dtype=np.int64) for _ in range(self.cfg.layers)]
        self.length = 0

    def rewind(self, length: int) -> None:
        """Drop the cached keys and values of positions >= ``length``: the cache as it was after the first ``length``
        positions (a prompt's cache without re-running the prompt; every kept entry is unchanged)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"can rewind to 0..{self.length} positions, not {length}")
        for li in range(self.cfg.layers):
            keep = self.kpos[li] < length
            if self.k[li] is not None:
                self.k[li], self.v[li] = self.k[li][:, keep], self.v[li][:, keep]  # copies, contiguous like a prefill's
            self.kpos[li] = self.kpos[li][keep]
        self.length = length

    def _own(self, positions: np.ndarray) -> np.ndarray:
        """Return which of ``positions`` this rank keeps keys/values for (sequence attention)."""
        p, r = self.comm.size, self.comm.rank
        if positions.size > 1:  # prompt: contiguous blocks
            blocks = np.array_split(np.arange(positions.size), p)
            mask = np.zeros(positions.size, dtype=bool)
            mask[blocks[r]] = True
            return mask
        return positions % p == r  # decoded tokens: round-robin

    def _append(self, li: int, k, v, pos) -> None:
        if self.k[li] is None:
            self.k[li], self.v[li] = k, v
        else:
            self.k[li] = np.concatenate([self.k[li], k], axis=1)
            self.v[li] = np.concatenate([self.v[li], v], axis=1)
        self.kpos[li] = np.concatenate([self.kpos[li], pos])

    def _attention(self, li: int, h: np.ndarray, positions: np.ndarray) -> np.ndarray:
        cfg, L = self.cfg, self.w.layers[li]
        t, d = h.shape[0], cfg.head_dim
        cos, sin = model.rope_tables(positions, d, cfg.rope_theta)
        if self.attention == "heads":
            wq, wk, wv, wo = self.attn[li]
            q = (h @ wq).reshape(t, self.heads_local, d).transpose(1, 0, 2)
            k = (h @ wk).reshape(t, self.kv_local, d).transpose(1, 0, 2)
            v = (h @ wv).reshape(t, self.kv_local, d).transpose(1, 0, 2)
            q = model.apply_rope(model.rms_norm(q, L.q_norm, cfg.eps), cos, sin)
            k = model.apply_rope(model.rms_norm(k, L.k_norm, cfg.eps), cos, sin)
            self._append(li, k, v.astype(DTYPE), positions)
            o, _ = self.block(q, self.k[li], self.v[li], positions, self.kpos[li])
            part = np.ascontiguousarray(o.transpose(1, 0, 2).reshape(t, -1) @ wo)
            self.comm.Allreduce(part, tag="o_proj")
            return part
        own = self._own(positions)
        q = (h @ L.q_proj).reshape(t, cfg.heads, d).transpose(1, 0, 2)
        q = model.apply_rope(model.rms_norm(q, L.q_norm, cfg.eps), cos, sin)
        ho = h[own]
        k = (ho @ L.k_proj).reshape(-1, cfg.kv_heads, d).transpose(1, 0, 2)
        v = (ho @ L.v_proj).reshape(-1, cfg.kv_heads, d).transpose(1, 0, 2)
        k = model.apply_rope(model.rms_norm(k, L.k_norm, cfg.eps), cos[own], sin[own])
        self._append(li, k, v.astype(DTYPE), positions[own])
        kl = self.k[li] if self.k[li] is not None else np.zeros((cfg.kv_heads, 0, d), DTYPE)
        vl = self.v[li] if self.v[li] is not None else np.zeros((cfg.kv_heads, 0, d), DTYPE)
        o = attention_sequence_parallel(self.comm, q, kl, vl, positions, self.kpos[li], self.block)
        return o.transpose(1, 0, 2).reshape(t, -1) @ L.o_proj

    def forward(self, tokens, last_only: bool = False) -> np.ndarray:
        """Return logits (t, vocab), or (1, vocab) with ``last_only``, continuing after the cached positions."""
        cfg = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0 or tokens.min() < 0 or tokens.max() >= cfg.vocab:
            raise ValueError(f"tokens must be a non-empty 1-D sequence of ids in [0, {cfg.vocab})")
        positions = np.arange(self.length, self.length + tokens.size)
        x = self.w.embed[tokens]
        attn_ns = mlp_ns = 0
        self._kernel_ns = 0
        for li, L in enumerate(self.w.layers):
            h = model.rms_norm(x, L.input_norm, cfg.eps)
            t0 = now_ns()
            a = self._attention(li, h, positions)
            t1 = now_ns()
            x = x + a
            h = model.rms_norm(x, L.post_norm, cfg.eps)
            t2 = now_ns()
            f = self.mlps[li](h)
            attn_ns, mlp_ns = attn_ns + t1 - t0, mlp_ns + now_ns() - t2
            x = (x + f).astype(DTYPE, copy=False)
        self.part_s["attention"] += attn_ns * 1e-9
        self.part_s["mlp"] += mlp_ns * 1e-9
        self.part_s["attention_kernel"] += self._kernel_ns * 1e-9
        self.length += tokens.size
        if last_only:
            x = x[-1:]
        return (model.rms_norm(x, self.w.final_norm, cfg.eps) @ self.w.lm_head).astype(DTYPE, copy=False)

    def generate(self, prompt, new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
        """Greedy generation like :func:`ipcbench.model.generate`: (token ids, logits row of every step)."""
        self.reset()
        first = self.forward(prompt, last_only=True)[-1]
        return model.greedy(first, lambda tok: self.forward([tok], last_only=True)[-1], new_tokens)
