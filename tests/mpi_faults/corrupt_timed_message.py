"""The writer corrupts one timed message after warm-up, keeping its size: the reader must catch it (content check)."""

import numpy as np
from mpi4py import MPI

from ipcbench import serialization as ser
from ipcbench.experiments import fair_serialization as fs

raw = ser.CODECS["raw"]
calls = [0]


def corrupting_encode(obj):
    calls[0] += 1
    frames = raw.encode(obj)
    if calls[0] == 1 + 2 + 2:  # the sizing encode, 2 warm-up messages, then the 2nd timed message
        data = np.frombuffer(frames[-1], dtype=np.uint8).copy()
        data[len(data) // 2] ^= 0xFF  # one byte flipped: same size, same sequence number
        frames = [*frames[:-1], data]
    return frames


ser.CODECS["corrupting"] = ser.Codec("corrupting", corrupting_encode, raw.decode, True, "raw, one message corrupted")
fs.transfer_point(MPI.COMM_WORLD, "zmq", "corrupting", "array", 4096, messages=4, warmup=2)
print("unreachable: the corrupted message was not caught")
