"""Every backend x codec delivers every message intact, in order, to every reader (`mpiexec -n 2` and `-n 4`)."""

from mpi4py import MPI

from ipcbench import backends
from ipcbench import serialization as ser
from ipcbench.experiments import fair_serialization as fs

comm = MPI.COMM_WORLD
checked = 0
for backend in backends.BROADCAST_BACKENDS:
    for codec in ser.CODECS:
        for kind, size in (("records", 200), ("structured", 200), ("array", 300_000)):
            if not ser.supports(codec, kind):
                continue
            # warmup == messages: every message is checked in full (content), plus sequence and size
            out = fs.transfer_point(comm, backend, codec, kind, size, messages=4, warmup=4)
            if comm.rank == 0:
                assert len(out["per_reader"]) == 4 * (comm.size - 1), (backend, codec, kind, out)
                assert all(r["transfer"] > 0 and r["end_to_end"] > 0 for r in out["per_reader"])
            checked += 1
    # streaming: a window of messages in flight, every message checked
    st = fs.stream_point(comm, backend, 65536, window=4, rounds=2, warmup=1)
    if comm.rank == 0:
        assert len(st["bandwidth"]) == 2 and all(b > 0 for b in st["bandwidth"]), (backend, st)
# batching (every message checked by sequence and content) and re-reading (the cache gives the decoded records)
bt = fs.batching_round(comm, [("zmq", 1), ("shm", 7), ("mpi_bcast", 50)], 50, rounds=2)
rr = fs.reread_point(comm, "shm", 300, messages=2)
if comm.rank == 0:
    assert set(bt) == {("zmq", 1), ("shm", 7), ("mpi_bcast", 50)} and all(len(v) == 2 and min(v) > 0 for v in bt.values())
    assert len(rr["reread_cached"]) == 2 * (comm.size - 1) and min(rr["reread_decoded"]) > 0
comm.Barrier()
assert not any(backends.leftovers().values()), backends.leftovers()
if comm.rank == 0:
    print(f"backends OK: {checked} backend x codec x payload combinations to {comm.size - 1} reader(s)")
