"""The owner's disclosure buttons in the Syft sidebar, in a real browser over a real domain:
a failed job's full error and log (seen only by the owner) and Release error and log; a result
held for review, its preview, Release result and Withhold."""

from __future__ import annotations

import pytest
from lab_ui import sidebar, start
from labs import PRIVATE, JupyterProcess, SyftWorld
from playwright.sync_api import expect

from jupyter_syft.client.domain import RemoteRequest
from jupyter_syft.errors import RequestFailed, ResultWithheld

pytestmark = pytest.mark.timeout(150)
SECRET = repr(float(PRIVATE["bmi"].sum()))  # a private value the failing job prints and raises
FAILS = (
    "def peek(df):\n"
    "    print('bmi sum', float(df['bmi'].sum()))\n"
    "    raise ValueError(repr(float(df['bmi'].sum())))\n"
)
COUNT = "def count(df):\n    return {'rows': len(df)}\n"


def approved(world: SyftWorld, code: str, name: str) -> RemoteRequest:
    request = world.as_scientist().submit(code, name, {"df": "diabetes"})
    world.admin(world.owner).get_request(request.id).approve()  # type: ignore[attr-defined]
    return request


def test_the_owner_sees_a_failed_jobs_error_and_log_and_releases_them(
    page, lab: JupyterProcess, world: SyftWorld
) -> None:
    request = approved(world, FAILS, "peek")
    assert request.wait(timeout=60).status == "failed"
    start(page, lab)
    bar = sidebar(page)
    item = bar.locator(f'.jp-Syft-history [data-request-id="{request.id}"]')
    output = item.locator(".jp-Syft-output")
    output.locator("summary").click()
    expect(output.locator(".jp-Syft-errorFull")).to_contain_text(SECRET)
    expect(output.locator(".jp-Syft-log")).to_contain_text(f"bmi sum {SECRET}")
    expect(output.locator(".jp-Syft-scientistError")).not_to_contain_text(SECRET)
    expect(
        bar.locator(f'.jp-Syft-myRequests [data-request-id="{request.id}"]')
    ).not_to_contain_text(SECRET)
    page.shots("owner-sees-error-and-log", keep="sidebar-error-log", show=item)
    output.locator(".jp-Syft-releaseError").click()
    expect(bar.locator(".jp-Syft-notice")).to_contain_text("error and log released")
    expect(item.locator(".jp-Syft-output summary")).to_contain_text("released to the scientist")
    expect(bar.locator(f'.jp-Syft-myRequests [data-request-id="{request.id}"]')).to_contain_text(
        SECRET
    )
    with pytest.raises(RequestFailed, match="ValueError"):
        request.result()
    assert SECRET in request.error and f"bmi sum {SECRET}" in request.log
    page.shots("scientist-sees-released-error")


def test_a_held_result_is_previewed_then_released_or_withheld(
    page, lab: JupyterProcess, world: SyftWorld
) -> None:
    world.admin(world.owner).set_policy("diabetes", release="after_review")
    try:
        kept, withheld = approved(world, COUNT, "count"), approved(world, COUNT, "count")
        start(page, lab)
        bar = sidebar(page)
        cards = bar.locator(".jp-Syft-held")
        expect(cards).to_have_count(2, timeout=60_000)
        card = bar.locator(f'.jp-Syft-held[data-request-id="{kept.id}"]')
        expect(card.locator(".jp-Syft-heldText")).to_contain_text("'rows': 442")
        page.shots("owner-held-result-preview", keep="sidebar-held-result", show=card)
        card.locator(".jp-Syft-releaseResult").click()
        expect(bar.locator(".jp-Syft-notice")).to_contain_text("result released")
        assert kept.result(timeout=30) == {"rows": 442}

        other = bar.locator(f'.jp-Syft-held[data-request-id="{withheld.id}"]')
        other.locator(".jp-Syft-withhold").click()  # no reason: refused, nothing changes
        expect(bar.locator(".jp-Syft-notice")).to_contain_text("needs a reason")
        other.locator(".jp-Syft-reasonInput").fill("cohort too small")
        other.locator(".jp-Syft-withhold").click()
        expect(bar.locator(".jp-Syft-held")).to_have_count(0)
        with pytest.raises(ResultWithheld, match="cohort too small"):
            withheld.result(timeout=30)
        page.shots("owner-withheld-result")
    finally:
        world.admin(world.owner).set_policy("diabetes", release="on_approval")
