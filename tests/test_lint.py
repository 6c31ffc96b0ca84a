import subprocess
import sys

from conftest import REPO


def test_ruff_passes_on_library_and_tests():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "lib", "tests"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
