"""ZeroMQ PUB/SUB delivers every message to every reader, including one that connects last (`mpiexec -n 2` and 4)."""

import numpy as np
from mpi4py import MPI

from ipcbench import backends

comm = MPI.COMM_WORLD
late = comm.size - 1  # the last reader connects half a second after the others
chan = backends.open_channel("zmq_pubsub", comm, timeout_s=20, join_delay_s=0.5 if comm.rank == late else 0.0)
got = []
try:
    for k in range(200):  # unpaced: the writer publishes as fast as it can
        if chan.is_writer:
            chan.send([np.full(64, k % 251, dtype=np.uint8), np.arange(k, k + 4, dtype=np.int64)])
        else:
            a, b = chan.recv()
            got.append((int(np.frombuffer(a, dtype=np.uint8)[0]), int(np.frombuffer(b, dtype=np.int64)[0])))
    comm.Barrier()
finally:
    chan.close()
if not chan.is_writer:
    assert got == [(k % 251, k) for k in range(200)], (comm.rank, got[:5], len(got))
counts = comm.gather(len(got), root=0)
comm.Barrier()
assert not any(backends.leftovers().values()), backends.leftovers()
if comm.rank == 0:
    assert counts[1:] == [200] * (comm.size - 1), counts
    print(f"pubsub OK: 200 messages to each of {comm.size - 1} reader(s), the last one connecting 0.5 s late")
