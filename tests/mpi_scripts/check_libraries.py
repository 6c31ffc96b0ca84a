"""Every production library channel delivers every message intact, in order, to every reader (`mpiexec -n 2` and
`-n 4`): small and large raw arrays and pickled records, paced, and a window of messages in flight."""

from mpi4py import MPI

from ipcbench import backends
from ipcbench.experiments import fair_serialization as fs

comm = MPI.COMM_WORLD
checked = 0
for backend in backends.LIBRARY_BACKENDS:
    for codec, kind, size in (("raw", "array", 64), ("raw", "array", 3_000_000), ("pickle5", "records", 200),
                              ("pickle5_oob", "array", 300_000)):
        # warmup == messages: every message is checked in full (content), plus sequence and size
        out = fs.transfer_point(comm, backend, codec, kind, size, messages=4, warmup=4)
        if comm.rank == 0:
            assert len(out["per_reader"]) == 4 * (comm.size - 1), (backend, codec, kind, out)
            assert all(r["transfer"] > 0 and r["end_to_end"] > 0 for r in out["per_reader"])
        checked += 1
    st = fs.stream_point(comm, backend, 65536, window=4, rounds=2, warmup=1)
    if comm.rank == 0:
        assert len(st["bandwidth"]) == 2 and all(b > 0 for b in st["bandwidth"]), (backend, st)
    # a writer that goes silent: every reader's receive ends in a clear timeout, not a hang
    chan = backends.open_channel(backend, comm, **fs.channel_options(backend, 4096, 4), timeout_s=0.5)
    try:
        if chan.is_writer:
            chan.wait_for_readers()
        else:
            try:
                chan.recv()
            except backends.PeerTimeout as e:
                assert "no message from the writer within 0.5 s" in str(e), e
            else:
                raise AssertionError(f"{backend}: a receive from a silent writer returned")
        comm.Barrier()
    finally:
        chan.close()
# the small-message paths: every echo checked before timing (ranks above 1 take part in the collectives only)
sp = fs.small_path_point(comm, [0, 64, 1000], samples=2, inner=5)
if comm.rank == 0:
    assert {k[0] for k in sp["samples"]} == set(fs.SMALL_PATHS) == set(sp["settings"]), sp["samples"].keys()
    assert all(len(v) == 2 and min(v) > 0 for v in sp["samples"].values()), sp
    assert ("pynng_best", 0) not in sp["samples"] and len(sp["samples"]) == 3 * len(fs.SMALL_PATHS) - 1
comm.Barrier()
assert not any(backends.leftovers().values()), backends.leftovers()
if comm.rank == 0:
    print(f"libraries OK: {checked} library x payload combinations to {comm.size - 1} reader(s)")
