"""Single-process checks of ipcbench.tensor_parallel (the 2-rank checks run under mpiexec in test_mpi_scripts)."""

import numpy as np
import pytest

from ipcbench import model
from ipcbench import tensor_parallel as tp


def test_volume_formulas_at_the_seeds_shapes():
    f = tp.volume_formulas(t=128, h=1024, i=2048, p=2)
    assert [f[s]["collectives"] for s in tp.STRATEGIES] == [4, 3, 1]
    # S1 gathers gate, up and activated (t x i) and down (t x h): 917 504 floats, not the seed's 2 097 152
    assert f["s1"]["result_bytes"] == 4 * (3 * 128 * 2048 + 128 * 1024) == 4 * 917_504
    assert f["s2"]["result_bytes"] == 4 * 655_360
    assert f["s3"]["result_bytes"] == 4 * 131_072
    # ring bytes received per rank at p = 2: half of each gather, the whole vector for an allreduce
    assert f["s1"]["ring_bytes"] == 4 * 458_752
    assert f["s2"]["ring_bytes"] == 4 * (262_144 + 131_072)
    assert f["s3"]["ring_bytes"] == 4 * 131_072


def test_ring_model():
    a, b = 2e-6, 1e10
    assert tp.ring_time("Allgather", 1e6, 1, a, b) == 0
    assert tp.ring_time("Allgather", 1e6, 2, a, b) == pytest.approx(a + 0.5e6 / b)
    assert tp.ring_time("Allreduce", 1e6, 4, a, b) == pytest.approx(6 * a + 1.5e6 / b)
    with pytest.raises(ValueError, match="no ring model"):
        tp.ring_time("Bcast", 1, 2, a, b)


def test_lse_merge_equals_full_attention():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((4, 3, 8), dtype=np.float32)
    k = rng.standard_normal((2, 9, 8), dtype=np.float32)
    v = rng.standard_normal((2, 9, 8), dtype=np.float32)
    qpos = np.array([0, 4, 8])
    blocks = [np.arange(0, 2), np.arange(2, 7), np.arange(7, 9)]
    parts = [tp.attention_block(q, k[:, b], v[:, b], qpos, b) for b in blocks]
    # query 0 sees no key of the later blocks: their lse is -inf and they add nothing
    assert np.isneginf(parts[2][1][:, 0]).all()
    got = tp.merge_lse(np.stack([o for o, _ in parts]), np.stack([s for _, s in parts]))
    assert np.allclose(got, model.attention_core(q, k, v, qpos), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["numba_simd", "numba_scalar"])
def test_compiled_attention_matches_the_reference(kernel):
    """The online-softmax loops against numpy's attention, with GQA, a query that sees no key of the block (its output
    0 and its lse -inf, as merge_lse expects), a decode step and an empty block."""
    rng = np.random.default_rng(2)
    block = tp.attention_kernel(kernel)
    assert block is not tp.attention_block
    for heads, kvh, d, qpos, kpos in ((4, 2, 8, np.array([0, 4, 8]), np.arange(2, 7)),
                                      (16, 8, 128, np.array([47]), np.arange(48)),
                                      (4, 2, 8, np.arange(3), np.arange(0))):  # fmt: skip
        q = rng.standard_normal((heads, qpos.size, d), dtype=np.float32)
        k = rng.standard_normal((kvh, kpos.size, d), dtype=np.float32)
        v = rng.standard_normal((kvh, kpos.size, d), dtype=np.float32)
        want_out, want_lse = tp.attention_block(q, k, v, qpos, kpos)
        got_out, got_lse = block(q[:, ::-1][:, ::-1], k, v, qpos, kpos)  # (a non-contiguous q is copied, not misread)
        assert got_out.dtype == np.float32 and got_out.shape == want_out.shape
        seen = np.isfinite(want_lse)
        assert np.array_equal(np.isfinite(got_lse), seen)
        scale = max(float(np.abs(want_out).max()), 1e-30)
        assert float(np.abs(got_out - want_out).max()) <= 1e-3 * scale
        assert np.allclose(got_lse[seen], want_lse[seen], rtol=1e-3, atol=1e-4)
        assert not got_out[~seen].any()


def test_attention_kernel_of_a_matmul_only_kernel_is_numpys():
    assert tp.attention_kernel("numpy") is tp.attention_block and tp.attention_kernel("python") is tp.attention_block


@pytest.mark.parametrize("kernel", tp.KERNELS)
def test_kernels_compute_the_product(kernel):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 16), dtype=np.float32)
    w = rng.standard_normal((16, 5), dtype=np.float32)
    got = tp.matmul(kernel)(x, w, np.ascontiguousarray(w.T))
    assert got.dtype == np.float32 and np.allclose(got, x @ w, rtol=1e-5, atol=1e-5)


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="unknown kernel"):
        tp.matmul("avx9")


@pytest.mark.parametrize("loop", ["matmul", "attention"])
def test_fastmath_kernel_is_vectorised_and_strict_one_is_not(loop):
    simd, scalar = tp.simd_report("numba_simd", loop), tp.simd_report("numba_scalar", loop)
    assert simd["packed_fma_ymm"] + simd["packed_fma_zmm"] > 0
    assert scalar["packed_fma_ymm"] + scalar["packed_fma_zmm"] == 0 and scalar["scalar_float_ops"] > 0


def test_cpu_features_reported():
    feats = tp.cpu_simd_features()
    assert feats["supported"] and set(feats["baseline"]) <= set(feats["supported"])
