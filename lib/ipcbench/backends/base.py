"""What every backend shares: the channel interface, errors, framing and waiting."""

from __future__ import annotations

import os
import struct
import time

import numpy as np


class BackendError(RuntimeError):
    """A backend could not deliver: a clear, specific reason is in the message."""


class PeerTimeout(BackendError):
    """A peer (a reader that never attached or stopped reading, or a silent writer) did not answer in time."""


class PayloadTooLarge(BackendError):
    """A message does not fit the backend's slot or map; nothing was written."""


class Channel:
    """One writer (rank 0), N readers; every reader receives every message, in order.

    ``send(frames)`` on the writer, ``recv() -> frames`` on each reader. Frames a
    reader receives may be views into the backend's memory: they are valid until
    the reader's next ``recv()`` or ``release()``.
    """

    name = "base"
    delivers_to_all = True
    library = False
    """A production library a user would pick instead of the book's own channels (measured beside them)."""
    framing: str | None = None
    """The Python framing the channel adds to every message: ``"pack_unpack"`` (the frames packed into one buffer, and
    unpacked by each reader), ``"pickle_frame_list"`` (the list of frames pickled), None (the frames travel as they
    are)."""
    crosses_hosts = False
    """Whether the channel, as the book opens it, reaches a process on another host."""
    host_scope = ""
    """What the channel rests on that decides whether it crosses a real host ("a Unix socket: one kernel")."""
    across_hosts_instead = ""
    """What replaces the channel across hosts ("" where it crosses them itself)."""
    leftover_prefix: str | None = None
    """The prefix of the names the channel creates under /tmp or /dev/shm, followed by the creator's pid: the reaper
    removes a name whose creator is dead."""

    def __init__(self, is_writer: bool, readers: int):
        self.is_writer = is_writer
        self.readers = readers

    def send(self, frames: list) -> None:  # pragma: no cover - interface
        """Send one message (a list of buffers) to every reader."""
        raise NotImplementedError

    def recv(self) -> list:  # pragma: no cover - interface
        """Return the next message's frames."""
        raise NotImplementedError

    def release(self) -> None:
        """Tell the backend the last received frames are no longer used."""

    def close(self) -> None:
        """Release every resource (sockets, segments, files)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------ framing

_COUNT = struct.Struct("<I")
_LEN = struct.Struct("<Q")


_ONE_FRAME = struct.Struct("<IQ")
"""The header of a message of one frame (count and length in one call: most small messages have one frame)."""


def _nbytes(f) -> int:
    if type(f) in (bytes, bytearray):
        return len(f)
    n = getattr(f, "nbytes", None)  # numpy arrays and memoryviews know their size in bytes
    return memoryview(f).nbytes if n is None else n  # anything else with the buffer protocol (a PickleBuffer)


def framed_size(frames) -> int:
    """Return the bytes :func:`pack_into` needs for these frames."""
    if len(frames) == 1:
        return _ONE_FRAME.size + _nbytes(frames[0])
    return _COUNT.size + _LEN.size * len(frames) + sum(_nbytes(f) for f in frames)


def pack_into(dst: memoryview, frames) -> int:
    """Write frames (count, lengths, bytes) into ``dst``; return the bytes written."""
    if len(frames) == 1:
        v = memoryview(frames[0]).cast("B")
        end = _ONE_FRAME.size + v.nbytes
        _ONE_FRAME.pack_into(dst, 0, 1, v.nbytes)
        dst[_ONE_FRAME.size : end] = v
        return end
    views = [memoryview(f).cast("B") for f in frames]
    _COUNT.pack_into(dst, 0, len(views))
    off = _COUNT.size
    for v in views:
        _LEN.pack_into(dst, off, v.nbytes)
        off += _LEN.size
    for v in views:
        dst[off : off + v.nbytes] = v
        off += v.nbytes
    return off


def unpack_from(src: memoryview) -> list[memoryview]:
    """Return the frames packed in ``src`` as views into it (no copy)."""
    (count,) = _COUNT.unpack_from(src, 0)
    if count == 1:
        n = _ONE_FRAME.unpack_from(src, 0)[1]
        return [src[_ONE_FRAME.size : _ONE_FRAME.size + n]]
    off = _COUNT.size
    lens = []
    for _ in range(count):
        (n,) = _LEN.unpack_from(src, off)
        lens.append(n)
        off += _LEN.size
    out = []
    for n in lens:
        out.append(src[off : off + n])
        off += n
    return out


def pack(frames) -> bytearray:
    """Return the frames packed into one new buffer."""
    buf = bytearray(framed_size(frames))
    pack_into(memoryview(buf), frames)
    return buf


# ------------------------------------------------------------------------ waiting


WAIT_STRATEGIES = ("spin", "spin_then_sleep", "fifo")
"""How a shared-memory or LMDB reader waits for the writer's next message:

* ``spin``: poll without pause until the message is there (no added delay; one core busy while waiting, as MPICH's
  receivers do);
* ``spin_then_sleep``: poll a bounded number of times, then sleep with exponential back-off up to 1 ms (frees the
  core, but may see a message up to a millisecond late);
* ``fifo``: poll briefly, then block in the kernel on a named pipe the writer writes one byte to after publishing
  (frees the core; the wake-up costs a system call on each side, as ZeroMQ's receivers pay).
"""


def wait_until(cond, timeout_s: float, what: str, spin: int = 20_000, strategy: str = "spin_then_sleep",
               wakeup=None) -> None:  # fmt: skip
    """Wait for ``cond()`` with one of :data:`WAIT_STRATEGIES`; raise PeerTimeout after ``timeout_s``.

    ``fifo`` needs ``wakeup``, the reader's :class:`Wakeup`.
    """
    if strategy == "spin":
        deadline = time.monotonic() + timeout_s
        i = 0
        while not cond():
            i += 1
            if not i & 0xFFF and time.monotonic() > deadline:
                raise PeerTimeout(f"timed out after {timeout_s:g} s waiting for {what}")
        return
    if strategy not in WAIT_STRATEGIES:
        raise ValueError(f"unknown wait strategy {strategy!r}; use one of {WAIT_STRATEGIES}")
    for _ in range(spin if strategy == "spin_then_sleep" else min(spin, 200)):
        if cond():
            return
    deadline = time.monotonic() + timeout_s
    if strategy == "fifo":
        if wakeup is None:
            raise ValueError("the fifo wait strategy needs the reader's Wakeup")
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerTimeout(f"timed out after {timeout_s:g} s waiting for {what}")
            wakeup.wait(left)
        return
    pause = 0.0
    while not cond():
        if time.monotonic() > deadline:
            raise PeerTimeout(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2 if pause else 1e-5, 1e-3)


FIFO_PREFIX = "ipcbench-fifo-"


class Wakeup:
    """Kernel wake-ups from the writer to each reader: one named pipe per reader (collective over ``comm``).

    The writer calls :meth:`notify` after publishing a message; a reader blocks in :meth:`wait` (``select``)
    until a byte arrives. A full pipe means wake-ups are already pending, so notify never blocks.
    """

    def __init__(self, comm):
        import select  # noqa: F401 - imported here to fail early on platforms without it

        self.is_writer = comm.rank == 0
        path = None
        if self.is_writer:
            import tempfile

            path = tempfile.mkdtemp(prefix=f"{FIFO_PREFIX}{os.getpid()}-")
            for r in range(1, comm.size):
                os.mkfifo(os.path.join(path, f"reader{r}"))
        self.dir = comm.bcast(path, root=0)
        self.fds: list[int] = []
        if not self.is_writer:
            self.fds = [os.open(os.path.join(self.dir, f"reader{comm.rank}"), os.O_RDONLY | os.O_NONBLOCK)]
        comm.Barrier()  # every read end is open before the writer opens the write ends
        if self.is_writer:
            self.fds = [os.open(os.path.join(self.dir, f"reader{r}"), os.O_WRONLY | os.O_NONBLOCK)
                        for r in range(1, comm.size)]  # fmt: skip

    def notify(self) -> None:
        """Wake every reader (writer)."""
        for fd in self.fds:
            try:
                os.write(fd, b"\0")
            except (BlockingIOError, BrokenPipeError):  # a full pipe: a wake-up is pending; a gone reader: nothing to wake
                pass

    def wait(self, timeout_s: float) -> None:
        """Block until the writer's next wake-up or ``timeout_s`` (reader); drain what is pending."""
        import select

        fd = self.fds[0]
        ready, _, _ = select.select([fd], [], [], timeout_s)
        if ready:
            try:
                os.read(fd, 65536)
            except BlockingIOError:
                pass

    def close(self) -> None:
        """Close the pipes; the writer removes their directory."""
        import shutil

        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        if self.is_writer and self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


def fifo_dirs() -> list[str]:
    """Return wake-up pipe directories of this library still present in the temp dir."""
    import tempfile

    tmp = tempfile.gettempdir()
    return sorted(os.path.join(tmp, d) for d in os.listdir(tmp) if d.startswith(FIFO_PREFIX))


def as_array(frame) -> np.ndarray:
    """Return a frame as a uint8 numpy array without copying."""
    return np.frombuffer(frame, dtype=np.uint8)


class SoloComm:
    """A stand-in communicator for a writer with no MPI peers (tests of dead or absent readers)."""

    rank = 0

    def __init__(self, readers: int = 1):
        self.size = readers + 1

    def bcast(self, obj, root=0):
        return obj

    def scatter(self, objs, root=0):
        return objs[0] if objs is not None else None

    def allreduce(self, value, op=None):
        return value

    def Barrier(self):  # noqa: N802 - mirrors mpi4py
        return None
