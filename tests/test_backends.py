"""Backends: clear errors for absent or dead readers, oversized payloads and full maps; nothing left behind."""

import os
import time

import numpy as np
import pandas as pd
import pytest

from ipcbench import backends
from ipcbench import serialization as ser
from ipcbench.backends import PayloadTooLarge, PeerTimeout, SoloComm
from ipcbench.backends.base import pack, unpack_from
from ipcbench.experiments import fair_serialization as fs


@pytest.fixture(autouse=True)
def nothing_left_behind():
    before = backends.leftovers()
    yield
    after = backends.leftovers()
    assert {k: sorted(set(after[k]) - set(before[k])) for k in after} == {k: [] for k in after}


@pytest.mark.parametrize("codec", list(ser.CODECS))
@pytest.mark.parametrize("kind", ["records", "structured", "array"])
def test_codec_round_trip(codec, kind):
    obj = fs.make_payload(kind, 100_000 if kind == "array" else 1000)
    if not ser.supports(codec, kind):
        with pytest.raises(ser.CodecError, match="only"):
            ser.get(codec).encode(obj)
        return
    frames = ser.get(codec).encode(obj)
    # frames survive being packed into one buffer and viewed back (what shm and lmdb do)
    back = ser.get(codec).decode(unpack_from(memoryview(pack(frames))))
    assert fs.same(obj, back)


def test_the_structured_payload_decodes_to_the_same_records_as_the_pickled_one():
    """The records as one structured array, through the raw codec's frames, are the records pickled and unpickled."""
    n = 1000
    arr = fs.make_payload("structured", n)
    assert arr.dtype == fs.RECORD_DTYPE and arr.dtype.names and len(arr) == n
    raw = ser.get("raw")
    back = raw.decode(unpack_from(memoryview(pack(raw.encode(arr)))))
    assert back.dtype == fs.RECORD_DTYPE  # the header keeps the fields, not just '|V48'
    pickled = ser.get("pickle5")
    want = pickled.decode(pickled.encode(fs.make_records(n)))
    assert fs.structured_to_records(back) == want == fs.make_records(n)
    with pytest.raises(ser.CodecError, match="Python objects"):
        raw.encode(np.array([{"a": 1}], dtype=object))


def test_zmq_reader_that_never_connects_is_a_timeout():
    t0 = time.monotonic()
    with pytest.raises(PeerTimeout, match="reader 1 never connected"):
        backends.open_channel("zmq", SoloComm(readers=1), timeout_s=0.3)
    assert time.monotonic() - t0 < 5


def test_shm_reader_that_never_attaches_or_stops_reading():
    chan = backends.open_channel("shm", SoloComm(readers=2), slot_bytes=4096, slots=2, timeout_s=0.2)
    try:
        with pytest.raises(PeerTimeout, match=r"reader\(s\) \[1, 2\] never attached"):
            chan.wait_for_readers()
        chan.send([b"a"])
        chan.send([b"b"])  # the ring is full now: the third message needs slot 0 back
        with pytest.raises(PeerTimeout, match=r"reader\(s\) \[1, 2\] did not read message 0"):
            chan.send([b"c"])
    finally:
        chan.close()


def test_shm_oversized_payload_is_rejected_and_nothing_is_corrupted():
    chan = backends.open_channel("shm", SoloComm(readers=1), slot_bytes=4096, slots=2, timeout_s=0.2)
    try:
        chan.send([b"first"])
        with pytest.raises(PayloadTooLarge, match="does not fit a slot of 4096 B"):
            chan.send([np.zeros(10_000, dtype=np.uint8)])
        assert bytes(unpack_from(chan._slot(0))[0]) == b"first"  # the slot that was written is intact
        assert int(chan.written[1]) == 0 and chan.seq == 1  # the rejected message took no slot
    finally:
        chan.close()


def test_lmdb_full_map_is_a_clear_error_and_keeps_what_was_written():
    chan = backends.open_channel("lmdb", SoloComm(readers=1), map_bytes=1 << 20, timeout_s=0.2)
    try:
        with pytest.raises(PeerTimeout, match=r"reader\(s\) \[1\] never attached"):
            chan.wait_for_readers()
        chan.send([b"kept"])
        with pytest.raises(PayloadTooLarge, match="map of 1048576 B is full"):
            chan.send([np.zeros(4 << 20, dtype=np.uint8)])
        with chan.env.begin() as txn:
            assert bytes(unpack_from(memoryview(txn.get((0).to_bytes(8, "big"))))[0]) == b"kept"
        chan.send([b"after"])  # the channel still works
    finally:
        chan.close()


def test_failed_run_leaves_no_segment_socket_or_directory():
    from spmd_helpers import open_all_then_fail_on_reader

    from ipcbench.cluster import Cluster, RankError
    from ipcbench.experiments._common import run_point

    with Cluster(n=2) as cluster:
        with pytest.raises(RankError, match="deliberate reader failure"):
            run_point(cluster, open_all_then_fail_on_reader)
        assert cluster.run(lambda comm: comm.size) == [2, 2]  # the engines were restarted
    # the autouse fixture checks that no shm segment, ipc socket dir or LMDB dir of the run remains


def test_shared_memory_ring_refuses_cpus_without_total_store_order(monkeypatch):
    from ipcbench.backends import shm

    shm.require_total_store_order("x86_64")  # this machine's kind: fine
    with pytest.raises(shm.UnsupportedPlatform, match="total store order.*'aarch64'"):
        shm.require_total_store_order("aarch64")
    monkeypatch.setattr(shm.platform, "machine", lambda: "ppc64le")
    with pytest.raises(shm.UnsupportedPlatform, match="zmq, lmdb or mpi"):
        backends.open_channel("shm", SoloComm(readers=1), slot_bytes=4096, slots=2)
    assert not backends.leftovers()["shm"]  # refused before creating anything


def test_framing_is_charged_only_to_paths_that_frame_in_python():
    from ipcbench.experiments import fair_serialization as fs

    assert set(fs.FRAMING_OF) == set(backends.BROADCAST_BACKENDS)
    assert fs.FRAMING_OF["zmq"] is None and fs.FRAMING_OF["mpi_Bcast"] is None
    framing = pd.DataFrame([{"experiment": "framing", "metric": m, "median": v}
                            for m, v in (("pack_unpack", 2e-6), ("pickle_frame_list", 5e-6))])  # fmt: skip
    zmq = fs._framing_share(framing, pd.Series({"variant": "zmq", "median": 30e-6}), 3e-6)
    assert zmq["framing_s"] == 0 and zmq["framing_share_of_gap"] == 0
    shm = fs._framing_share(framing, pd.Series({"variant": "shm", "median": 7e-6}), 3e-6)
    assert shm["framing_kind"] == "pack_unpack" and shm["framing_share_of_gap"] == pytest.approx(0.5)


@pytest.mark.parametrize("backend", backends.LIBRARY_BACKENDS)
def test_library_channel_reader_that_never_attaches_or_stops_reading(backend):
    """Every production library channel turns an absent or stalled reader into a clear error on the writer."""
    chan = backends.open_channel(backend, SoloComm(readers=2), **fs.channel_options(backend, 300_000, 4), timeout_s=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(PeerTimeout, match=r"never (attached|subscribed|connected) within 0.3 s"):
            chan.wait_for_readers()
        assert time.monotonic() - t0 < 5
        if backend == "pynng":
            return  # pub/sub drops for a subscriber that does not read: its writer cannot notice (readers time out)
        big = np.zeros(290_000, dtype=np.uint8)
        t0 = time.monotonic()
        with pytest.raises(PeerTimeout, match=r"reached 0 of 2 reader|stayed full for 0.3 s"):
            for _ in range(64):
                chan.send([big])
        assert time.monotonic() - t0 < 5
    finally:
        chan.close()


class _ReaderComm:
    """Rank 1 of a two-rank channel whose writer is in this same process (the segment name comes from the writer)."""

    rank, size = 1, 2

    def __init__(self, writer_name):
        self.writer_name = writer_name

    def bcast(self, obj, root=0):
        return self.writer_name

    def Barrier(self):  # noqa: N802 - mirrors mpi4py
        return None


def test_shm_fast_path_round_trip_and_clear_errors():
    """The ring's single-frame fast path: what send_one writes, recv_one and recv read; misuse and stalls are clear."""
    from ipcbench.backends.base import BackendError

    w = backends.open_channel("shm", SoloComm(readers=1), slot_bytes=4096, slots=2, timeout_s=0.2, wait="spin")
    r = backends.open_channel("shm", _ReaderComm((w.shm.name, w.slot_bytes, w.slots)), timeout_s=0.2, wait="spin")
    from multiprocessing import resource_tracker

    resource_tracker.register(w.shm._name, "shared_memory")  # (the reader, in this same process, unregistered it)
    try:
        w.send_one(b"hello")
        assert bytes(r.recv_one()) == b"hello"
        w.send_one(np.arange(64, dtype=np.uint8))
        assert [bytes(f) for f in r.recv()] == [bytes(range(64))]  # the fast path's header is one frame's framing
        w.send_one(b"")
        assert bytes(r.recv_one()) == b""
        w.send([b"a", b"b"])
        with pytest.raises(BackendError, match="2 frames.*send_one"):
            r.recv_one()
        assert [bytes(f) for f in r.recv()] == [b"a", b"b"]  # the refused message was not lost
        with pytest.raises(PeerTimeout, match="shm message 4 from the writer"):
            r.recv_one()  # nothing more was sent: a silent writer is a timeout
        with pytest.raises(PayloadTooLarge, match="does not fit a slot of 4096 B"):
            w.send_one(bytes(4090))
        w.send_one(b"x")
        w.send_one(b"y")
        with pytest.raises(PeerTimeout, match=r"reader\(s\) \[1\] did not read message 4"):
            w.send_one(b"z")  # two slots, both unread: the third message needs message 4's slot back
    finally:
        r.close()
        w.close()


def test_every_channel_declares_what_it_is():
    """A channel's facts sit on its class: whether it is a library, its Python framing, whether it crosses a host and
    what replaces it there, and the prefix the reaper knows its names by; the side tables derive from them."""
    from ipcbench.experiments import fair_serialization as fs

    for name, cls in backends.BACKENDS.items():
        assert cls.name == name
        assert cls.framing in (None, "pack_unpack", "pickle_frame_list"), name
        assert cls.host_scope, f"{name} does not say what it rests on"
        assert bool(cls.across_hosts_instead) == (not cls.crosses_hosts), name
        assert cls.library == (name in backends.LIBRARY_BACKENDS)
    assert set(backends.OWN_BACKENDS) == set(backends.BACKENDS) - set(backends.LIBRARY_BACKENDS)
    assert fs.FRAMING_OF == {b: backends.BACKENDS[b].framing for b in backends.BROADCAST_BACKENDS}
    table = backends.host_table()
    assert len(table) == len(backends.BACKENDS) and not table.index.str.contains("_").any(), "channels in words"
    assert set(table["crosses real hosts"]) == {"yes", "no"}


def test_the_reaper_removes_a_dead_creators_names_by_the_prefix_its_channel_declares(tmp_path, monkeypatch):
    import tempfile

    import psutil

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = max(psutil.pids()) + 100_000
    while psutil.pid_exists(dead):
        dead += 1
    for cls in (backends.BACKENDS["zmq"], backends.BACKENDS["lmdb"]):
        (tmp_path / f"{cls.leftover_prefix}{dead}-x").mkdir()
        (tmp_path / f"{cls.leftover_prefix}{os.getpid()}-x").mkdir()  # a live creator: kept
    removed = backends.reap_stale()
    assert sorted(os.path.basename(p) for p in removed if str(tmp_path) in p) == sorted(
        f"{p}{dead}-x" for p in ("ipcbench-lmdb-", "ipcbench-zmq-"))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p}{os.getpid()}-x" for p in ("ipcbench-lmdb-", "ipcbench-zmq-"))
