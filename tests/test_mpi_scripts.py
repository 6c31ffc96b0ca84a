"""The experiments' SPMD functions also run as plain MPI programs under mpiexec -n 2.

Each script runs as ``python -m mpi4py script``: an exception on one rank aborts the whole job
(MPI_Abort), so a failing assertion ends the test at once instead of leaving the other ranks waiting
in a collective until the test's timeout.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

SCRIPTS = sorted((REPO / "tests" / "mpi_scripts").glob("check_*.py"))
# (script, ranks): every script on 2 ranks; the backends (3 readers) and chapter 3's strategies also on 4 ranks
# (oversubscribed, correctness only)
CASES = [(s, 2) for s in SCRIPTS] + [(s, 4) for s in SCRIPTS if s.stem in ("check_backends", "check_libraries", "check_multimodal", "check_pubsub")]
# (the wait-strategy script's delay bound is checked on 2 ranks only, where writer and reader have a core each)


@pytest.mark.parametrize(("script", "ranks"), CASES, ids=lambda v: v.stem if hasattr(v, "stem") else f"n{v}")
def test_spmd_script_under_mpiexec(script, ranks):
    mpiexec = Path(sys.executable).with_name("mpiexec")
    out = subprocess.run([str(mpiexec), "-n", str(ranks), "-bind-to", "core", sys.executable, "-m", "mpi4py", str(script)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK" in out.stdout


def test_a_script_that_fails_on_one_rank_ends_the_job_at_once():
    import glob

    from ipcbench.cluster import MPICH_SHM_GLOB, reap_mpich_segments

    before = set(glob.glob(MPICH_SHM_GLOB))
    mpiexec = Path(sys.executable).with_name("mpiexec")
    script = REPO / "tests" / "mpi_faults" / "fail_on_one_rank.py"
    t0 = time.monotonic()
    out = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "mpi4py", str(script)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    took = time.monotonic() - t0
    assert out.returncode != 0 and "unreachable" not in out.stdout
    assert "fails on purpose" in out.stderr
    assert took < 60, f"the job took {took:.0f} s to end after one rank failed"
    # the aborted job cannot remove its MPICH segment; the reaper does, and only segments nobody maps
    # (mpiexec may return before the killed rank's process has unmapped it: give it a few seconds)
    deadline = time.monotonic() + 15
    while set(glob.glob(MPICH_SHM_GLOB)) - before and time.monotonic() < deadline:
        reap_mpich_segments(min_age_s=0.0)
        time.sleep(0.2)
    assert set(glob.glob(MPICH_SHM_GLOB)) - before == set()
    _no_new_hydra_file()


def _no_new_hydra_file() -> None:
    """An aborted job's mpiexec does not remove its hwloc file: the reaper does (no mpiexec runs now)."""
    import glob

    from ipcbench import lifecycle

    lifecycle.reap_hydra_files()
    assert glob.glob(lifecycle.HYDRA_GLOB) == []


def test_a_corrupted_timed_message_is_caught(new_leftovers):
    """A timed message whose content changed but whose size and sequence number did not fails the run."""
    mpiexec = Path(sys.executable).with_name("mpiexec")
    script = REPO / "tests" / "mpi_faults" / "corrupt_timed_message.py"
    out = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "mpi4py", str(script)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "unreachable" not in out.stdout
    assert "decoded different content in message 3" in out.stderr, out.stderr[-2000:]
    # the aborted job's writer was killed before it could remove its socket directory: the reaper does
    from ipcbench import backends

    deadline = time.monotonic() + 15  # (the killed rank may take a moment to be gone)
    while any(new_leftovers().values()) and time.monotonic() < deadline:
        backends.reap_stale()
        time.sleep(0.2)
    assert not any(new_leftovers().values()), new_leftovers()
    from ipcbench.cluster import reap_mpich_segments

    deadline = time.monotonic() + 15
    while reap_mpich_segments(min_age_s=0.0) or time.monotonic() < deadline and _any_unmapped_mpich():
        time.sleep(0.2)
    _no_new_hydra_file()


def _any_unmapped_mpich() -> bool:
    import glob

    from ipcbench.cluster import MPICH_SHM_GLOB, _mapped_paths

    mapped = _mapped_paths()
    return any(p not in mapped for p in glob.glob(MPICH_SHM_GLOB))
