"""What a chapter's page depends on, as one digest, so that a rebuild executes only the chapters whose inputs changed.

Jupyter Book's execution cache keys on a notebook's code cells alone: a change to the library that a chapter runs
would leave its cached outputs in place. :func:`chapter_digest` hashes, besides the profile, everything a chapter's
execution reads from the source tree:

- the package modules its notebook imports and, transitively, every module they import (``import`` statements
  anywhere in a module, read from the source with :mod:`ast`, including imports inside functions and the parents
  of every submodule), the chapter's experiment module among them;
- the files under ``data/seeds/`` whose name one of those modules spells out;
- ``pyproject.toml`` (the installed versions follow it) and ``_config.yml`` (execution settings);
- the digests of the chapters whose results it reads (a change there changes what its page shows).

The book's Sphinx extension (``book/_ext/book_pages.py``) compares these digests with the ones recorded when each
chapter last executed and drops the cached outputs of the chapters that differ; the pages built from every
chapter's results execute whenever a chapter does. Imports built at run time (``importlib``) are not seen: a
chapter reached that way is named in :mod:`ipcbench.chapters`, whose descriptors add it.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

from . import chapters

PACKAGE = "ipcbench"
DIGEST_FILE = ".chapter-digests.json"
"""Name of the file, beside the build's doctrees, that records each chapter's digest at its last execution."""


def _lib(root: Path) -> Path:
    return root / "lib" / PACKAGE


def module_file(name: str, root: Path) -> Path | None:
    """Return the source file of a package module (``ipcbench.experiments.broadcast``) under ``root``, or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = _lib(root).joinpath(*parts[1:])
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def imports_of(source: str, module: str | None, is_package: bool, root: Path) -> set[str]:
    """Return the package modules that ``source`` imports (absolute names; ``from . import x`` gives the submodule
    ``x`` where it is one, else the package it is taken from)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    continue
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}", root)}
    return out


def closure(roots: set[str], root: Path) -> dict[str, Path]:
    """Return every package module reachable from ``roots`` by imports, with its parents, as name -> source file."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a submodule runs its parents' __init__
            sub = ".".join(parts[:i])
            if sub in seen:
                continue
            path = module_file(sub, root)
            if path is None:
                continue
            seen[sub] = path
            todo += _file_imports(path, sub, root)
    return seen


_PARSED: dict[tuple, set[str]] = {}


def _file_imports(path: Path, module: str, root: Path) -> set[str]:
    """Return :func:`imports_of` a module's file, parsed once per version of the file (its mtime and size)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, module, str(root))
    if key not in _PARSED:
        _PARSED[key] = imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", root)
    return _PARSED[key]


def notebook_imports(path: Path, root: Path) -> set[str]:
    """Return the package modules a notebook's code cells import (IPython's ``%`` and ``!`` lines skipped)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = "".join(cell.get("source", ""))
        src = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines())
        out |= imports_of(src, None, False, root)
    return out


def chapter_inputs(chapter: str, root: Path) -> list[Path]:
    """Return the source files a chapter's execution reads (sorted), its required chapters' aside."""
    ch = chapters.get(chapter)
    mods = closure(notebook_imports(root / ch.notebook_path, root) | {ch.module}, root)
    files = set(mods.values())
    seeds = root / "data" / "seeds"
    if seeds.is_dir():
        text = "\n".join(p.read_text(encoding="utf-8") for p in files)
        files |= {p for p in seeds.iterdir() if p.is_file() and p.name in text}
    files |= {p for p in (root / "pyproject.toml", root / "_config.yml") if p.is_file()}
    return sorted(files)


def chapter_digest(chapter: str, profile: str, root: Path, _done: dict[str, str] | None = None) -> str:
    """Return the digest of what a chapter's execution in ``profile`` reads under the source tree ``root``."""
    done = {} if _done is None else _done
    if chapter not in done:
        h = hashlib.sha256(f"profile={profile}\n".encode())
        for p in chapter_inputs(chapter, root):
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
        for req in chapters.get(chapter).requires:
            h.update(f"requires {req} {chapter_digest(req, profile, root, done)}\n".encode())
        done[chapter] = h.hexdigest()
    return done[chapter]


def digests(profile: str, root: Path) -> dict[str, str]:
    """Return every chapter's digest, by notebook document name (``notebooks/01_fair_serialization``)."""
    done: dict[str, str] = {}
    return {c.notebook: chapter_digest(c.id, profile, root, done) for c in chapters.CHAPTERS.values()}


def read_recorded(path: Path) -> dict[str, str]:
    """Return the digests recorded in ``path`` (empty when it is missing or unreadable: every chapter executes)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record(path: Path, docname: str, digest: str) -> None:
    """Record one chapter's digest at its execution (the file is rewritten whole, so a killed build leaves the
    previous one)."""
    data = read_recorded(path)
    data[docname] = digest
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def drop_cached(cache_dir: Path, notebook: Path) -> int:
    """Remove a notebook's executed outputs from Jupyter Book's execution cache (by its path and by its code's
    hash); return how many records went."""
    if not cache_dir.is_dir():
        return 0
    import nbformat
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_dir))
    gone = {r.pk for r in cache.list_cache_records() if Path(r.uri).resolve() == notebook.resolve()}
    try:
        gone.add(cache.match_cache_notebook(nbformat.read(str(notebook), as_version=4)).pk)
    except KeyError:
        pass
    for pk in gone:
        cache.remove_cache(pk)
    return len(gone)
