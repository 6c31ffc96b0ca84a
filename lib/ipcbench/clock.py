"""The book's one clock, on its own so that light processes (chapter 2's spawned RPC clients) read it without
importing the statistics of :mod:`ipcbench.measure` (which re-exports both names)."""

from __future__ import annotations

import time

now_ns = time.perf_counter_ns
"""The one clock of the book: ``time.perf_counter_ns`` (integer nanoseconds)."""


def now_s() -> float:
    """Return the book's one clock (:data:`now_ns`) in seconds, for code that keeps float seconds."""
    return now_ns() * 1e-9
