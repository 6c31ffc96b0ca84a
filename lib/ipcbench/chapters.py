"""The book's chapters, described once: every list of chapters in the library, the pages and the tests is read from
:data:`CHAPTERS`.

A new chapter is one :class:`Chapter` line here, its experiment module (``engines``, ``parameters``, ``run``), its
notebook and its line in ``_toc.yml`` (see CONTRIBUTING.md). This module imports nothing from the package, so every
layer may read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Chapter:
    """One chapter: its id (the results directory and the claims' ``chapter`` column), number, title, notebook (the
    document name, without suffix), the label of its page, its experiment module, the chapters whose results it reads
    (they must have run first, in the same results tree) and the id prefix of the claims it judges (None: it judges
    none)."""

    id: str
    number: int
    title: str
    notebook: str
    label: str
    module: str
    requires: tuple[str, ...] = ()
    claim_prefix: str | None = None
    seed: str | None = None
    """The number of the source analysis under ``seeds/`` whose claims the chapter judges (``"000"``)."""
    across_hosts: bool = False
    """The chapter judges other chapters' claims again across emulated hosts, as a scope of its own."""

    @property
    def heading(self) -> str:
        """The chapter's title as its page and the ledger show it: ``"1. Fair serialization across IPC backends"``."""
        return f"{self.number}. {self.title}"

    @property
    def notebook_path(self) -> Path:
        """The notebook's path relative to the repository root."""
        return Path(self.notebook + ".ipynb")

    def experiment(self):
        """Return the chapter's experiment module (imported on first use)."""
        return importlib.import_module(self.module)

    def engines(self, profile: str | None = None) -> int:
        """Return how many MPI engines the chapter needs in a profile."""
        return int(self.experiment().engines(profile))


_EXP = "ipcbench.experiments."
CHAPTERS: dict[str, Chapter] = {c.id: c for c in (
    Chapter("machine_limits", 0, "Limits of this machine", "notebooks/00_machine_limits", "machine-limits",
            _EXP + "machine_limits"),
    Chapter("fair_serialization", 1, "Fair serialization across IPC backends", "notebooks/01_fair_serialization",
            "fair-serialization", _EXP + "fair_serialization", ("machine_limits",), "fs", "000"),
    Chapter("rpc_breakdown", 2, "ZeroMQ RPC breakdown for split inference", "notebooks/02_rpc_breakdown",
            "rpc-breakdown", _EXP + "rpc_breakdown", ("machine_limits",), "rpc", "001"),
    Chapter("broadcast", 3, "Broadcast serialization across tensor-parallel ranks", "notebooks/03_broadcast",
            "broadcast", _EXP + "broadcast", ("machine_limits",), "bc", "002"),
    Chapter("pipeline", 4, "Pipeline parallelism", "notebooks/04_pipeline", "pipeline", _EXP + "pipeline",
            (), "pl", "003"),
    Chapter("tensor_parallel", 5, "MPI tensor parallelism and SIMD", "notebooks/05_tensor_parallel",
            "tensor-parallel", _EXP + "tensor_parallel", ("machine_limits",), "tp", "004"),
    Chapter("scale_out", 6, "Beyond one machine: the experiments across emulated hosts", "notebooks/06_scale_out",
            "scale-out", _EXP + "scale_out", across_hosts=True),
)}  # fmt: skip
"""Every chapter, in the book's order."""

IDS: tuple[str, ...] = tuple(CHAPTERS)
"""The chapter ids in the book's order."""


def get(chapter: str) -> Chapter:
    """Return a chapter's descriptor; an unknown id raises KeyError naming the chapters there are."""
    try:
        return CHAPTERS[chapter]
    except KeyError:
        raise KeyError(f"unknown chapter {chapter!r}; chapters are {', '.join(CHAPTERS)}") from None


def judging() -> list[Chapter]:
    """Return the chapters that judge claims of their own (one source analysis each), in the book's order."""
    return [c for c in CHAPTERS.values() if c.claim_prefix]


def by_notebook(docname: str) -> Chapter | None:
    """Return the chapter whose notebook is ``docname`` (``notebooks/01_fair_serialization``), or None."""
    return next((c for c in CHAPTERS.values() if c.notebook == docname), None)


def dependents(chapter: str) -> list[str]:
    """Return the chapters that read ``chapter``'s results, directly or through another chapter, in the book's order."""
    out: set[str] = set()
    frontier = {chapter}
    while frontier:
        frontier = {c.id for c in CHAPTERS.values() if set(c.requires) & frontier} - out
        out |= frontier
    return [c for c in CHAPTERS if c in out]
