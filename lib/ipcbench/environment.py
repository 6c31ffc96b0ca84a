"""Environment capture: what machine and software produced a result (DESIGN.md, rule 10)."""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def smt_active() -> bool | None:
    """Return whether simultaneous multithreading is active (None when the kernel does not say)."""
    p = Path("/sys/devices/system/cpu/smt/active")
    try:
        return p.read_text().strip() == "1"
    except OSError:
        return None


def numpy_simd() -> dict:
    """Return numpy's SIMD baseline, dispatched and available CPU features."""
    try:
        from numpy._core._multiarray_umath import (  # numpy >= 2
            __cpu_baseline__,
            __cpu_dispatch__,
            __cpu_features__,
        )
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core._multiarray_umath import (
            __cpu_baseline__,
            __cpu_dispatch__,
            __cpu_features__,
        )
    return {
        "baseline": list(__cpu_baseline__),
        "dispatch": list(__cpu_dispatch__),
        "available": sorted(k for k, v in __cpu_features__.items() if v),
    }


@functools.lru_cache(maxsize=1)
def mpi_library_version() -> str:
    """Return the MPI library's version string (asked in a subprocess, so this process never initialises MPI)."""
    code = "from mpi4py import MPI; print(MPI.Get_library_version().strip().splitlines()[0])"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        return out.stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        return f"unavailable ({exc.__class__.__name__})"


def git_commit() -> str:
    """Return the repository's HEAD commit (with '+dirty' when the tree has changes), or 'unknown'."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (subprocess.SubprocessError, OSError):
        return "unknown"


def blas_info() -> dict:
    """Return the BLAS numpy calls (threadpoolctl): library, version, CPU architecture it selected, threads."""
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            if lib.get("user_api") == "blas":
                return {"library": lib.get("internal_api", "unknown"), "version": lib.get("version"),
                        "architecture": lib.get("architecture"), "threads": lib.get("num_threads")}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - an environment record never fails the run
        return {"library": f"unavailable ({exc.__class__.__name__})"}
    return {"library": "none found"}


def vector_bits(simd: dict) -> int:
    """Return the widest SIMD register width (bits) the CPU offers numpy: 512 (AVX-512F), 256 (AVX2/AVX) or 128."""
    have = set(simd.get("available", []))
    return 512 if "AVX512F" in have else 256 if {"AVX2", "AVX"} & have else 128


def machine_facts(record: dict) -> dict:
    """Return the facts prose cites, from an environment record: cores, CPU, memory (GiB), BLAS, vector width, float32 lanes."""
    bits = vector_bits(record.get("numpy_simd", {}))
    blas = record.get("blas", {})
    return {"cores": int(record.get("usable_cores", 0)), "cpu_model": record.get("cpu_model", "unknown"),
            "memory_GiB": float(record.get("memory_bytes", 0)) / 2**30,
            "blas": f"{blas.get('library', 'unknown')} {blas.get('version') or ''}".strip(),
            "vector_bits": bits, "float32_lanes": bits // 32}  # fmt: skip


def capture_environment(profile: str | None = None, timer: bool = True) -> dict:
    """Return the environment record: CPU, cores, SMT, memory, kernel, versions, profile, commit."""
    import numpy as np
    import psutil
    import zmq

    from . import profiles

    record = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "smt_active": smt_active(),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "numpy_simd": numpy_simd(),
        "blas": blas_info(),
        "mpi4py": _version("mpi4py"),
        "mpi_library": mpi_library_version(),
        "mpich_wheel": _version("mpich"),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "lmdb": _version("lmdb"),
        "msgpack": _version("msgpack"),
        "ipyparallel": _version("ipyparallel"),
        "ipcbench": _version("ipcbench"),
        "profile": profiles.profile_name(profile),
        "git_commit": git_commit(),
        "clock_shared_by_processes": "time.perf_counter_ns is CLOCK_MONOTONIC on Linux: one clock for all processes of this machine",
    }
    if timer:
        from .measure import timer_info

        record["timer"] = timer_info().as_dict()
    return record
