"""Keep the rendered book free of web dependencies: drop sphinx-thebe's scripts (thebe is off).

Jupyter Book 1.x always loads sphinx_thebe, which adds its loader and an inline
``const THEBE_JS_URL = "https://unpkg.com/..."`` to every page (twice, which the
browser reports as a console error). Launch buttons and thebe are disabled here,
so those scripts only point at the web; this extension removes them.
"""


def _strip_thebe(app, pagename, templatename, context, doctree):
    files = context.get("script_files")
    if not files:
        return
    kept = []
    for js in files:
        body = getattr(js, "attributes", {}).get("body", "") or ""
        name = str(getattr(js, "filename", js) or "")
        if "THEBE_JS_URL" in body or "sphinx-thebe" in name or "thebe" in name.lower():
            continue
        kept.append(js)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _strip_thebe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
