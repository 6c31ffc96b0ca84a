"""LMDB channel: the writer puts one key per message; readers poll for the next key in read transactions.

Opened as in the source (``writemap=True``, ``sync=False``). The environment lives in
a fresh temporary directory that the writer removes at close. Readers register
under ``reader/<i>`` when they attach, so the writer can fail with a clear timeout
when one never does. A full map raises PayloadTooLarge and aborts the write
transaction: nothing already written is touched.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile

import lmdb

from .base import (
    WAIT_STRATEGIES,
    Channel,
    PayloadTooLarge,
    PeerTimeout,
    Wakeup,
    framed_size,
    pack_into,
    unpack_from,
    wait_until,
)

_KEY = struct.Struct(">Q")
PREFIX = "ipcbench-lmdb-"


class LmdbChannel(Channel):
    """One key per message in an LMDB environment; readers copy each value out of the map."""

    name = "lmdb"
    framing = "pack_unpack"
    host_scope = "a memory-mapped file: network file systems break its locking"
    across_hosts_instead = "a network store, or a broadcast over MPI"
    leftover_prefix = PREFIX

    def __init__(self, comm, map_bytes: int = 1 << 30, timeout_s: float = 10.0, readers=None,
                 wait: str = "spin_then_sleep", buffers: bool = False, writemap: bool = True, sync: bool = False):  # fmt: skip
        if wait not in WAIT_STRATEGIES:
            raise ValueError(f"unknown wait strategy {wait!r}; use one of {WAIT_STRATEGIES}")
        super().__init__(comm.rank == 0, comm.size - 1)
        self.timeout_s = timeout_s
        self.map_bytes = int(map_bytes)
        self.wait = wait
        self.buffers = bool(buffers)  # zero-copy reads: the value is a view into the map, valid until release()
        self.settings = {"writemap": bool(writemap), "sync": bool(sync), "metasync": bool(sync)}
        self._txn = None
        path = None
        if self.is_writer:
            self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
            self.env = lmdb.open(self.dir, map_size=self.map_bytes, max_readers=max(126, 2 * self.readers), lock=True,
                                 **self.settings)  # fmt: skip
            path = self.dir
        path = comm.bcast(path, root=0)
        if not self.is_writer:
            self.dir = path
            self.env = lmdb.open(path, map_size=self.map_bytes, lock=True, **self.settings)
            with self.env.begin(write=True) as txn:
                txn.put(f"reader/{comm.rank}".encode(), b"1")
        self.seq = 0
        self.wakeup = Wakeup(comm) if wait == "fifo" else None
        comm.Barrier()

    def wait_for_readers(self, timeout_s: float | None = None) -> None:
        """Wait until every reader has registered (raise PeerTimeout naming the missing ones)."""
        t = self.timeout_s if timeout_s is None else timeout_s

        def registered():
            with self.env.begin() as txn:
                return [r for r in range(1, self.readers + 1) if txn.get(f"reader/{r}".encode()) is None]

        try:
            wait_until(lambda: not registered(), t, "LMDB readers to attach", spin=10)
        except PeerTimeout:
            raise PeerTimeout(f"lmdb: reader(s) {registered()} never attached within {t:g} s") from None

    def send(self, frames: list) -> None:
        """Store the frames under the next sequence number."""
        need = framed_size(frames)
        try:
            with self.env.begin(write=True) as txn:
                buf = txn.reserve(_KEY.pack(self.seq), need) if hasattr(txn, "reserve") else None
                if buf is None:
                    data = bytearray(need)
                    pack_into(memoryview(data), frames)
                    txn.put(_KEY.pack(self.seq), data)
                else:  # pragma: no cover - py-lmdb has no reserve today
                    pack_into(memoryview(buf), frames)
        except lmdb.MapFullError:
            raise PayloadTooLarge(
                f"lmdb: the map of {self.map_bytes} B is full at message {self.seq} ({need} B); "
                "open the channel with a larger map_bytes"
            ) from None
        self.seq += 1
        if self.wakeup is not None:
            self.wakeup.notify()

    def recv(self) -> list:
        """Return the next message's frames: copied out of the map, or with ``buffers`` views into it (until release)."""
        self.release()
        key = _KEY.pack(self.seq)
        value = None

        def ready():
            nonlocal value
            if self.buffers:  # keep the read transaction open: the view is valid only while it is
                txn = self.env.begin(buffers=True)
                value = txn.get(key)
                if value is None:
                    txn.abort()
                else:
                    self._txn = txn
            else:
                with self.env.begin() as txn:
                    value = txn.get(key)
            return value is not None

        wait_until(ready, self.timeout_s, f"LMDB message {self.seq}", spin=50, strategy=self.wait, wakeup=self.wakeup)
        self.seq += 1
        return unpack_from(memoryview(value))

    def release(self) -> None:
        """End the read transaction that keeps a zero-copy value valid."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None

    def close(self) -> None:
        """Close the environment; the writer removes its directory."""
        if getattr(self, "_txn", None) is not None:
            self.release()
        wakeup, self.wakeup = getattr(self, "wakeup", None), None
        if wakeup is not None:
            wakeup.close()
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
            self.env = None
        if self.is_writer and getattr(self, "dir", None):
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def leftover_dirs() -> list[str]:
    """Return LMDB directories of this library still present in the temp dir."""
    tmp = tempfile.gettempdir()
    return sorted(os.path.join(tmp, d) for d in os.listdir(tmp) if d.startswith(PREFIX))
