"""The bare shared-memory spin (chapter 1's floor) delivers every message and its check pass catches a wrong echo
(`mpiexec -n 2`): every message of the pass is compared with what was sent, and the counters with the messages."""

import numpy as np
from mpi4py import MPI

from ipcbench import backends
from ipcbench.experiments._small_paths import BareSpin

comm = MPI.COMM_WORLD
payloads = [np.resize(np.arange(256, dtype=np.uint8), n) for n in (0, 1, 64, 1000)]
spin = BareSpin(comm, 1000)
try:
    for pay in payloads:  # two contents per size, alternating: an echo of the previous message would be caught
        assert spin.check([pay, pay[::-1].copy()], 500) == 500
    assert spin.count == 2000
    # timed trips carry the payload too: rank 1's echo is what rank 0 sent
    got = spin.trip(payloads[2], 1000)
    assert bytes(got) == payloads[2].tobytes() and spin.count == 3000
    del got
    if comm.rank == 1:  # an echo with one byte changed: rank 0's check must see it

        def wrong_echo(payload, k):
            c, n = spin.count + 1, len(payload)
            while spin.q[0] != c:
                pass
            spin.back[:n] = spin.out[:n]
            spin.back[0] ^= 0xFF
            spin.q[8] = spin.count = c
            return spin.back[:n]

        spin.trip = wrong_echo
        spin.trip(payloads[2], 1)
    else:
        try:
            spin.check([payloads[2]], 1)
        except AssertionError as e:
            assert "differs from the 64 B sent" in str(e), e
        else:
            raise AssertionError("a wrong echo passed the bare spin's check")
    comm.Barrier()
finally:
    spin.close()
comm.Barrier()
assert not any(backends.leftovers().values()), backends.leftovers()
if comm.rank == 0:
    print("bare spin OK: 3000 round trips, every message of the check passes compared, a wrong echo caught")
