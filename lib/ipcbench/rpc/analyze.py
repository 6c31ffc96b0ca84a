"""The per-call log's analyser: the source's report, computed consistently, with its units stated.

Sections as in the source: overall statistics, time breakdown (average per call,
with percentages of the average call, plus what the four phases leave unaccounted),
data transfer totals, statistics by method, top 5 slowest calls, top 5 largest
transfers, and recommendations driven by the source's thresholds: serialization
over 30% of the time, send + receive over 30%, more than 50 RPCs. Lines the parser
could not read are counted and listed by line number.

:func:`example_checks` tests the arithmetic of the source's own example report and
log (``data/seeds/rpc_example_*.txt``) against the identities any such report obeys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from . import perflog

SERIALIZE_THRESHOLD_PCT = 30.0
SEND_RECV_THRESHOLD_PCT = 30.0
CALLS_THRESHOLD = 50
RULE = "=" * 100
SUB = "-" * 100
PHASES = {"Serialize": "Serialize_ms", "Send": "Send_ms", "Receive": "Recv_ms", "Deserialize": "Deserialize_ms"}


@dataclass
class Report:
    """A log's analysis: every number of the report (ms, KB = 10^3 B, MB = 10^6 B) and its text."""

    source: str
    transport: str | None
    calls: int
    total_ms: float
    avg_ms: float
    phase_ms: dict
    phase_pct: dict
    other_ms: float
    other_pct: float
    sent_MB: float
    recv_MB: float
    throughput_MBps: float
    by_method: pd.DataFrame
    slowest: pd.DataFrame
    largest: pd.DataFrame
    recommendations: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def total_MB(self) -> float:
        """Return sent + received, MB."""
        return self.sent_MB + self.recv_MB

    def text(self) -> str:
        """Return the report in the source's layout."""
        out = [RULE, f"{'ZeroMQ Performance Analysis Report':^100}", RULE, ""]
        out.append(f"Log: {self.source or '(text)'}   Transport: {self.transport or 'unknown'}")
        out.append(f"Units: {perflog.UNITS}")
        if self.problems:
            shown = ", ".join(f"{no} ({why.split(':')[0]})" for no, why in self.problems[:10])
            more = f", and {len(self.problems) - 10} more" if len(self.problems) > 10 else ""
            out.append(f"Skipped {len(self.problems)} unreadable line(s): {shown}{more}")
        out += ["", "OVERALL STATISTICS", SUB]
        out.append(f"Total RPC Calls:      {self.calls}")
        if not self.calls:
            out += ["(no readable calls)", RULE]
            return "\n".join(out)
        out.append(f"Total Time:           {self.total_ms:.2f} ms")
        out.append(f"Average Time/Call:    {self.avg_ms:.3f} ms")
        out += ["", "Time Breakdown (Average per call):"]
        for name in PHASES:
            out.append(f"  {name + ':':<20}{self.phase_ms[name]:>8.3f} ms  ({self.phase_pct[name]:5.1f}%)")
        out.append(f"  {'Other:':<20}{self.other_ms:>8.3f} ms  ({self.other_pct:5.1f}%)  (Total - the four phases)")
        n = self.calls
        out += ["", "Data Transfer:"]
        out.append(f"  Total Sent:       {self.sent_MB:>10.3f} MB  ({self.sent_MB * 1e3 / n:.2f} KB/call)")
        out.append(f"  Total Received:   {self.recv_MB:>10.3f} MB  ({self.recv_MB * 1e3 / n:.2f} KB/call)")
        out.append(f"  Total:            {self.total_MB:>10.3f} MB")
        out.append(f"  Throughput:       {self.throughput_MBps:>10.2f} MB/s  (Total / Total Time)")
        out += ["", "STATISTICS BY METHOD", SUB]
        out.append(f"{'Method':<21}{'Calls':>6}{'Avg Time(ms)':>15}{'Total Time(ms)':>17}{'Avg Sent(KB)':>16}"
                   f"{'Avg Recv(KB)':>15}{'% of Total':>13}")  # fmt: skip
        out.append(SUB)
        for r in self.by_method.itertuples():
            out.append(f"{r.Method:<21}{r.calls:>6}{r.avg_ms:>15.3f}{r.total_ms:>17.3f}{r.avg_sent_KB:>16.2f}"
                       f"{r.avg_recv_KB:>15.2f}{r.pct:>12.1f}%")  # fmt: skip
        out += ["", "BOTTLENECK ANALYSIS", SUB, "", "Top 5 Slowest Calls:"]
        out.append(f"{'ID':<9}{'Method':<21}{'Total(ms)':>9}{'Serialize':>13}{'Send':>10}{'Recv':>10}{'Deserialize':>15}")
        out.append(SUB)
        for r in self.slowest.itertuples():
            out.append(f"{r.ID:<9}{r.Method:<21}{r.Total_ms:>9.3f}{r.Serialize_ms:>13.3f}{r.Send_ms:>10.3f}"
                       f"{r.Recv_ms:>10.3f}{r.Deserialize_ms:>15.3f}")  # fmt: skip
        out += ["", "Top 5 Largest Data Transfers:"]
        out.append(f"{'ID':<9}{'Method':<21}{'Sent(KB)':>9}{'Recv(KB)':>13}{'Total(KB)':>13}{'Throughput(MB/s)':>20}")
        out.append(SUB)
        for r in self.largest.itertuples():
            out.append(f"{r.ID:<9}{r.Method:<21}{r.Sent_KB:>9.2f}{r.Recv_KB:>13.2f}{r.total_KB:>13.2f}"
                       f"{r.Throughput_MBps:>20.2f}")  # fmt: skip
        out += ["", "OPTIMIZATION RECOMMENDATIONS", SUB]
        out += self.recommendations or ["No threshold exceeded (serialize > 30%, send + receive > 30%, calls > 50)."]
        out.append(RULE)
        return "\n".join(out)


def recommendations(phase_pct: dict, calls: int) -> list[str]:
    """Return the source's recommendations whose thresholds the numbers exceed."""
    out = []
    if phase_pct["Serialize"] > SERIALIZE_THRESHOLD_PCT:
        out += [f"! Serialization is {phase_pct['Serialize']:.1f}% of the time (> {SERIALIZE_THRESHOLD_PCT:g}%):",
                "   1. move tensors through shared memory instead of msgpack",
                "   2. use a format that does not copy tensors (e.g. multipart zero-copy frames)",
                "   3. send less data (e.g. float16)"]  # fmt: skip
    sr = phase_pct["Send"] + phase_pct["Receive"]
    if sr > SEND_RECV_THRESHOLD_PCT:
        out += [f"! Send + receive is {sr:.1f}% of the time (> {SEND_RECV_THRESHOLD_PCT:g}%): check the transport "
                "(IPC vs TCP).",
                "   Note: Recv counts from the send until the reply is in hand, so it includes the server's own "
                "work; this log cannot separate the two."]  # fmt: skip
    if calls > CALLS_THRESHOLD:
        out += [f"! {calls} RPC calls (> {CALLS_THRESHOLD}):",
                "   1. fuse operators so that a layer is one or two calls",
                "   2. batch several operations into one call",
                "   3. cache results that repeat"]  # fmt: skip
    return out


def analyze(parsed: perflog.ParsedLog) -> Report:
    """Return the report of a parsed log (an empty log gives a report with zero calls)."""
    df = parsed.calls
    n = len(df)
    empty = pd.DataFrame()
    if n == 0:
        zeros = dict.fromkeys(PHASES, 0.0)
        return Report(parsed.source, parsed.transport, 0, 0.0, 0.0, zeros, zeros, 0.0, 0.0, 0.0, 0.0, 0.0,
                      empty, empty, empty, [], list(parsed.problems))  # fmt: skip
    total = float(df["Total_ms"].sum())
    avg = total / n
    phase_ms = {k: float(df[c].mean()) for k, c in PHASES.items()}
    phase_pct = {k: 100 * v / avg if avg else 0.0 for k, v in phase_ms.items()}
    other = avg - sum(phase_ms.values())
    sent_MB, recv_MB = float(df["Sent_KB"].sum()) / 1e3, float(df["Recv_KB"].sum()) / 1e3
    g = df.groupby("Method", sort=False)
    by = pd.DataFrame({
        "calls": g.size(), "avg_ms": g["Total_ms"].mean(), "total_ms": g["Total_ms"].sum(),
        "avg_sent_KB": g["Sent_KB"].mean(), "avg_recv_KB": g["Recv_KB"].mean(),
    }).reset_index()  # fmt: skip
    by["pct"] = 100 * by["total_ms"] / total if total else 0.0
    by = by.sort_values("total_ms", ascending=False, kind="stable").reset_index(drop=True)
    slowest = df.sort_values("Total_ms", ascending=False, kind="stable").head(5).reset_index(drop=True)
    largest = df.assign(total_KB=df["Sent_KB"] + df["Recv_KB"])
    largest = largest.sort_values("total_KB", ascending=False, kind="stable").head(5).reset_index(drop=True)
    return Report(parsed.source, parsed.transport, n, total, avg, phase_ms, phase_pct, other,
                  100 * other / avg if avg else 0.0, sent_MB, recv_MB,
                  (sent_MB + recv_MB) / (total / 1e3) if total else 0.0, by, slowest, largest,
                  recommendations(phase_pct, n), list(parsed.problems))  # fmt: skip


def analyze_file(path) -> Report:
    """Return the report of the log file at ``path``."""
    return analyze(perflog.read(path))


# --------------------------------------------------- the source's example, checked

_NUM = r"([\d.]+)"
TOLERANCE = 0.005  # printed values are rounded: identities must hold within 0.5%


def _parse_example_report(text: str) -> dict:
    def one(pattern):
        m = re.search(pattern, text, re.M)
        if not m:
            raise ValueError(f"the example report has no line matching {pattern!r}")
        return [float(x) for x in m.groups()]

    r = {"calls": one(r"Total RPC Calls:\s+(\d+)")[0], "total_ms": one(rf"Total Time:\s+{_NUM} ms")[0],
         "avg_ms": one(rf"Average Time/Call:\s+{_NUM} ms")[0]}  # fmt: skip
    for name in PHASES:
        r[name] = one(rf"^\s+{name}:\s+{_NUM} ms\s+\(\s*{_NUM}%\)")
    r["sent"] = one(rf"Total Sent:\s+{_NUM} MB\s+\({_NUM} KB/call\)")
    r["recv"] = one(rf"Total Received:\s+{_NUM} MB\s+\({_NUM} KB/call\)")
    r["total_MB"] = one(rf"^\s+Total:\s+{_NUM} MB")[0]
    r["throughput"] = one(rf"Throughput:\s+{_NUM} MB/s")[0]
    sec = lambda a, b: text.split(a, 1)[1].split(b, 1)[0]  # noqa: E731
    r["methods"] = [(m[0], *map(float, m[1:])) for m in re.findall(
        rf"^(\w+)\s+(\d+)\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}%\s*$", sec("STATISTICS BY METHOD", "BOTTLENECK"), re.M)]  # fmt: skip
    r["slowest"] = [(int(m[0]), m[1], *map(float, m[2:])) for m in re.findall(
        rf"^(\d+)\s+(\w+)\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s*$", sec("Top 5 Slowest", "Top 5 Largest"), re.M)]  # fmt: skip
    r["largest"] = [(int(m[0]), m[1], *map(float, m[2:])) for m in re.findall(
        rf"^(\d+)\s+(\w+)\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s*$", sec("Top 5 Largest", "OPTIMIZATION"), re.M)]  # fmt: skip
    return r


def example_checks(report_text: str, log_text: str | None = None) -> pd.DataFrame:
    """Return one row per identity the source's example must obey: what it states, what its own numbers give.

    Columns: check, stated, computed, unit, relation ('=' or '<='), holds (within 0.5%: the values are rounded).
    """
    r = _parse_example_report(report_text)
    rows = []

    def add(check, stated, computed, unit, relation="="):
        if relation == "<=":
            ok = stated <= computed * (1 + TOLERANCE)
        else:
            ok = abs(stated - computed) <= TOLERANCE * max(abs(stated), abs(computed), 1e-12)
        rows.append({"check": check, "stated": float(stated), "computed": float(computed), "unit": unit,
                     "relation": relation, "holds": ok})

    n, total, avg = r["calls"], r["total_ms"], r["avg_ms"]
    add("Total Time = Average Time/Call x Total RPC Calls", total, avg * n, "ms")
    add("Serialize % = Serialize / Average Time/Call", r["Serialize"][1], 100 * r["Serialize"][0] / avg, "%")
    add("the four phases add up to the average call", avg, sum(r[k][0] for k in PHASES), "ms")
    add("Total Sent = KB/call x calls (in MB)", r["sent"][0], r["sent"][1] * n / 1e3, "MB")
    add("Total Received = KB/call x calls (in MB)", r["recv"][0], r["recv"][1] * n / 1e3, "MB")
    add("Throughput = Total / Total Time, with the stated totals", r["throughput"], r["total_MB"] / (total / 1e3), "MB/s")
    add("Throughput = Total / Total Time, with the per-call sizes", r["throughput"],
        (r["sent"][1] + r["recv"][1]) * n / 1e3 / (total / 1e3), "MB/s")  # fmt: skip
    methods = r["methods"]
    if methods:
        add("calls by method add up to Total RPC Calls", n, sum(m[1] for m in methods), "calls")
        add("'% of Total' by method adds up to 100%", 100.0, sum(m[6] for m in methods), "%")
        add("time by method adds up to Total Time", total, sum(m[3] for m in methods), "ms")
        add("Sent/call by method, weighted by calls = overall KB/call", r["sent"][1],
            sum(m[1] * m[4] for m in methods) / n, "KB")  # fmt: skip
        add("Recv/call by method, weighted by calls = overall KB/call", r["recv"][1],
            sum(m[1] * m[5] for m in methods) / n, "KB")  # fmt: skip
    for s in r["slowest"][:1]:
        add(f"slowest call {s[0]}: its phases add up to its Total", s[2], sum(s[3:7]), "ms")
    all_kb = (r["sent"][1] + r["recv"][1]) * n
    for big in r["largest"]:
        add(f"call {big[0]} ({big[1]}) moves at most what all calls move together", big[4], all_kb, "KB", "<=")
    if log_text is not None:
        log = perflog.parse(log_text)
        for c in log.calls.itertuples():
            add(f"log call {c.ID} ({c.Method}): phases add up to Total(ms)", c.Total_ms,
                c.Serialize_ms + c.Send_ms + c.Recv_ms + c.Deserialize_ms, "ms")  # fmt: skip
            add(f"log call {c.ID} ({c.Method}): Throughput = (Sent + Recv) / Total", c.Throughput_MBps,
                (c.Sent_KB + c.Recv_KB) / c.Total_ms, "MB/s")  # fmt: skip
    return pd.DataFrame(rows)
