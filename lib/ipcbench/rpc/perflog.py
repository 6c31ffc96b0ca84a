"""The per-call performance log, in the source's format, and its parser.

Written one line per call and flushed, so a run that crashes leaves every call it
finished readable. Units: times in ms (10^-3 s); ``Sent(KB)`` and ``Recv(KB)`` in
KB = 10^3 B, counting every byte the call moved by any path (socket frames and
shared memory); ``Throughput(MB/s)`` = (Sent + Recv) / Total, in MB = 10^6 B per
second (so it equals KB per ms).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas only where a log is parsed: a client that writes its log never imports it
    import pandas as pd

RULE = "=" * 116
COLUMNS = ["ID", "Method", "Serialize(ms)", "Send(ms)", "Recv(ms)", "Deserialize(ms)", "Total(ms)",
           "Sent(KB)", "Recv(KB)", "Throughput(MB/s)"]  # fmt: skip
WIDTHS = [6, 21, 16, 13, 13, 18, 13, 13, 13, 18]
CSV_COLUMNS = ["ID", "Method", "Serialize_ms", "Send_ms", "Recv_ms", "Deserialize_ms", "Total_ms", "Sent_KB",
               "Recv_KB", "Throughput_MBps"]  # fmt: skip
UNITS = ("ms = 10^-3 s; KB = 10^3 B (socket frames + shared memory); MB = 10^6 B; "
         "Throughput = (Sent + Recv) / Total")  # fmt: skip
_TITLE = re.compile(r"^ZeroMQ Performance Log - Transport: (\S+)\s*$")


def header(transport: str) -> str:
    """Return the log's header block (title with the transport, rules, column names), newline-terminated."""
    cols = "".join(f"{c:<{w}}" for c, w in zip(COLUMNS, WIDTHS, strict=True))
    return f"ZeroMQ Performance Log - Transport: {transport}\n{RULE}\n{cols}\n{RULE}\n"


def format_line(call_id: int, method: str, serialize_ms: float, send_ms: float, recv_ms: float,
                deserialize_ms: float, total_ms: float, sent_kb: float, recv_kb: float) -> str:  # fmt: skip
    """Return one call's log line (throughput computed from its own columns)."""
    thr = (sent_kb + recv_kb) / total_ms if total_ms > 0 else 0.0
    return (f"{call_id:<6}{method:<21}{serialize_ms:<16.3f}{send_ms:<13.3f}{recv_ms:<13.3f}"
            f"{deserialize_ms:<18.3f}{total_ms:<13.3f}{sent_kb:<13.2f}{recv_kb:<13.2f}{thr:<18.2f}\n")  # fmt: skip


class PerfLog:
    """An open per-call log file: ``write(record)`` appends and flushes one line."""

    def __init__(self, path, transport: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._f.write(header(transport))
        self._f.flush()

    def write(self, rec) -> None:
        """Append one call (a :class:`ipcbench.rpc.client.CallRecord`)."""
        self._f.write(format_line(rec.id, rec.method, rec.serialize_s * 1e3, rec.send_s * 1e3, rec.recv_s * 1e3,
                                  rec.deserialize_s * 1e3, rec.total_s * 1e3, rec.sent_B / 1e3, rec.recv_B / 1e3))  # fmt: skip
        self._f.flush()

    def close(self) -> None:
        """Close the file."""
        if not self._f.closed:
            self._f.close()


# -------------------------------------------------------------------------- parser


@dataclass
class ParsedLog:
    """A parsed log: the transport, one row per call (CSV_COLUMNS), and the lines that could not be read."""

    transport: str | None
    calls: pd.DataFrame
    problems: list[tuple[int, str]] = field(default_factory=list)
    source: str = ""


def parse(text: str, source: str = "") -> ParsedLog:
    """Parse a log's text; malformed or truncated lines are listed in ``problems`` (line number, reason), not fatal."""
    transport, rows, problems = None, [], []
    lines = text.split("\n")
    truncated = bool(text) and not text.endswith("\n")
    for no, line in enumerate(lines, start=1):
        s = line.strip()
        if not s or set(s) == {"="}:
            continue
        m = _TITLE.match(s)
        if m:
            if transport is not None and m.group(1) != transport:
                problems.append((no, f"a second header with another transport ({m.group(1)})"))
            transport = transport or m.group(1)
            continue
        if s.startswith("ID ") and "Method" in s:
            continue
        parts = s.split()
        last = truncated and no == len(lines)
        if len(parts) != len(COLUMNS):
            problems.append((no, f"{'truncated line' if last else 'malformed line'}: {len(parts)} fields, expected {len(COLUMNS)}"))
            continue
        try:
            call_id = int(parts[0])
            nums = [float(p) for p in parts[2:]]
        except ValueError:
            problems.append((no, "malformed line: ID must be an integer and the timing/size columns numbers"))
            continue
        if any(v < 0 or v != v for v in nums):
            problems.append((no, "malformed line: negative or NaN value"))
            continue
        if last:
            problems.append((no, "truncated line: no newline at the end (the run may have crashed while writing)"))
            continue
        rows.append([call_id, parts[1], *nums])
    import pandas as pd

    calls = pd.DataFrame(rows, columns=CSV_COLUMNS)
    return ParsedLog(transport, calls, problems, source)


def read(path) -> ParsedLog:
    """Parse the log file at ``path`` (see :func:`parse`); raise FileNotFoundError with the path when absent."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"performance log {p} does not exist")
    return parse(p.read_text(encoding="utf-8", errors="replace"), source=str(p))


def to_csv(parsed: ParsedLog, out=None) -> str:
    """Write the calls as CSV (the source's column names) to ``out`` if given; return the CSV text."""
    buf = io.StringIO()
    parsed.calls.to_csv(buf, index=False)
    text = buf.getvalue()
    if out is not None:
        Path(out).write_text(text, encoding="utf-8")
    return text
