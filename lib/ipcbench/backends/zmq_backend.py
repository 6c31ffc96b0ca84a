"""ZeroMQ channels over ipc:// (Unix domain sockets), and ``zmq`` over tcp:// across hosts.

* ``zmq``: a real broadcast: one PUSH socket per reader, so every reader gets every
  message. Frames of 64 KiB and more are sent without copying (pyzmq's threshold).
  A ready handshake makes the writer wait until every reader is connected, and a
  send timeout turns a reader that stops reading into a clear error.
* ``zmq_pubsub``: ZeroMQ's idiomatic one-to-many: one PUB bound, N SUBs. PUB drops
  messages for subscribers that are not connected yet (the slow-joiner problem) and
  beyond the high-water mark; here the writer repeats a hello until every reader has
  received one (so even a reader that connects last misses nothing) and the high-water
  marks are unlimited, so under paced sends no message is dropped.
* ``zmq_pushpull``: the source's design: one PUSH bound, N PULLs connected to it.
  PUSH load-balances, so each reader gets about 1/N of the messages. Kept as a named
  variant to show what it delivers; it is not a broadcast.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import zmq

from .base import Channel, PeerTimeout

_HELLO = b"H"
_DATA = b"D"


class ZmqChannel(Channel):
    """One PUSH socket per reader (writer binds N endpoints; reader i connects to endpoint i): ipc:// by default, or
    tcp:// on the writer's ``address`` (a random port per reader), which crosses hosts."""

    name = "zmq"
    host_scope = "an ipc:// endpoint is a Unix socket: one kernel"
    across_hosts_instead = "the same channel over tcp:// (transport='tcp'; chapter 6 runs it across emulated hosts)"
    leftover_prefix = "ipcbench-zmq-"

    def __init__(self, comm, readers: int | None = None, timeout_s: float = 10.0, hwm: int = 8, transport: str = "ipc",
                 address: str = "127.0.0.1"):  # fmt: skip
        if transport not in ("ipc", "tcp"):
            raise ValueError(f"zmq transport must be 'ipc' or 'tcp', not {transport!r}")
        super().__init__(comm.rank == 0, comm.size - 1)
        self.timeout_s = timeout_s
        self.ctx = zmq.Context.instance()
        self.tmpdir = None
        self.socks: list = []
        endpoints = None
        if self.is_writer:
            if transport == "ipc":
                self.tmpdir = tempfile.mkdtemp(prefix=f"ipcbench-zmq-{os.getpid()}-")
            endpoints = []
            for r in range(self.readers):
                s = self.ctx.socket(zmq.PUSH)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.SNDHWM, hwm)
                s.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
                self.socks.append(s)
                if transport == "ipc":
                    ep = f"ipc://{self.tmpdir}/r{r}.ipc"
                    s.bind(ep)
                else:
                    ep = f"tcp://{address}:{s.bind_to_random_port(f'tcp://{address}')}"
                endpoints.append(ep)
        endpoints = comm.bcast(endpoints, root=0)
        if not self.is_writer:
            s = self.ctx.socket(zmq.PULL)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVHWM, hwm)
            s.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
            s.connect(endpoints[comm.rank - 1])
            self.socks.append(s)
        try:
            self._handshake()
        except BaseException:
            self.close()  # a failed open leaves no socket file behind
            raise

    def _handshake(self) -> None:
        if self.is_writer:
            for r, s in enumerate(self.socks):
                try:
                    s.send(_HELLO)  # blocks until reader r is connected (PUSH has no peer before)
                except zmq.Again:
                    raise PeerTimeout(f"zmq: reader {r + 1} never connected within {self.timeout_s:g} s") from None
        else:
            self._recv_raw()

    def _recv_raw(self) -> list:
        try:
            return self.socks[0].recv_multipart(copy=False)
        except zmq.Again:
            raise PeerTimeout(f"zmq: no message from the writer within {self.timeout_s:g} s") from None

    def send(self, frames: list) -> None:
        """Send the frames to every reader (zero-copy for frames >= 64 KiB)."""
        for r, s in enumerate(self.socks):
            try:
                s.send(_DATA, zmq.SNDMORE)
                for i, f in enumerate(frames):
                    nbytes = memoryview(f).nbytes
                    s.send(f, zmq.SNDMORE if i < len(frames) - 1 else 0, copy=nbytes < zmq.COPY_THRESHOLD)
            except zmq.Again:
                raise PeerTimeout(f"zmq: reader {r + 1} stopped reading (send blocked {self.timeout_s:g} s)") from None

    def recv(self) -> list:
        """Return the next message's frames (memoryviews of ZeroMQ frames)."""
        msg = self._recv_raw()
        while msg[0].bytes == _HELLO:
            msg = self._recv_raw()
        return [f.buffer for f in msg[1:]]

    def close(self) -> None:
        """Close the sockets and remove the ipc socket files."""
        for s in self.socks:
            s.close(linger=0)
        self.socks = []
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


class ZmqPubSubChannel(Channel):
    """One PUB socket bound, one SUB per reader; a hello handshake (over MPI) removes the slow-joiner loss."""

    name = "zmq_pubsub"
    host_scope = "an ipc:// endpoint is a Unix socket: one kernel"
    across_hosts_instead = "ZeroMQ over tcp:// (chapters 2 and 6 measure its RPC sockets there)"
    leftover_prefix = "ipcbench-zmq-"
    HELLO_EVERY_S = 0.002

    def __init__(self, comm, readers: int | None = None, timeout_s: float = 10.0, join_delay_s: float = 0.0):
        import time

        super().__init__(comm.rank == 0, comm.size - 1)
        self.timeout_s = timeout_s
        self.ctx = zmq.Context.instance()
        self.tmpdir = None
        ep = None
        if self.is_writer:
            self.tmpdir = tempfile.mkdtemp(prefix=f"ipcbench-zmq-{os.getpid()}-")
            ep = f"ipc://{self.tmpdir}/pubsub.ipc"
            self.sock = self.ctx.socket(zmq.PUB)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.SNDHWM, 0)  # unlimited: PUB drops, never blocks, beyond its high-water mark
            self.sock.bind(ep)
        ep = comm.bcast(ep, root=0)
        if not self.is_writer:
            if join_delay_s:  # a reader that connects late (tests of the slow-joiner handling)
                time.sleep(join_delay_s)
            self.sock = self.ctx.socket(zmq.SUB)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.RCVHWM, 0)
            self.sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
            self.sock.connect(ep)
        try:
            self._join(comm)
        except BaseException:
            self.close()
            raise

    def _join(self, comm) -> None:
        """Repeat a hello until every subscriber has received one (every rank decides together, over MPI)."""
        import time

        from mpi4py import MPI

        deadline = time.monotonic() + self.timeout_s
        joined = False
        while True:
            if self.is_writer:
                self.sock.send(_HELLO)
                time.sleep(self.HELLO_EVERY_S)
                joined = True
            elif not joined and self.sock.poll(int(self.HELLO_EVERY_S * 1000)):
                joined = self.sock.recv() == _HELLO or joined
            done = comm.allreduce(1 if joined else 0, op=MPI.MIN) if hasattr(comm, "allreduce") else int(joined)
            if done:
                return
            if time.monotonic() > deadline:
                raise PeerTimeout(f"zmq_pubsub: a reader did not receive the writer's hello within {self.timeout_s:g} s")

    def send(self, frames: list) -> None:
        """Publish the frames to every subscriber (zero-copy for frames >= 64 KiB)."""
        self.sock.send(_DATA, zmq.SNDMORE)
        for i, f in enumerate(frames):
            self.sock.send(f, zmq.SNDMORE if i < len(frames) - 1 else 0, copy=memoryview(f).nbytes < zmq.COPY_THRESHOLD)

    def recv(self) -> list:
        """Return the next message's frames, skipping the handshake's leftover hellos."""
        while True:
            try:
                msg = self.sock.recv_multipart(copy=False)
            except zmq.Again:
                raise PeerTimeout(f"zmq_pubsub: no message from the writer within {self.timeout_s:g} s") from None
            if msg[0].bytes != _HELLO:
                return [f.buffer for f in msg[1:]]

    def close(self) -> None:
        """Close the socket and remove the ipc socket file."""
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close(linger=0)
            self.sock = None
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


class ZmqPushPullChannel(Channel):
    """The source's PUSH/PULL "one-to-many": load-balanced, each reader gets about 1/N of the messages."""

    name = "zmq_pushpull"
    delivers_to_all = False
    host_scope = "an ipc:// endpoint is a Unix socket: one kernel"
    across_hosts_instead = "ZeroMQ over tcp:// (chapters 2 and 6 measure its RPC sockets there)"
    leftover_prefix = "ipcbench-zmq-"

    def __init__(self, comm, readers: int | None = None, timeout_s: float = 10.0):
        super().__init__(comm.rank == 0, comm.size - 1)
        self.timeout_s = timeout_s
        self.ctx = zmq.Context.instance()
        self.tmpdir = None
        ep = None
        monitor = None
        if self.is_writer:
            self.tmpdir = tempfile.mkdtemp(prefix=f"ipcbench-zmq-{os.getpid()}-")
            ep = f"ipc://{self.tmpdir}/pushpull.ipc"
            self.sock = self.ctx.socket(zmq.PUSH)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
            monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            self.sock.bind(ep)
        ep = comm.bcast(ep, root=0)
        if not self.is_writer:
            self.sock = self.ctx.socket(zmq.PULL)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.connect(ep)
        if self.is_writer:
            # every reader must be connected before the first send, or the load balancer skips it
            try:
                self._wait_for_handshakes(monitor, self.readers, timeout_s)
            except BaseException:
                self.close()
                raise
            finally:
                self.sock.disable_monitor()
                monitor.close(linger=0)
        comm.Barrier()

    def _wait_for_handshakes(self, monitor, n: int, timeout_s: float) -> None:
        from zmq.utils.monitor import recv_monitor_message

        seen = 0
        while seen < n:
            if not monitor.poll(int(timeout_s * 1000)):
                raise PeerTimeout(f"zmq_pushpull: {n - seen} of {n} readers never connected within {timeout_s:g} s")
            if recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                seen += 1

    def send(self, frames: list) -> None:
        """Send one message to whichever reader the PUSH socket picks."""
        self.sock.send(_DATA, zmq.SNDMORE)
        for i, f in enumerate(frames):
            self.sock.send(f, zmq.SNDMORE if i < len(frames) - 1 else 0, copy=memoryview(f).nbytes < zmq.COPY_THRESHOLD)

    def recv(self, timeout_s: float | None = None) -> list | None:
        """Return the next message's frames, or None if none arrives within ``timeout_s``."""
        t = self.timeout_s if timeout_s is None else timeout_s
        if not self.sock.poll(int(t * 1000)):
            return None
        msg = self.sock.recv_multipart(copy=False)
        return [f.buffer for f in msg[1:]]

    def close(self) -> None:
        """Close the socket and remove the ipc socket file."""
        self.sock.close(linger=0)
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def socket_dirs() -> list[str]:
    """Return leftover ipc socket directories of this library in the temp dir (for cleanup checks)."""
    tmp = tempfile.gettempdir()
    return [os.path.join(tmp, d) for d in os.listdir(tmp) if d.startswith("ipcbench-zmq-")]
