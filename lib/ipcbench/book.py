"""What the book's own pages show: the claims ledger, the findings, the environment appendix, and each chapter's header.

Every page here is built from the chapters' results on disk (``ipcbench.results``) and the ledger the one
judge wrote (``ipcbench.claims``), never from typed numbers. The pages run after every chapter (the book's
Sphinx extension orders them last), and a claim without a verdict stops the build.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml

from . import chapters, claims, numbers, profiles, results
from .environment import REPO_ROOT

# the packages that move or encode the bytes the book measures (their versions go into the environment appendix)
BYTE_MOVERS = ("numpy", "mpi4py", "mpich", "pyzmq", "lmdb", "msgpack", "msgspec", "grpcio", "protobuf", "iceoryx2",
               "faster-fifo", "pynng", "ml_dtypes", "xxhash", "numba", "ipyparallel", "psutil")  # fmt: skip

FINDINGS_FILE = REPO_ROOT / "data" / "seeds" / "findings.yaml"


class BookError(RuntimeError):
    """A page of the book cannot be built from the results on disk (a chapter has not run, a claim has no verdict)."""


def chapter_of_source(led: pd.DataFrame) -> dict[str, str]:
    """Return source file -> chapter id (one source analysis per chapter)."""
    return dict(zip(led["source"], led["chapter"], strict=True))


# ---------------------------------------------------------------------------------------- the ledger


def full_ledger() -> pd.DataFrame:
    """Return every claim of ``claims.csv`` with its verdict; raise BookError if any has none.

    The verdicts are the ones the chapters wrote when they ran (their ``claims.csv``), so the page shows
    exactly what each chapter shows.
    """
    led = claims.ledger()
    missing = led[led["verdict"].isin([claims.PENDING]) | led["verdict"].isna()]
    if not missing.empty:
        raise BookError(
            f"{len(missing)} claims have no verdict ({', '.join(missing['id'])}): their chapters "
            f"({', '.join(sorted(set(missing['chapter'])))}) have not written their evidence under {results.results_root()}"
        )
    bad = led[~led["verdict"].isin(claims.VERDICTS)]
    if not bad.empty:
        raise BookError(f"claims with a verdict the judge cannot give: {dict(zip(bad['id'], bad['verdict'], strict=True))}")
    return led


def counts_table(led: pd.DataFrame) -> pd.DataFrame:
    """Return verdict counts per source analysis (rows, in chapter order, plus 'all') and verdict (columns)."""
    order = [c for c in chapters.IDS if c in set(led["chapter"])]
    t = pd.crosstab(led["chapter"], led["verdict"]).reindex(index=order, columns=list(claims.VERDICTS), fill_value=0)
    src = {c: s for s, c in chapter_of_source(led).items()}
    t.index = [f"{chapters.get(c).heading} ({src[c]})" for c in t.index]
    t.loc["all sources"] = t.sum()
    t["claims"] = t.sum(axis=1)
    t.index.name = "source analysis (chapter)"
    return t


def counts_compact(led: pd.DataFrame) -> pd.DataFrame:
    """Return the verdict counts to fit a page: one row per verdict (and the claims), one column per chapter by its
    number ("ch. 1") and one for all sources; the figure above the table names the chapters."""
    t = counts_table(led)
    t.index = [i.split(".")[0].strip() if i != "all sources" else i for i in t.index]
    out = t.T
    out.columns = [f"ch. {c}" if c != "all sources" else "all" for c in out.columns]
    out.index.name = "verdict"
    return out


VERDICT_COLOURS = {
    claims.CONFIRMED: "#1b7837", claims.PARTLY: "#a6dba0", claims.INCONCLUSIVE: "#bababa",
    claims.REFUTED: "#c2282d", claims.NOT_TESTABLE: "#f1e3b5",
}  # fmt: skip


def counts_figure(led: pd.DataFrame):
    """Return a small horizontal stacked bar chart: verdicts per source analysis."""
    import matplotlib.pyplot as plt

    t = counts_table(led).drop(index="all sources").drop(columns="claims")
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    left = pd.Series(0, index=t.index)
    labels = [i.split(" (")[0] for i in t.index]
    for v in claims.VERDICTS:
        ax.barh(labels, t[v], left=left, color=VERDICT_COLOURS[v], label=v, edgecolor="white")
        left += t[v]
    ax.invert_yaxis()
    ax.set_xlabel("claims")
    ax.legend(ncols=len(claims.VERDICTS), loc="upper center", bbox_to_anchor=(0.4, -0.28), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


FOREST_LIMITS = (1 / 30, 30)
"""The forest plot's x range (measured over claimed): a point or interval beyond it is drawn at the edge, arrowed."""


def forest_rows(led: pd.DataFrame, chapter: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Return the claims the forest plot draws (every judged claim of ``chapter``, or of all sources) and the ids it
    lists instead (not testable here)."""
    rows = led if chapter is None else led[led["chapter"] == chapter]
    skip = rows["verdict"].isin([claims.NOT_TESTABLE, claims.PENDING])
    return rows[~skip], list(rows.loc[skip, "id"])


def forest_figure(led: pd.DataFrame, chapter: str | None = None):
    """Return the forest plot of the claims: per claim, the claimed band (shaded) and the measured 95% interval with
    its median, on one scale (measured over claimed, log; an ordering: the first row over the second, against 1), in
    the verdict's colour; one panel per source analysis (``chapter`` draws its own only). A claim whose values are not
    on this scale (a sign flip, an interval through 0) is drawn at the edge it points to, with an arrow."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    shown = [c for c in chapters.IDS if c in set(led["chapter"]) and (chapter is None or c == chapter)]
    panels = [(c, forest_rows(led, c)[0]) for c in shown]
    panels = [(c, r) for c, r in panels if len(r)]
    if not panels:
        raise BookError(f"no judged claims to draw{f' for {chapter}' if chapter else ''}")
    lo_x, hi_x = FOREST_LIMITS
    heights = [max(len(r), 2) for _, r in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.2, 0.9 + 0.2 * sum(heights) + 0.45 * len(panels)),
                             sharex=True, gridspec_kw={"height_ratios": heights}, squeeze=False)  # fmt: skip
    for ax, (c, rows) in zip(axes[:, 0], panels, strict=True):
        ids = list(rows["id"])
        for y, r in enumerate(rows.to_dict("records")):
            colour = VERDICT_COLOURS[r["verdict"]]
            b_lo, b_hi = r.get("band_low"), r.get("band_high")
            if pd.notna(b_lo) and pd.notna(b_hi) and b_lo > 0 and b_hi / b_lo < 1.05:  # an identity's narrow band
                ax.plot([(b_lo * b_hi) ** 0.5], [y], marker="|", color="#3182bd", markersize=11, markeredgewidth=2.5)
            elif pd.notna(b_lo) and pd.notna(b_hi):
                ax.fill_betweenx([y - 0.38, y + 0.38], max(b_lo, lo_x), min(b_hi, hi_x), color="#9ecae1", alpha=0.45,
                                 linewidth=0)  # fmt: skip
            v, lo, hi = r.get("rel"), r.get("rel_low"), r.get("rel_high")
            if pd.isna(v):
                ax.text(lo_x * 1.15, y, "not on this scale", va="center", fontsize=8, color="#555555")
                continue
            lo = lo_x if not lo > lo_x else lo
            hi = hi_x if not hi < hi_x else hi
            ax.plot([lo, hi], [y, y], color=colour, linewidth=2.2, solid_capstyle="butt")
            x = min(max(v, lo_x), hi_x) if v > 0 else lo_x
            marker = "o" if lo_x < v < hi_x else ("<" if v <= lo_x else ">")
            ax.plot([x], [y], marker=marker, color=colour, markeredgecolor="black", markeredgewidth=0.6, markersize=6)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(ids)), ids, fontsize=9)
        ax.set_ylim(len(ids) - 0.5, -0.5)
        ax.set_xscale("log")
        ax.set_xlim(lo_x, hi_x)
        ax.set_title(chapters.get(c).heading, fontsize=10, loc="left")
        ax.grid(axis="x", which="major", linewidth=0.4, alpha=0.6)
        ax.tick_params(axis="x", labelsize=9)
    axes[-1, 0].set_xlabel("measured / claimed (log scale; an ordering: first / second)", fontsize=9)
    axes[-1, 0].xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _p: numbers.num(x)))
    handles = [Patch(color="#9ecae1", alpha=0.45, label="claimed band")] + [
        Patch(color=VERDICT_COLOURS[v], label=v) for v in claims.VERDICTS if v != claims.NOT_TESTABLE]
    fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))  # fmt: skip
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))  # 0.4 in at the bottom for the legend
    return fig


def not_plotted_text(led: pd.DataFrame, chapter: str | None = None) -> str:
    """Return the sentence that lists the claims the forest plot leaves out (not testable here), or ''."""
    _rows, skipped = forest_rows(led, chapter)
    if not skipped:
        return ""
    return f"Not drawn, because not testable here: {', '.join(skipped)}."


measured_text = claims.measured_text  # the ledger's own 'value unit [low, high] (n = N)', as the chapters show it


def claimed_text(r: dict) -> str:
    """Return the source's value with its unit ('' where the claim states none)."""
    v, u = r.get("value"), r.get("unit")
    if pd.isna(v):
        c = r.get("claimed")
        return "" if c is None or (isinstance(c, float) and pd.isna(c)) else str(c)
    return f"{v}{claims._u(u) if isinstance(u, str) and u not in claims.UNIT_WORDS else ''}"


def _cell(text) -> str:
    return "" if text is None or (isinstance(text, float) and pd.isna(text)) else str(text).replace("|", "\\|").replace("\n", " ")


def source_line(led: pd.DataFrame, chapter: str) -> str:
    """Return 'Source analysis `file`: N claims, with the verdict counts' for a chapter's section of the ledger page."""
    rows = led[led["chapter"] == chapter]
    c = rows["verdict"].value_counts()
    counts = ", ".join(f"{int(c[v])} {v}" for v in claims.VERDICTS if c.get(v, 0))
    return f"Source analysis `{rows['source'].iloc[0]}`: {len(rows)} claims ({counts})."


def ledger_markdown(led: pd.DataFrame, chapter: str) -> str:
    """Return one source analysis's claims as MyST, one compact block per claim (it wraps at any page width): the id
    (a link to the chapter's verdicts) with the verdict, the claimed and the measured value; the source's quote; what
    is tested; the judge's evidence."""
    label = chapters.get(chapter).label
    rows = led[led["chapter"] == chapter]
    blocks = []
    for r in rows.to_dict("records"):
        claimed, measured = _cell(claimed_text(r)), _cell(measured_text(r))
        head = f"{{ref}}`{r['id']} <{label}-verdicts>` **{r['verdict']}**"
        values = "; ".join(p for p in (f"claimed {claimed}" if claimed else "",
                                       f"measured {measured}" if measured else "") if p)  # fmt: skip
        blocks.append("\n".join([
            f"- {head}" + (f" — {values}" if values else ""),
            "",
            f"  > {_cell(r['quote'])}",
            "",
            f"  *Tested:* {_cell(r['paraphrase'])}",
            "",
            f"  *Where:* the source: {_cell(r.get('regime_source'))}. Here: {_cell(r.get('regime_here'))}. "
            + ("**The same situation.**" if r.get("regime") == "same"
               else f"**Differs:** {_cell(str(r.get('regime', '')).removeprefix('differs: '))}."),
            "",
            f"  *Evidence:* {_cell(r.get('evidence'))}",
        ]))  # fmt: skip
    return "\n".join(blocks)


def build_profile() -> str:
    """Return the profile the chapters on disk ran with ("quick", "standard", "full"; several joined by "and")."""
    seen = []
    for ch in chapters.IDS:
        meta = results.results_root() / ch / "meta.json"
        if meta.exists():
            prof = results.read_json(meta).get("profile")
            if prof and prof not in seen:
                seen.append(str(prof))
    return " and ".join(seen) or profiles.profile_name()


def regime_table(led: pd.DataFrame) -> pd.DataFrame:
    """Return, per source analysis (by chapter number) and for all: the claims judged in the source's own situation,
    those judged where it differs (each claim's difference is stated under it), and those not testable here."""
    order = [c for c in chapters.IDS if c in set(led["chapter"])]
    judged = led["verdict"].ne(claims.NOT_TESTABLE)
    same = led["regime"].eq("same")
    t = pd.DataFrame({"the source's situation": (same & judged).groupby(led["chapter"]).sum(),
                      "a different one": (~same & judged).groupby(led["chapter"]).sum(),
                      "not testable here": (~judged).groupby(led["chapter"]).sum()}).reindex(order).fillna(0).astype(int)  # fmt: skip
    t.index = [f"ch. {chapters.get(c).number}" for c in t.index]
    t.loc["all"] = t.sum()
    t.index.name = "claims"
    return t.T


def unjudged_markdown() -> str:
    """Return the quotes that read like claims and have no verdict as MyST: one line each with its source analysis, the
    quote, and why it has none (not a claim, or not measured here and what would measure it)."""
    df = claims.load_unjudged()
    chapter_of = {c.seed: c for c in chapters.CHAPTERS.values() if c.claim_prefix}
    lines = []
    for r in df.to_dict("records"):
        ch = chapter_of.get(str(r["source"]).split("_")[0])
        where = f"{{ref}}`{ch.heading} <{ch.label}>`" if ch else r["source"]
        lines += [f"- **{r['kind'].capitalize()}** ({where}): “{_cell(claims.normalized(r['quote']))}”, because "
                  f"{_cell(r['why']).rstrip('.')}.", ""]  # fmt: skip
    return "\n".join(lines).rstrip()


def across_hosts_markdown(led: pd.DataFrame) -> str:
    """Return the claims judged again across emulated hosts (chapter 6) as MyST: one line each with both verdicts (one
    host, across hosts) and the evidence, or a sentence saying chapter 6 has not run."""
    across = results.read_table(claims.ACROSS_HOSTS_CHAPTER, "claims_across_hosts")
    label = chapters.get(claims.ACROSS_HOSTS_CHAPTER).label
    if across is None or across.empty:
        return "The chapter across emulated hosts has not run in this build: no claim is judged across hosts."
    one = led.set_index("id")["verdict"]
    c = across["verdict"].value_counts()
    head = (f"{len(across)} claims are judged again across emulated hosts ({{ref}}`{label}`): "
            + ", ".join(f"{int(c[v])} {v}" for v in claims.VERDICTS if c.get(v, 0)) + ".")
    lines = [head, ""]
    for r in across.to_dict("records"):
        lines += [f"- {r['claim_id']}: on one host *{one.get(r['claim_id'], '')}*, across hosts **{r['verdict']}**",
                  "", f"  *Evidence across hosts:* {_cell(r.get('evidence'))}", ""]  # fmt: skip
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------------------------------- findings


def load_findings(path: Path | str | None = None) -> list[dict]:
    """Return the findings' definitions (data/seeds/findings.yaml), checked: each names a claim, a section and wordings."""
    p = Path(path or FINDINGS_FILE)
    items = yaml.safe_load(p.read_text())["findings"]
    known = set(claims.load_claims()["id"])
    for f in items:
        for key in ("claim", "section", "topic", "says"):
            if key not in f:
                raise BookError(f"finding {f!r} in {p} has no {key!r}")
        if f["claim"] not in known:
            raise BookError(f"finding on {f['claim']!r} in {p}: no such claim in claims.csv")
        odd = set(f["says"]) - set(claims.VERDICTS)
        if odd:
            raise BookError(f"finding on {f['claim']}: wordings for verdicts the judge never gives: {sorted(odd)}")
    if not 6 <= len(items) <= 10:
        raise BookError(f"{p} defines {len(items)} findings; the page shows six to ten")
    return items


def evidence_numbers(evidence) -> str:
    """Return the numbers of a judge's evidence sentence: from 'Measured:' to the tolerance, without the per-case verdicts."""
    import re

    text = "" if evidence is None or (isinstance(evidence, float) and pd.isna(evidence)) else str(evidence)
    if "Measured:" in text:
        text = text.split("Measured:", 1)[1]
    text = text.split(" Tolerance:", 1)[0]
    tags = "|".join(map(re.escape, claims.VERDICTS))
    text = re.sub(rf" \[(?:{tags})\]", "", text)
    return text.strip().rstrip(".")


def evidence_short(evidence) -> str:
    """Return the measured comparison of a judge's evidence sentence, each case's rows with their intervals only (no
    band, no reason, no per-case verdict): what a finding shows; the ledger keeps the whole sentence."""
    import re

    text = evidence_numbers(evidence)
    if not text:
        return ""
    cases = re.split(r"; \(\d+\) ", text)
    cases[0] = re.sub(r"^\(1\) ", "", cases[0])
    short = []
    for c in cases:
        rows = re.split(r", against the band |; ", c, maxsplit=1)[0].strip()
        read = re.search(r", against the band [^;]*? around (.+?)(?:;|$)", c)  # a claimed value read from the results
        short.append(f"{rows} against {read.group(1).strip()}" if read else rows)
    return "; ".join(short)


def finding_sentence(f: dict, row: dict) -> str:
    """Return one finding as MyST: the wording for the verdict the judge gave (the neutral form where none is given),
    the measured value with its interval, the verdict, and a link to the section that measured it."""
    measured = measured_text(row) or "nothing measurable"
    verdict = row["verdict"]
    template = f["says"].get(verdict)
    if template is None:  # no wording for this outcome: say what was claimed and what was measured, nothing more
        template = ("Undecided in this build: the source claims “{paraphrase}”, and this build measures {evidence}"
                    if verdict == claims.INCONCLUSIVE else "The source claims “{paraphrase}”; this build measures {evidence}")
    text = template.format(measured=measured, claimed=claimed_text(row), paraphrase=str(row["paraphrase"]).rstrip("."),
                           evidence=evidence_short(row.get("evidence")) or measured)  # fmt: skip
    text = text.rstrip(".")
    noisy = str(row.get("noisy")).lower() == "true"
    caveat = " (measured while the machine was noisy: a quieter build may not give it again)" if noisy else ""
    return (f"**{f['topic']}** {text}. Verdict on the source's claim ({{ref}}`{row['id']} <{f['section']}>`): "
            f"**{verdict}**{caveat}.")  # fmt: skip


def findings(led: pd.DataFrame | None = None, path: Path | str | None = None) -> list[str]:
    """Return the findings page's sentences, in the order of findings.yaml, worded by the ledger's verdicts."""
    led = full_ledger() if led is None else led
    by_id = {r["id"]: r for r in led.to_dict("records")}
    return [finding_sentence(f, by_id[f["claim"]]) for f in load_findings(path)]


# ------------------------------------------------------------------------------ environment and headers


def _meta(chapter: str) -> dict:
    p = results.results_root() / chapter / "meta.json"
    if not p.exists():
        raise BookError(f"chapter {chapter} has no results under {results.results_root()}: it has not run")
    import json

    return json.loads(p.read_text())


def machine_line(env: dict) -> str:
    """Return 'CPU model, N usable cores (L logical), M GiB memory' from an environment record."""
    mem = env.get("memory_bytes")
    mem_s = f", {mem / 2**30:.0f} GiB memory" if mem else ""
    return f"{env.get('cpu_model', 'unknown CPU')}, {env.get('usable_cores')} usable cores ({env.get('logical_cores')} logical){mem_s}"


def chapter_header(chapter: str) -> dict:
    """Return the facts a chapter shows near its top: its profile, the machine, its run time, and download links (MyST)."""
    meta = _meta(chapter)
    env = meta.get("environment") or {}
    run = (meta.get("run_time_s") or {}).get("total")
    return {
        "profile": meta.get("profile", "unknown"),
        "machine": machine_line(env),
        "run_time": f"{run:.0f} s" if run is not None else "not recorded",
        "stability": stability_line(chapter, meta),
        "downloads": download_links(chapter),
    }


def stability_line(chapter: str, meta: dict | None = None) -> str:
    """Return what a chapter's intervals rest on: how many of its points vary by 10% or more from sample to sample
    (marked unstable in its tables), and the replicates of the points its claims read."""
    meta = _meta(chapter) if meta is None else meta
    try:
        s = results.read(chapter).summary
    except results.ResultsError:
        return ""
    measured = s[s["experiment"] != "derived"]
    unstable = int(measured["unstable"].fillna(False).astype(bool).sum())
    share = unstable / len(measured) if len(measured) else 0.0
    text = (f"Of its {len(measured)} measured points, {unstable} ({share:.0%}) vary by 10% or more from sample to "
            "sample (a coefficient of variation of 10% or more) and are marked unstable in its tables.")  # fmt: skip
    rep = meta.get("replicates") or {}
    k = int(s["replicates"].max()) if "replicates" in s and s["replicates"].notna().any() else 1
    if k > 1:
        fresh = rep.get("fresh_engines") or []
        text += (f" The points its claims read rest on {k} replicates spread over its run"
                 + (", the last in fresh engine processes" if fresh else "") + "; the others on one.")  # fmt: skip
    return text


def open_chapter(chapter: str, profile: str | None = None):
    """Run a chapter on its page as ``ipcbench run <chapter>`` does (:func:`ipcbench.experiments.drive`), read its
    results, and glue what every chapter page shows near its top: the profile, the cores, the machine's state during
    the run and the header (``build_*``: profile, machine, run time, downloads). Return the summary, the results and
    the machine facts the prose cites."""
    import logging

    from IPython.display import Markdown
    from myst_nb import glue

    from . import experiments, profiles
    from .environment import machine_facts, state_line

    profile = profiles.profile_name(profile)
    summary = experiments.drive(chapter, profile)
    res = results.read(chapter)
    facts = machine_facts(res.meta["environment"])
    glue("profile", profile, display=False)
    glue("cores", facts["cores"], display=False)
    glue("machine_state", Markdown(state_line(res.meta.get("machine_state"))), display=False)
    for key, value in chapter_header(chapter).items():
        glue(f"build_{key}", Markdown(value) if key == "downloads" else value, display=False)
    engines = res.meta.get("cluster", {}).get("engines")
    logging.getLogger("ipcbench").info(f"{chapter}, profile {profile}: {len(summary)} summary rows from {engines} engines")
    return summary, res, facts


def download_links(chapter: str, page_dir: Path | str | None = None) -> str:
    """Return MyST download roles for a chapter's summary.csv and claims.csv, relative to the page's directory (by
    default the working directory: a page executes in its own directory).

    The results may live anywhere (``IPCBENCH_RESULTS_DIR``); Sphinx copies each file into the built book.
    """
    page_dir = Path(page_dir) if page_dir else Path.cwd()
    d = results.results_root() / chapter
    links = []
    for name, what in (("summary.csv", "every measured point"), ("claims.csv", "every claim's verdict and evidence")):
        if (d / name).exists():
            rel = os.path.relpath(d / name, page_dir)
            links.append(f"{{download}}`{chapter}/{name} <{rel}>` ({what})")
    return "; ".join(links) if links else "none (the chapter wrote no tables)"


ENVIRONMENT_WORDS = {
    "cpu_model": "CPU", "cpu_frequency": "CPU clock", "cpu_caches": "caches (CPU 0)", "virtualization": "virtualisation",
    "cpu_simd": "vector extensions the CPU reports", "logical_cores": "logical cores", "physical_cores": "physical cores",
    "usable_cores": "cores this build may use", "smt_active": "simultaneous multithreading", "memory_bytes": "memory",
    "kernel": "Linux kernel", "os": "operating system", "python": "Python", "python_implementation": "Python implementation",
    "numpy": "numpy", "numpy_simd": "numpy's SIMD", "blas": "BLAS", "mpi4py": "mpi4py",
    "mpi_library": "MPI library", "mpich_wheel": "mpich wheel", "pyzmq": "pyzmq", "libzmq": "libzmq", "lmdb": "lmdb",
    "msgpack": "msgpack", "ipyparallel": "ipyparallel", "ipcbench": "ipcbench", "profile": "profile",
    "git_commit": "commit", "clock_shared_by_processes": "clock", "timer": "timer",
}  # fmt: skip
"""Plain words for the environment record's fields (the record's own keys stay in meta.json)."""


def _env_value(v) -> str:
    if isinstance(v, dict):
        return "; ".join(f"{a.replace('_', ' ')}: {_env_value(b) or 'none'}" for a, b in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return numbers.num(v)
    return " ".join(str(v).split())


def environment_table(chapter: str = "machine_limits") -> pd.DataFrame:
    """Return the build's environment record (from a chapter's meta.json) as a two-column table in plain words; a
    nested record (numpy's SIMD lists, the timer) is written out in full."""
    env = dict(_meta(chapter).get("environment") or {})
    rows = []
    for k, v in env.items():
        if k == "memory_bytes" and v:
            v = f"{int(v) / 2**30:.1f} GiB ({int(v)} B)"
        if k == "numpy_simd" and isinstance(v, dict):  # what numpy was built for against what this CPU has
            v = {"built for every CPU": v.get("baseline", []),
                 "also built for, used where the CPU has it": v.get("dispatch", []),
                 "this CPU has": v.get("available", [])}  # fmt: skip
        rows.append({"field": ENVIRONMENT_WORDS.get(k, k.replace("_", " ")), "value": _env_value(v)})
    return pd.DataFrame(rows)


def packages_table() -> pd.DataFrame:
    """Return the installed versions of every package that moves or encodes the measured bytes."""
    rows = []
    for name in BYTE_MOVERS:
        try:
            v = metadata.version(name)
        except metadata.PackageNotFoundError:
            v = "not installed"
        rows.append({"package": name, "version": v})
    return pd.DataFrame(rows)


def run_times_table() -> pd.DataFrame:
    """Return each chapter's run time from its meta.json: total, cluster start, experiments, and the longest section."""
    rows = []
    for ch, title in ((c.id, c.heading) for c in chapters.CHAPTERS.values()):
        try:
            meta = _meta(ch)
        except BookError:
            continue
        rt = meta.get("run_time_s") or {}
        sec = rt.get("sections") or {}
        top = max(sec.items(), key=lambda kv: kv[1]) if sec else None
        rows.append({
            "chapter": title, "profile": meta.get("profile"),
            "total (s)": rt.get("total"), "cluster start (s)": rt.get("cluster_start"),
            "experiments (s)": rt.get("experiments"),
            "longest section": f"{top[0]} ({top[1]:.0f} s)" if top else "",
        })  # fmt: skip
    out = pd.DataFrame(rows)
    if not out.empty:
        total = {"chapter": "all chapters", "profile": "", "total (s)": out["total (s)"].sum(min_count=1),
                 "cluster start (s)": out["cluster start (s)"].sum(min_count=1),
                 "experiments (s)": out["experiments (s)"].sum(min_count=1), "longest section": ""}  # fmt: skip
        out = pd.concat([out, pd.DataFrame([total])], ignore_index=True)
    return out


# ------------------------------------------------------------------------------ reproducibility


def reproducibility(reference: Path | None | str = "shipped"):
    """Return this build set against the reference (``"shipped"``: the one under data/reference/ for this machine
    kind; None: none), as a :class:`ipcbench.compare.Comparison`, or None where there is no reference."""
    from . import compare

    ref = compare.reference_dir() if reference == "shipped" else (Path(reference) if reference else None)
    if ref is None:
        return None
    return compare.compare_trees(ref, results.results_root(), bootstrap=False, names=("the reference", "this build"))


def reproducibility_markdown(cmp, reference_note: dict | None = None) -> str:
    """Return the Reproducibility page's body (MyST) for a comparison (None: no reference shipped)."""
    if cmp is None:
        return ("No reference build is shipped with this book for comparison, so this page compares nothing. "
                "`ipcbench compare A B` sets any two results trees side by side: two builds, two machines, or a build "
                "and a reference.")  # fmt: skip
    from . import compare

    note = reference_note or compare.describe_reference(cmp.a)
    counts = cmp.claim_counts()
    allc = counts[counts["chapter"] == "all"].iloc[0]

    def title(chapter: str) -> str:
        return chapters.get(chapter).heading if chapter in chapters.CHAPTERS else "all chapters" if chapter == "all" else chapter

    again = "".join(f" Its chapter “{title(r['chapter'])}” was measured again on {r['built']}, with commit `{r['commit']}`: "
                    f"{r['why']}." for r in note.get("remeasured", []))  # fmt: skip
    lines = [
        f"The reference is a {note.get('profile', 'standard')} build of commit `{note.get('commit', 'unknown')}` on "
        f"{note.get('machine', 'a machine of this kind')}, made {note.get('built', 'before this build')}.{again} "
        f"Of the {int(allc['claims'])} claims both judge, **{int(allc['agree'])} have the same verdict** "
        f"({allc['agreement']:.0%}); {int(allc['flips'])} are confirmed in one and refuted in the other.",
        "",
        "```{list-table} Verdicts of this build against the reference, per source analysis",
        ":header-rows: 1",
        "",
        "* - chapter\n  - claims\n  - same verdict\n  - different\n  - confirmed against refuted",
    ]

    for r in counts.to_dict("records"):
        lines.append(f"* - {title(r['chapter'])}\n  - {int(r['claims'])}\n  - {int(r['agree'])}\n  - {int(r['differ'])}\n"
                     f"  - {int(r['flips'])}")  # fmt: skip
    lines += ["```", ""]
    diff = cmp.claims[cmp.claims["verdict_a"] != cmp.claims["verdict_b"]]
    if diff.empty:
        lines.append("Every claim has the same verdict in this build and in the reference.")
    else:
        lines += ["The claims whose verdicts differ, with both measurements:", "",
                  "```{list-table}", ":header-rows: 1", "",
                  "* - claim\n  - reference\n  - this build"]  # fmt: skip
        for r in diff.to_dict("records"):
            lines.append(f"* - {r['id']}\n  - {r['verdict_a']}: {r['measured_a'] or 'nothing measured'}\n"
                         f"  - {r['verdict_b']}: {r['measured_b'] or 'nothing measured'}")  # fmt: skip
        lines += ["```"]
    moved = cmp.moved()
    lines += ["", "How many of each chapter's measured points moved: the share of points measured in both builds whose "
              "95% intervals do not overlap (the machine moved, or the interval did not hold what changes between "
              "builds).", "", "```{list-table}", ":header-rows: 1", "",
              "* - chapter\n  - rows in both\n  - this build's median outside the reference's interval\n"
              "  - intervals apart\n  - share apart"]  # fmt: skip
    for r in moved.to_dict("records"):
        lines.append(f"* - {title(r['chapter'])}\n  - {int(r['rows'])}\n  - {int(r['outside_a'])}\n  - {int(r['apart'])}\n"
                     f"  - {r['apart_share']:.0%}")  # fmt: skip
    lines += ["```", ""]
    env = cmp.environments[~cmp.environments["same"]]
    if env.empty:
        lines.append("Both builds ran in the same environment, in the same machine states.")
    else:
        lines += ["Where the two builds' environments and machine states differ:", "", "```{list-table}",
                  ":header-rows: 1", "", "* - fact\n  - reference\n  - this build"]  # fmt: skip
        for r in env.to_dict("records"):
            chapter, sep, rest = str(r["fact"]).partition(": ")  # a chapter's own fact, by the chapter's title
            fact = f"{title(chapter)}: {rest}" if sep and chapter in results.CHAPTERS else r["fact"]
            lines.append(f"* - {_cell(fact)}\n  - {_cell(r['a'])}\n  - {_cell(r['b'])}")
        lines += ["```"]
    for n in cmp.notes:
        lines += ["", f"Note: {n}."]
    return "\n".join(lines)
