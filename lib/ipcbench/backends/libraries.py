"""Production IPC libraries behind the book's channel interface: what a user would pick instead of the book's own paths.

Each is used as its documentation intends, with the settings named in :data:`SETTINGS` (the chapter prints them):

* ``iceoryx2``: lock-free zero-copy publish-subscribe over shared memory (Eclipse iceoryx2, a Rust core). The writer
  loans a sample of the message's size from the publisher's data segment and packs the frames straight into it (one
  copy, as the book's ring does); readers get views into the sample, held until ``release``. No message is lost: the
  subscriber buffer holds every message the channel may have in flight, safe overflow is off, and a send that reaches
  fewer subscribers than there are readers is an error (a reader stopped reading), never a silent drop.
* ``faster_fifo``: a C++ circular buffer in shared memory with process-shared mutex and condition variable, sold as a
  ``multiprocessing.Queue`` replacement; one queue per reader makes it a broadcast. Objects are pickled by the library.
* ``mp_queue``: the standard library's ``multiprocessing.Queue`` (a pipe, a feeder thread and pickling), one per reader.
* ``pynng``: NNG's pub/sub (``Pub0``/``Sub0``) over ``ipc://``. Pub/sub drops messages for a subscriber that is not
  connected yet or whose queue is full, so the writer repeats a hello until every reader has one (as the book's
  ZeroMQ pub/sub does) and the messages are paced; ``delivers_to_all`` holds only for paced sends (see the chapter).

``multiprocessing`` queues are meant to reach processes the creator starts; the book's readers are MPI ranks, started
by ``mpiexec``. They get their queue the way a spawned child does: the queue is pickled as for a spawned process, its
file descriptors travel through ``multiprocessing``'s own resource sharer (a Unix socket with SCM_RIGHTS, the
mechanism it uses to send a ``Connection`` to another process), and every rank uses the writer's authentication key.
The queue itself is the library's, unchanged.
"""

from __future__ import annotations

import ctypes
import os
import queue as queue_mod
import secrets
import shutil
import tempfile
import time

from .base import (
    BackendError,
    Channel,
    PayloadTooLarge,
    PeerTimeout,
    framed_size,
    pack,
    pack_into,
    unpack_from,
)

_VIEW = ctypes.pythonapi.PyMemoryView_FromMemory
_VIEW.restype = ctypes.py_object
_VIEW.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
_READ, _WRITE = 0x100, 0x200


def memory_view(address: int, nbytes: int, writable: bool = False) -> memoryview:
    """Return a memoryview of ``nbytes`` at ``address`` (no copy; valid while the owner of the memory lives)."""
    return _VIEW(address, nbytes, _WRITE if writable else _READ)


class LibraryNotAvailable(BackendError):
    """A production library's wheel is not installed on this platform."""


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise LibraryNotAvailable(f"{module} is not available on this platform ({e})") from None


def version_of(dist: str) -> str | None:
    """Return an installed distribution's version, or None where it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------ iceoryx2


class Iceoryx2Channel(Channel):
    """iceoryx2 publish-subscribe of ``u8`` slices: one publisher (the writer), one subscriber per reader."""

    name = "iceoryx2"
    dist = "iceoryx2"
    library = True
    host_scope = "one machine's memory"
    across_hosts_instead = "MPI or ZeroMQ over tcp:// between hosts; shared memory within each host"

    def __init__(self, comm, max_bytes: int = 1 << 20, buffer: int = 4, timeout_s: float = 10.0, readers=None):
        iox2 = _require("iceoryx2")
        super().__init__(comm.rank == 0, comm.size - 1)
        self.iox2 = iox2
        self.timeout_s = timeout_s
        self.buffer = int(buffer)
        self.sample = None
        self.publisher = self.subscriber = self.service = self.node = None
        iox2.set_log_level(iox2.LogLevel.Error)
        self.node = iox2.NodeBuilder.new().config(iox2.config.default()).create(iox2.ServiceType.Ipc)
        name = f"ipcbench/{os.getpid()}_{secrets.token_hex(4)}" if self.is_writer else None
        name = comm.bcast(name, root=0)
        builder = (self.node.service_builder(iox2.ServiceName.new(name)).publish_subscribe(iox2.Slice[ctypes.c_uint8])
                   .max_publishers(1).max_subscribers(max(1, self.readers)).history_size(0)
                   .subscriber_max_buffer_size(self.buffer).enable_safe_overflow(False))  # fmt: skip
        if self.is_writer:
            self.service = builder.create()
            # static allocation: the data segment is sized once for max_bytes and never moves, which is what lets
            # the views of its samples be kept (see _view)
            self.publisher = (self.service.publisher_builder().initial_max_slice_len(int(max_bytes))
                              .allocation_strategy(iox2.AllocationStrategy.Static)
                              .backpressure_strategy(iox2.BackpressureStrategy.DiscardData).create())  # fmt: skip
        self.max_bytes = int(max_bytes)
        self._views: dict = {}
        comm.Barrier()
        if not self.is_writer:
            self.service = builder.open()
            self.subscriber = self.service.subscriber_builder().buffer_size(self.buffer).create()
        comm.Barrier()

    def wait_for_readers(self, timeout_s: float | None = None) -> None:
        """Wait until every reader's subscriber is connected (raise PeerTimeout naming how many are missing)."""
        t = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + t
        while (n := self.service.dynamic_config.number_of_subscribers) < self.readers:
            if time.monotonic() > deadline:
                raise PeerTimeout(f"iceoryx2: {self.readers - n} of {self.readers} reader(s) never subscribed within {t:g} s")
            time.sleep(1e-3)

    def _view(self, address: int, nbytes: int, writable: bool) -> memoryview:
        """Return a view of ``nbytes`` at ``address`` in a data segment, made once per (address, size): a sample's
        address recurs as the publisher reuses its samples, and a segment of static allocation stays mapped as
        long as its port lives (the ports close after every view is dropped)."""
        key = (address, nbytes, writable)
        v = self._views.get(key)
        if v is None:
            if len(self._views) >= 256:  # many sizes (a sweep): keep the cache small
                self._views.clear()
            v = self._views[key] = memory_view(address, nbytes, writable=writable)
        return v

    def send(self, frames: list) -> None:
        """Loan a sample of the message's size, pack the frames into it, publish it to every subscriber."""
        need = framed_size(frames)
        if need > self.max_bytes:
            raise PayloadTooLarge(f"iceoryx2: message of {need} B is larger than the {self.max_bytes} B the channel "
                                  "was opened for; open it with a larger max_bytes")  # fmt: skip
        sample = self.publisher.loan_slice_uninit(need)
        pack_into(self._view(sample.payload_ptr, need, True), frames)
        delivered = sample.assume_init().send()
        if delivered < self.readers:
            raise PeerTimeout(f"iceoryx2: the message reached {delivered} of {self.readers} reader(s): a reader's buffer "
                              f"of {self.buffer} messages is full (it stopped reading) or it left")  # fmt: skip

    def recv(self) -> list:
        """Return views of the next sample's frames (valid until the next recv or release); polls without pause."""
        self.release()
        sub = self.subscriber
        if (sample := sub.receive()) is None:
            deadline = time.monotonic() + self.timeout_s
            i = 0
            while (sample := sub.receive()) is None:
                i += 1
                if not i & 0xFFF and time.monotonic() > deadline:
                    raise PeerTimeout(f"iceoryx2: no message from the writer within {self.timeout_s:g} s")
        self.sample = sample
        # the header's element count is the slice's length in bytes (the binding's payload() builds a Slice object)
        return unpack_from(self._view(sample.payload_ptr, sample.header.number_of_elements, False))

    def release(self) -> None:
        """Return the held sample to the publisher."""
        if self.sample is not None:
            self.sample.delete()
            self.sample = None

    def close(self) -> None:
        """Release the sample, the views, the ports, the service and the node."""
        self.release()
        for v in getattr(self, "_views", {}).values():
            try:
                v.release()
            except BufferError:  # a caller still holds a buffer taken from it; it goes with its last reference
                pass
        self._views = {}
        for attr in ("subscriber", "publisher"):
            port = getattr(self, attr, None)
            if port is not None:
                port.delete()
                setattr(self, attr, None)
        self.service = self.node = None


# --------------------------------------------------- multiprocessing-style queues


class _HandOff:
    """Stands in for a spawning ``Popen`` while a queue is pickled for an MPI rank: file descriptors go through
    ``multiprocessing``'s resource sharer, as a ``Connection`` sent to another process does."""

    @staticmethod
    def duplicate_for_child(fd: int) -> int:
        return fd

    @staticmethod
    def DupFd(fd: int):  # noqa: N802 - mirrors multiprocessing's Popen
        from multiprocessing import resource_sharer

        return resource_sharer.DupFd(fd)


def _dumps_for_rank(obj) -> bytes:
    from multiprocessing import context
    from multiprocessing.reduction import ForkingPickler

    context.set_spawning_popen(_HandOff)
    try:
        return bytes(ForkingPickler.dumps(obj))
    finally:
        context.set_spawning_popen(None)


def _share_authkey(comm) -> None:
    """Give every rank the writer's multiprocessing authentication key (the resource sharer checks it)."""
    import multiprocessing

    key = comm.bcast(bytes(multiprocessing.current_process().authkey) if comm.rank == 0 else None, root=0)
    multiprocessing.current_process().authkey = key


class _QueueChannel(Channel):
    """One queue per reader, created by the writer and handed to each reader; flags in shared memory say who attached."""

    library = True
    host_scope = "pipes and shared memory of one machine"
    across_hosts_instead = "ZeroMQ or NNG over tcp://"

    def __init__(self, comm, timeout_s: float = 10.0, slots: int = 4, max_bytes: int = 1 << 20, readers=None):
        super().__init__(comm.rank == 0, comm.size - 1)
        import multiprocessing

        self.timeout_s = timeout_s
        self.rank = comm.rank
        self.queues: list = []
        _share_authkey(comm)
        self.ctx = multiprocessing.get_context("spawn")  # named semaphores: openable by name in another process
        pickles = None
        if self.is_writer:
            self.attached = self.ctx.RawArray(ctypes.c_uint8, max(1, self.readers))
            self.queues = [self._make_queue(int(slots), int(max_bytes)) for _ in range(self.readers)]
            pickles = [_dumps_for_rank((q, self.attached)) for q in self.queues]
        if comm.size > 1:  # (a SoloComm writer has no readers to hand queues to)
            mine = comm.scatter([None, *pickles] if self.is_writer else None, root=0)
            if not self.is_writer:
                from multiprocessing.reduction import ForkingPickler

                q, self.attached = ForkingPickler.loads(mine)
                self.queues = [q]
                self.attached[self.rank - 1] = 1
            comm.Barrier()

    def _make_queue(self, slots: int, max_bytes: int):  # pragma: no cover - interface
        raise NotImplementedError

    def wait_for_readers(self, timeout_s: float | None = None) -> None:
        """Wait until every reader has its queue (raise PeerTimeout naming the missing ones)."""
        t = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + t
        while not all(self.attached[: self.readers]):
            if time.monotonic() > deadline:
                missing = [i + 1 for i in range(self.readers) if not self.attached[i]]
                raise PeerTimeout(f"{self.name}: reader(s) {missing} never attached within {t:g} s")
            time.sleep(1e-3)

    @staticmethod
    def _objects(frames) -> list:
        import numpy as np

        # what a user puts: objects (a numpy array is pickled with its bytes); memoryviews themselves do not pickle
        return [np.frombuffer(f, dtype=np.uint8) for f in frames]

    def send(self, frames: list) -> None:
        """Put the frames (as uint8 arrays) on every reader's queue; a full queue past the timeout is an error."""
        objs = self._objects(frames)
        for r, q in enumerate(self.queues):
            try:
                q.put(objs, block=True, timeout=self.timeout_s)
            except queue_mod.Full:
                raise PeerTimeout(f"{self.name}: reader {r + 1}'s queue stayed full for {self.timeout_s:g} s "
                                  "(it stopped reading)") from None  # fmt: skip

    def recv(self) -> list:
        """Return the next message's frames (the queue's unpickled arrays, as byte views)."""
        try:
            objs = self.queues[0].get(block=True, timeout=self.timeout_s)
        except queue_mod.Empty:
            raise PeerTimeout(f"{self.name}: no message from the writer within {self.timeout_s:g} s") from None
        return [memoryview(o) for o in objs]

    def close(self) -> None:
        for q in self.queues:
            try:
                q.close()
            except (OSError, ValueError):
                pass
            if self.is_writer:
                q.cancel_join_thread()  # a reader that left must not keep this process waiting on a full pipe
        self.queues = []


class FasterFifoChannel(_QueueChannel):
    """``faster_fifo.Queue``: a circular buffer in shared memory, sized to hold ``slots`` of the largest message."""

    name = "faster_fifo"
    dist = "faster-fifo"

    def _make_queue(self, slots: int, max_bytes: int):
        faster_fifo = _require("faster_fifo")
        size = max(1 << 20, slots * (max_bytes + 4096))
        self.max_message = size // slots
        return faster_fifo.Queue(max_size_bytes=size)

    def send(self, frames: list) -> None:
        need = framed_size(frames)
        if need > getattr(self, "max_message", need):
            raise PayloadTooLarge(f"faster_fifo: message of {need} B does not fit the queue's share of "
                                  f"{self.max_message} B per message; open the channel with a larger max_bytes")  # fmt: skip
        super().send(frames)


class MpQueueChannel(_QueueChannel):
    """``multiprocessing.Queue`` (spawn context), bounded to ``slots`` messages so a reader that stops is noticed."""

    name = "mp_queue"
    dist = None  # the standard library

    def _make_queue(self, slots: int, max_bytes: int):
        return self.ctx.Queue(maxsize=slots)


# ------------------------------------------------------------------ NNG pub/sub


class PynngChannel(Channel):
    """NNG ``Pub0`` bound on an ipc path, one ``Sub0`` per reader subscribed to everything."""

    name = "pynng"
    dist = "pynng"
    library = True
    host_scope = "an ipc:// endpoint is a Unix socket: one kernel"
    across_hosts_instead = "the same sockets over tcp://"
    leftover_prefix = "ipcbench-zmq-"

    def __init__(self, comm, timeout_s: float = 10.0, buffer: int = 16, readers=None, max_bytes: int = 0):
        pynng = _require("pynng")
        super().__init__(comm.rank == 0, comm.size - 1)
        self.pynng = pynng
        self.timeout_s = timeout_s
        self.tmpdir = None
        self.sock = None
        self._data = None
        addr = None
        if self.is_writer:
            self.tmpdir = tempfile.mkdtemp(prefix=f"ipcbench-zmq-{os.getpid()}-nng-")  # reaped as the ipc dirs are
            addr = f"ipc://{self.tmpdir}/pub.ipc"
            self.sock = pynng.Pub0(listen=addr, send_buffer_size=buffer)
        addr = comm.bcast(addr, root=0)
        if not self.is_writer:
            self.sock = pynng.Sub0(dial=addr, recv_timeout=int(timeout_s * 1000), recv_buffer_size=buffer,
                                   recv_max_size=0, topics=b"")  # fmt: skip
        try:
            self._hello(comm)
        except BaseException:
            self.close()
            raise

    def _hello(self, comm) -> None:
        """Repeat a hello until every reader has one: a subscriber misses what is published before it is connected."""
        deadline = time.monotonic() + self.timeout_s
        done = False
        while not done:
            if self.is_writer:
                self.sock.send(b"H")
                ok = True
            else:
                try:
                    ok = bool(self.sock.recv(block=False))
                except self.pynng.TryAgain:
                    time.sleep(2e-3)
                    ok = False
            done = bool(comm.allreduce(0 if ok else 1) == 0) if comm.size > 1 else True
            if not done and time.monotonic() > deadline:
                raise PeerTimeout(f"pynng: a reader never subscribed within {self.timeout_s:g} s")
        if not self.is_writer:  # drop the hellos still queued
            while True:
                try:
                    self.sock.recv(block=False)
                except self.pynng.TryAgain:
                    break
        if comm.size > 1:
            comm.Barrier()

    def wait_for_readers(self, timeout_s: float | None = None) -> None:
        """Wait until every reader's subscriber is connected (raise PeerTimeout saying how many are missing)."""
        t = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + t
        while (n := len(self.sock.pipes)) < self.readers:
            if time.monotonic() > deadline:
                raise PeerTimeout(f"pynng: {self.readers - n} of {self.readers} reader(s) never connected within {t:g} s")
            time.sleep(1e-3)

    def send(self, frames: list) -> None:
        """Publish the frames packed into one message (prefixed D, after the hellos' H)."""
        buf = pack(frames)
        self.sock.send(b"D" + bytes(buf))

    def recv(self) -> list:
        """Return the frames of the next data message (views into the received bytes)."""
        while True:
            try:
                data = self.sock.recv()
            except self.pynng.Timeout:
                raise PeerTimeout(f"pynng: no message from the writer within {self.timeout_s:g} s") from None
            if data[:1] == b"D":
                self._data = data
                return unpack_from(memoryview(data)[1:])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


LIBRARY_CHANNELS: dict[str, type[Channel]] = {
    "iceoryx2": Iceoryx2Channel,
    "faster_fifo": FasterFifoChannel,
    "mp_queue": MpQueueChannel,
    "pynng": PynngChannel,
}

SETTINGS = {
    "iceoryx2": "publish-subscribe of u8 slices over shared memory; writer loans a sample of the message's size "
                "(static allocation, sized for the largest message) and packs the frames into it; subscriber buffer "
                "= messages in flight, history 0, safe overflow off; readers poll receive() without pause and hold "
                "the sample until release (zero-copy)",
    "faster_fifo": "one faster_fifo.Queue per reader (circular buffer of 4 x the message, at least 1 MiB); frames put "
                   "as uint8 arrays (pickled by the library); blocking get",
    "mp_queue": "one multiprocessing.Queue (spawn context, maxsize 4) per reader; frames put as uint8 arrays "
                "(pickled by the feeder thread, sent through a pipe); blocking get",
    "pynng": "Pub0 listening on ipc://, one Sub0 per reader subscribed to every topic, unlimited receive size; "
             "frames packed into one message; hello repeated until every reader has one; messages paced",
}  # fmt: skip
"""The settings each library channel runs with (printed by chapter 1)."""


def versions() -> dict[str, str | None]:
    """Return each library channel's version on this machine (None: not installed; 'stdlib' for multiprocessing)."""
    return {k: ("stdlib" if cls.dist is None else version_of(cls.dist)) for k, cls in LIBRARY_CHANNELS.items()}


def available() -> dict[str, bool]:
    """Return, per library channel, whether it can be opened on this platform."""
    return {k: v is not None for k, v in versions().items()}


# ------------------------------------------------------------------ clean-up


def iceoryx2_leftovers() -> list[str]:
    """Return iceoryx2's per-node and per-service shared-memory files in /dev/shm (its one global management segment,
    shared by every iceoryx2 process of the machine and kept by design, is not a leftover)."""
    d = "/dev/shm"
    if not os.path.isdir(d):
        return []
    return sorted(f for f in os.listdir(d) if f.startswith("iox2_") and not f.endswith(".global_mgmt"))


def reap_iceoryx2() -> list[str]:
    """Remove the resources of iceoryx2 nodes whose process is dead (iceoryx2's own dead-node clean-up); return what
    went. A live node's resources are never touched."""
    if not available()["iceoryx2"]:
        return []
    before = set(iceoryx2_leftovers())
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().config(iox2.config.default()).create(iox2.ServiceType.Ipc)
    try:
        node.try_cleanup_dead_nodes()
    finally:
        del node
    return sorted(before - set(iceoryx2_leftovers()))
