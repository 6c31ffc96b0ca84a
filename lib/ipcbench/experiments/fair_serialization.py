"""Chapter 1: fair serialization across IPC backends, one writer to N readers.

Every message is timed in phases on both sides, with one clock (``perf_counter_ns``
is CLOCK_MONOTONIC, shared by every process of the machine):

* ``serialize``: the writer's encode call;
* ``transfer``: from the writer's send call starting to the reader's receive call
  returning (so it includes the writer's own send work);
* ``deserialize``: the reader's decode call;
* ``end_to_end``: from the writer starting to encode to the reader having the object.

Messages are paced by a barrier (one message in flight), so each is a latency, not a
queue. Python's cyclic garbage collector is paused while a point's messages are
timed (reference counting still frees every message), so a collection triggered by
one backend's garbage is not charged to another. With several readers the cross-rank summary per message is the **maximum**
over readers (a broadcast is done when its slowest reader has it). Separately,
``read_time`` reproduces the source's metric: the reader's receive + decode call
only, measured after the writer has already queued everything it can.
"""

from __future__ import annotations

import contextlib
import struct
import time

import numpy as np
import pandas as pd

from .. import backends, claims, labels, profiles, results
from .. import serialization as ser
from ..backends.base import framed_size
from ..measure import gc_paused, mean_summary, now_ns, summarize
from ._common import (
    REPLICATES,
    Replicates,
    add_time,
    machine_state,
    pattern_bytes,
    per_message,
    progress,
    require_engines,
    run_meta,
    run_point,
    within_target,
)
from ._small_paths import LIBRARY_PATHS

CHAPTER = "fair_serialization"
KiB, MiB = 2**10, 2**20
SEQ = struct.Struct("<Q")
PHASES = ("serialize", "transfer", "deserialize")


# ----------------------------------------------------------------------- payloads


def make_records(n: int) -> list[dict]:
    """Return the source's "data size N" payload: N small dict records (deterministic)."""
    return [
        {"id": i, "name": f"item_{i:06d}", "value": i * 0.5, "score": (i % 97) / 97.0,
         "active": i % 3 == 0, "tags": [i % 7, i % 11, i % 13]}
        for i in range(n)
    ]  # fmt: skip


def make_array(nbytes: int) -> np.ndarray:
    """Return a float32 array of ``nbytes`` bytes (deterministic contents)."""
    a = np.arange(max(1, nbytes // 4), dtype=np.float32)
    a *= np.float32(0.25)  # in place: the same values as a product, without a temporary of the payload's size
    return a


RECORD_DTYPE = np.dtype([("id", "<i8"), ("name", "S11"), ("value", "<f8"), ("score", "<f8"), ("active", "?"),
                         ("tags", "<i4", (3,))])  # fmt: skip
"""The records of :func:`make_records` as fixed-size fields: the name as 11 ASCII bytes, the three tags as int32."""


def make_structured(n: int) -> np.ndarray:
    """Return the same N records as :func:`make_records`, as one numpy structured array (one row per record)."""
    i = np.arange(n, dtype=np.int64)
    a = np.empty(n, dtype=RECORD_DTYPE)
    a["id"] = i
    a["name"] = np.char.add(b"item_", np.char.zfill(i.astype("S6"), 6))
    a["value"] = i * 0.5
    a["score"] = (i % 97) / 97.0
    a["active"] = i % 3 == 0
    a["tags"] = np.stack([i % 7, i % 11, i % 13], axis=1)
    return a


def structured_to_records(a: np.ndarray) -> list[dict]:
    """Return a structured array of :data:`RECORD_DTYPE` as the list of dicts :func:`make_records` makes."""
    return [{"id": int(r["id"]), "name": r["name"].decode(), "value": float(r["value"]), "score": float(r["score"]),
             "active": bool(r["active"]), "tags": [int(t) for t in r["tags"]]} for r in a]  # fmt: skip


def make_payload(kind: str, size: int):
    """Return the payload of a kind ('records' with N records, 'structured': the same N records as one structured
    array, 'array' of size bytes)."""
    if kind == "records":
        return make_records(size)
    if kind == "structured":
        return make_structured(size)
    if kind == "array":
        return make_array(size)
    raise ValueError(f"unknown payload kind {kind!r}")


def same(a, b) -> bool:
    """Return whether a received payload equals the sent one."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


READER_WAIT = "spin"
"""How shared-memory and LMDB readers wait for the next message in the timed points (and so in the claims): polling
without pause adds no delay, as MPICH's receivers do; the ``wait_strategy`` experiment measures the others."""


def channel_options(backend: str, frame_bytes: int, messages: int, options: dict | None = None) -> dict:
    """Return the backend options that fit ``messages`` of ``frame_bytes`` (slot and map sizes), plus ``options``
    (``wait``: the reader's wait strategy; LMDB's ``buffers``, ``writemap``, ``sync``; ZeroMQ's ``transport`` and
    ``address``) for the backends that take them."""
    options = dict(options or {})
    if backend == "shm":
        options.pop("buffers", None), options.pop("writemap", None), options.pop("sync", None)
        return {"slot_bytes": max(4096, int(frame_bytes * 1.05) + 4096), "slots": 4, "wait": READER_WAIT, **options}
    if backend == "lmdb":
        return {"map_bytes": max(1 << 24, int((frame_bytes + 4096) * (messages + 4) * 1.5)), "wait": READER_WAIT,
                **options}  # fmt: skip
    if backend in ("iceoryx2", "faster_fifo"):
        return {"max_bytes": int(frame_bytes) + 4096}
    if backend == "zmq":  # (transport='tcp' and the writer's address: across hosts)
        return {k: v for k, v in options.items() if k in ("transport", "address")}
    return {}


# ------------------------------------------------------------- SPMD: on the engines


@contextlib.contextmanager
def ready_channel(backend: str, comm, **opts):
    """Open a channel on every rank and, on the writer, wait until every reader is attached; close it on the way out,
    after an error too."""
    chan = backends.open_channel(backend, comm, **opts)
    try:
        if chan.is_writer and hasattr(chan, "wait_for_readers"):
            chan.wait_for_readers()
        yield chan
    finally:
        chan.close()


def transfer_point(comm, backend: str, codec: str, kind: str, size: int, messages: int, warmup: int,
                   options: dict | None = None) -> dict | None:  # fmt: skip
    """Send ``warmup + messages`` paced messages from rank 0 to every other rank; return phase times on rank 0.

    Every message, warm-up and timed, is checked by sequence number and size, and its decoded content
    against what was sent (after its times are taken, so the check costs no measured time).
    """
    c = ser.get(codec)
    obj = make_payload(kind, size)
    frames0 = c.encode(obj)
    nbytes = ser.frames_nbytes(frames0)
    opts = channel_options(backend, framed_size(frames0) + 64, warmup + messages, options)
    del frames0
    rows = []
    cpu_ns = time.process_time_ns
    # no collection triggered by one message's garbage is charged to another
    with gc_paused(), ready_channel(backend, comm, **opts) as chan:
        for k in range(warmup + messages):
            comm.Barrier()
            if chan.is_writer:
                t0 = now_ns()
                frames = c.encode(obj)
                t1 = now_ns()
                chan.send([SEQ.pack(k), *frames])
                t2 = now_ns()
                del frames
                rows.append((k, t0, t1, t2))
            else:
                c0 = cpu_ns()
                r0 = now_ns()
                frames = chan.recv()
                r1 = now_ns()
                c1 = cpu_ns()
                out = c.decode(frames[1:])
                r2 = now_ns()
                seq = SEQ.unpack(bytes(frames[0]))[0]
                got = ser.frames_nbytes(frames[1:])
                if seq != k or got != nbytes:
                    raise AssertionError(f"{backend}/{codec}: reader {comm.rank} got message {seq} ({got} B), "
                                         f"expected {k} ({nbytes} B)")  # fmt: skip
                if not same(obj, out):  # every message, after its times are taken (outside the timed region)
                    raise AssertionError(f"{backend}/{codec}: reader {comm.rank} decoded different content in "
                                         f"message {k}")  # fmt: skip
                del out, frames
                chan.release()
                rows.append((k, r0, r1, r2, c1 - c0))
        comm.Barrier()
    gathered = comm.gather(rows, root=0)
    if comm.rank != 0:
        return None
    w = {k: (t0, t1, t2) for k, t0, t1, t2 in gathered[0]}
    per = []
    for reader, rr in enumerate(gathered[1:], start=1):
        for k, r0, r1, r2, cpu in rr:
            if k < warmup:
                continue
            t0, t1, t2 = w[k]
            per.append({"message": k, "reader": reader, "serialize": (t1 - t0) * 1e-9,
                        "send_call": (t2 - t1) * 1e-9, "transfer": (r1 - t1) * 1e-9,
                        "deserialize": (r2 - r1) * 1e-9, "end_to_end": (r2 - t0) * 1e-9,
                        "reader_wait": (r1 - r0) * 1e-9,
                        "recv_cpu_share": min(1.0, cpu / (r1 - r0)) if r1 > r0 else 1.0})  # fmt: skip
    return {"nbytes": nbytes, "per_reader": per, "options": opts}


def stream_point(comm, backend: str, nbytes: int, window: int, rounds: int, warmup: int = 2) -> dict | None:
    """Streaming bandwidth in the style of OSU's ``osu_bw``: ``window`` messages in flight, one round at a time.

    Per round the writer sends ``window`` raw arrays back to back (no barrier between them), every reader
    receives and decodes all of them, then a barrier closes the round; a sample is window x payload bytes /
    (round start to the barrier) on the writer's clock. Every message's content is checked after its round.
    Returns on rank 0 the per-round bandwidths (B/s).
    """
    c = ser.get("raw")
    obj = make_array(nbytes)
    frames0 = c.encode(obj)
    frame_bytes = framed_size([SEQ.pack(0), *frames0]) + 64
    opts = channel_options(backend, frame_bytes, (warmup + rounds) * window)
    if backend == "shm":
        opts["slots"] = window + 1  # the whole window fits in the ring
    elif backend in ("zmq",):
        opts["hwm"] = window + 4
    payload_bytes = ser.frames_nbytes(frames0)
    del frames0
    bw = []
    with ready_channel(backend, comm, **opts) as chan:
        with gc_paused():
            for rnd in range(warmup + rounds):
                comm.Barrier()
                t0 = now_ns()
                if chan.is_writer:
                    for k in range(window):
                        chan.send([SEQ.pack(rnd * window + k), *c.encode(obj)])
                else:
                    for k in range(window):
                        frames = chan.recv()
                        out = c.decode(frames[1:])
                        seq = SEQ.unpack(bytes(frames[0]))[0]
                        ok = seq == rnd * window + k and same(obj, out)
                        del out, frames
                        chan.release()
                        if not ok:
                            raise AssertionError(f"{backend}: reader {comm.rank} got a wrong message in round {rnd}")
                comm.Barrier()
                if chan.is_writer and rnd >= warmup:
                    bw.append(window * payload_bytes / ((now_ns() - t0) * 1e-9))
        comm.Barrier()
    return {"bandwidth": bw, "payload_bytes": payload_bytes} if comm.rank == 0 else None


SMALL_PATHS = ("bare_spin", "shm_fast", "shm", "iceoryx2", "iceoryx2_best", "faster_fifo", "faster_fifo_best",
               "mp_queue", "mp_queue_best", "pynng", "pynng_best", "mpi_buffer")
"""The small-message paths timed side by side (:mod:`._small_paths`): a bare shared-memory spin (the least a ring in
Python does per message), the ring's single-frame fast path, the same ring through the channel interface (frame list, Python
framing), each production library through the channel interface and as its documentation shows it for latency
(``_best``), and MPI's buffer Send/Recv (chapter 0's floor)."""


def small_path_point(comm, sizes: list[int], samples: int, inner: int, paths=SMALL_PATHS) -> dict | None:
    """Ping-pong between ranks 0 and 1 over every path of ``paths`` at every size, interleaved; one-way = RTT / 2.

    One sample is ``inner`` round trips timed on rank 0. Per round, every (path, size) is timed once, in an order
    rotated from round to round, so slow phases of the machine fall on every path alike. Every echo is checked
    (size and content) once before timing, and every message of the bare spin's own check pass. Returns on rank 0
    the one-way samples per (path, size) and each path's configuration in words.
    """
    from mpi4py import MPI

    from . import _small_paths as sps

    paths = sps.available_paths(paths)
    rev = comm.Split(0, key=comm.size - comm.rank)  # rank 1 writes on the return channels
    active = comm.rank in (0, 1)
    sub = comm.Split(0 if active else MPI.UNDEFINED, key=comm.rank)
    subrev = rev.Split(0 if active else MPI.UNDEFINED, key=rev.rank)
    out: dict = {}
    opened: dict = {}
    try:
        if active:
            for name in paths:
                opened[name] = sps.open_path(name, sub, subrev, max(sizes))
            payloads = {n: pattern_bytes(n) for n in sizes}
            me = comm.rank
            if "bare_spin" in opened:
                for n in sizes:  # every message of a check pass compared: two alternating contents per size
                    opened["bare_spin"].check([payloads[n], payloads[n][::-1].copy()], 64)
            for name, path in opened.items():  # correctness first: each path's echo is the payload
                for n in [n for n in sizes if n >= path.min_bytes]:
                    got = path.trip(payloads[n], 1)
                    if len(got) != n or bytes(got) != payloads[n].tobytes():
                        raise AssertionError(f"{name}: rank {me} received a {len(got)} B payload that differs from "
                                             f"the {n} B sent")  # fmt: skip
                    del got
                    path.release()
            cells = [(p, n) for p in opened for n in sizes if n >= opened[p].min_bytes]
            for p, n in cells:  # warm-up
                opened[p].trip(payloads[n], max(1, inner // 4))
                opened[p].release()
            for rnd in range(samples):
                k = rnd % len(cells)
                for p, n in cells[k:] + cells[:k]:
                    path, pay = opened[p], payloads[n]
                    sub.Barrier()
                    t0 = now_ns()
                    path.trip(pay, inner)
                    dt = (now_ns() - t0) * 1e-9 / inner / 2
                    path.release()
                    if me == 0:
                        out.setdefault((p, n), []).append(dt)
    finally:
        for path in opened.values():
            path.close()
        for c in (sub, subrev):
            if c != MPI.COMM_NULL:
                c.Free()
        rev.Free()
        comm.Barrier()
    if comm.rank != 0:
        return None
    return {"samples": out, "paths": list(opened), "settings": {name: path.config for name, path in opened.items()}}


def batching_round(comm, configs: list, n_records: int, rounds: int, warmup: int = 1) -> dict | None:
    """Send ``n_records`` records from rank 0 to every reader in messages of ``per_msg`` records (pickle 5 each),
    for each (backend, per_msg) of ``configs`` in order; rank 0 returns, per configuration, each round's seconds
    per record: the writer's first encode to the last reader's last decode, divided by the records.

    Every message is checked by sequence number, and its decoded records against what was sent, after the round's
    end time is taken."""
    c = ser.get("pickle5")
    records = make_records(n_records)
    out = {}
    for backend, per_msg in configs:
        chunks = [records[i : i + per_msg] for i in range(0, n_records, per_msg)]
        biggest = max(framed_size([SEQ.pack(0), *c.encode(ch)]) for ch in chunks[:1] + chunks[-1:])
        times = []
        with ready_channel(backend, comm, **channel_options(backend, biggest + 64, len(chunks) + 1)) as chan:
            with gc_paused():
                for r in range(warmup + rounds):
                    comm.Barrier()
                    got = []
                    t0 = now_ns()
                    if chan.is_writer:
                        for k, ch in enumerate(chunks):
                            chan.send([SEQ.pack(k), *c.encode(ch)])
                    else:
                        for _ in chunks:
                            frames = chan.recv()
                            got.append((SEQ.unpack(bytes(frames[0]))[0], c.decode(frames[1:])))
                            del frames
                            chan.release()
                    t1 = now_ns()
                    for k, (seq, obj) in enumerate(got):  # (after the round's end time)
                        if seq != k or obj != chunks[k]:
                            raise AssertionError(f"{backend}, {per_msg} records a message: reader {comm.rank} got "
                                                 f"message {seq} with other records than message {k}")  # fmt: skip
                    span = comm.gather((t0, t1), root=0)
                    if comm.rank == 0 and r >= warmup:
                        times.append((max(e for _, e in span) - span[0][0]) * 1e-9 / n_records)
            comm.Barrier()
        out[(backend, per_msg)] = times
    return out if comm.rank == 0 else None


def reread_point(comm, backend: str, n_records: int, messages: int, warmup: int = 1) -> dict | None:
    """Read each of ``messages`` messages of ``n_records`` pickled records twice on every reader: once decoded, then
    again decoded from the same received frames (no cache), and again from a cache of decoded results keyed by the
    message's sequence number; rank 0 returns each reader's seconds of the three (the source's "cache deserialized
    results when the same data is read again")."""
    c = ser.get("pickle5")
    obj = make_records(n_records)
    frames0 = c.encode(obj)
    rows = []
    cache: dict[int, object] = {}
    opts = channel_options(backend, framed_size(frames0) + 64, warmup + messages)
    with ready_channel(backend, comm, **opts) as chan:
        with gc_paused():
            for k in range(warmup + messages):
                comm.Barrier()
                if chan.is_writer:
                    chan.send([SEQ.pack(k), *c.encode(obj)])
                    continue
                frames = chan.recv()
                seq = SEQ.unpack(bytes(frames[0]))[0]
                t0 = now_ns()
                first = c.decode(frames[1:])
                cache[seq] = first
                t1 = now_ns()
                again = c.decode(frames[1:])  # the same data read again, decoded again
                t2 = now_ns()
                cached = cache[seq]  # the same data read again, from the cache
                t3 = now_ns()
                if seq != k or first != obj or again != obj or cached is not first:
                    raise AssertionError(f"{backend}: reader {comm.rank} read other records in message {k}")
                del frames, first, again, cached
                chan.release()
                cache.clear()
                if k >= warmup:
                    rows.append(((t1 - t0) * 1e-9, (t2 - t1) * 1e-9, (t3 - t2) * 1e-9))
        comm.Barrier()
    got = comm.gather(rows, root=0)
    if comm.rank != 0:
        return None
    per = [x for r in got[1:] for x in r]
    return {"first_read": [x[0] for x in per], "reread_decoded": [x[1] for x in per], "reread_cached": [x[2] for x in per]}


def read_time_point(comm, backend: str, codec: str, size: int, messages: int) -> dict | None:
    """The source's metric: each reader times its receive + decode calls only; return them on rank 0.

    Queueing backends (zmq, shm, lmdb) get every message queued before the readers
    start; MPI backends cannot queue, so their reader call includes the transfer,
    as it did in the source.
    """
    c = ser.get(codec)
    obj = make_records(size)
    frames0 = c.encode(obj)
    opts = channel_options(backend, framed_size(frames0) + 64, messages)
    if backend == "shm":
        opts["slots"] = messages + 1
    if backend == "zmq":
        opts["hwm"] = messages + 4
    del frames0
    queued = backend in ("zmq", "shm", "lmdb")
    times = []
    # no collection triggered by one message's garbage is charged to another
    with gc_paused(), ready_channel(backend, comm, **opts) as chan:
        comm.Barrier()
        if chan.is_writer:
            for k in range(messages):
                chan.send([SEQ.pack(k), *c.encode(obj)])
            if queued:
                comm.Barrier()
        else:
            if queued:
                comm.Barrier()
            for k in range(messages):
                r0 = now_ns()
                frames = chan.recv()
                out = c.decode(frames[1:])
                r1 = now_ns()
                if SEQ.unpack(bytes(frames[0]))[0] != k or (k == 0 and not same(obj, out)):
                    raise AssertionError(f"{backend}: reader {comm.rank} got a wrong message at {k}")
                del out, frames
                chan.release()
                times.append((r1 - r0) * 1e-9)
        comm.Barrier()
    gathered = comm.gather(times, root=0)
    return {"read_time": [t for g in gathered[1:] for t in g]} if comm.rank == 0 else None


def pushpull_point(comm, codec: str, size: int, messages: int) -> dict | None:
    """Send ``messages`` through the source's PUSH/PULL; return which message each reader got (rank 0)."""
    c = ser.get(codec)
    obj = make_records(size)
    chan = backends.open_channel("zmq_pushpull", comm)
    got, times = [], []
    with gc_paused():  # no collection triggered by one message's garbage is charged to another
        try:
            if chan.is_writer:
                for k in range(messages):
                    chan.send([SEQ.pack(k), *c.encode(obj)])
                comm.Barrier()
            else:
                comm.Barrier()
                while True:
                    r0 = now_ns()
                    frames = chan.recv(timeout_s=0.3)
                    if frames is None:
                        break
                    c.decode(frames[1:])
                    times.append((now_ns() - r0) * 1e-9)
                    got.append(SEQ.unpack(bytes(frames[0]))[0])
            comm.Barrier()
        finally:
            chan.close()
    gathered = comm.gather((got, times), root=0)
    if comm.rank != 0:
        return None
    return {"received": [g for g, _ in gathered[1:]], "read_time": [t for _, ts in gathered[1:] for t in ts]}


def framing_costs(rule, nbytes: int = 64) -> dict:
    """Time, in this process, the Python framing the backends add to a small raw message (s per message).

    ``pack_unpack``: packing the frames into a buffer and viewing them back (the shm
    and LMDB channels); ``pickle_frame_list``: pickling and unpickling the frame list
    (the MPI lowercase channels). Neither moves a byte between processes.
    """
    import pickle

    from .. import measure
    from ..backends.base import pack_into, unpack_from
    from ..backends.mpi_backend import _picklable

    frames = [SEQ.pack(0), *ser.get("raw").encode(make_array(nbytes))]
    buf = memoryview(bytearray(framed_size(frames)))

    def pack_unpack():
        pack_into(buf, frames)
        unpack_from(buf)

    def pickle_list():
        pickle.loads(pickle.dumps(_picklable(frames), protocol=5))

    out = {}
    for name, fn in (("pack_unpack", pack_unpack), ("pickle_frame_list", pickle_list)):
        inner = measure.calibrate_inner(fn)
        out[name] = measure.repeat(lambda fn=fn, inner=inner: measure.time_call(fn, inner), rule)
    return out


# ----------------------------------------------------------------------- the sweeps


def parameters(profile: str | None = None) -> dict:
    """Return the sweeps of a profile."""
    name = profiles.profile_name(profile)
    # the source's sizes; 100 000 records, the book's own extension beyond them, only in full: its messages are the
    # sweep's largest by ten times (8 backends x 11 of them)
    records_n = [10, 100, 1000, 10_000] + ([100_000] if name == "full" else [])
    if name == "quick":
        arrays = [64, 4 * KiB, 256 * KiB, 16 * MiB]
        arrays_many = [4 * KiB, 4 * MiB]
        messages, big_messages, warmup = 10, 4, 2
        readers = [1, 3]
    else:
        # the latency is flat below 4 KiB (64 B stands for it); 6 messages are the fewest with a 95% median interval:
        # a point the claims do not read gets 16 (6 of several ms) in one replicate, a point they read 8 (2) in each of
        # three
        arrays = [64, 4 * KiB, 64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB, 64 * MiB]
        # with three readers (oversubscribed on 2 cores) up to 16 MiB: the largest messages cost the most, and the
        # largest size runs with one reader
        arrays_many = [4 * KiB, 256 * KiB, 4 * MiB, 16 * MiB]
        messages, big_messages, warmup = 16, 6, 3
        readers = [1, 3] + ([7] if name == "full" else [])
    return {"records_n": records_n, "array_sizes": arrays, "array_sizes_many_readers": arrays_many,
            "messages": messages, "big_messages": big_messages, "warmup": warmup, "readers": readers,
            "replicate_messages": 3 if name == "quick" else 8, "replicate_big_messages": 2,
            "record_codecs": ["pickle4", "pickle5", "pickle5_oob", "msgpack"],
            "array_codecs": ["pickle5", "pickle5_oob", "raw"], "backends": list(backends.BROADCAST_BACKENDS),
            "source_codec": "pickle5", "read_time_n": [10, 100, 1000, 10_000], "pushpull_messages": 30,
            "structured_n": 10_000,
            # the source's other advice: batching records into messages, and a cache of decoded results for data read
            # again (two rounds of each batching configuration and two reads per replicate)
            "batching": {"n_records": 1000, "per_message": [1, 10, 100, 1000], "backends": ["zmq", "shm", "mpi_bcast"],
                         "rounds": 2},
            "reread": {"backend": "shm", "n_records": 10_000, "messages": 2},
            "reader_wait": READER_WAIT, "wait_strategies": list(backends.WAIT_STRATEGIES),
            "wait_points": [("records", 1000), ("records", 10_000), ("array", 64)],
            "lmdb_settings": {"default": {}, "zero_copy_reads": {"buffers": True}, "no_writemap": {"writemap": False},
                              "sync": {"sync": True}},
            "lmdb_points": [("records", 10_000, "pickle5"), ("array", 64 * KiB, "raw"), ("array", 16 * MiB, "raw")],
            "stream_sizes": {64 * KiB: 16, 16 * MiB: 4}, "stream_rounds": 6 if name == "quick" else 10,
            # production libraries beside the book's own channels (raw arrays), and the small-message paths
            "library_backends": list(backends.LIBRARY_BACKENDS), "library_own": LIBRARY_OWN,
            "library_sizes": [64, 64 * KiB, 16 * MiB] + ([64 * MiB] if name == "full" else []),
            "library_sizes_many_readers": [64, 64 * KiB] + ([] if name == "quick" else [16 * MiB]),
            "small_sizes": [0, 64], "small_samples": 8 if name == "quick" else 12, "small_inner": 200,
            "replicates": REPLICATES}  # fmt: skip


def _points(p: dict) -> list[dict]:
    pts = []
    for r in p["readers"]:
        # with several readers, the source's sizes only: 100 000 records (the full profile's extension) runs with one
        # reader, since its messages are the sweep's largest and three readers oversubscribe a 2-core machine
        for n in (p["records_n"] if r == 1 else [x for x in p["records_n"] if x <= 10_000]):
            for b in p["backends"]:
                pts.append({"experiment": "records", "backend": b, "codec": p["source_codec"], "kind": "records", "size": n, "readers": r})
    # the same records as one structured array in a raw buffer, in the rounds of the records at that size
    for b in p["backends"]:
        pts.append({"experiment": "structured", "backend": b, "codec": "raw", "kind": "structured",
                    "size": p["structured_n"], "readers": 1})  # fmt: skip
    for codec in p["record_codecs"]:
        for b in ("shm", "zmq", "mpi_Bcast"):
            pts.append({"experiment": "record_codecs", "backend": b, "codec": codec, "kind": "records", "size": 10_000, "readers": 1})
    for size in p["array_sizes"]:
        for b in p["backends"]:
            for codec in p["array_codecs"]:
                pts.append({"experiment": "arrays", "backend": b, "codec": codec, "kind": "array", "size": size, "readers": 1})
    for r in [x for x in p["readers"] if x > 1]:
        for size in p["array_sizes_many_readers"]:
            for b in p["backends"]:
                pts.append({"experiment": "arrays", "backend": b, "codec": "pickle5_oob", "kind": "array", "size": size, "readers": r})
    # production libraries beside the book's own channels: same harness, raw arrays, sizes interleaved by point
    for r in p["readers"]:
        for size in (p["library_sizes"] if r == 1 else p["library_sizes_many_readers"] if r == 3 else []):
            for b in p["library_own"] + p["library_backends"]:
                pts.append({"experiment": "libraries", "backend": b, "codec": "raw", "kind": "array", "size": size, "readers": r})
    # how the reader waits (shared memory, LMDB): the timed points above poll without pause
    for kind, size in p["wait_points"]:
        for b in ("shm", "lmdb"):
            for wait in p["wait_strategies"]:
                codec = p["source_codec"] if kind == "records" else "raw"
                pts.append({"experiment": "wait_strategy", "backend": b, "codec": codec, "kind": kind, "size": size, "readers": 1,
                            "options": {"wait": wait}, "label": f"{b}/{wait}", "wait": wait})
    for kind, size, codec in p["lmdb_points"]:
        for setting, opts in p["lmdb_settings"].items():
            pts.append({"experiment": "lmdb_settings", "backend": "lmdb", "codec": codec, "kind": kind, "size": size, "readers": 1,
                        "options": opts, "label": f"lmdb/{setting}", "setting": setting})
    return pts  # fmt: skip


def _group_of(pt: dict) -> str:
    """Return the comparison a point belongs to (its configurations run together, in rotated order): the experiment at
    one payload size, reader count and, for the settings experiments, payload kind. The structured arrays run in the
    rounds of the pickled records they stand for."""
    if pt["experiment"] == "structured":
        return f"records/records/{pt['size']}/{pt['readers']}"
    return f"{pt['experiment']}/{pt['kind']}/{pt['size']}/{pt['readers']}"


def _claims_read(pt: dict, p: dict) -> bool:
    """Return whether the claims of seed 000 read this point (directly or through a derived row): the records at every
    size with one reader (the source's five backends, uppercase Bcast and point-to-point), at 10 000 with three
    (point-to-point against lowercase bcast), the arrays at the largest size with one reader in raw buffers, and
    pickled for lowercase bcast (Bcast's saving, zero-copy reads, the fraction of the best path: the best is raw
    buffers on this harness), and the records as a structured array over shared memory and uppercase Bcast."""
    if pt["experiment"] == "structured":
        return pt["backend"] in ("shm", "mpi_Bcast")
    if pt["experiment"] == "records":
        if pt["readers"] == 1:
            return pt["backend"] in (*SOURCE_FIVE, "mpi_Bcast", "mpi_p2p")
        return pt["size"] == 10_000 and pt["backend"] in ("mpi_p2p", "mpi_bcast")
    return (pt["experiment"] == "arrays" and pt["size"] == max(p["array_sizes"]) and pt["readers"] == 1
            and (pt["codec"] == "raw" or (pt["backend"], pt["codec"]) == ("mpi_bcast", "pickle5")))  # fmt: skip


def _config_label(pt: dict) -> str:
    return f"{pt.get('label', pt['backend'])}+{pt['codec']}"


def engines(profile: str | None = None) -> int:
    """Return the MPI engines this chapter needs: 1 writer + the most readers of the profile."""
    return 1 + max(parameters(profile)["readers"])


def run(cluster, profile: str | None = None) -> pd.DataFrame:
    """Run chapter 1 on ``cluster`` (needs 1 + max(readers) engines), write its results, return the summary."""

    name = profiles.profile_name(profile)
    p = parameters(name)
    require_engines(cluster, engines(name), CHAPTER, f"1 writer + {max(p['readers'])} readers")
    cluster.require_one_host("shared memory and LMDB channels, and one-way times read on one clock")
    started = results.now_iso()
    machine_start = machine_state(cluster)  # CPU steal, load and two calibration kernels, again at the end
    rows, samples, phases = [], [], []
    from ..backends import libraries

    have = libraries.available()
    # every comparison's configurations run together: in each replicate, one group's points in a rotated order;
    # replicates spread over the run, the last in fresh engines (the reader's allocator, caches and sockets are one
    # process's state: a block per configuration would charge it to whichever ran in it)
    plan = Replicates(cluster, p["replicates"])
    pts = [pt for pt in _points(p) if ser.supports(pt["codec"], pt["kind"]) and have.get(pt["backend"], True)]
    # (a library without a wheel here is left out: the chapter says "not available on this platform")
    groups: dict[str, list[int]] = {}
    for i, pt in enumerate(pts):
        groups.setdefault(_group_of(pt), []).append(i)
    # the comparisons the claims read run in every replicate, each with its share of the messages; the others (the
    # figures' sizes, settings and libraries) in the first, with all of them: their intervals rest on one replicate
    replicated = {i for i, pt in enumerate(pts) if _claims_read(pt, p)}
    claimed = {g for g, members in groups.items() if replicated & set(members)}
    got: dict[int, list] = {i: [] for i in range(len(pts))}
    nbytes_of: dict[int, int] = {}
    options_of: dict[int, dict] = {}
    src_readers = 3 if 3 in p["readers"] else max(p["readers"])
    read_times: dict[tuple, list] = {}
    # the source's metric in its own topology (1 writer + 3 readers: oversubscribed here) and with 1 reader
    rt_readers = sorted({1, src_readers})
    steps = len(groups) + len(p["read_time_n"]) + (plan.n - 1) * (len(claimed) + len(p["read_time_n"])) + plan.n
    batch_got: dict[tuple, list] = {}
    reread_got: list = []
    ticks = iter(progress(range(steps), "fair serialization (every replicate)"))
    for rep in plan.passes():
        for g, members in groups.items():
            if rep > 0 and g not in claimed:
                continue
            next(ticks, None)
            here = members if rep == 0 else [i for i in members if i in replicated]
            for i in plan.order(g, here, rep, label=lambda i: _config_label(pts[i])):
                pt = pts[i]
                ranks = 1 + pt["readers"]
                heavy = pt["size"] >= (4 * MiB if pt["kind"] == "array" else 100_000)  # messages of several ms
                msgs = p[("replicate_" if i in replicated else "") + ("big_messages" if heavy else "messages")]
                # a replicate in the engines of an earlier one needs one warm-up message (new buffers to touch, the
                # code paths warm); the first and the fresh replicate warm up in full (a heavy message: one)
                warm = 1 if (heavy or rep not in (0, *plan.fresh)) and rep > 0 else p["warmup"]
                t0 = time.perf_counter()
                out = run_point(cluster, transfer_point, pt["backend"], pt["codec"], pt["kind"], pt["size"], msgs,
                                warm, pt.get("options"), ranks=ranks, timeout=600)[0]  # fmt: skip
                add_time(f"fair serialization: {pt['experiment']}, {pt['readers']} reader(s)", time.perf_counter() - t0)
                df = pd.DataFrame(out["per_reader"])
                # cross-rank summary: per message, the slowest reader
                got[i].append((rep, df.groupby("message").agg({"serialize": "max", "send_call": "max", "transfer": "max",
                                                               "deserialize": "max", "end_to_end": "max",
                                                               "reader_wait": "max", "recv_cpu_share": "max"})))  # fmt: skip
                nbytes_of[i], options_of[i] = out["nbytes"], out["options"]
        # the source's metric: reader-side read time at 1 writer + 3 readers (or the most readers run), and at 1 reader
        for n in p["read_time_n"]:
            next(ticks, None)
            cfgs = [(b, r) for b in p["backends"] for r in rt_readers]
            for b, r in plan.order(f"source_read_time/{n}", cfgs, rep, label=lambda x: f"{x[0]}/{x[1]}"):
                msgs = p["replicate_messages"]
                out = run_point(cluster, read_time_point, b, p["source_codec"], n, msgs, ranks=1 + r, timeout=600)[0]
                read_times.setdefault((n, b, r), []).append((rep, out["read_time"]))
        # batching and re-reading, their configurations in a rotated order, one reader
        next(ticks, None)
        bp = p["batching"]
        cfgs = plan.order("batching", [(b, m) for b in bp["backends"] for m in bp["per_message"]], rep,
                          label=lambda x: f"{x[0]}/{x[1]}")  # fmt: skip
        t0 = time.perf_counter()
        out = run_point(cluster, batching_round, cfgs, bp["n_records"], bp["rounds"], ranks=2, timeout=600)[0]
        for cfg, ts in out.items():
            batch_got.setdefault(cfg, []).append((rep, ts))
        rr = p["reread"]
        reread_got.append((rep, run_point(cluster, reread_point, rr["backend"], rr["n_records"], rr["messages"], ranks=2,
                                          timeout=600)[0]))  # fmt: skip
        add_time("fair serialization: batching and re-reading", time.perf_counter() - t0)
    for _ in ticks:
        pass
    for i, pt in enumerate(pts):
        ranks = 1 + pt["readers"]
        per_msg = {m: per_message([(rep, df[m].to_numpy()) for rep, df in got[i]]) for m in got[i][0][1].columns}
        labels = {"chapter": CHAPTER, "experiment": pt["experiment"], "variant": pt.get("label", pt["backend"]),
                  "payload": f"{pt['kind']}:{pt['codec']}", "size_bytes": nbytes_of[i], "ranks": ranks,
                  "oversubscribed": cluster.oversubscribed_at(ranks)}  # fmt: skip
        extra = {"backend": pt["backend"], "codec": pt["codec"], "kind": pt["kind"], "readers": pt["readers"],
                 "n_records": pt["size"] if pt["kind"] in ("records", "structured") else None,
                 "array_bytes": pt["size"] if pt["kind"] == "array" else None,
                 "stop_reason": f"fixed: {len(per_msg['end_to_end'])} messages in {plan.n} replicates",
                 "reader_wait_strategy": options_of[i].get("wait"), "wait": pt.get("wait"),
                 "lmdb_setting": pt.get("setting")}  # fmt: skip
        for metric, unit in (("serialize", "s"), ("send_call", "s"), ("transfer", "s"), ("deserialize", "s"),
                             ("end_to_end", "s"), ("reader_wait", "s"), ("recv_cpu_share", "1")):  # fmt: skip
            st = summarize(per_msg[metric])
            rows.append(results.summary_row(st, **labels, metric=metric, unit=unit, **extra))
            samples += results.sample_rows(per_msg[metric], **labels, metric=metric, unit=unit)
        bw = per_message([(rep, nbytes_of[i] / df["end_to_end"].to_numpy()) for rep, df in got[i]])
        rows.append(results.summary_row(summarize(bw), **labels, metric="bandwidth", unit="B/s", **extra))
        phases.append({**pt, "nbytes": nbytes_of[i], **{m: float(np.median(v)) for m, v in per_msg.items()}})

    # streaming: a window of messages in flight (OSU osu_bw style), 1 reader, raw arrays
    for size, window in progress(list(p["stream_sizes"].items()), "streaming bandwidth"):
        for b in p["backends"]:
            out = run_point(cluster, stream_point, b, size, window, p["stream_rounds"], ranks=2, timeout=600)[0]
            lab = {"chapter": CHAPTER, "experiment": "stream", "variant": b, "payload": "array:raw",
                   "size_bytes": out["payload_bytes"], "ranks": 2, "oversubscribed": cluster.oversubscribed_at(2)}  # fmt: skip
            rows.append(results.summary_row(summarize(out["bandwidth"]), **lab, metric="bandwidth", unit="B/s", backend=b,
                                            codec="raw", kind="array", readers=1, array_bytes=size, window=window,
                                            stop_reason=f"fixed: {p['stream_rounds']} rounds"))  # fmt: skip
            samples += results.sample_rows(out["bandwidth"], **lab, metric="bandwidth", unit="B/s")

    # small messages: the bare spin, the ring's fast path and interface, the libraries both ways and MPI, ping-pong
    t0 = time.perf_counter()
    sp = run_point(cluster, small_path_point, p["small_sizes"], p["small_samples"], p["small_inner"], ranks=2, timeout=300)[0]
    add_time("fair serialization: small-message paths", time.perf_counter() - t0)
    for (path, n), vals in sp["samples"].items():
        lab = {"chapter": CHAPTER, "experiment": "small_path", "variant": path, "payload": "array:raw", "size_bytes": n,
               "ranks": 2, "oversubscribed": cluster.oversubscribed_at(2)}  # fmt: skip
        rows.append(results.summary_row(summarize(np.asarray(vals)), **lab, metric="one_way_latency", unit="s",
                                        backend=path, codec="raw", kind="array", readers=1, array_bytes=n,
                                        stop_reason=f"fixed: {p['small_samples']} samples of {p['small_inner']} round trips"))  # fmt: skip
        samples += results.sample_rows(vals, **lab, metric="one_way_latency", unit="s")

    bp, rr = p["batching"], p["reread"]
    for (b, m), per_rep in batch_got.items():
        lab = {"chapter": CHAPTER, "experiment": "batching", "variant": b, "payload": "records:pickle5", "size_bytes": None,
               "ranks": 2, "oversubscribed": cluster.oversubscribed_at(2)}  # fmt: skip
        vals = per_message(per_rep)
        rows.append(results.summary_row(summarize(vals), **lab, metric="time_per_record", unit="s", backend=b,
                                        codec="pickle5", kind="records", readers=1, n_records=bp["n_records"],
                                        records_per_message=m, stop_reason=f"fixed: {len(vals)} rounds"))  # fmt: skip
        samples += results.sample_rows(vals, **lab, metric="time_per_record", unit="s")
    for metric in ("first_read", "reread_decoded", "reread_cached"):
        vals = per_message([(rep, x[metric]) for rep, x in reread_got])
        lab = {"chapter": CHAPTER, "experiment": "reread", "variant": rr["backend"], "payload": "records:pickle5",
               "size_bytes": None, "ranks": 2, "oversubscribed": cluster.oversubscribed_at(2)}  # fmt: skip
        rows.append(results.summary_row(summarize(vals), **lab, metric=metric, unit="s", backend=rr["backend"],
                                        codec="pickle5", kind="records", readers=1, n_records=rr["n_records"],
                                        stop_reason=f"fixed: {len(vals)} messages"))  # fmt: skip
        samples += results.sample_rows(vals, **lab, metric=metric, unit="s")
    # the source's metric, measured in the replicates above
    for (n, b, r), per_rep in read_times.items():
        values = per_message(per_rep)
        nbytes = ser.frames_nbytes(ser.get(p["source_codec"]).encode(make_records(n)))
        lab = {"chapter": CHAPTER, "experiment": "source_read_time", "variant": b, "payload": f"records:{p['source_codec']}",
               "size_bytes": nbytes, "ranks": 1 + r, "oversubscribed": cluster.oversubscribed_at(1 + r)}  # fmt: skip
        extra = {"backend": b, "codec": p["source_codec"], "kind": "records", "n_records": n, "readers": r}
        rows.append(results.summary_row(summarize(values), **lab, metric="read_time", unit="s", **extra))
        # the source averaged its read times: the mean beside the median, with its own two-stage interval
        rows.append(results.summary_row(mean_summary(values), **lab, metric="read_time_mean", unit="s", **extra))
        samples += results.sample_rows(values, **lab, metric="read_time", unit="s")
    # the source's PUSH/PULL "one-to-many"
    pp = run_point(cluster, pushpull_point, p["source_codec"], 1000, p["pushpull_messages"], ranks=1 + src_readers, timeout=120)[0]
    delivery = pd.DataFrame([{"reader": i + 1, "messages_received": len(g), "messages_sent": p["pushpull_messages"],
                              "fraction": len(g) / p["pushpull_messages"], "first_messages": str(sorted(g)[:6])}
                             for i, g in enumerate(pp["received"])])  # fmt: skip
    st = summarize(pp["read_time"])
    rows.append(results.summary_row(st, chapter=CHAPTER, experiment="pushpull", variant="zmq_pushpull", payload="records:pickle5",
                                    size_bytes=None, ranks=1 + src_readers, oversubscribed=cluster.oversubscribed_at(1 + src_readers),
                                    metric="read_time", unit="s", backend="zmq_pushpull", codec="pickle5", kind="records",
                                    n_records=1000, readers=src_readers))  # fmt: skip
    small = min(p["array_sizes"])
    for metric, point in framing_costs(profiles.stopping_rule(name), small).items():
        rows.append(results.summary_row(point.summary, chapter=CHAPTER, experiment="framing", variant=metric,
                                        payload="array:raw", size_bytes=small, ranks=1, oversubscribed=False,
                                        metric=metric, unit="s", backend=None, codec="raw", kind="array",
                                        n_records=None, readers=0, array_bytes=small))  # fmt: skip
    samples_df = pd.DataFrame(samples)
    summary = results.frame(rows)
    summary = results.frame(rows + derived_rows(summary, samples_df, delivery, results.read("machine_limits")))
    meta = run_meta(name, cluster, p, started, machine_start=machine_start, definitions={
        "transfer": "writer's send call start -> reader's receive call return (one CLOCK_MONOTONIC clock)",
        "end_to_end": "writer's encode start -> reader's decode return",
        "cross-rank summary": "per message, the maximum over readers",
        "read_time": "the source's metric: reader's receive + decode call only",
        "bandwidth": "payload bytes / end-to-end time, one message in flight (a latency-bound bandwidth, not a stream); "
                     "experiment stream: window x payload bytes / time for a window of messages sent back to back "
                     "(OSU osu_bw style), per round",
        "reader_wait": "the reader's receive call, from entering it to returning (waiting for the writer included)",
        "recv_cpu_share": "CPU seconds the reader's process spent inside its receive call / that call's wall time",
        "reader_wait_strategy": f"how shared-memory and LMDB readers wait: {READER_WAIT} in the timed points; the "
                                "wait_strategy experiment compares spin, spin_then_sleep and fifo",
        "pacing": "one message in flight: a barrier before every message",
        "one_way_latency": "experiment small_path: ping-pong between 2 ranks, round-trip time / 2, every path and size "
                           "timed once per round in a rotated order",
        "time_per_record": "experiment batching: the writer's first encode to the reader's last decode of all the "
                           "records, in messages of records_per_message records, divided by the records",
        "first_read / reread_decoded / reread_cached": "experiment reread: the reader's decode of a message, the same "
                                                      "frames decoded again, and the decoded result taken from a cache",
    })
    meta["replicates"] = plan.record()
    meta["libraries"] = {"versions": libraries.versions(), "settings": libraries.SETTINGS,
                         "not_available": [k for k, ok in have.items() if not ok]}  # fmt: skip
    meta["small_paths"] = sp["settings"]  # how each small-message path ran, the libraries' documented ways included
    results.write(CHAPTER, summary, samples_df, meta,
                  extra={"phases": pd.DataFrame(phases), "pushpull_delivery": delivery})  # fmt: skip
    claims.record(CHAPTER)
    return summary


# ------------------------------------------------------------------ tables for the page


def _pick(summary: pd.DataFrame, **where) -> pd.DataFrame:
    q = summary
    for k, v in where.items():
        q = q[q[k] == v]
    return q


def source_table_by_backend(summary: pd.DataFrame, n_records: int = 10_000) -> pd.DataFrame:
    """Return the source's first table rebuilt: per backend at N records, fair phases and the source's read time (ms)."""
    rows = []
    rt_all = summary.query("experiment == 'source_read_time' and metric == 'read_time_mean'")
    rt_readers = sorted(int(r) for r in rt_all["readers"].dropna().unique())
    for b in backends.BROADCAST_BACKENDS:
        rec = _pick(summary, experiment="records", variant=b, n_records=n_records, readers=1).set_index("metric")
        row = {"backend": b}
        for m in ("serialize", "transfer", "deserialize", "end_to_end"):
            row[f"{m} (ms)"] = rec.loc[m, "median"] * 1e3 if m in rec.index else np.nan
        row["end_to_end 95% CI (ms)"] = f"[{rec.loc['end_to_end', 'ci_low'] * 1e3:.3g}, {rec.loc['end_to_end', 'ci_high'] * 1e3:.3g}]"
        for r in rt_readers:  # the source's metric and statistic: the read call's mean
            rt = rt_all[(rt_all["variant"] == b) & (rt_all["n_records"] == n_records) & (rt_all["readers"] == r)]
            row[f"source's read time, mean, {r} reader{'s' if r > 1 else ''} (ms)"] = (
                rt["median"].iloc[0] * 1e3 if not rt.empty else np.nan)  # fmt: skip
        rows.append(row)
    df = pd.DataFrame(rows)
    base = df.loc[df["end_to_end (ms)"].idxmin(), "end_to_end (ms)"]
    df["end_to_end relative"] = df["end_to_end (ms)"] / base
    return df


def source_read_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Return the source's own metric (the reader's receive + decode call, ms) by backend and number of records, as the
    mean (the source's statistic) beside the median, for each number of readers run."""
    src = summary.query("experiment == 'source_read_time'").copy()
    src["statistic"] = src["metric"].map({"read_time": "median", "read_time_mean": "mean"})
    src["readers"] = src["readers"].astype(int)
    src["n_records"] = src["n_records"].astype(int)
    t = src.pivot_table(index=["readers", "n_records", "statistic"], columns="variant", values="median") * 1e3
    return t[[b for b in backends.BROADCAST_BACKENDS if b in t.columns]]


def decode_agreement(summary: pd.DataFrame, n_records: int = 10_000, readers: int = 1) -> dict:
    """Return the check of a phase no backend can change: the reader's decode of the same bytes, per backend (median
    and 95% interval, ms), whether one value lies inside every backend's interval, and a sentence saying so."""
    q = _pick(summary, experiment="records", metric="deserialize", n_records=n_records, readers=readers)
    q = q.set_index("variant").reindex([b for b in backends.BROADCAST_BACKENDS if b in set(q["variant"])])
    table = pd.DataFrame({"decode (ms)": q["median"] * 1e3, "95% CI low (ms)": q["ci_low"] * 1e3,
                          "95% CI high (ms)": q["ci_high"] * 1e3, "replicates": q["replicates"]})  # fmt: skip
    table.index.name = "backend"
    lo, hi = float(q["ci_low"].max()), float(q["ci_high"].min())
    agree = lo <= hi
    fast, slow = q["median"].idxmin(), q["median"].idxmax()
    span = f"medians from {q.loc[fast, 'median'] * 1e3:.2g} ms ({fast}) to {q.loc[slow, 'median'] * 1e3:.2g} ms ({slow})"
    if agree:
        sentence = (f"Decoding agrees across the backends: {(lo + hi) / 2 * 1e3:.2g} ms lies inside every backend's 95% "
                    f"interval ({span}), so the reader's state is charged to none of them.")  # fmt: skip
    else:
        sentence = (f"Decoding does not agree across the backends: {span}, and no single value lies inside every "
                    "backend's 95% interval. The same bytes decode at different speeds in the same reader process, so "
                    "the reader's state still differs between the backends' messages. Our hypothesis: a state of the process or "
                    "the machine that changes over minutes (where the allocator places the decoded objects, what else "
                    "the host runs), not anything the backend did. Where a backend's interval rests on several "
                    "replicates it holds what that state did across them, so a claim decided by a difference between "
                    "backends stays inconclusive unless the difference is larger than that spread.")  # fmt: skip
    return {"table": table, "agree": agree, "spread_x": float(q["median"].max() / q["median"].min()), "sentence": sentence}


def source_table_by_size(summary: pd.DataFrame, metric: str = "end_to_end", readers: int = 1) -> pd.DataFrame:
    """Return the source's second table rebuilt: backend x N records, median ``metric`` in ms."""
    q = _pick(summary, experiment="records", metric=metric, readers=readers)
    return (q.pivot_table(index="n_records", columns="variant", values="median") * 1e3)[list(backends.BROADCAST_BACKENDS)]


def phase_table(summary: pd.DataFrame, experiment: str, **where) -> pd.DataFrame:
    """Return median phase times (s) per backend/codec for one experiment and selection."""
    q = _pick(summary, experiment=experiment, **where)
    t = q.pivot_table(index=["variant", "codec"], columns="metric", values="median").reset_index()
    t["label"] = t["variant"] + " + " + t["codec"]
    return t


def best_codec(summary: pd.DataFrame, metric: str = "end_to_end", readers: int = 1) -> pd.DataFrame:
    """Return, per backend and array size, the row of the codec with the best median ``metric``."""
    arr = _pick(summary, experiment="arrays", readers=readers, metric=metric)
    pick = arr.groupby(["variant", "array_bytes"])["median"]
    best = arr.loc[pick.idxmax() if metric == "bandwidth" else pick.idxmin()].copy()
    best["size_bytes"] = best["array_bytes"]  # plot against the payload size, not the framed size
    return best


def fraction_of_memcpy(summary: pd.DataFrame, limits: pd.DataFrame) -> pd.DataFrame:
    """Return the best end-to-end bandwidth per backend and size divided by chapter 0's memcpy bandwidth at that size."""
    best = best_codec(summary, "bandwidth")
    mem = limits.query("experiment == 'memcpy' and metric == 'bandwidth'").set_index("size_bytes")["median"]
    at = np.array([mem.iloc[np.abs(mem.index.to_numpy() - s).argmin()] for s in best["array_bytes"]])
    for c in ("median", "ci_low", "ci_high"):
        best[c] = best[c].to_numpy() / at
    return best.assign(metric="fraction_of_memcpy", unit="1")


def targets(summary: pd.DataFrame, limits: pd.DataFrame) -> dict:
    """Return the two targets: best large-array bandwidth vs memcpy, best 64 B one-way latency vs MPI ping-pong."""
    arr = _pick(summary, experiment="arrays", readers=1)
    big = int(arr["array_bytes"].max())
    big_rows = arr[(arr["array_bytes"] == big) & (arr["metric"] == "bandwidth")]
    best_bw = big_rows.loc[big_rows["median"].idxmax()]
    mem = limits.query("experiment == 'memcpy' and metric == 'bandwidth'")
    mem_at = mem.iloc[(mem["size_bytes"] - big).abs().argsort()[:1]]
    small = int(arr["array_bytes"].min())
    tr = arr[(arr["array_bytes"] == small) & (arr["metric"] == "transfer")]
    best_lat = tr.loc[tr["median"].idxmin()]
    pp = limits.query("experiment == 'pingpong' and variant == 'mpi_buffer' and metric == 'one_way_latency'")
    pp_at = pp.iloc[(pp["size_bytes"] - small).abs().argsort()[:1]]
    return {
        "large_size": big, "large_best": f"{best_bw['variant']} + {best_bw['codec']}",
        "large_bandwidth": float(best_bw["median"]), "memcpy_bandwidth": float(mem_at["median"].iloc[0]),
        "memcpy_size": int(mem_at["size_bytes"].iloc[0]),
        "large_ratio": float(best_bw["median"] / mem_at["median"].iloc[0]),
        "small_size": small,
        "small_best": f"{labels.variant_words(best_lat['variant'])} with "
                      f"{labels.vocabulary()['values'].get(best_lat['codec'], best_lat['codec'])}",
        "small_latency": float(best_lat["median"]), "pingpong_latency": float(pp_at["median"].iloc[0]),
        "pingpong_size": int(pp_at["size_bytes"].iloc[0]),
        "small_ratio": float(best_lat["median"] / pp_at["median"].iloc[0]),
        **_framing_share(summary, best_lat, float(pp_at["median"].iloc[0])),
        **_fast_path(summary),
    }  # fmt: skip


def _fast_path(summary: pd.DataFrame) -> dict:
    """Return the small-message fast path's numbers: its 64 B one-way and MPI's, measured side by side."""
    sp = _pick(summary, experiment="small_path", metric="one_way_latency")
    if sp.empty:
        return {}
    n = 64 if 64 in set(sp["size_bytes"]) else int(sp["size_bytes"].max())
    at = sp[sp["size_bytes"] == n].set_index("variant")["median"]
    ratio = _pick(summary, experiment="derived", metric="shm_fast_over_mpi", size_bytes=n)
    floor = _pick(summary, experiment="derived", metric="shm_fast_over_spin", size_bytes=n)
    empty = sp[(sp["size_bytes"] == 0) & (sp["variant"] == "shm_fast")]["median"]
    spin = {}
    if not floor.empty:
        f = floor.iloc[0]
        spin = {"fast_spin_latency": float(at.get("bare_spin", np.nan)), "fast_over_spin": float(f["median"]),
                "fast_over_spin_low": float(f["ci_low"]), "fast_over_spin_high": float(f["ci_high"]),
                "fast_over_spin_met": within_target(f, TARGET_FAST_OVER_SPIN)}  # fmt: skip
    return {"fast_size": n, "fast_latency": float(at.get("shm_fast", np.nan)), "fast_mpi_latency": float(at.get("mpi_buffer", np.nan)),
            "fast_ratio": float(ratio["median"].iloc[0]) if not ratio.empty else float("nan"),
            "fast_ratio_low": float(ratio["ci_low"].iloc[0]) if not ratio.empty else float("nan"),
            "fast_ratio_high": float(ratio["ci_high"].iloc[0]) if not ratio.empty else float("nan"),
            "fast_empty_latency": float(empty.iloc[0]) if not empty.empty else float("nan"),
            "fast_iceoryx2_latency": float(at.get("iceoryx2", np.nan)), **spin}  # fmt: skip


TARGET_FAST_OVER_SPIN = 1.5
"""The fast path's one-way time at 64 B within this factor of the bare shared-memory spin's, in the same rounds."""


FRAMING_OF = {b: backends.BACKENDS[b].framing for b in backends.BROADCAST_BACKENDS}
"""Which Python framing each broadcast channel adds to a message, as the channel declares it (``Channel.framing``):
shared memory and LMDB pack the frames into one buffer, the lowercase MPI paths pickle the frame list; ZeroMQ sends the
frames as a multipart message and uppercase Bcast sends buffers, so neither frames in Python."""


def _framing_share(summary: pd.DataFrame, best_lat: pd.Series, pingpong_s: float) -> dict:
    """Return the best small-message path's own Python framing cost and its share of the gap to the ping-pong."""
    framing = _pick(summary, experiment="framing").set_index("metric")["median"]
    if framing.empty:
        return {}
    kind = FRAMING_OF.get(best_lat["variant"])
    if kind is None:  # this path frames nothing in Python: none of its gap is framing
        return {"framing_kind": "none (frames sent as they are)", "framing_s": 0.0, "framing_share_of_gap": 0.0}
    gap = float(best_lat["median"]) - pingpong_s
    return {"framing_kind": kind, "framing_s": float(framing[kind]),
            "framing_share_of_gap": float(framing[kind]) / gap if gap > 0 else float("nan")}  # fmt: skip


LIBRARY_OWN = ["shm", "zmq", "mpi_Bcast"]
"""The book's channels that the libraries experiment runs beside the libraries (its fastest for raw arrays)."""
LIBRARY_LABELS = {b: ("" if backends.BACKENDS[b].library else "the book's ") + labels.variant_words(b)
                  for b in LIBRARY_OWN + backends.LIBRARY_BACKENDS}  # fmt: skip
"""The libraries experiment's channels in words, the book's own marked so, in the order its tables show them."""


def library_table(summary: pd.DataFrame, readers: int = 1, metric: str = "transfer") -> pd.DataFrame:
    """Return the libraries experiment as a table: channel x payload size, median ``metric`` [95% CI] in µs."""
    q = _pick(summary, experiment="libraries", readers=readers, metric=metric)
    if q.empty:
        return pd.DataFrame()
    cell = q.assign(text=[f"{m * 1e6:,.1f} [{lo * 1e6:,.1f}, {hi * 1e6:,.1f}]"
                          for m, lo, hi in zip(q["median"], q["ci_low"], q["ci_high"], strict=True)])  # fmt: skip
    t = cell.pivot_table(index="variant", columns="array_bytes", values="text", aggfunc="first")
    order = [v for v in LIBRARY_LABELS if v in t.index]
    t = t.loc[order].rename(index=LIBRARY_LABELS)
    t.columns = [_size_label(int(c)) for c in t.columns]
    t.index.name = f"channel ({metric}, µs, {readers} reader{'s' if readers > 1 else ''})"
    return t


def best_per_size(summary: pd.DataFrame, readers: int = 1, metric: str = "transfer") -> pd.DataFrame:
    """Return, per payload size of the libraries experiment, the best channel, the best of the book's own and the best
    library, with medians and whether their 95% intervals separate them."""
    from ._common import compare

    q = _pick(summary, experiment="libraries", readers=readers, metric=metric)
    rows = []
    for size, g in q.groupby("array_bytes"):
        g = g.sort_values("median")
        own = g[g["variant"].isin(backends.OWN_BACKENDS)]
        lib = g[~g["variant"].isin(own["variant"])]
        if own.empty or lib.empty:
            continue
        o, lb = own.iloc[0], lib.iloc[0]
        c = compare(o, lb)
        rows.append({"size": _size_label(int(size)), "best": LIBRARY_LABELS.get(g.iloc[0]["variant"], g.iloc[0]["variant"]),
                     "book's best": LIBRARY_LABELS.get(o["variant"]), "book µs": o["median"] * 1e6,
                     "best library": LIBRARY_LABELS.get(lb["variant"], lb["variant"]), "library µs": lb["median"] * 1e6,
                     "book / library": c["ratio"], "intervals": c["relation"]})  # fmt: skip
    return pd.DataFrame(rows)


def _size_label(n: int) -> str:
    for unit, div in (("MiB", MiB), ("KiB", KiB)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------ derived rows (analysis)

SOURCE_FIVE = ("zmq", "mpi_bcast", "lmdb", "shm", "mpi_pkl5")
"""The source's five backends (its MPI-Native is lowercase ``bcast``)."""


def derived_rows(summary: pd.DataFrame, samples: pd.DataFrame, delivery: pd.DataFrame, limits) -> list[dict]:
    """Return the ratios, spreads and counts the claims of seed 000 read, each with its own interval.

    Pure: from this chapter's summary and raw samples, the PUSH/PULL delivery table and chapter 0's
    results (memcpy). Times are per message; the bootstrap resamples each point's messages.
    """
    from ._common import any_oversubscribed, derived_row, exact_row, sample_values

    out = []

    def e2e(b, n, r=1, metric="end_to_end"):
        return sample_values(summary, samples, experiment="records", variant=b, n_records=n, readers=r, metric=metric)

    def add(fn, sets, name, unit, inputs, **labels):
        out.append(derived_row(fn, sets, name, unit, CHAPTER, inputs=inputs, **labels))

    ns = sorted(summary.query("experiment == 'records'")["n_records"].dropna().astype(int).unique())
    rec = summary.query("experiment == 'records'")
    for n, r in [(n, int(r)) for n in ns for r in sorted(rec.query("n_records == @n")["readers"].dropna().unique())]:
        sets = [e2e(b, n, r) for b in SOURCE_FIVE]
        over = any_oversubscribed(rec.query("n_records == @n and readers == @r"))
        lab = {"n_records": n, "readers": r, "payload": "records:pickle5", "oversubscribed": over}
        add(lambda *m: np.max(np.stack(np.broadcast_arrays(*m)), 0) / np.min(np.stack(np.broadcast_arrays(*m)), 0),
            sets, "spread_max_over_min", "x", "end to end, slowest over fastest of the source's five backends", **lab)
        add(lambda *m: (np.max(np.stack(np.broadcast_arrays(*m)), 0) / np.min(np.stack(np.broadcast_arrays(*m)), 0) - 1) * 100,
            sets, "spread", "%", "end to end, slowest over fastest of the source's five backends, minus 1", **lab)
        add(lambda z, *o: np.min(np.stack(np.broadcast_arrays(*o)), 0) / z, sets, "zmq_lead_x", "x",
            "end to end, the fastest other backend's time over ZeroMQ's", **lab)
        add(lambda z, *o: (np.min(np.stack(np.broadcast_arrays(*o)), 0) / z - 1) * 100, sets, "zmq_lead", "%",
            "end to end, the fastest other backend's time over ZeroMQ's, minus 1", **lab)
        add(lambda pk, bc: (1 - pk / bc) * 100, [e2e("mpi_pkl5", n, r), e2e("mpi_bcast", n, r)], "pkl5_speed_vs_bcast",
            "%", "end to end, 1 - pkl5 / lowercase bcast (the source's sign: negative = pkl5 slower)", **lab)
        for other in ("zmq", "shm"):
            add(lambda a, b: a / b, [e2e("mpi_bcast", n, r), e2e(other, n, r)], f"mpi_bcast_over_{other}", "x",
                f"end to end, lowercase bcast's time over {other}'s", **lab)
        for b_ in ("shm", "lmdb"):  # the source's "comparable" lines, against its fastest (ZeroMQ)
            add(lambda a, b: a / b, [e2e(b_, n, r), e2e("zmq", n, r)], f"{b_}_over_zmq", "x",
                f"end to end, {b_}'s time over ZeroMQ's", **lab)
    # the source's metric (reader's receive + decode), lowercase bcast over ZeroMQ
    srt = summary.query("experiment == 'source_read_time' and metric == 'read_time'")
    for n, r in srt[["n_records", "readers"]].dropna().astype(int).drop_duplicates().itertuples(index=False):
        rt = [sample_values(summary, samples, experiment="source_read_time", variant=b, n_records=n, readers=r,
                            metric="read_time") for b in ("mpi_bcast", "zmq")]  # fmt: skip
        over = any_oversubscribed(srt.query("n_records == @n and readers == @r"))
        add(lambda a, b: a / b, rt, "read_time_mpi_bcast_over_zmq", "x", "the source's read time, lowercase bcast over ZeroMQ",
            n_records=n, readers=r, payload="records:pickle5", oversubscribed=over)  # fmt: skip
    # uppercase Bcast (buffers) and point-to-point against lowercase bcast
    big = int(summary.query("experiment == 'arrays'")["array_bytes"].max())

    def arr(b, codec, metric="end_to_end", size=big, r=1):
        return sample_values(summary, samples, experiment="arrays", variant=b, codec=codec, array_bytes=size, readers=r,
                             metric=metric)  # fmt: skip

    add(lambda up, lo: (1 - up / lo) * 100, [arr("mpi_Bcast", "raw"), arr("mpi_bcast", "pickle5")], "Bcast_saving", "%",
        "end to end, 1 - uppercase Bcast of the raw array / lowercase bcast of the pickled array", payload="array",
        array_bytes=big, readers=1)  # fmt: skip
    n_max = 10_000 if 10_000 in ns else max(ns)
    add(lambda up, lo: (1 - up / lo) * 100, [e2e("mpi_Bcast", n_max), e2e("mpi_bcast", n_max)], "Bcast_saving", "%",
        "end to end, 1 - uppercase Bcast / lowercase bcast of the pickled records", payload="records:pickle5",
        n_records=n_max, readers=1)  # fmt: skip
    structured = summary.query("experiment == 'structured' and metric == 'end_to_end'")
    for b in structured["variant"]:  # the records as one structured array in a raw buffer, against dicts + pickle
        n = int(structured[structured["variant"] == b]["n_records"].iloc[0])
        st_b = sample_values(summary, samples, experiment="structured", variant=b, n_records=n, readers=1, metric="end_to_end")
        add(lambda rec, arr_: rec / arr_, [e2e(b, n), st_b], "structured_speedup", "x",
            "end to end, the records as dicts + pickle 5 over the same records as one structured array (raw buffer)",
            backend=b, payload="structured:raw", n_records=n, readers=1)  # fmt: skip
        if b == "mpi_Bcast" and "mpi_bcast" in set(summary.query("experiment == 'records'")["variant"]):
            add(lambda up, lo: (1 - up / lo) * 100, [st_b, e2e("mpi_bcast", n)], "Bcast_saving", "%",
                "end to end, 1 - uppercase Bcast of the records as one structured array / lowercase bcast of the "
                "pickled records", payload="structured:raw", n_records=n, readers=1)  # fmt: skip
    for r in sorted(summary.query("experiment == 'records'")["readers"].unique()):
        over = any_oversubscribed(rec.query("readers == @r"))
        add(lambda p2p, bc: (1 - p2p / bc) * 100, [e2e("mpi_p2p", n_max, int(r)), e2e("mpi_bcast", n_max, int(r))],
            "p2p_saving", "%", "end to end, 1 - root-to-each-reader send / lowercase bcast", payload="records:pickle5",
            n_records=n_max, readers=int(r), oversubscribed=over)  # fmt: skip
    # zero-copy reads: the reader's own time per message (transfer - writer's send call + decode) in payload copies
    mem = limits.summary.query("experiment == 'memcpy' and metric == 'copy_time'")
    at = float(mem.iloc[(mem["size_bytes"] - big).abs().argsort()[:1]]["size_bytes"].iloc[0])
    copy_s = sample_values(limits.summary, limits.samples, experiment="memcpy", metric="copy_time", size_bytes=at)
    for b in ("shm", "lmdb", "zmq"):
        reader = arr(b, "raw", "transfer") - arr(b, "raw", "send_call") + arr(b, "raw", "deserialize")
        add(lambda rd, cp, s=big / at: rd / (cp * s), [reader, copy_s], f"reader_copies_{b}", "1",
            f"{b} + raw codec, the reader's time per message (transfer - writer's send call + decode) over chapter 0's "
            f"memcpy of the payload", payload="array:raw", array_bytes=big, readers=1, backend=b)  # fmt: skip
    # near optimal: each backend's best codec at the largest array against the best path measured
    arrs = summary.query("experiment == 'arrays' and readers == 1 and metric == 'end_to_end' and array_bytes == @big")
    best = arrs.loc[arrs["median"].idxmin()]
    for b in ("zmq", "lmdb"):
        mine = arrs[arrs["variant"] == b].sort_values("median").iloc[0]
        add(lambda t_best, t_b: t_best / t_b, [arr(best["variant"], best["codec"]), arr(b, mine["codec"])],
            f"bandwidth_fraction_of_best_{b}", "x",
            f"{b} + {mine['codec']} bandwidth over the best path's ({best['variant']} + {best['codec']}), largest array",
            payload="array", array_bytes=big, readers=1, backend=b)  # fmt: skip
    # small messages: the ring's fast path, its channel interface and iceoryx2 against MPI's buffer ping-pong, paired
    # by round (every path was timed once per round)
    sp = summary.query("experiment == 'small_path' and metric == 'one_way_latency'")
    for n in sorted(int(x) for x in sp["size_bytes"].unique()):
        have = set(sp[sp["size_bytes"] == n]["variant"])

        def lat(v, n=n):
            return sample_values(summary, samples, experiment="small_path", variant=v, size_bytes=n, metric="one_way_latency")

        for path in [p for p in SMALL_PATHS if p in have and p != "mpi_buffer"]:
            if "mpi_buffer" in have:
                out.append(derived_row(lambda a, b: a / b, [lat(path), lat("mpi_buffer")], f"{path}_over_mpi", "x",
                                       CHAPTER, paired=True, inputs=f"ping-pong one-way, {path} over MPI buffer "
                                       "Send/Recv, same rounds", payload="array:raw", size_bytes=n, readers=1))  # fmt: skip
        for lib in LIBRARY_PATHS:
            if {lib, f"{lib}_best"} <= have:
                out.append(derived_row(lambda a, b: a / b, [lat(lib), lat(f"{lib}_best")], f"{lib}_interface_over_best",
                                       "x", CHAPTER, paired=True, inputs=f"ping-pong one-way, {lib} through the channel "
                                       "interface over the library as its documentation shows it, same rounds",
                                       payload="array:raw", size_bytes=n, readers=1))  # fmt: skip
        if {"shm_fast", "iceoryx2_best"} <= have:
            out.append(derived_row(lambda a, b: a / b, [lat("shm_fast"), lat("iceoryx2_best")],
                                   "shm_fast_over_iceoryx2_best", "x", CHAPTER, paired=True,
                                   inputs="ping-pong one-way, the ring's fast path over iceoryx2 as its documentation shows it, "
                                   "same rounds", payload="array:raw", size_bytes=n, readers=1))  # fmt: skip
        for path in [p for p in SMALL_PATHS if p in have and p != "bare_spin"]:
            if "bare_spin" in have:
                out.append(derived_row(lambda a, b: a / b, [lat(path), lat("bare_spin")], f"{path}_over_spin", "x",
                                       CHAPTER, paired=True, inputs=f"ping-pong one-way, {path} over the bare "
                                       "shared-memory spin, same rounds", payload="array:raw", size_bytes=n,
                                       readers=1))  # fmt: skip
        if {"shm", "shm_fast"} <= have:
            out.append(derived_row(lambda a, b: a / b, [lat("shm"), lat("shm_fast")], "interface_over_fast_path", "x",
                                   CHAPTER, paired=True, inputs="ping-pong one-way, the ring through the channel "
                                   "interface (frame list) over its fast path, same rounds", payload="array:raw",
                                   size_bytes=n, readers=1))  # fmt: skip
    # PUSH/PULL: messages each reader received, against messages sent
    out.append(exact_row(float(delivery["messages_received"].min()), "pushpull_received_min", "1", CHAPTER,
                         "fewest messages any PUSH/PULL reader received", readers=len(delivery)))  # fmt: skip
    out.append(exact_row(float(delivery["messages_received"].max()), "pushpull_received_max", "1", CHAPTER,
                         "most messages any PUSH/PULL reader received", readers=len(delivery)))  # fmt: skip
    out.append(exact_row(float(delivery["messages_sent"].iloc[0]), "pushpull_sent", "1", CHAPTER,
                         "messages the PUSH/PULL writer sent", readers=len(delivery)))  # fmt: skip
    return out


def reanalyze(res: results.Results) -> list[dict]:
    """Return this chapter's derived rows recomputed from its results on disk (and chapter 0's)."""
    measured = res.summary[res.summary["experiment"] != "derived"]
    return derived_rows(measured, res.samples, res.extra("pushpull_delivery"), results.read("machine_limits"))
