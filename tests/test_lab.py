"""The notebooks as their explorers meet them: JupyterLab (with jupyterlab-myst) in a real browser opens chapter 0,
renders its MyST markdown, runs every cell in the quick profile, shows progress bars as widgets and draws the first
figure. The notebook is a copy: JupyterLab's autosave never writes outputs into the repository."""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

SCREENSHOTS = REPO / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTEBOOK = "00_machine_limits.ipynb"
RAW_MYST = re.compile(r"\{(cite|numref|ref|doc|eq|download)\}`|^\([\w-]+\)=$|^:::|^```\{", re.M)
"""MyST syntax that shows as typed where the markdown is not rendered as MyST (roles, labels, directives)."""
GLUE_ROLE = re.compile(r"\{glue(:text|:md|:figure|)\}`")
SETTINGS = {
    # every cell in the page's DOM (JupyterLab otherwise detaches the cells out of view), and no news prompt
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}
KERNEL = "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """Start JupyterLab on a free local port over a copy of chapter 0's notebook; yield (url, token, log); stop it and
    every process it started (kernel, engines) afterwards."""
    root, settings = tmp_path / "notebooks", tmp_path / "settings"
    root.mkdir()
    settings.mkdir()
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    (settings / "overrides.json").write_text(json.dumps(SETTINGS))
    port, token = _free_port(), secrets.token_hex(16)
    bindir = Path(sys.executable).parent
    env = dict(os.environ, IPCBENCH_PROFILE="quick", IPCBENCH_RESULTS_DIR=str(tmp_path / "results"),
               IPCBENCH_ON_BUSY="wait", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), PATH=f"{bindir}:{os.environ['PATH']}")  # fmt: skip
    env.pop("MPLBACKEND", None)
    log = tmp_path / "lab.log"
    cmd = [str(bindir / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
           f"--LabApp.app_settings_dir={settings}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, f"jupyter lab exited: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"jupyter lab did not answer in 120 s: {log.read_text()[-3000:]}"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", token, log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server shuts its kernels down; the kernel's engines follow
            proc.wait(60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


@pytest.mark.slow
@pytest.mark.browser
def test_chapter0_runs_in_jupyterlab_with_myst_rendered_widgets_and_its_first_figure(lab):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Debian chromium is required in CI (.ci/run installs it)")
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    url, token, log = lab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                    "--disable-background-networking", "--disable-component-update", "--no-first-run"])  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-MarkdownCell", timeout=120_000)
            page.wait_for_function(f"() => {{ try {{ return ({KERNEL})().connectionStatus === 'connected' }} "
                                   "catch (e) { return false } }", timeout=120_000)  # fmt: skip
            page.wait_for_timeout(1000)  # the markdown cells render
            texts = page.locator(".jp-MarkdownCell").all_inner_texts()
            assert len(texts) >= 5, "chapter 0's markdown cells are on the page"
            raw = [m.group(0) for t in texts for m in RAW_MYST.finditer(t)]
            assert not raw, f"MyST shown as typed (is jupyterlab-myst enabled?): {raw[:5]}"
            assert page.locator(".jp-MarkdownCell .MathJax, .jp-MarkdownCell mjx-container, .jp-MarkdownCell .katex").count(), \
                "the math renders"
            # glue needs the kernel's values, which jupyterlab-myst does not read: a glued number shows its key until
            # the book is built (what the README says)
            assert not any(GLUE_ROLE.search(t) for t in texts), "a glue role shows as typed"
            page.screenshot(path=str(SCREENSHOTS / "lab_00_opened.png"))

            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            img = page.locator(".jp-OutputArea-output img").first
            img.wait_for(state="attached", timeout=420_000)
            page.wait_for_function(f"() => ({KERNEL})().status === 'idle'", timeout=300_000)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']").all_inner_texts()
            assert not errors, f"a cell failed: {errors[0][-2000:]}"
            assert page.locator(".jp-OutputArea-output .widget-progress, .jp-OutputArea-output .widget-hprogress").count(), \
                "progress bars render as widgets"
            img.scroll_into_view_if_needed()
            box = img.bounding_box()
            assert box and box["width"] > 200 and box["height"] > 150, f"the first figure is drawn: {box}"
            page.screenshot(path=str(SCREENSHOTS / "lab_00_first_figure.png"))
        finally:
            browser.close()
