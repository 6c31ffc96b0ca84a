"""Environment capture: what machine and software produced a result (DESIGN.md, rule 10)."""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import platform
import shutil
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


SIMD_FLAGS = ("sse", "sse2", "sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
              "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile")  # fmt: skip
"""The vector extensions the environment record lists from the CPU's flags (what numpy and numba can use)."""


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip().lower() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_frequency() -> str:
    """Return the CPU clock as the kernel reports it: the current and the range the frequency driver allows, or the
    clock /proc/cpuinfo gives where no driver is loaded (a virtual machine's fixed clock)."""
    base = Path("/sys/devices/system/cpu/cpu0/cpufreq")
    try:
        cur, lo, hi = (int((base / f).read_text()) / 1e3 for f in ("scaling_cur_freq", "cpuinfo_min_freq", "cpuinfo_max_freq"))
        gov = (base / "scaling_governor").read_text().strip()
        return f"{cur:.0f} MHz now ({lo:.0f}-{hi:.0f} MHz, governor {gov})"
    except (OSError, ValueError):
        mhz = _cpuinfo_field("cpu mhz")
        return f"{float(mhz):.0f} MHz (no frequency driver: the clock is not scaled by this kernel)" if mhz else "unknown"


def cpu_caches() -> list[str]:
    """Return the caches of CPU 0 as "L2 unified 512 KiB, used by CPU 0 alone" lines (from sysfs)."""
    out = []
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size, shared = ((d / f).read_text().strip() for f in ("level", "type", "size", "shared_cpu_list"))
        except OSError:
            continue
        kib = int(size.rstrip("K")) if size.endswith("K") and size[:-1].isdigit() else None
        size = (f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB") if kib else size
        who = f"CPU {shared} alone" if shared.isdigit() else f"CPUs {shared}"
        out.append(f"L{level} {kind.lower()} {size}, used by {who}")
    return out


def virtualization() -> str:
    """Return what the machine runs on: bare metal, or a virtual machine (its hypervisor where lscpu names it) and a
    container where systemd can tell."""
    flags = (_cpuinfo_field("flags") or "").split()
    parts = []
    if "hypervisor" in flags:
        vendor = None
        if shutil.which("lscpu"):
            try:
                text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
                vendor = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Hypervisor vendor")), None)
            except (OSError, subprocess.SubprocessError):
                pass
        parts.append(f"virtual machine ({vendor})" if vendor else "virtual machine (the CPU reports a hypervisor)")
    else:
        parts.append("no hypervisor reported by the CPU")
    if shutil.which("systemd-detect-virt"):
        try:
            c = subprocess.run(["systemd-detect-virt", "--container"], capture_output=True, text=True, timeout=10).stdout.strip()
            if c and c != "none":
                parts.append(f"container ({c})")
        except (OSError, subprocess.SubprocessError):
            pass
    return ", ".join(parts)


def cpu_simd_flags() -> list[str]:
    """Return the vector extensions (of :data:`SIMD_FLAGS`) the CPU reports."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [f for f in SIMD_FLAGS if f in flags]


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
        "cpu_frequency": cpu_frequency(),
        "cpu_caches": cpu_caches(),
        "virtualization": virtualization(),
        "cpu_simd": cpu_simd_flags(),
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


# ---------------------------------------------------------------------- machine state

STEAL_MAX = 0.05
"""A chapter is flagged when more than this fraction of CPU time was stolen by the hypervisor while it ran."""
LOAD_MAX_PER_CORE = 1.5
"""... or when the 1-minute load average at its start exceeded this many runnable processes per core (something
else was busy before it began)."""
DRIFT_MAX = 0.25
"""... or when a calibration kernel timed before and after it differs by more than this fraction."""


def cpu_ticks() -> dict:
    """Return the machine's CPU time counters from /proc/stat (ticks): total and steal, and the 1-minute load average."""
    out = {"total_ticks": None, "steal_ticks": None, "loadavg_1m": None}
    try:
        with open("/proc/stat", encoding="ascii") as f:
            parts = f.readline().split()
        ticks = [int(x) for x in parts[1:]]
        out["total_ticks"] = sum(ticks)
        out["steal_ticks"] = ticks[7] if len(ticks) > 7 else 0
        with open("/proc/loadavg", encoding="ascii") as f:
            out["loadavg_1m"] = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the record says so by its empty fields
        pass
    return out


def memcpy_calibration(nbytes: int = 16 * 2**20, repeats: int = 15) -> float:
    """Return the median bandwidth (B/s) of copying ``nbytes`` between two warm numpy buffers (a fixed kernel)."""
    import time

    import numpy as np

    a = np.ones(nbytes, dtype=np.uint8)
    b = np.empty_like(a)
    np.copyto(b, a)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        np.copyto(b, a)
        times.append(time.perf_counter_ns() - t0)
    return nbytes / (float(np.median(times)) * 1e-9)


def machine_state_record(start: dict, end: dict, cores: int) -> dict:
    """Return a chapter's machine-state record: steal and load, calibration before/after, drift, flags (see thresholds)."""
    rec = {"start": start, "end": end, "thresholds": {"steal": STEAL_MAX, "load_per_core": LOAD_MAX_PER_CORE,
                                                      "calibration_drift": DRIFT_MAX}}  # fmt: skip
    flags = []
    if start.get("total_ticks") is not None and end.get("total_ticks") is not None:
        dt = end["total_ticks"] - start["total_ticks"]
        rec["steal"] = (end["steal_ticks"] - start["steal_ticks"]) / dt if dt > 0 else 0.0
        if rec["steal"] > STEAL_MAX:
            flags.append(f"CPU steal {rec['steal']:.1%} while it ran (> {STEAL_MAX:.0%})")
    if start.get("loadavg_1m") is not None and start["loadavg_1m"] > LOAD_MAX_PER_CORE * cores:
        flags.append(f"load average {start['loadavg_1m']:.1f} at its start (> {LOAD_MAX_PER_CORE:g} per core)")
    drift = {}
    for k in ("memcpy_Bps", "mpi_round_trip_s"):
        if start.get(k) and end.get(k):
            drift[k] = end[k] / start[k] - 1
            if abs(drift[k]) > DRIFT_MAX:
                flags.append(f"{k.split('_')[0]} calibration drifted {drift[k]:+.0%} from start to end")
    rec["drift"] = drift
    rec["flags"] = flags
    rec["quiet"] = not flags
    return rec


def state_line(record: dict | None) -> str:
    """Return the one line a chapter's page shows about the machine's state while the chapter ran."""
    if not record:
        return "Machine state: not recorded for this run."
    steal = record.get("steal")
    s, e = record["start"], record["end"]
    parts = [f"CPU steal {steal:.1%}" if steal is not None else "CPU steal unknown",
             f"load average {s.get('loadavg_1m', float('nan')):.1f} -> {e.get('loadavg_1m', float('nan')):.1f}"]
    d = record.get("drift", {})
    if "memcpy_Bps" in d:
        parts.append(f"memcpy {s['memcpy_Bps'] / 1e9:.1f} -> {e['memcpy_Bps'] / 1e9:.1f} GB/s ({d['memcpy_Bps']:+.0%})")
    if "mpi_round_trip_s" in d:
        parts.append(f"empty MPI round trip {s['mpi_round_trip_s'] * 1e6:.1f} -> {e['mpi_round_trip_s'] * 1e6:.1f} µs "
                     f"({d['mpi_round_trip_s']:+.0%})")  # fmt: skip
    verdict = "quiet" if record.get("quiet") else "**noisy**: " + "; ".join(record["flags"])
    return "Machine state while this chapter ran: " + ", ".join(parts) + f": {verdict}."
