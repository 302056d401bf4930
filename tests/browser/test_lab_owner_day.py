"""The owner's day in a real browser over a network of three hospitals (as `make demo`): a
request that arrives with the Syft sidebar closed is announced (a notification with Review and
Approve, a count on the sidebar's icon), search lists each hospital's dataset once, a federated
plan's card says what approving it allows, and its rounds come under it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lab_ui import DESCRIPTION, SCIENTIST, sidebar, start
from labs import PRIVATE, JupyterProcess, fake_like
from networks import NetworkProcess, wait_for
from nodes import DomainProcess, person, start_all
from playwright.sync_api import expect

import jupyter_syft as syft
from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.network import NetworkClient, NetworkConnection
from jupyter_syft.demo import FEATURE_BOUNDS, HOSPITALS, diabetes_model

pytestmark = pytest.mark.timeout(240)
CODE = "def mean_bmi(df):\n    return float(df['bmi'].mean())\n"
TAB = '.jp-SideBar [data-id="jp-syft-sidebar"]'
# Whether an element's content fits its width (a pre's code, a table in its scroll box).
FITS = "e => e.scrollWidth <= e.clientWidth"
# Whether an input's placeholder fits its box, measured in the input's own font.
PLACEHOLDER_FITS = """e => {
  const context = document.createElement('canvas').getContext('2d');
  context.font = getComputedStyle(e).font;
  return context.measureText(e.placeholder).width <= e.clientWidth;
}"""


class Hospitals:
    """A network node and three hospital domains, each holding a third of the diabetes rows;
    one owner administers all three, the scientist is a user of each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.owner_home, self.owner = person(root, "owner")
        self.scientist_home, self.scientist = person(root, "scientist")
        operator_home, _ = person(root, "operator")
        self.network = NetworkProcess(root, "net", operator_home, "--offline-after", "2")
        self.domains = {
            name: DomainProcess(root, name, self.owner_home, "--heartbeat", "0.3")
            for name in HOSPITALS
        }
        self.demo_file = root / "demo.json"

    def start(self) -> Hospitals:
        self.network.start()
        for domain in self.domains.values():
            domain.extra += ["--network", self.network.address]
        start_all(self.domains.values())
        for i, name in enumerate(HOSPITALS):
            rows = PRIVATE.iloc[i::3].reset_index(drop=True)
            admin = self.admin(name)
            admin.create_dataset(
                "diabetes", private=rows, mock=fake_like(rows, 20, seed=i), description=DESCRIPTION
            )
            admin.add_user(self.scientist.peer_id, "data_scientist", SCIENTIST)
        demo = {
            "network": self.network.address,
            "domains": {name: d.address for name, d in self.domains.items()},
        }
        self.demo_file.write_text(json.dumps(demo))
        net = NetworkClient(NetworkConnection(self.network.address, self.scientist))
        wait_for(lambda: len(net.search("diabetes")) == len(HOSPITALS), timeout=60)
        return self

    def admin(self, name: str) -> AdminClient:
        return AdminClient(NodeConnection(self.domains[name].address, self.owner))

    def as_scientist(self, name: str) -> DomainClient:
        return DomainClient(NodeConnection(self.domains[name].address, self.scientist))

    def stop(self) -> None:
        for domain in self.domains.values():
            domain.kill()
        self.network.kill()


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    world = Hospitals(tmp_path_factory.mktemp("hospitals"))
    try:
        yield world.start()
    finally:
        world.stop()


@pytest.fixture(scope="module")
def owner_lab(hospitals: Hospitals) -> Iterator[JupyterProcess]:
    """JupyterLab configured as `make demo` does it: the network and each domain by address."""
    lab = JupyterProcess(hospitals.root, [hospitals.scientist_home, hospitals.owner_home])
    lab.args.append(f"--SyftServer.demo={hospitals.demo_file}")
    try:
        yield lab.start()
    finally:
        lab.stop()


def toast_of(page, function: str):
    return page.locator(".Toastify__toast").filter(has_text=f"asks to run {function}")


def test_a_request_with_the_sidebar_closed_is_announced_and_approved_from_the_toast(
    page, owner_lab: JupyterProcess, hospitals: Hospitals
) -> None:
    start(page, owner_lab, workspace="owner-day")  # a fresh layout: the sidebar is closed
    expect(page.locator("#jp-syft-sidebar")).to_be_hidden()
    tab = page.locator(TAB)
    request = hospitals.as_scientist("hospital-b").submit(CODE, "mean_bmi", {"df": "diabetes"})

    toast = toast_of(page, "mean_bmi")
    expect(toast).to_contain_text(f"{SCIENTIST} asks to run mean_bmi on hospital-b/diabetes")
    expect(tab).to_have_attribute("data-syft-pending", "1")
    expect(page.locator("#jp-syft-sidebar")).to_be_hidden()  # it came with the panel closed
    expect(toast).to_be_in_viewport(ratio=1)  # slid in
    page.shots("owner-notified", keep="owner-notification")
    toast.get_by_role("button", name="Approve").click()
    owner = hospitals.admin("hospital-b")
    wait_for(lambda: owner.get_request(request.id).info.status != "pending", timeout=20)
    assert owner.get_request(request.id).info.decided_at is not None
    assert request.result(timeout=60) == pytest.approx(
        float(PRIVATE.iloc[1::3]["bmi"].mean())
    )  # approved, run, and the scientist's result is the real one
    expect(page.locator(".Toastify__toast").filter(has_text="approved")).to_be_visible()
    expect(tab).not_to_have_attribute("data-syft-pending", re.compile(".*"))
    expect(toast).to_have_count(0)

    later = hospitals.as_scientist("hospital-c").submit(CODE, "mean_bmi", {"df": "diabetes"})
    toast = toast_of(page, "mean_bmi")
    expect(tab).to_have_attribute("data-syft-pending", "1")
    toast.get_by_role("button", name="Review").click()  # opens the sidebar at its card
    card = page.locator(f'#jp-syft-sidebar .jp-Syft-review[data-request-id="{later.id}"]')
    expect(card).to_be_in_viewport()
    card.locator(".jp-Syft-reasonInput").fill("We already answered this on hospital-b")
    card.locator(".jp-Syft-deny").click()
    expect(card).to_have_count(0)
    expect(tab).not_to_have_attribute("data-syft-pending", re.compile(".*"))
    assert later.wait(timeout=10).status == "denied"


def test_search_lists_each_hospitals_dataset_once(page, owner_lab: JupyterProcess) -> None:
    start(page, owner_lab)
    bar = sidebar(page)
    hits = bar.locator(".jp-Syft-hit")
    expect(hits).to_have_count(len(HOSPITALS))  # the network's hits and the domains' own, once
    expect(bar.locator(".jp-Syft-hitsBody")).to_contain_text("3 datasets on the network")
    assert sorted(hits.evaluate_all("hs => hs.map(h => h.dataset.domain)")) == list(HOSPITALS)
    for name in HOSPITALS:
        expect(bar.locator(f'.jp-Syft-domain[data-domain="{name}"]')).to_contain_text("1 dataset ·")
    bar.locator(".jp-Syft-searchInput").fill("progression")
    bar.locator(".jp-Syft-search button").click()
    expect(bar.locator(".jp-Syft-hitsBody")).to_contain_text("3 datasets matching")
    hits.first.click()
    expect(bar.locator(".jp-Syft-mock tr")).to_have_count(1 + 10)
    mock = bar.locator(".jp-Syft-tableWrap:has(.jp-Syft-mock)")
    assert mock.evaluate("e => getComputedStyle(e).overflowX") == "auto"  # it scrolls...
    assert bar.evaluate(FITS)  # ...inside the sidebar, which itself stays its width
    assert bar.locator(".jp-Syft-searchInput").evaluate(PLACEHOLDER_FITS)
    page.shots("datasets-mock-preview", keep="sidebar-datasets")


def test_a_federated_plan_card_says_what_it_allows_and_its_rounds_come_under_it(
    page, owner_lab: JupyterProcess, hospitals: Hospitals
) -> None:
    domains = [hospitals.as_scientist(name) for name in HOSPITALS]
    with ThreadPoolExecutor(1) as pool:
        training = pool.submit(
            syft.federated.train, diabetes_model, domains, dataset="diabetes", target="target",
            features=list(FEATURE_BOUNDS), feature_bounds=list(FEATURE_BOUNDS.values()),
            rounds=4, local_epochs=2, lr=0.02, secure_aggregation=True, show=False,
            approval_timeout=120,
        )  # fmt: skip
        start(page, owner_lab)
        bar = sidebar(page)
        cards = bar.locator(".jp-Syft-review")
        expect(cards).to_have_count(len(HOSPITALS), timeout=60_000)
        card = cards.first
        terms = {
            "rounds": "4 rounds x 2 local epochs",
            "columns": "age, sex, bmi, bp, tc, ldl, hdl, tch, ltg, glu -> target (mse loss)",
            "optimizer": "adam, learning rate 0.02, batch 32",
            "aggregation": "secure aggregation with the other domains",
            "DP budget": "none: no differential privacy",
            "weights leave the domain": "leave this domain, masked: only their secure sum",
        }
        for term, text in terms.items():
            expect(card.locator(f'.jp-Syft-planTerm[data-term="{term}"]')).to_contain_text(text)
        assert card.locator(".jp-Syft-code").evaluate(FITS)  # long lines wrap, none cut
        assert card.locator(".jp-Syft-reasonInput").evaluate(PLACEHOLDER_FITS)
        expect(toast_of(page, "a federated plan").first).to_be_in_viewport(ratio=1)
        page.shots("owner-reviews-federated-plan", keep="sidebar-federated-plan", show=card)
        for left in reversed(range(len(HOSPITALS))):
            cards.first.locator(".jp-Syft-approve").click()
            expect(cards).to_have_count(left, timeout=20_000)  # a busy machine: 3 domains
        _, history = training.result(timeout=180)
    assert len(history.rounds) == 4 and not history.excluded
    for plan_id in history.plans.values():
        for where in (".jp-Syft-history", ".jp-Syft-myRequests"):
            entry = bar.locator(f'{where} > li[data-request-id="{plan_id}"]')
            expect(entry.locator(".jp-Syft-rounds > summary")).to_have_text(
                "4 rounds: 4 done", timeout=20_000
            )
        entry.locator(".jp-Syft-rounds > summary").click()
        expect(entry.locator(".jp-Syft-round")).to_have_count(4)
        expect(entry.locator(".jp-Syft-round").last).to_contain_text("round 4")
    # One entry per plan, none per round: a run of 4 rounds on 3 domains adds 3, not 15.
    rounds = bar.locator(".jp-Syft-history > li").filter(has_text="diabetes_model")
    expect(rounds).to_have_count(len(HOSPITALS))
    page.shots("owner-history-rounds-grouped", keep="sidebar-rounds", show=entry)
