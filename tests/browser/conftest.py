"""Fixtures for the browser tests: a Syft world, JupyterLab over it, headless chromium.

Debian's chromium (`apt-get install chromium`; `playwright install` cannot download browsers
here) driven by Playwright's sync API. Screenshots of each step go to `artifacts/` beside this
file; with `SYFT_SCREENSHOTS=DIR` the ones the README shows are also written to DIR.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: labs, nodes, networks

from lab_ui import CHROMIUM, CHROMIUM_ARGS, DESCRIPTION, SCIENTIST
from labs import JupyterProcess, SyftWorld

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="session")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyftWorld]:
    world = SyftWorld(tmp_path_factory.mktemp("browser-world"), DESCRIPTION, SCIENTIST)
    try:
        yield world.start()
    finally:
        world.stop()


@pytest.fixture(scope="module")
def lab(world: SyftWorld) -> Iterator[JupyterProcess]:
    """JupyterLab acting as the scientist and hospital-a's owner (the demo's two sides)."""
    lab = JupyterProcess(world.root, [world.scientist_home, world.owner_home], world)
    try:
        yield lab.start()
    finally:
        lab.stop()


class Shots:
    """Numbered screenshots of one test; `keep=NAME` also saves it for the README."""

    def __init__(self, page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.count = 0
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    def __call__(self, step: str, keep: str = "", show: Any = None) -> None:
        """Save the page; `show` (a locator) is scrolled into view first."""
        if show is not None:
            show.scroll_into_view_if_needed()
        self.count += 1
        path = self.folder / f"{self.count:02d}-{step}.png"
        self.page.screenshot(path=path)
        readme = os.environ.get("SYFT_SCREENSHOTS")
        if keep and readme:
            Path(readme).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(readme) / f"{keep}.png")


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator:
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
    page.shots = Shots(page, ARTIFACTS / request.node.name)
    try:
        yield page
    finally:
        outcome = getattr(request.node, "rep_call", None)
        if outcome is not None and outcome.failed:
            page.screenshot(path=page.shots.folder / "failure.png")
        context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
