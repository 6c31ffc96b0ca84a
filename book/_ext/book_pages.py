"""The pages built from every chapter's results read last, and again whenever a chapter is read again.

Jupyter Book 1.x executes a notebook while Sphinx reads it (myst-nb's execution happens in the parser),
and Sphinx reads the documents it has to read in sorted order of their names: ``book/findings`` would run
before ``notebooks/01_...`` had measured anything. ``env-before-read-docs`` lets an extension reorder that
list in place, so the pages in :data:`LAST` move to its end, in this order; ``env-get-outdated`` adds them
whenever any chapter is read again (the chapter may have run again and written new results). Those pages
are executed on every read (``execution_mode: force`` in their front matter), never from the cache.

A chapter also executes again when what it runs changed, not only its notebook's code cells (the only input of the
execution cache's key): ``ipcbench.rebuild`` gives each chapter a digest of the library modules it imports, the
seed files they read, the profile and the chapters it builds on. Where the digest differs from the one recorded at
the chapter's last execution, the chapter's cached outputs are dropped and Sphinx reads it again; a chapter whose
digest is unchanged keeps its outputs, so a change in one chapter's module executes that chapter, those that read
its results, and the pages built from every chapter.

The extension also adds the book's style sheet (tables that scroll inside the text column).
"""

from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)

LAST = ("book/findings", "book/decisions", "book/ledger", "book/reproducibility", "book/environment")
CHAPTERS = "notebooks/"
STATIC = Path(__file__).resolve().parent.parent / "_static"
FINDINGS = Path(__file__).resolve().parents[2] / "data" / "seeds" / "findings.yaml"
DECISIONS = Path(__file__).resolve().parents[2] / "data" / "seeds" / "decisions.yaml"


def _digest_file(app) -> Path:
    from ipcbench import rebuild

    return Path(app.doctreedir).parent / rebuild.DIGEST_FILE


def _changed_chapters(app, env) -> list[str]:
    """Return the chapters whose inputs changed since they last executed, after dropping their cached outputs."""
    from ipcbench import profiles, rebuild

    now = rebuild.digests(profiles.profile_name(None), Path(app.srcdir))
    app.ipcbench_digests = now
    recorded = rebuild.read_recorded(_digest_file(app))
    stale = [d for d, h in now.items() if d in env.found_docs and recorded.get(d) != h]
    cache = Path(env.mystnb_config.execution_cache_path)
    for d in stale:
        rebuild.drop_cached(cache, Path(app.srcdir) / (d + ".ipynb"))
    if stale:
        logger.info(f"[ipcbench] chapters whose inputs changed since they executed: {', '.join(stale)}")
    return stale


def _outdated(app, env, added, changed, removed):
    touched = set(added) | set(changed) | set(removed)
    stale = [d for d in _changed_chapters(app, env) if d not in touched]
    touched |= set(stale)
    if any(d.startswith(CHAPTERS) for d in touched):
        return stale + [d for d in LAST if d in env.found_docs and d not in touched]
    return []


def _executed(app, doctree):
    # a chapter read in this build ran (or was taken from the cache) with the inputs it has now
    docname = app.env.docname
    digest = getattr(app, "ipcbench_digests", {}).get(docname)
    if digest is not None:
        from ipcbench import rebuild

        rebuild.record(_digest_file(app), docname, digest)


def _order(app, env, docnames):
    late = [d for d in LAST if d in docnames]
    docnames[:] = [d for d in docnames if d not in LAST] + late


def _depends(app, docname, source):
    # the findings and decision pages are worded from data/seeds/: a change there reads the page again
    if docname == "book/findings":
        app.env.note_dependency(str(FINDINGS))
    if docname == "book/decisions":
        app.env.note_dependency(str(DECISIONS))


def _static(app):
    if str(STATIC) not in app.config.html_static_path:
        app.config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("env-get-outdated", _outdated)
    app.connect("doctree-read", _executed)
    app.connect("env-before-read-docs", _order)
    app.connect("builder-inited", _static)
    app.connect("source-read", _depends)
    app.add_css_file("ipcbench.css")
    return {"parallel_read_safe": False, "parallel_write_safe": True}
