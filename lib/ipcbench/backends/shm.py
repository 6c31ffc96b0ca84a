"""A shared-memory ring (``multiprocessing.shared_memory``): one writer, N readers, every reader reads every slot.

Layout of the one segment: a control block of uint64 counters, then ``slots`` slots
of ``slot_bytes`` each. ``written[s]`` holds 1 + the sequence number of the message
in slot s; ``read[r, s]`` holds 1 + the last sequence number reader r finished with
in slot s. The writer may reuse a slot only when every reader has finished with it;
a reader may read slot s for message m only when ``written[s] == m + 1``. A reader waits
for the writer with the channel's ``wait`` strategy (``base.WAIT_STRATEGIES``: spin,
spin then sleep, or a kernel wake-up through a named pipe); the writer waiting for a slot
to be freed spins, then sleeps.

Readers get views into the slot (zero-copy): the frames are valid until the reader's
next ``recv()`` or ``release()``. Payloads larger than a slot raise PayloadTooLarge
before anything is written. Ordering relies on x86's total store order (data stored
before the counter is visible before it); on any other CPU the channel refuses to open
(:class:`UnsupportedPlatform`) rather than risk a reader seeing the counter before the
data. The writer unlinks the segment at close; readers only detach (and are
unregistered from the resource tracker, so no leak warnings).
"""

from __future__ import annotations

import os
import platform
import secrets
import struct
import time
from multiprocessing import resource_tracker, shared_memory

import numpy as np

from .base import (
    WAIT_STRATEGIES,
    BackendError,
    Channel,
    PayloadTooLarge,
    PeerTimeout,
    Wakeup,
    framed_size,
    pack_into,
    unpack_from,
    wait_until,
)

PREFIX = "ipcbench_"
_ONE = struct.Struct("<IQ")
"""The fast path's fixed header: frame count (1) and length, the same layout as ``base.pack_into`` of one frame."""
TOTAL_STORE_ORDER = {"x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"}
"""CPUs whose stores become visible to other cores in program order (the ring's only synchronisation)."""


class UnsupportedPlatform(BackendError):
    """The shared-memory ring cannot guarantee ordering on this CPU."""


def require_total_store_order(machine: str | None = None) -> None:
    """Raise UnsupportedPlatform unless this CPU keeps stores in program order (x86), which the ring relies on."""
    machine = machine or platform.machine()
    if machine.lower() not in TOTAL_STORE_ORDER:
        raise UnsupportedPlatform(
            f"the shared-memory ring publishes a message by storing its data, then its sequence counter, and relies "
            f"on x86's total store order for a reader to see them in that order; this CPU is {machine!r}, whose "
            "stores may become visible out of order. Use the zmq, lmdb or mpi backends on this machine (or give "
            "ShmChannel release/acquire fences around its counters)."
        )


class ShmChannel(Channel):
    """Shared-memory ring of slots with per-reader read flags."""

    name = "shm"
    framing = "pack_unpack"
    host_scope = "one machine's memory"
    across_hosts_instead = "MPI or ZeroMQ over tcp:// between hosts; shared memory within each host"
    leftover_prefix = PREFIX

    def __init__(self, comm, slot_bytes: int = 1 << 20, slots: int = 4, timeout_s: float = 10.0, readers=None,
                 wait: str = "spin_then_sleep"):  # fmt: skip
        require_total_store_order()  # every rank runs on the same CPU kind, so every rank raises alike
        if wait not in WAIT_STRATEGIES:
            raise ValueError(f"unknown wait strategy {wait!r}; use one of {WAIT_STRATEGIES}")
        super().__init__(comm.rank == 0, comm.size - 1)
        self.timeout_s = timeout_s
        self.wait = wait
        self.wakeup = Wakeup(comm) if wait == "fifo" else None
        name = None
        if self.is_writer:
            self.slot_bytes = int(slot_bytes)
            self.slots = int(slots)
            ctrl = 8 * (self.slots + self.readers * self.slots + self.readers)
            self.shm = shared_memory.SharedMemory(
                name=f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}", create=True, size=ctrl + self.slots * self.slot_bytes
            )
            self.shm.buf[:ctrl] = bytes(ctrl)
            name = (self.shm.name, self.slot_bytes, self.slots)
        name = comm.bcast(name, root=0)
        if not self.is_writer:
            self.slot_bytes, self.slots = name[1], name[2]
            self.shm = shared_memory.SharedMemory(name=name[0])
            # the writer owns the segment: stop this process's tracker from unlinking it or warning
            resource_tracker.unregister(self.shm._name, "shared_memory")  # noqa: SLF001
        n, r = self.slots, self.readers
        ctrl = np.ndarray((n + r * n + r,), dtype=np.uint64, buffer=self.shm.buf)
        self.written = ctrl[:n]
        self.read = ctrl[n : n + r * n].reshape(r, n)
        self.attached = ctrl[n + r * n :]
        self.data_offset = 8 * (n + r * n + r)
        self.seq = 0
        self.rank = comm.rank
        self._holding = None
        self._ctrl = ctrl
        # the fast path reads and writes the counters through a plain memoryview, not numpy scalars (which go through
        # numpy's indexing machinery on every access; chapter 1's small-path experiment measures the path as a whole)
        self._q = self.shm.buf[: self.data_offset].cast("Q")
        self._slots_mv = [self._slot(i) for i in range(n)]
        # the fast path's per-slot views, made once: the payload area, and the one-frame header's count and length
        # read as integers (no struct call, no tuple); the length of the header the writer last put in each slot
        # (-1: unknown, after send()); the control indices of every reader's read flag for each slot
        self._data_mv = [m[_ONE.size :] for m in self._slots_mv]
        self._count_of = [m[0:4].cast("I") for m in self._slots_mv]
        self._len_of = [m[4:12].cast("Q") for m in self._slots_mv]
        self._header_len = [-1] * n
        self._read_flags = [tuple(n + i * n + s for i in range(r)) for s in range(n)]
        self._read_base = n * self.rank  # this reader's read flags: read[rank - 1, :]
        if not self.is_writer:
            self.attached[self.rank - 1] = 1
        comm.Barrier()

    def _slot(self, s: int) -> memoryview:
        off = self.data_offset + s * self.slot_bytes
        return self.shm.buf[off : off + self.slot_bytes]

    def wait_for_readers(self, timeout_s: float | None = None) -> None:
        """Wait until every reader has attached (raise PeerTimeout naming the missing ones)."""
        t = self.timeout_s if timeout_s is None else timeout_s
        try:
            wait_until(lambda: bool(self.attached.all()), t, "readers to attach")
        except PeerTimeout:
            missing = [int(i) + 1 for i in np.flatnonzero(self.attached == 0)]
            raise PeerTimeout(f"shm: reader(s) {missing} never attached within {t:g} s") from None

    def send(self, frames: list) -> None:
        """Write the frames into the next slot once every reader has finished with it."""
        need = framed_size(frames)
        if need > self.slot_bytes:
            raise PayloadTooLarge(
                f"shm: message of {need} B does not fit a slot of {self.slot_bytes} B; "
                "open the channel with a larger slot_bytes"
            )
        s = self.seq % self.slots
        q = self._q
        prev = q[s]
        if prev:
            n = self.slots
            for i in range(self.readers):  # counters read through a memoryview: no numpy scalar per check
                if q[n + i * n + s] < prev and not self._wait_freed(i, s, prev):
                    read = self.read[:, s]
                    slow = [int(j) + 1 for j in np.flatnonzero(read < prev)]
                    raise PeerTimeout(f"shm: reader(s) {slow} did not read message {prev - 1} within {self.timeout_s:g} s")
        pack_into(self._slots_mv[s], frames)
        self._header_len[s] = -1
        self.seq += 1
        q[s] = self.seq  # published after the data (x86-64 TSO keeps the order)
        if self.wakeup is not None:
            self.wakeup.notify()

    def recv(self) -> list:
        """Return views of the next message's frames (valid until the next recv or release)."""
        self.release()
        s = self.seq % self.slots
        want = self.seq + 1
        q = self._q
        if q[s] != want:
            wait_until(lambda: q[s] == want, self.timeout_s, f"shm message {self.seq} from the writer",
                       strategy=self.wait, wakeup=self.wakeup)  # fmt: skip
        self._holding = s
        return unpack_from(self._slots_mv[s])

    def release(self) -> None:
        """Mark the held slot as read by this reader."""
        if self._holding is not None:
            self._q[self.slots * self.rank + self._holding] = self.seq + 1  # read[rank - 1, slot]
            self._holding = None
            self.seq += 1

    # ------------------------------------------------------------ the small-message fast path

    def send_one(self, buf) -> None:
        """Fast path for one raw buffer: one slice copy and one counter store.

        The header (one frame, its length) is written only when the slot last held another length; readers may use
        :meth:`recv_one` or :meth:`recv`. A slot still held by a reader is waited for (then :meth:`send`'s clear
        timeout); ``buf`` must be a contiguous bytes-like object of at most ``slot_bytes - 12`` bytes.
        """
        s = self.seq % self.slots
        q = self._q
        prev = q[s]
        if prev:
            for idx in self._read_flags[s]:
                if q[idx] < prev and not self._wait_freed((idx - self.slots) // self.slots, s, prev):
                    read = self.read[:, s]
                    slow = [int(j) + 1 for j in np.flatnonzero(read < prev)]
                    raise PeerTimeout(f"shm: reader(s) {slow} did not read message {prev - 1} within {self.timeout_s:g} s")
        nbytes = len(buf)
        if nbytes != self._header_len[s]:
            if nbytes + _ONE.size > self.slot_bytes:
                raise PayloadTooLarge(f"shm: message of {nbytes + _ONE.size} B does not fit a slot of {self.slot_bytes} B")
            _ONE.pack_into(self._slots_mv[s], 0, 1, nbytes)
            self._header_len[s] = nbytes
        self._data_mv[s][:nbytes] = buf
        self.seq = seq = self.seq + 1
        q[s] = seq  # published after the data (x86-64 TSO keeps the order)
        if self.wakeup is not None:
            self.wakeup.notify()

    def _wait_freed(self, reader: int, s: int, prev: int) -> bool:
        """Wait for ``reader`` to finish with slot ``s`` (polling, then sleeping with back-off as ``send`` always
        has: a writer must not keep a core from an oversubscribed reader); return False after the timeout."""
        q, idx = self._q, self.slots + reader * self.slots + s
        for _ in range(200):
            if q[idx] >= prev:
                return True
        try:
            wait_until(lambda: q[idx] >= prev, self.timeout_s, f"reader {reader + 1} to free slot {s}")
        except PeerTimeout:
            return False
        return True

    def recv_one(self) -> memoryview:
        """Fast path: return a view of the next message's single frame (valid until the next recv or release).

        Waits by polling the slot's counter without pause (``spin``) whatever the channel's wait strategy, or,
        with ``fifo``, as :meth:`recv` does. The slot held since the last call is released first, inline.
        """
        q = self._q
        held = self._holding
        if held is not None:
            self.seq += 1
            q[self._read_base + held] = self.seq
            self._holding = None
        s = self.seq % self.slots
        if q[s] != self.seq + 1:
            self._wait_message(s)
        if self._count_of[s][0] != 1:
            raise BackendError(f"shm: recv_one found a message of {self._count_of[s][0]} frames; the writer used "
                               "send(), not send_one()")  # fmt: skip
        self._holding = s
        return self._data_mv[s][: self._len_of[s][0]]

    def _wait_message(self, s: int) -> None:
        """Poll slot ``s`` until it holds message ``seq``: 1024 checks between two looks at the clock (the loop the
        message's arrival ends is a bare index and compare); raise PeerTimeout after ``timeout_s``."""
        q, want = self._q, self.seq + 1
        if self.wait == "fifo":
            wait_until(lambda: q[s] == want, self.timeout_s, f"shm message {self.seq} from the writer",
                       strategy="fifo", wakeup=self.wakeup)  # fmt: skip
            return
        deadline = None
        while True:
            for _ in range(1024):
                if q[s] == want:
                    return
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.timeout_s
            elif now > deadline:
                raise PeerTimeout(f"timed out after {self.timeout_s:g} s waiting for shm message {self.seq} from the "
                                  "writer")  # fmt: skip

    def close(self) -> None:
        """Detach (readers) or detach and unlink (writer) the segment."""
        wakeup, self.wakeup = getattr(self, "wakeup", None), None
        if wakeup is not None:
            wakeup.close()
        shm = getattr(self, "shm", None)
        if shm is None:
            return
        self.written = self.read = self.attached = self._ctrl = None
        for attr in ("_data_mv", "_count_of", "_len_of", "_slots_mv"):  # views of a slot before the slot itself
            for v in getattr(self, attr, []):
                v.release()
            setattr(self, attr, [])
        q, self._q = getattr(self, "_q", None), None
        if q is not None:
            q.release()
        try:
            shm.close()
        except BufferError:
            # a caller still holds a view into the segment; unlink anyway so nothing leaks
            pass
        if self.is_writer:
            try:
                shm.unlink()
            except FileNotFoundError:
                pass
        self.shm = None


def leftover_segments() -> list[str]:
    """Return shared-memory segments of this library still present in /dev/shm."""
    d = "/dev/shm"
    return sorted(f for f in os.listdir(d) if f.startswith(PREFIX)) if os.path.isdir(d) else []
