"""The small-message paths of chapter 1's ping-pong: each moves one raw payload from rank 0 to rank 1 and back.

Every path is a :class:`PingPong` opened on the two ranks of ``comm`` (rank 0 sends first) and on ``rev`` (the same
ranks, rank 1 writing: the return direction). ``trip(payload, k)`` runs ``k`` round trips and returns what this rank
received last; on every path rank 1 sends back what it received. ``release`` lets go of it; ``close`` frees
everything. ``config`` says in words how the path runs: the results record it.

Beside the book's channels through their interface, each production library also runs the way its documentation
shows for latency (``<library>_best``): its own calls on one payload, without the channel interface's list of frames.
The bare spin is the least a ring written in Python does per message.
"""

from __future__ import annotations

import ctypes
import os
import secrets

import numpy as np

from .. import backends


class PingPong:
    """One small-message path between ranks 0 and 1."""

    config = ""
    min_bytes = 0
    """The smallest payload the path can carry (sizes below it are not run)."""

    def trip(self, payload, k: int):  # pragma: no cover - interface
        raise NotImplementedError

    def release(self) -> None:
        """Let go of what the last trip returned (a view into the path's memory)."""

    def close(self) -> None:
        """Free the path's segments, ports, queues and sockets."""


class BareSpin(PingPong):
    """The floor of a shared-memory ping-pong between two Python processes: one counter per direction, one slice copy
    per message, busy polling, nothing else (no slots, no headers, no timeout: a dead peer is left to the caller's own
    timeout). Rank 0 of ``comm`` (two ranks) creates the segment and unlinks it at close.

    Layout: the two counters on their own cache lines (bytes 0 and 64), then the outbound and return areas of
    ``nbytes`` each. Rank 0 copies its payload into the outbound area and stores the count; rank 1 waits for that
    count, copies the outbound area into the return area (the echo) and stores the count there."""

    config = ("one counter per direction on its own cache line, one slice copy per message, busy polling with nothing "
              "else in the loop (no slots, header or timeout)")  # fmt: skip

    def __init__(self, comm, nbytes: int):
        from multiprocessing import resource_tracker, shared_memory

        from ..backends.shm import PREFIX

        self.rank, self.count = comm.rank, 0
        area = max(64, -(-nbytes // 64) * 64)
        name = None
        if self.rank == 0:
            self.seg = shared_memory.SharedMemory(name=f"{PREFIX}{os.getpid()}_spin_{secrets.token_hex(4)}",
                                                  create=True, size=128 + 2 * area)  # fmt: skip
            self.seg.buf[:128] = bytes(128)
            name = self.seg.name
        name = comm.bcast(name, root=0)
        if self.rank != 0:
            self.seg = shared_memory.SharedMemory(name=name)
            resource_tracker.unregister(self.seg._name, "shared_memory")  # noqa: SLF001 - rank 0 owns it
        self.q = self.seg.buf[:128].cast("Q")
        self.out, self.back = self.seg.buf[128 : 128 + area], self.seg.buf[128 + area : 128 + 2 * area]
        comm.Barrier()

    def trip(self, payload, k: int):
        q, n, c = self.q, len(payload), self.count
        out, back = self.out, self.back
        if self.rank == 0:
            for _ in range(k):
                c += 1
                out[:n] = payload
                q[0] = c
                while q[8] != c:
                    pass
        else:
            for _ in range(k):
                c += 1
                while q[0] != c:
                    pass
                back[:n] = out[:n]
                q[8] = c
        self.count = c
        return back[:n]

    def check(self, payloads: list, k: int) -> int:
        """``k`` round trips, message i carrying ``payloads[i % len(payloads)]``, every echo compared with what was
        sent (rank 0) and every message's count checked on both sides; return the messages checked."""
        for i in range(k):
            pay = payloads[i % len(payloads)]
            got = self.trip(pay, 1)
            if self.rank == 0 and bytes(got) != bytes(pay):
                raise AssertionError(f"bare spin: echo {self.count} differs from the {len(pay)} B sent")
            # rank 0 stored the outbound count and saw the echo's; rank 1 stored the echo's, and rank 0 may already
            # have sent the next message
            ahead = self.q[0] - self.count
            if self.q[8] != self.count or ahead not in ((0,) if self.rank == 0 else (0, 1)):
                raise AssertionError(f"bare spin: counters {self.q[0]}, {self.q[8]} after message {self.count}")
        return k

    def close(self) -> None:
        for v in (self.q, self.out, self.back):
            v.release()
        try:
            self.seg.close()
        except BufferError:  # a caller still holds a view of the last echo: unlink anyway, nothing leaks
            pass
        if self.rank == 0:
            try:
                self.seg.unlink()
            except FileNotFoundError:
                pass


class _Pair(PingPong):
    """A channel of ``backend`` each way: ``there`` (rank 0 writes) and ``back`` (rank 1 writes)."""

    def __init__(self, backend: str, comm, rev, **options):
        self.me = comm.rank
        self.there = backends.open_channel(backend, comm, **options)
        try:
            self.back = backends.open_channel(backend, rev, **options)
        except BaseException:
            self.there.close()
            raise
        for c in (self.there, self.back):
            if c.is_writer and hasattr(c, "wait_for_readers"):
                c.wait_for_readers()

    def release(self) -> None:
        self.there.release()
        self.back.release()

    def close(self) -> None:
        self.there.close()
        self.back.close()


class ChannelPath(_Pair):
    """A channel through the book's interface: ``send([payload])`` and ``recv()[0]``."""

    def __init__(self, backend: str, comm, rev, settings: str = "", **options):
        from .. import labels

        super().__init__(backend, comm, rev, **options)
        self.config = f"{labels.variant_words(backend)} through the channel interface (a list of one frame)" + (
            f"; {settings}" if settings else "")  # fmt: skip

    def trip(self, payload, k: int):
        a, b, got = self.there, self.back, None
        for _ in range(k):
            if self.me == 0:
                a.send([payload])
                got = b.recv()[0]
            else:
                got = a.recv()[0]
                b.send([got])
        return got


class RingFastPath(_Pair):
    """The shared-memory ring's single-frame fast path (``send_one`` / ``recv_one``)."""

    config = ("the shared-memory ring's one-frame fast path: 4 slots, one slice copy and one counter store per message, "
              "the reader polls without pause and gets a view")  # fmt: skip

    def __init__(self, comm, rev, nbytes: int):
        super().__init__("shm", comm, rev, slot_bytes=max(4096, nbytes + 64), slots=4, wait="spin")

    def trip(self, payload, k: int):
        a, b, got = self.there, self.back, None
        for _ in range(k):
            if self.me == 0:
                a.send_one(payload)
                got = b.recv_one()
            else:
                got = a.recv_one()
                b.send_one(got)
        return got


class Iceoryx2Best(_Pair):
    """iceoryx2 as its own latency benchmark runs it: loan a slice of the payload's size, copy into it, send;
    busy-poll ``receive``; rank 1 echoes the received sample into a new loan (shared memory to shared memory)."""

    config = ("as its own latency benchmark: a sample of the payload's size loaned, one copy into it, sent; the reader "
              "polls for a sample without pause; the echo copies the received sample into a new loan; static allocation")  # fmt: skip

    def __init__(self, comm, rev, nbytes: int):
        super().__init__("iceoryx2", comm, rev, max_bytes=max(64, nbytes))
        self._keep = None

    def trip(self, payload, k: int):
        from ..backends.libraries import memory_view

        pub = (self.there if self.me == 0 else self.back).publisher
        sub = (self.back if self.me == 0 else self.there).subscriber
        n = len(payload)
        data = np.ascontiguousarray(payload)  # held for the loop: its address is copied from on every send
        src = data.ctypes.data if n else 0
        self.release()
        got = None
        for _ in range(k):
            if got is not None:
                got.delete()
            if self.me == 0:
                s = pub.loan_slice_uninit(n)
                ctypes.memmove(s.payload_ptr, src, n)
                s.assume_init().send()
                while (got := sub.receive()) is None:
                    pass
            else:
                while (got := sub.receive()) is None:
                    pass
                s = pub.loan_slice_uninit(n)
                ctypes.memmove(s.payload_ptr, got.payload_ptr, n)
                s.assume_init().send()
        self._keep = got
        return memory_view(got.payload_ptr, n) if n else memoryview(b"")

    def release(self) -> None:
        if self._keep is not None:
            self._keep.delete()
            self._keep = None

    def close(self) -> None:
        self.release()
        super().close()


class BytesBest(_Pair):
    """A library as its documentation shows it: one ``bytes`` object per message through the library's own calls, no
    channel interface; rank 1 sends back what it received. The queues (``faster_fifo``, ``mp_queue``) ``put`` and
    block in ``get`` (the library pickles the object); NNG ``send``s and blocks in ``recv`` (no framing)."""

    CONFIG = {
        "faster_fifo": "one bytes object per put (pickled by the library), blocking get; rank 1 puts back what it got",
        "mp_queue": "one bytes object per put (pickled by the feeder thread), blocking get; rank 1 puts back what it got",
        "pynng": "Pub0/Sub0 over ipc://, one bytes message per send (no framing), blocking recv; rank 1 sends back what "
                 "it got; not run at 0 B (pynng cannot receive an empty message)",
    }  # fmt: skip

    def __init__(self, backend: str, comm, rev, nbytes: int):
        opts = {"max_bytes": max(4096, nbytes + 4096)} if backend == "faster_fifo" else {}
        super().__init__(backend, comm, rev, **opts)
        self.config = self.CONFIG[backend]
        self.min_bytes = 1 if backend == "pynng" else 0
        mine, theirs = (self.there, self.back) if self.me == 0 else (self.back, self.there)
        if backend == "pynng":
            comm.Barrier()
            _drop_hellos(theirs)
            self._send, self._recv = mine.sock.send, theirs.sock.recv
        else:
            self._send, self._recv = mine.queues[0].put, theirs.queues[0].get

    def trip(self, payload, k: int):
        send, recv, got = self._send, self._recv, None
        if self.me == 0:
            data = bytes(payload)
            for _ in range(k):
                send(data)
                got = recv()
        else:
            for _ in range(k):
                got = recv()
                send(got)
        return got


def _drop_hellos(chan, settle_s: float = 0.02) -> None:
    """Drop the hellos (``H``) the NNG channel's handshake may still have in flight to this reader, so that the raw
    ``recv`` of the documented way gets payloads only: every hello was sent before the barrier that preceded this."""
    import time

    time.sleep(settle_s)
    while True:
        try:
            msg = chan.sock.recv(block=False)
        except chan.pynng.TryAgain:
            return
        if msg != b"H":
            raise AssertionError(f"pynng: an unexpected {len(msg)} B message before the first payload")


class MpiBuffer(PingPong):
    """MPI's buffer ``Send`` / ``Recv`` (chapter 0's floor)."""

    config = "MPI Send and Recv of a byte buffer (MPICH), received into a preallocated array"

    def __init__(self, comm, nbytes: int):
        self.comm, self.me = comm, comm.rank
        self.buf = np.empty(max(1, nbytes), dtype=np.uint8)

    def trip(self, payload, k: int):
        from mpi4py import MPI

        c, n = self.comm, len(payload)
        r = self.buf[:n]
        for _ in range(k):
            if self.me == 0:
                c.Send([payload, MPI.BYTE], dest=1, tag=1)
                c.Recv([r, MPI.BYTE], source=1, tag=2)
            else:
                c.Recv([r, MPI.BYTE], source=0, tag=1)
                c.Send([r, MPI.BYTE], dest=0, tag=2)
        return r


LIBRARY_PATHS = ("iceoryx2", "faster_fifo", "mp_queue", "pynng")
"""The production libraries timed both ways: through the channel interface and as their documentation shows them."""


def available_paths(paths) -> list[str]:
    """Return ``paths`` less the library paths whose library is not installed here."""
    from ..backends.libraries import available

    have = available()
    return [p for p in paths if have.get(p.removesuffix("_best"), True)]


def open_path(name: str, comm, rev, nbytes: int) -> PingPong:
    """Open path ``name`` on the two ranks of ``comm`` (collective on both) for payloads of up to ``nbytes``."""
    if name == "bare_spin":
        return BareSpin(comm, nbytes)
    if name == "shm_fast":
        return RingFastPath(comm, rev, nbytes)
    if name == "mpi_buffer":
        return MpiBuffer(comm, nbytes)
    if name == "iceoryx2_best":
        return Iceoryx2Best(comm, rev, nbytes)
    if name in ("faster_fifo_best", "mp_queue_best", "pynng_best"):
        return BytesBest(name.removesuffix("_best"), comm, rev, nbytes)
    if name == "shm":
        slot = max(4096, nbytes + 64)
        return ChannelPath("shm", comm, rev, f"4 slots of {slot} B, the reader polls without pause", slot_bytes=slot,
                           slots=4, wait="spin")  # fmt: skip
    if name in backends.LIBRARY_BACKENDS:
        from ..backends.libraries import SETTINGS

        opts = {"max_bytes": max(4096, nbytes + 4096)} if name in ("iceoryx2", "faster_fifo") else {}
        return ChannelPath(name, comm, rev, SETTINGS[name], **opts)
    raise KeyError(f"unknown small-message path {name!r}")
