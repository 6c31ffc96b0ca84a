"""The experiments' SPMD functions also run as plain MPI programs under mpiexec -n 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPTS = sorted((REPO / "tests" / "mpi_scripts").glob("check_*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_spmd_script_under_mpiexec(script):
    mpiexec = Path(sys.executable).with_name("mpiexec")
    out = subprocess.run([str(mpiexec), "-n", "2", sys.executable, str(script)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK" in out.stdout
