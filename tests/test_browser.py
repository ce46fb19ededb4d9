"""The course in a real browser: JupyterLab on localhost, driven by headless Chromium.

The test opens the welcome notebook, runs all its cells from JupyterLab's Run menu, moves the
judge-under-noise slider one step with the keyboard and checks that the output it drives (the
printed score and the figure) changed. A screenshot of before and after is kept under
build/test-artifacts/. Chromium is Debian's (`apt-get install chromium`; `.ci/run` installs it),
driven by Playwright for Python with `executable_path`, so nothing downloads a browser. Skipped,
with the reason, only where no Chromium is installed.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import jupyter_lab
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "00_welcome.ipynb"
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = os.environ.get("MMCOURSE_CHROMIUM") or shutil.which("chromium")
# Flags for a sandboxed CI machine with no network: no GPU, no sandbox (runs as root), and none
# of Chromium's background connections (they would be refused, many at a time).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
RUN_ALL_TIMEOUT_MS = 180_000
STEP_TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium: install Debian's `chromium` (or set MMCOURSE_CHROMIUM to a Chromium "
    "binary) to run the browser test",
)


def _output(page, sigma: str) -> tuple[str, str]:
    """What the slider's interact function shows for `sigma`: the line it prints ("σ = 0.10: the
    judge reads …") and the figure (its PNG as a data URL)."""
    interact = page.locator(".widget-interact", has_text=f"σ = {sigma}:")
    figure = interact.locator(".jp-OutputArea-output img")
    figure.wait_for()
    text = interact.locator(".jp-OutputArea-output", has_text="σ =").inner_text()
    return text.strip(), figure.get_attribute("src")


def _run_all_cells(page, timeout_error: type[Exception], attempts: int = 3) -> None:
    """Run > Run All Cells, until the first code cell shows it started ([*] or [1]): a click
    that comes before the kernel's connection is ready is dropped, so it is repeated."""
    started = (
        "() => /\\[(\\*|\\d+)\\]/.test(document.querySelector("
        "'.jp-CodeCell .jp-InputArea-prompt')?.textContent ?? '')"
    )
    for _ in range(attempts):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_function(started, timeout=20_000)
            return
        except timeout_error:
            continue
    raise AssertionError(f"Run All Cells did not start the notebook in {attempts} attempts")


def test_widget_slider_drives_its_output_in_chromium(tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # JupyterLab 4 renders only the cells in view by default; render them all, so the test can
    # find the widget wherever it sits in the notebook.
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    news = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {"MMCOURSE_DEVICE": "cpu", "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings")}
    lab = jupyter_lab.start(tmp_path, env=env)
    shutil.copy(ROOT / "solutions" / NOTEBOOK, lab.root / NOTEBOOK)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(STEP_TIMEOUT_MS)
                page.goto(lab.url(f"lab/tree/{NOTEBOOK}?token={lab.token}"))
                page.locator(".jp-Notebook .jp-Cell").first.wait_for()
                _run_all_cells(page, sync_api.TimeoutError)

                slider = page.locator(".widget-interact .widget-hslider").first
                slider.wait_for(timeout=RUN_ALL_TIMEOUT_MS)
                slider.scroll_into_view_if_needed()
                text_before, figure_before = _output(page, "0.10")
                page.screenshot(path=ARTIFACTS / "browser-before.png")

                handle = slider.locator(".noUi-handle")
                handle.focus()
                handle.press("ArrowRight")  # one step: σ 0.10 → 0.15
                text_after, figure_after = _output(page, "0.15")
                page.screenshot(path=ARTIFACTS / "browser-after.png")
                assert text_after != text_before, "the printed score did not change"
                assert figure_after != figure_before, "the figure did not change"

                errors = page.locator("[data-mime-type='application/vnd.jupyter.stderr']")
                tracebacks = [t for t in errors.all_inner_texts() if "Error" in t]
                assert not tracebacks, f"cells failed in the browser: {tracebacks[:1]}"
            finally:
                browser.close()
        lab.server.send_signal(signal.SIGTERM)
        assert lab.server.wait(timeout=15) == 0, lab.log.read_text()
    finally:
        jupyter_lab.kill(lab)
