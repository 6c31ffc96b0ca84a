"""The pages built from every chapter's results read last, and again whenever a chapter is read again.

Jupyter Book 1.x executes a notebook while Sphinx reads it (myst-nb's execution happens in the parser),
and Sphinx reads the documents it has to read in sorted order of their names: ``book/findings`` would run
before ``notebooks/01_...`` had measured anything. ``env-before-read-docs`` lets an extension reorder that
list in place, so the pages in :data:`LAST` move to its end, in this order; ``env-get-outdated`` adds them
whenever any chapter is read again (the chapter may have run again and written new results). Those pages
are executed on every read (``execution_mode: force`` in their front matter), never from the cache.

The extension also adds the book's style sheet (tables that scroll inside the text column).
"""

from pathlib import Path

LAST = ("book/findings", "book/decisions", "book/ledger", "book/reproducibility", "book/environment")
CHAPTERS = "notebooks/"
STATIC = Path(__file__).resolve().parent.parent / "_static"
FINDINGS = Path(__file__).resolve().parents[2] / "data" / "seeds" / "findings.yaml"
DECISIONS = Path(__file__).resolve().parents[2] / "data" / "seeds" / "decisions.yaml"


def _outdated(app, env, added, changed, removed):
    touched = set(added) | set(changed) | set(removed)
    if any(d.startswith(CHAPTERS) for d in touched):
        return [d for d in LAST if d in env.found_docs and d not in touched]
    return []


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
    app.connect("env-before-read-docs", _order)
    app.connect("builder-inited", _static)
    app.connect("source-read", _depends)
    app.add_css_file("ipcbench.css")
    return {"parallel_read_safe": False, "parallel_write_safe": True}
