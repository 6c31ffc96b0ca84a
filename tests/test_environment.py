import json
import re
import subprocess
import sys

import pytest

from ipcbench import profiles
from ipcbench.environment import capture_environment


def test_environment_record_has_every_field():
    env = capture_environment("quick")
    for key in ("cpu_model", "logical_cores", "physical_cores", "usable_cores", "smt_active", "memory_bytes",
                "kernel", "python", "numpy", "numpy_simd", "mpi4py", "mpi_library", "pyzmq", "libzmq", "lmdb",
                "ipyparallel", "profile", "git_commit", "timer"):  # fmt: skip
        assert key in env, key
    assert env["profile"] == "quick"
    assert env["logical_cores"] >= 1 and env["memory_bytes"] > 2**28
    assert "MPICH" in env["mpi_library"]
    assert env["numpy_simd"]["baseline"], "numpy reports its SIMD baseline"
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", env["git_commit"])
    assert env["timer"]["overhead_ns"] > 0
    json.dumps(env)  # serialisable as the meta.json record


def test_profile_names():
    assert profiles.profile_name("full") == "full"
    with pytest.raises(profiles.ProfileError, match="quick, standard, full"):
        profiles.profile_name("fast")
    assert profiles.stopping_rule("quick").time_budget_s < profiles.stopping_rule("standard").time_budget_s


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("IPCBENCH_PROFILE", "quick")
    assert profiles.profile_name() == "quick"
    monkeypatch.delenv("IPCBENCH_PROFILE")
    assert profiles.profile_name() == "standard"


def test_cli_env_prints_json():
    out = subprocess.run([sys.executable, "-m", "ipcbench.cli", "env"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["python"]


def test_cli_rejects_unknown_chapter():
    out = subprocess.run([sys.executable, "-m", "ipcbench.cli", "run", "nope"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
