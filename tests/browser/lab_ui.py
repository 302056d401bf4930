"""Driving JupyterLab from Playwright: open notebooks and run cells through its commands
(`window.jupyterapp`, exposed by `--LabApp.expose_app_in_browser`), locate what they show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labs import JupyterProcess

SIDEBAR_PX = 430
# The browser tests' world is a realistic one (their pictures are the README's); escaping is
# checked with hostile text where a test brings it (bench_sidebar's synthetic state, a reason).
SCIENTIST = "Dr. Ada Lovelace"
DESCRIPTION = "Diabetes progression after one year, 10 baseline measurements incl. blood pressure"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's: `playwright install` cannot download here
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]

OPEN = """async ([path, kernel]) => {
  const app = window.jupyterapp;
  const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook',
    kernel: kernel ? {name: kernel} : undefined});
  await panel.context.ready;
  await panel.sessionContext.ready;
  app.shell.activateById(panel.id);
  return panel.id;
}"""

RUN = """async ([id, prefix, above]) => {
  const app = window.jupyterapp;
  const panel = app.shell.widgets('main').find(w => w.id === id);
  app.shell.activateById(id);
  const cells = panel.content.widgets;
  const index = prefix
    ? cells.findIndex(c => c.model.sharedModel.getSource().startsWith(prefix))
    : cells.length - 1;
  if (index < 0) throw new Error(`no cell starts with ${prefix}`);
  panel.content.activeCellIndex = index;
  if (above) await app.commands.execute('notebook:run-all-above');
  await app.commands.execute('notebook:run-cell');
  return index;
}"""


def start(page: Any, lab: JupyterProcess, workspace: str = "") -> None:
    """Load JupyterLab; in a new, empty `workspace` if given (no notebooks restored)."""
    where = f"/lab/workspaces/{workspace}?reset&" if workspace else "/lab?"
    page.goto(f"{lab.url}{where}token={lab.token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.started")
    # Layout restored. Polled, not awaited: an awaited promise that the page drops while
    # restoring is reported by Chromium as "garbage collected" instead of resolving.
    page.evaluate(
        "() => { window.jupyterapp.restored.then(() => { window.syftRestored = true; }); }"
    )
    page.wait_for_function("() => window.syftRestored === true", timeout=60_000)


def open_notebook(page: Any, path: str, kernel: str = "") -> str:
    """Open `path` (if needed) and wait for its kernel; returns the panel's DOM id."""
    return page.evaluate(OPEN, [path, kernel])


def run(page: Any, panel: str, prefix: str = "", above: bool = False) -> Any:
    """Run the first cell starting with `prefix` (and every cell above it, if `above`);
    returns a locator of that cell."""
    index = page.evaluate(RUN, [panel, prefix, above])
    return page.locator(f"#{panel} .jp-Notebook .jp-Cell").nth(index)


def sidebar(page: Any) -> Any:
    """Open the Syft sidebar (if closed) and return it."""
    tab = page.locator('.jp-SideBar [data-id="jp-syft-sidebar"]')
    if tab.get_attribute("aria-selected") != "true":
        tab.click()
    panel = page.locator("#jp-syft-sidebar")
    panel.wait_for()
    box = panel.bounding_box()
    if box["width"] < SIDEBAR_PX - 20:  # wider, for readable screenshots (the layout keeps it)
        handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first.bounding_box()
        y = handle["y"] + handle["height"] / 2
        page.mouse.move(handle["x"] + handle["width"] / 2, y)
        page.mouse.down()
        page.mouse.move(box["x"] + SIDEBAR_PX, y, steps=5)
        page.mouse.up()
    return panel
