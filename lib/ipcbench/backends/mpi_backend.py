"""MPI channels: rank 0 writes, every other rank reads; every call is collective or point-to-point.

* ``mpi_bcast``: lowercase ``comm.bcast`` of the frames (pickled again, in-band);
* ``mpi_pkl5``: ``mpi4py.util.pkl5`` ``bcast``: frames travel as out-of-band buffers;
* ``mpi_Bcast``: uppercase ``Bcast`` of a header (frame count and lengths), then one
  ``Bcast`` per frame into a freshly allocated buffer: no pickle at all;
* ``mpi_p2p``: the source's option 3: lowercase ``send`` from the root to each reader.

MPI cannot time out a dead peer: a collective waits for ever. Inside the book these
run on engines, where ``Cluster.run(timeout=...)`` kills and restarts stuck ranks.
"""

from __future__ import annotations

import pickle

import numpy as np

from .base import Channel

MAX_FRAMES = 64


def _picklable(frames) -> list:
    return [f if isinstance(f, bytes) else pickle.PickleBuffer(f) for f in frames]


class _MpiChannel(Channel):
    crosses_hosts = True
    host_scope = "MPI's own transports (this machine's MPICH: shared memory within a host, TCP between hosts)"

    def __init__(self, comm, readers=None, **_):
        super().__init__(comm.rank == 0, comm.size - 1)
        self.comm = comm


class MpiBcastChannel(_MpiChannel):
    """Lowercase ``bcast``: mpi4py pickles the frames (protocol 5, in-band)."""

    name = "mpi_bcast"
    framing = "pickle_frame_list"

    def __init__(self, comm, readers=None, **_):
        super().__init__(comm)
        self.bcomm = self._bcast_comm(comm)

    @staticmethod
    def _bcast_comm(comm):
        return comm

    def send(self, frames: list) -> None:
        """Broadcast the frames from rank 0."""
        self.bcomm.bcast(_picklable(frames), root=0)

    def recv(self) -> list:
        """Receive the broadcast frames."""
        return self.bcomm.bcast(None, root=0)


class MpiPkl5Channel(MpiBcastChannel):
    """``mpi4py.util.pkl5`` ``bcast``: the same call, with large buffers sent out of band."""

    name = "mpi_pkl5"
    framing = "pickle_frame_list"

    @staticmethod
    def _bcast_comm(comm):
        from mpi4py.util import pkl5

        return pkl5.Intracomm(comm)


class MpiBufferBcastChannel(_MpiChannel):
    """Uppercase ``Bcast``: a header of frame lengths, then each frame as a raw buffer."""

    name = "mpi_Bcast"

    def __init__(self, comm, readers=None, **_):
        super().__init__(comm)
        self.header = np.zeros(MAX_FRAMES + 1, dtype=np.int64)

    def send(self, frames: list) -> None:
        """Broadcast the frame lengths, then every frame."""
        from mpi4py import MPI

        if len(frames) > MAX_FRAMES:
            raise ValueError(f"mpi_Bcast carries at most {MAX_FRAMES} frames, got {len(frames)}")
        views = [memoryview(f).cast("B") for f in frames]
        self.header[0] = len(views)
        self.header[1 : 1 + len(views)] = [v.nbytes for v in views]
        self.comm.Bcast(self.header, root=0)
        for v in views:
            self.comm.Bcast([v, MPI.BYTE], root=0)

    def recv(self) -> list:
        """Receive the frame lengths, allocate, and receive every frame."""
        from mpi4py import MPI

        self.comm.Bcast(self.header, root=0)
        out = []
        for n in self.header[1 : 1 + int(self.header[0])]:
            buf = np.empty(int(n), dtype=np.uint8)
            self.comm.Bcast([buf, MPI.BYTE], root=0)
            out.append(buf)
        return out


class MpiP2PChannel(_MpiChannel):
    """Lowercase ``send`` from the root to each reader in turn (the source's option 3)."""

    name = "mpi_p2p"
    framing = "pickle_frame_list"

    def send(self, frames: list) -> None:
        """Send the frames to every reader, one after another."""
        obj = _picklable(frames)
        for r in range(1, self.comm.size):
            self.comm.send(obj, dest=r, tag=7)

    def recv(self) -> list:
        """Receive the frames from the root."""
        return self.comm.recv(source=0, tag=7)
