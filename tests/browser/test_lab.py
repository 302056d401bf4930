"""The product in a real browser: JupyterLab with the built extension, a real network and
domain, the scientist's and the owner's notebooks, the Syft sidebar and the widgets.

The scientist runs the `%%request` cell of `examples/scientist.ipynb` (Syft kernel); the owner
decides in the sidebar or in `examples/owner.ipynb`'s approval panel; the result (or the
owner's reason) appears in the scientist's cell without a reload.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from lab_ui import DESCRIPTION, SCIENTIST, open_notebook, run, sidebar, start
from labs import JupyterProcess, SyftWorld, copy_example
from playwright.sync_api import expect

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_sidebar import HOSTILE, first_paint_ms, serve_synthetic

pytestmark = pytest.mark.timeout(150)
RESULT_S = 60_000  # ms: approve -> the job runs in a worker -> the kernel fetches the result
REASON = "Row-level values are too fine-grained to release; please ask for the mean instead"


@pytest.fixture(scope="module", autouse=True)
def notebooks(lab: JupyterProcess) -> None:
    copy_example("scientist.ipynb", lab.notebooks)
    copy_example("owner.ipynb", lab.notebooks)


def submit(page):
    """The scientist runs the notebook down to its `%%request` cell; returns that cell."""
    panel = open_notebook(page, "scientist.ipynb")
    cell = run(page, panel, "%%request", above=True)
    expect(cell.locator(".jp-OutputArea")).to_contain_text("pending")
    return cell


def pending_card(page):
    bar = sidebar(page)
    card = bar.locator(".jp-Syft-review")
    expect(card).to_have_count(1)
    return bar, card


def test_approve_in_sidebar_result_appears_in_scientist_notebook(page, lab) -> None:
    start(page, lab)
    cell = submit(page)
    page.shots("scientist-request-pending", keep="scientist-request", show=cell)

    bar, card = pending_card(page)
    expect(card).to_contain_text(SCIENTIST)  # the owner's name for the user
    expect(card.locator(".jp-Syft-code")).to_contain_text("np.corrcoef")  # the scientist's code
    expect(card.locator(".jp-Syft-resources")).to_have_text("asks for the domain's defaults")
    expect(bar.locator(".jp-Syft-myRequests")).to_contain_text("pending")
    page.shots("owner-sidebar-pending", keep="sidebar-approvals")

    card.locator(".jp-Syft-approve").click()
    expect(bar.locator(".jp-Syft-history")).to_contain_text(re.compile("approved|running|done"))
    output = cell.locator(".jp-OutputArea")
    expect(output).to_contain_text("computed on the private data", timeout=RESULT_S)
    expect(output).to_contain_text("corr_bmi_progression")
    expect(bar.locator(".jp-Syft-myRequests")).to_contain_text("done")
    expect(bar.locator(".jp-Syft-review")).to_have_count(0)
    ran = bar.locator(".jp-Syft-history .jp-Syft-ran")  # where the job ran, with what
    expect(ran).to_contain_text(re.compile(r"ran local on .* with 1 cpu, 0 gpus, .* for "))
    page.shots("scientist-result", keep="scientist-result", show=output)


def test_approve_in_widget_result_appears_in_scientist_notebook(page, lab) -> None:
    start(page, lab)
    cell = submit(page)

    owner = open_notebook(page, "owner.ipynb")
    run(page, owner, "from jupyter_syft.widgets import review", above=True)
    card = page.locator(f"#{owner} .jp-Syft-widget-card")
    expect(card).to_have_count(1)
    expect(card).to_contain_text(SCIENTIST)
    expect(card).to_contain_text("np.corrcoef")
    page.shots("owner-widget-pending", keep="approval-widget", show=card)

    card.get_by_role("button", name="Approve").click()
    expect(card).to_have_count(0)  # decided: it moved to the history
    expect(page.locator(f"#{owner}")).to_contain_text("approved")
    page.shots("owner-widget-decided", show=page.locator(f"#{owner} .widget-accordion").first)

    open_notebook(page, "scientist.ipynb")
    output = cell.locator(".jp-OutputArea")
    expect(output).to_contain_text("computed on the private data", timeout=RESULT_S)
    page.shots("scientist-result-after-widget", show=output)


def test_deny_with_reason_in_sidebar_reason_appears(page, lab, world: SyftWorld) -> None:
    start(page, lab)
    cell = submit(page)
    bar, card = pending_card(page)

    card.locator(".jp-Syft-deny").click()  # no reason: refused, nothing changes
    expect(bar.locator(".jp-Syft-notice")).to_contain_text("needs a reason")
    expect(card).to_have_count(1)

    card.locator(".jp-Syft-reasonInput").fill(REASON)
    page.shots("owner-denies-with-reason")
    card.locator(".jp-Syft-deny").click()
    output = cell.locator(".jp-OutputArea")
    expect(output).to_contain_text("denied", timeout=RESULT_S)
    expect(output).to_contain_text(REASON)
    expect(bar.locator(".jp-Syft-myRequests")).to_contain_text(REASON)
    page.shots("scientist-sees-reason", keep="scientist-denied", show=output)

    hostile = world.as_scientist().submit(
        "def rows(df):\n    return len(df)\n", "rows", {"df": "diabetes"}
    )
    world.admin(world.owner).get_request(hostile.id).deny("no " + HOSTILE)  # type: ignore[attr-defined]
    mine = bar.locator(f'.jp-Syft-myRequests [data-request-id="{hostile.id}"]')
    expect(mine).to_contain_text("no " + HOSTILE)  # a peer's markup, shown as text
    assert page.locator("img[src='x']").count() == 0


def test_dataset_search_and_mock_preview(page, lab) -> None:
    start(page, lab)
    bar = sidebar(page)
    bar.locator(".jp-Syft-searchInput").fill("blood pressure")
    bar.locator(".jp-Syft-search button").click()
    hit = bar.locator(".jp-Syft-hit")
    expect(hit).to_have_count(1)
    expect(hit).to_contain_text(DESCRIPTION)
    hit.click()
    expect(bar.locator(".jp-Syft-schema")).to_contain_text("bmi")
    expect(bar.locator(".jp-Syft-mock tr")).to_have_count(1 + 10)  # the mock's first rows
    expect(bar.locator(".jp-Syft-domains")).to_contain_text("hospital-a")
    assert page.locator("#jp-syft-sidebar img, #jp-syft-sidebar script").count() == 0
    page.shots("datasets-mock-preview")  # the README's is test_lab_owner_day's, of 3 domains


def test_domain_offline_then_back(page, lab, world: SyftWorld) -> None:
    start(page, lab)
    bar = sidebar(page)
    domain = bar.locator('.jp-Syft-domain[data-domain="hospital-a"]')
    administered = bar.locator('.jp-Syft-adminDomain[data-domain="hospital-a"]')
    expect(domain).to_contain_text("online")
    expect(domain).to_contain_text("sandbox on: ")
    world.domain.stop()
    try:
        expect(domain).to_contain_text("offline", timeout=20_000)
        expect(administered).to_contain_text("offline")
        page.shots("domain-offline")
    finally:
        world.domain.start("--sandbox", "off")  # back, with its owner's sandbox turned off
    try:
        expect(domain).to_contain_text("online", timeout=20_000)
        # the sidebar's server dials the restarted domain again on one of its next polls
        expect(domain.locator(".jp-Syft-sandboxOff")).to_have_text("sandbox OFF", timeout=20_000)
        expect(administered.locator(".jp-Syft-sandboxOff")).to_have_text("sandbox OFF")
        assert "sandbox on" not in domain.inner_text()
        page.shots("domain-sandbox-off")
    finally:
        world.domain.stop()
        world.domain.start()
    expect(domain).to_contain_text("sandbox on: ", timeout=20_000)


def test_first_paint_with_100_pending_and_1000_hits_under_1s(page, lab) -> None:
    serve_synthetic(page)
    start(page, lab, workspace="speed")  # nothing else rendering meanwhile
    elapsed = first_paint_ms(page)
    bar = sidebar(page)
    expect(bar.locator(".jp-Syft-review")).to_have_count(100)
    expect(bar.locator(".jp-Syft-hit")).to_have_count(1000)
    assert page.locator("#jp-syft-sidebar img").count() == 0
    page.shots("first-paint-100-pending-1000-hits")
    assert elapsed < 1000, f"first paint took {elapsed:.0f} ms"
