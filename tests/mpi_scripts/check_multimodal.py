"""Chapter 3's data path under mpiexec: every strategy leaves identical MultimodalInputs on every rank,
malformed requests fail on every rank alike (no rank left in a collective), and the timed points run."""

import pickle

import numpy as np
from mpi4py import MPI

from ipcbench import multimodal as mm
from ipcbench.experiments import broadcast as bx
from ipcbench.measure import StoppingRule

comm = MPI.COMM_WORLD
rule = StoppingRule(rel_ci=0.5, min_samples=3, max_samples=5, time_budget_s=0.05, warmup=1)

# a request with two valid items (one non-contiguous), one empty item (filtered) and optional args
base = mm.make_request(300_000, "image", seed=11, items=2)
base["mm_items"][1]["feature"] = np.asfortranarray(base["mm_items"][1]["feature"])
base["mm_items"].append({"modality": "image", "feature": np.empty((0, 1176), np.float32), "offsets": [(0, 0)]})
want = {algo: mm.MultimodalInputs.from_dict(base, algo) for algo in ("sha256", "xxh3")}
assert len(want["sha256"].mm_items) == 2

features = {}
for strategy in mm.STRATEGIES:
    got = mm.process_request(comm, strategy, base if (comm.rank == 0 or strategy == "replicated") else None)
    algo = mm.STRATEGY_SPEC[strategy][2]
    prints = comm.allgather(got.fingerprint())
    assert all(p == want[algo].fingerprint() for p in prints), (strategy, comm.rank)
    assert got.im_token_id == base["im_token_id"] and [it.offsets for it in got.mm_items] == [[(16, 48)], [(48, 80)]]
    features[strategy] = [np.ascontiguousarray(it.feature) for it in got.mm_items]
for strategy, fs in features.items():  # byte-identical features whatever the strategy
    assert all(np.array_equal(a, b) for a, b in zip(fs, features["raw_bcast"], strict=True)), strategy

# broadcast_pyobj makes SGLang's two copies of the pickled bytes: into a byte tensor on the root, out into bytes on
# every receiver (counted here, with the bytes they copy, and checked to share no memory with their source)
copies = []
to_tensor, from_tensor = mm.to_tensor, mm.from_tensor


def counting_to_tensor(data):
    out = to_tensor(data)
    assert not np.shares_memory(out, np.frombuffer(data, np.uint8))
    copies.append(("to_tensor", out.nbytes))
    return out


def counting_from_tensor(buf):
    out = from_tensor(buf)
    assert isinstance(out, bytes) and not np.shares_memory(np.frombuffer(out, np.uint8), buf)
    copies.append(("from_tensor", len(out)))
    return out


mm.to_tensor, mm.from_tensor = counting_to_tensor, counting_from_tensor
obj = mm.MultimodalInputs.from_dict(base)
timings = {}
got = mm.broadcast_pyobj(comm, obj if comm.rank == 0 else None, 0, timings)
mm.to_tensor, mm.from_tensor = to_tensor, from_tensor
n = len(pickle.dumps(obj))
assert copies == ([("to_tensor", n)] if comm.rank == 0 else [("from_tensor", n)]), (comm.rank, copies, n)
assert set(timings) == ({"pickle", "to_tensor", "bcast"} if comm.rank == 0 else {"bcast", "from_tensor", "unpickle"})
assert got.fingerprint() == obj.fingerprint()

# malformed requests: the same error on every rank, then the next valid request succeeds
bad_requests = {
    "missing key": {"mm_items": [{"modality": "image", "offsets": []}]},
    "wrong dtype": {"mm_items": [{"modality": "image", "feature": np.array(["a", "b"]), "offsets": []}]},
    "object dtype": {"mm_items": [{"modality": "image", "feature": np.array([None, 1]), "offsets": []}]},
    "no mm_items": {"input_ids": [1, 2]},
    "unknown modality": {"mm_items": [{"modality": "smell", "feature": np.ones(3, np.float32), "offsets": []}]},
    "unpicklable": {"mm_items": [{"modality": "image", "feature": np.ones(3, np.float32), "offsets": []}],
                    "callback": lambda: None},
}
for what, req in bad_requests.items():
    for strategy in mm.STRATEGIES:
        message = None
        try:
            mm.process_request(comm, strategy, req if (comm.rank == 0 or strategy == "replicated") else None)
        except mm.MalformedItemError as e:
            message = str(e)
        # (unpicklable: A, C, D, E and DE pickle the raw request and fail; A0 never pickles and B pickles the
        # built object, which leaves the callback out: both succeed. Either way every rank agrees.)
        messages = comm.allgather(message)
        assert len(set(messages)) == 1, (what, strategy, messages)
        if what != "unpicklable":
            assert messages[0] is not None, (what, strategy)
        ok = mm.process_request(comm, strategy, base if (comm.rank == 0 or strategy == "replicated") else None)
        assert len(ok.mm_items) == 2

# the timed points run and return what the chapter reads
ph = bx.phase_point(comm, 200_000, rule)
lat = bx.latency_point(comm, "hashes_oob", 200_000, rule, 1, 1_000_000)
load = bx.load_point(comm, "object_bcast", 200_000, 400.0, 6, 1, 1_000_000)
rnd = bx.load_round(comm, 200_000, [("object_bcast", 400.0, 6), ("hashes_xxh3", 800.0, 6)], 1, 1_000_000, 2)
# the scheduler: a step between batches (its cost recorded), the helper thread's broadcast overlapping the step, the
# hash cache's hits as the load asked for them
sched = bx.scheduler_round(comm, 200_000, [("replicated", 300.0, 12, 0.004, 0.0), ("object_bcast", 300.0, 12, 0.0, 0.0),
                                           ("object_bcast_async", 2000.0, 12, 0.004, 0.0),
                                           ("hash_cache", 300.0, 40, 0.002, 0.5)], 1, 1_000_000, 3)  # fmt: skip
bx.drop_pools(comm)
if comm.rank == 0:
    assert len(rnd) == 2 and all(len(r["latency"]) == 6 and r["throughput"] > 0 for r in rnd)
    assert {"from_dict", "tobytes", "hash_sha256", "hash_xxh3", "hash_blake3", "pickle", "unpickle", "bcast",
            "pickle_oob", "unpickle_oob", "bcast_oob", "from_dict_xxh3", "mpi4py_bcast", "to_tensor", "from_tensor"} == set(ph["samples"])
    assert ph["pickled_bytes"] > ph["feature_bytes"] > 190_000
    assert len(lat["samples"]) >= 3 and len(lat["phases"]) == comm.size
    assert {"pickle", "bcast", "from_dict"} <= set(lat["phases"][0]) and "unpickle" in lat["phases"][-1]
    assert len(load["latency"]) == 6 and min(load["latency"]) > 0 and load["throughput"] > 0
    assert len(load["cpu_util"]) == comm.size
    rep, obj, asy, hc = sched
    assert all(len(x["latency"]) == x["requests"] and min(x["latency"]) > 0 and x["throughput"] > 0 for x in sched)
    assert 0.004 <= rep["step_s"] < 0.05 and obj["step_s"] < 0.004  # the step ran between batches, and only when asked
    assert min(rep["latency"]) >= 0.004  # a request is done only when the step that includes it has ended
    assert asy["overlap"] > 0 and asy["mean_batch"] >= 1  # the broadcast of batch k started before step k - 1 ended
    _, keys = bx.request_schedule(40, 300.0, 0.5, 1, 3)
    assert hc["hits"] == sum(1 for i, k in enumerate(keys) if k != i) > 0  # every repeat, and only a repeat, is a hit
    assert hc["hit_rate"] == hc["asked_repeats"]
    assert rep["hit_rate"] != rep["hit_rate"]  # (no cache: no hit rate)
else:
    assert ph is None and lat is None and load is None and sched is None
comm.Barrier()
if comm.rank == 0:
    print("OK")
