"""The course in a real browser: JupyterLab on localhost (a learner's lab, as `make lab` starts
it), driven by headless Chromium.

One test opens the welcome notebook, runs all its cells from JupyterLab's Run menu, moves the
judge-under-noise slider one step with the keyboard and checks that the output it drives (the
printed score and the figure) changed. Another answers an exercise of the student notebook
wrongly and reads what the learner sees under its check cell: the checker's message alone, no
frame of the checker's source. Screenshots are kept under build/test-artifacts/. Chromium is
Debian's (`apt-get install chromium`; `.ci/run` installs it), driven by Playwright for Python
with `executable_path`, so nothing downloads a browser. Skipped, with the reason, only where no
Chromium is installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import warnings
from pathlib import Path

import jupyter_lab
import pytest
from answers import WRONG_PARSE_CAPTION, with_answer

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


@pytest.fixture(scope="module")
def sync_api():
    return pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One learner's JupyterLab for the module's tests."""
    tmp_path = tmp_path_factory.mktemp("lab")
    # JupyterLab 4 renders only the cells in view by default; render them all, so the tests can
    # find an output wherever it sits in the notebook.
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = {"MMCOURSE_DEVICE": "cpu", "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings")}
    server = jupyter_lab.start(tmp_path, env=env)
    try:
        yield server
        server.server.send_signal(signal.SIGTERM)
        assert server.server.wait(timeout=15) == 0, server.log.read_text()
    finally:
        jupyter_lab.kill(server)


@pytest.fixture
def page(lab, sync_api):
    """A fresh Chromium page; any traceback shown in a cell fails the test afterwards."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _wait_for_idle_kernel(page, timeout_error: type[Exception]) -> None:
    """Wait until the notebook's kernel reports idle (the toolbar's execution indicator). Cells
    run before the page's widget manager is connected to the kernel can leave a widget that
    never renders; on a loaded machine the kernel takes tens of seconds to start."""
    idle = ".jp-Notebook-ExecutionIndicator[data-status='idle']"
    try:
        page.locator(idle).first.wait_for(state="attached", timeout=STEP_TIMEOUT_MS)
    except timeout_error:
        pass  # an older toolbar without the indicator: Run All is retried below anyway


def _open(page, lab, name: str, sync_api) -> None:
    # ?reset: a fresh workspace, not the tabs an earlier test left open
    page.goto(lab.url(f"lab/tree/{name}?reset&token={lab.token}"))
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    _wait_for_idle_kernel(page, sync_api.TimeoutError)
    _run_all_cells(page, sync_api.TimeoutError)


def _what_the_page_shows(page, lab) -> str:
    """For a failure message: each code cell's prompt, the widgets' outputs, and the end of the
    server's log."""
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    interacts = page.locator(".widget-interact").count()
    # widget placeholders ("Loading widget...", "Error displaying widget") and the σ lines
    outputs = [
        text.strip()
        for text in page.locator(".jp-OutputArea-output").all_inner_texts()
        if "idget" in text or "σ =" in text
    ]
    log = lab.log.read_text(errors="replace").splitlines()[-15:] if lab.log.exists() else []
    return (
        f"cell prompts {' '.join(p.strip() for p in prompts)}\n"
        f"{interacts} interact widgets; widget outputs {outputs!r}\n"
        "server log (end):\n" + "\n".join(log)
    )


def test_widget_slider_drives_its_output_in_chromium(lab, page, sync_api):
    shutil.copy(ROOT / "solutions" / NOTEBOOK, lab.root / NOTEBOOK)
    _open(page, lab, NOTEBOOK, sync_api)
    slider = page.locator(".widget-interact .widget-hslider").first
    try:
        slider.wait_for(timeout=RUN_ALL_TIMEOUT_MS)
    except sync_api.TimeoutError:
        # Seen once in CI (1 run in 7): no slider after 180 s. Keep what the page showed, then
        # open the notebook again and run it once more; a second miss fails with both reports.
        page.screenshot(path=ARTIFACTS / "browser-no-slider.png")
        first = _what_the_page_shows(page, lab)
        warnings.warn(
            f"no slider after the first Run All; running again. The page showed:\n{first}",
            stacklevel=1,
        )
        _open(page, lab, NOTEBOOK, sync_api)
        try:
            slider.wait_for(timeout=RUN_ALL_TIMEOUT_MS)
        except sync_api.TimeoutError:
            raise AssertionError(
                "the widget cell shows no slider after two Run All; first:\n"
                f"{first}\nsecond:\n{_what_the_page_shows(page, lab)}"
            ) from None
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


# What must never appear under a failed check: frames of the checker's machinery.
CHECKER_INTERNALS = ("mmcourse/checks", "_core.py", "Traceback", "File ", "---->", "def checker")


def test_a_failed_check_shows_the_message_alone(lab, page, sync_api):
    """Exercise 0.1 of the student notebook answered wrongly (the position is one word too
    short): its check cell shows the message, not the checker's source."""
    name = "wrong_" + NOTEBOOK
    answer = (ROOT / "notebooks" / NOTEBOOK, "ex0_1_parse_caption", WRONG_PARSE_CAPTION)
    with_answer(*answer, lab.root / name)
    _open(page, lab, name, sync_api)
    error = page.locator("[data-mime-type='application/vnd.jupyter.stderr']", has_text="Exercise")
    try:
        error.first.wait_for(timeout=RUN_ALL_TIMEOUT_MS)
        error.first.scroll_into_view_if_needed()
    finally:
        page.screenshot(path=ARTIFACTS / "browser-failed-check.png")
    text = error.first.inner_text()
    # A learner's lab: nbgrader's Validate button, none of its instructor menu.
    assert page.get_by_role("menuitem", name="Nbgrader").count() == 0, "the Nbgrader menu shows"
    assert page.get_by_role("button", name="Validate").count() >= 1, "no Validate button"
    assert "ExerciseFailed: Exercise 0.1 (read a caption) failed check" in text, text
    assert "expected" in text and "got" in text, text
    shown = [word for word in CHECKER_INTERNALS if word in text]
    assert not shown, f"the learner sees checker internals {shown}:\n{text}"
    assert len(text.splitlines()) <= 6, f"more than the message:\n{text}"
