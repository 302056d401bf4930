"""Declared requirements in the Syft sidebar, in a real browser over a real domain: the owner's
approval card and the scientist's request list name the packages a request asks for."""

from __future__ import annotations

import pytest
from lab_ui import sidebar, start
from labs import JupyterProcess, SyftWorld
from playwright.sync_api import expect

pytestmark = pytest.mark.timeout(150)
CODE = "def fit(df):\n    import statsmodels.api as sm\n    return sm.__name__\n"


def test_the_sidebar_shows_a_requests_requirements(
    page, lab: JupyterProcess, world: SyftWorld
) -> None:
    needs = ["statsmodels==0.14.4", "humanize"]
    request = world.as_scientist().submit(CODE, "fit", {"df": "diabetes"}, needs)
    try:
        start(page, lab)
        bar = sidebar(page)
        card = bar.locator(f'.jp-Syft-review[data-request-id="{request.id}"]')
        expect(card.locator(".jp-Syft-requirements")).to_have_text(
            "requirements: humanize statsmodels==0.14.4 "
        )
        mine = bar.locator(f'.jp-Syft-myRequests [data-request-id="{request.id}"]')
        expect(mine.locator(".jp-Syft-requirements")).to_contain_text("statsmodels==0.14.4")
        page.shots("owner-sees-requirements", show=card)
    finally:
        world.admin(world.owner).get_request(request.id).deny("not now")  # type: ignore[attr-defined]
