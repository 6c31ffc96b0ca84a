"""The experiments' SPMD functions also run as plain MPI programs under mpiexec -n 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPTS = sorted((REPO / "tests" / "mpi_scripts").glob("check_*.py"))
# (script, ranks): every script on 2 ranks; the backends (3 readers) and chapter 3's strategies also on 4 ranks
# (oversubscribed, correctness only)
CASES = [(s, 2) for s in SCRIPTS] + [(s, 4) for s in SCRIPTS if s.stem in ("check_backends", "check_multimodal")]


@pytest.mark.parametrize(("script", "ranks"), CASES, ids=lambda v: v.stem if hasattr(v, "stem") else f"n{v}")
def test_spmd_script_under_mpiexec(script, ranks):
    mpiexec = Path(sys.executable).with_name("mpiexec")
    out = subprocess.run([str(mpiexec), "-n", str(ranks), sys.executable, str(script)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK" in out.stdout
