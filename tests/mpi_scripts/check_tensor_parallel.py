"""Every MLP strategy, the sequence-parallel attention and the TP decoder match the single-process reference on
2 ranks (`mpiexec -n 2`); the byte counts match the formulas; bad shapes fail on every rank without a hang."""

import numpy as np
from mpi4py import MPI

from ipcbench import model
from ipcbench import tensor_parallel as tp
from ipcbench.experiments import tensor_parallel as tpx
from ipcbench.measure import StoppingRule

world = MPI.COMM_WORLD
comm = tp.CountingComm(world)
p = comm.size
rng = np.random.default_rng(3)  # the same on every rank
t, h, i = 6, 32, 48
gate = rng.standard_normal((h, i), dtype=np.float32) / 6
up = rng.standard_normal((h, i), dtype=np.float32) / 6
down = rng.standard_normal((i, h), dtype=np.float32) / 7
x = rng.standard_normal((t, h), dtype=np.float32)
ref = model.swiglu_mlp(x, gate, up, down)
forms = tp.volume_formulas(t, h, i, p)

# 1. each strategy x kernel against the reference; counted bytes against the formulas
for s in tp.STRATEGIES:
    for k in tp.KERNELS:
        mlp = tp.ShardedMLP(comm, gate, up, down, s, k)
        comm.reset()
        out = mlp(x)
        assert np.allclose(out, ref, rtol=1e-5, atol=1e-5), (s, k, float(np.abs(out - ref).max()))
        assert len(comm.records) == forms[s]["collectives"], (s, comm.records)
        assert sum(r.recv_bytes for r in comm.records) == forms[s]["result_bytes"], (s, comm.records)
        assert abs(sum(r.ring_bytes for r in comm.records) - forms[s]["ring_bytes"]) < 1e-6, (s, comm.records)
        assert [r.op for r in comm.records] == [c["op"] for c in forms[s]["calls"]]
        comm.reset()
        assert np.array_equal(mlp(x), out), "a second call gives another result (reused buffers?)"

# 2. uneven shapes: S2 accepts them (Allgatherv), S1/S3 refuse on every rank alike
i_odd = 2 * p + 1
g2, u2, d2 = gate[:, :i_odd], up[:, :i_odd], down[:i_odd]
comm.reset()
out = tp.ShardedMLP(comm, g2, u2, d2, "s2")(x)
assert np.allclose(out, model.swiglu_mlp(x, g2, u2, d2), rtol=1e-5, atol=1e-5)
assert comm.records[0].op == "Allgatherv"
for s in ("s1", "s3"):
    try:
        tp.ShardedMLP(comm, g2, u2, d2, s)
    except tp.ShardError as e:
        assert "not divisible" in str(e), e
    else:
        raise AssertionError(f"{s} accepted an intermediate size of {i_odd} on {p} ranks")
# ranks that disagree on the shapes all raise (nobody is left in a collective)
mine = gate if comm.rank == 0 else gate[:, : i - p]
try:
    tp.ShardedMLP(comm, mine, up if comm.rank == 0 else up[:, : i - p], down if comm.rank == 0 else down[: i - p], "s3")
except tp.ShardError as e:
    assert "disagree" in str(e), e
else:
    raise AssertionError("ranks with different shapes were accepted")
world.Barrier()

# 3. sequence-parallel attention (GQA, causal, one rank may see no visible key for early queries)
heads, kvh, d, s_len = 4, 2, 8, 11
q = rng.standard_normal((heads, 5, d), dtype=np.float32)
k = rng.standard_normal((kvh, s_len, d), dtype=np.float32)
v = rng.standard_normal((kvh, s_len, d), dtype=np.float32)
qpos = np.arange(s_len - 5, s_len)
qpos[0] = 1  # a query that sees only keys 0..1: the other blocks contribute nothing
block = np.array_split(np.arange(s_len), p)[comm.rank]
got = tp.attention_sequence_parallel(comm, q, k[:, block], v[:, block], qpos, block)
want = model.attention_core(q, k, v, qpos)
assert np.allclose(got, want, rtol=1e-5, atol=1e-5), float(np.abs(got - want).max())
for kern in ("numba_simd", "numba_scalar"):  # the compiled online-softmax loops in the same merge
    got = tp.attention_sequence_parallel(comm, q, k[:, block], v[:, block], qpos, block, tp.attention_kernel(kern))
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4), (kern, float(np.abs(got - want).max()))

# 4. the whole decoder, both attention layouts, against greedy generation of the reference
cfg = model.preset("tiny")
w = model.init_weights(cfg, seed=5)
prompt = list(range(3, 20))
want_tokens, want_logits = model.generate(w, prompt, 5)
for att in ("heads", "sequence"):
    for s in tp.STRATEGIES:
        dec = tp.TPDecoder(comm, w, mlp=s, attention=att)
        got_tokens, got_logits = dec.generate(prompt, 5)
        assert got_tokens == want_tokens, (att, s)
        err = max(float(np.abs(a - b).max()) for a, b in zip(want_logits, got_logits, strict=True))
        assert err < 1e-4, (att, s, err)
        # the forward counted its attention and MLP time; reset_parts starts the count afresh
        assert 0 < dec.part_s["attention_kernel"] < dec.part_s["attention"] and dec.part_s["mlp"] > 0, dec.part_s
        dec.reset_parts()
        assert dec.part_s == {"attention": 0.0, "attention_kernel": 0.0, "mlp": 0.0}
        if s == "s3":  # rewinding to the prompt leaves the cache a prefill makes: the next step is the same, bit for bit
            dec.reset()
            dec.forward(prompt, last_only=True)
            fresh = dec.forward([7], last_only=True)
            dec.forward([9], last_only=True)
            dec.rewind(len(prompt))
            assert dec.length == len(prompt) and all(kp.max(initial=-1) < len(prompt) for kp in dec.kpos), att
            assert np.array_equal(dec.forward([7], last_only=True), fresh), att
            try:
                dec.rewind(dec.length + 1)
                raise AssertionError("rewind past the cache was accepted")
            except ValueError:
                pass

# the source's pair: the compiled kernels in the MLP and in the attention give the reference's tokens
for s, kern in tpx.SOURCE_PAIR:
    dec = tp.TPDecoder(comm, w, mlp=s, attention="sequence", kernel=kern)
    got_tokens, got_logits = dec.generate(prompt, 5)
    assert got_tokens == want_tokens, (s, kern)
    err = max(float(np.abs(a - b).max()) for a, b in zip(want_logits, got_logits, strict=True))
    assert err < 1e-3 * max(float(np.abs(a).max()) for a in want_logits), (s, kern, err)

# 5. the experiment's SPMD points run and check themselves
rule = StoppingRule(rel_ci=0.5, min_samples=3, max_samples=3, time_budget_s=0.0, warmup=1)
pt = tpx.collective_point(world, "Allreduce", 4096, rule)
pt2 = tpx.mlp_point(world, "s2", "numpy", 4, 64, 128, rule)
pt3 = tpx.decoder_point(world, "s3", "sequence", layers=1, vocab=512, prompt_len=8, decode_steps=2, samples=2)
if comm.rank == 0:
    assert len(pt["total"]) == 3 and all(x > 0 for x in pt["total"])
    assert len(pt2["calls"]) == 3 and pt2["max_rel_error"] < tpx.MLP_TOL
    assert len(pt3["prefill"]["total"]) == 2 and len(pt3["decode"]["total"]) == 4
    for phase in ("prefill", "decode"):  # each sample's attention and MLP time: positive, within the step's time
        got = pt3[phase]
        assert len(got["attention"]) == len(got["attention_kernel"]) == len(got["mlp"]) == len(got["total"])
        assert all(0 < k <= a <= t and 0 < m <= t for a, k, m, t in
                   zip(got["attention"], got["attention_kernel"], got["mlp"], got["total"], strict=True))
    print(f"tensor parallel OK on {p} ranks")
