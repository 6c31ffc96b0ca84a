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
                "ipyparallel", "profile", "git_commit", "timer", "cpu_frequency", "cpu_caches", "virtualization",
                "cpu_simd"):  # fmt: skip
        assert key in env, key
    assert env["profile"] == "quick"
    assert env["logical_cores"] >= 1 and env["memory_bytes"] > 2**28
    assert "MPICH" in env["mpi_library"]
    assert env["numpy_simd"]["baseline"], "numpy reports its SIMD baseline"
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", env["git_commit"])
    assert env["timer"]["overhead_ns"] > 0
    json.dumps(env)  # serialisable as the meta.json record
    assert "MHz" in env["cpu_frequency"] or env["cpu_frequency"] == "unknown"
    assert all(re.match(r"L\d ", c) for c in env["cpu_caches"])
    assert "sse2" in env["cpu_simd"] or not env["cpu_simd"]


def test_the_environment_page_writes_every_field_in_words_and_nested_lists_in_full(monkeypatch):
    from ipcbench import book

    env = capture_environment("quick")
    monkeypatch.setattr(book, "_meta", lambda chapter: {"environment": env})
    t = book.environment_table().set_index("field")["value"]
    assert not [f for f in t.index if "_" in f], "plain words for every field"
    simd = t["numpy's SIMD"]
    assert all(f in simd for f in env["numpy_simd"]["baseline"]) and "this CPU has:" in simd
    assert t["caches (CPU 0)"].startswith("L1")


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


def test_machine_state_record_flags_a_noisy_chapter():
    from ipcbench.environment import machine_state_record, state_line

    quiet0 = {"total_ticks": 1000, "steal_ticks": 10, "loadavg_1m": 0.5, "memcpy_Bps": 10e9, "mpi_round_trip_s": 2e-6}
    quiet1 = {"total_ticks": 2000, "steal_ticks": 12, "loadavg_1m": 2.0, "memcpy_Bps": 9.5e9, "mpi_round_trip_s": 2.1e-6}
    rec = machine_state_record(quiet0, quiet1, cores=2)
    assert rec["quiet"] and rec["steal"] == pytest.approx(0.002) and "quiet" in state_line(rec)
    noisy1 = {**quiet1, "steal_ticks": 110, "mpi_round_trip_s": 4e-6}
    rec = machine_state_record({**quiet0, "loadavg_1m": 5.0}, noisy1, cores=2)
    assert not rec["quiet"] and len(rec["flags"]) == 3  # steal 10%, load 5 on 2 cores, round trip doubled
    assert "noisy" in state_line(rec) and "steal 10.0%" in state_line(rec)
    assert "not recorded" in state_line(None)
