"""One module per chapter, each exposing ``run(cluster, profile) -> pandas.DataFrame``.

Notebooks and the command line call these; nothing else does the sweeping.
"""

from __future__ import annotations

import importlib

# chapter id -> module; only chapters that exist are listed
CHAPTERS = {
    "machine_limits": "ipcbench.experiments.machine_limits",
    "fair_serialization": "ipcbench.experiments.fair_serialization",
    "rpc_breakdown": "ipcbench.experiments.rpc_breakdown",
    "broadcast": "ipcbench.experiments.broadcast",
    "pipeline": "ipcbench.experiments.pipeline",
    "tensor_parallel": "ipcbench.experiments.tensor_parallel",
}


def get(chapter: str):
    """Return the experiment module of a chapter id."""
    try:
        return importlib.import_module(CHAPTERS[chapter])
    except KeyError:
        raise KeyError(f"unknown chapter {chapter!r}; available: {', '.join(CHAPTERS)}") from None
