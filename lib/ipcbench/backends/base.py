"""What every backend shares: the channel interface, errors, framing and waiting."""

from __future__ import annotations

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


def framed_size(frames) -> int:
    """Return the bytes :func:`pack_into` needs for these frames."""
    return _COUNT.size + _LEN.size * len(frames) + sum(memoryview(f).nbytes for f in frames)


def pack_into(dst: memoryview, frames) -> int:
    """Write frames (count, lengths, bytes) into ``dst``; return the bytes written."""
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


def wait_until(cond, timeout_s: float, what: str, spin: int = 20_000) -> None:
    """Spin on ``cond()`` up to ``spin`` times, then yield and sleep briefly; raise PeerTimeout after ``timeout_s``."""
    for _ in range(spin):
        if cond():
            return
    deadline = time.monotonic() + timeout_s
    pause = 0.0
    while not cond():
        if time.monotonic() > deadline:
            raise PeerTimeout(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2 if pause else 1e-5, 1e-3)


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

    def Barrier(self):  # noqa: N802 - mirrors mpi4py
        return None
