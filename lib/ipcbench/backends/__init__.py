"""IPC channels with one interface: one writer (rank 0), N readers, every reader gets every message in order.

A backend moves frames (a list of buffers); it never chooses the codec
(``ipcbench.serialization`` does). ``open_channel(kind, comm, **options)`` is
collective over ``comm``: rank 0 gets the writer end, every other rank a reader end.
``zmq_pushpull`` is the exception kept on purpose: the source's load-balancing
PUSH/PULL, which delivers each message to one reader only.
"""

from __future__ import annotations

import os

from .base import WAIT_STRATEGIES, BackendError, Channel, PayloadTooLarge, PeerTimeout, SoloComm
from .libraries import LIBRARY_CHANNELS
from .lmdb_backend import LmdbChannel
from .mpi_backend import MpiBcastChannel, MpiBufferBcastChannel, MpiP2PChannel, MpiPkl5Channel
from .shm import ShmChannel
from .zmq_backend import ZmqChannel, ZmqPubSubChannel, ZmqPushPullChannel

BACKENDS: dict[str, type[Channel]] = {
    "zmq": ZmqChannel,
    "zmq_pubsub": ZmqPubSubChannel,
    "shm": ShmChannel,
    "lmdb": LmdbChannel,
    "mpi_bcast": MpiBcastChannel,
    "mpi_pkl5": MpiPkl5Channel,
    "mpi_Bcast": MpiBufferBcastChannel,
    "mpi_p2p": MpiP2PChannel,
    "zmq_pushpull": ZmqPushPullChannel,
}
BROADCAST_BACKENDS = [k for k, v in BACKENDS.items() if v.delivers_to_all]
"""The book's own broadcast channels (every chapter-1 sweep runs them)."""
LIBRARY_BACKENDS = list(LIBRARY_CHANNELS)
"""Production libraries a user would pick instead (``backends.libraries``): chapter 1 measures them beside the best of
the book's own channels, raw arrays, one and three readers."""
BACKENDS.update(LIBRARY_CHANNELS)
OWN_BACKENDS = [k for k, v in BACKENDS.items() if not v.library]
"""The book's own channels (every channel that is not a production library)."""


def host_table():
    """Return, per channel, whether it crosses a real host as the book opens it, what decides that, and what replaces
    it across hosts (from the channels' own declarations)."""
    import pandas as pd

    from .. import labels

    rows = [{
        "channel": labels.variant_words(k), "provided by": "a library" if c.library else "this book",
        "crosses real hosts": "yes" if c.crosses_hosts else "no", "because it rests on": c.host_scope,
        "across hosts, use instead": c.across_hosts_instead or "-",
    } for k, c in BACKENDS.items()]  # fmt: skip
    rows.sort(key=lambda r: (r["provided by"] != "this book", r["channel"].casefold()))  # the book's, then libraries
    return pd.DataFrame(rows).set_index("channel")

__all__ = ["BACKENDS", "BROADCAST_BACKENDS", "OWN_BACKENDS", "host_table", "WAIT_STRATEGIES", "BackendError", "Channel", "LIBRARY_BACKENDS", "PayloadTooLarge", "PeerTimeout",
           "SoloComm", "open_channel", "leftovers", "reap_stale"]  # fmt: skip


def open_channel(kind: str, comm, **options) -> Channel:
    """Open a channel of ``kind`` on every rank of ``comm`` (collective); rank 0 writes."""
    try:
        cls = BACKENDS[kind]
    except KeyError:
        raise KeyError(f"unknown backend {kind!r}; backends are {', '.join(BACKENDS)}") from None
    return cls(comm, **options)


def reap_stale() -> list[str]:
    """Remove segments, socket dirs and LMDB dirs whose creating process is dead; return what was removed.

    Names carry the creator's pid, so this never touches a live run's resources.
    A rank killed while stuck in a collective (see ``Cluster.run``) cannot clean up
    after itself; the experiment calls this after a failed point.
    """
    import re
    import shutil
    from multiprocessing import shared_memory

    import psutil

    from ..cluster import reap_mpich_segments
    from ..rpc.wire import SHM_PREFIX as RPC_PREFIX
    from .base import FIFO_PREFIX
    from .libraries import reap_iceoryx2

    prefixes = {c.leftover_prefix for c in BACKENDS.values() if c.leftover_prefix} | {FIFO_PREFIX, RPC_PREFIX}
    owner = re.compile("(?:" + "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True)) + r")(\d+)[-_]")
    removed = reap_mpich_segments() + reap_iceoryx2()
    for kind, paths in leftovers().items():
        if kind == "iceoryx2":
            continue  # (reaped by iceoryx2's own dead-node clean-up above)
        for path in paths:
            m = owner.match(os.path.basename(path))
            if not m or psutil.pid_exists(int(m.group(1))):
                continue
            if kind == "shm":
                try:
                    seg = shared_memory.SharedMemory(name=path)
                    seg.close()
                    seg.unlink()
                except FileNotFoundError:
                    pass
            else:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def leftovers() -> dict[str, list[str]]:
    """Return this library's shared-memory segments, ipc socket dirs and LMDB dirs that still exist."""
    from .base import fifo_dirs
    from .libraries import iceoryx2_leftovers
    from .lmdb_backend import leftover_dirs
    from .shm import leftover_segments
    from .zmq_backend import socket_dirs

    return {"shm": leftover_segments(), "zmq_ipc": socket_dirs(), "lmdb": leftover_dirs(), "fifo": fifo_dirs(),
            "iceoryx2": iceoryx2_leftovers()}
