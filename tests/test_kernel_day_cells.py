"""What a `%%mock` / `%%request` cell sends, as a scientist meets it: a real `syft` kernel
(jupyter_client) against a real domain process, the owner deciding from this process.

- a cell reading a kernel value (`threshold = 30`) gives the same answer under `%%mock` and,
  once approved, under `%%request`: the value goes with the request, in the code the owner
  reviews, and the request is named after the cell's first line (or `--name`);
- a cell using what cannot travel (a function defined in the kernel) is refused before
  anything is sent, with the same line under `%%mock`;
- a mock says MOCK wherever it renders; `%%mock --dp-epsilon` answers on the mock for free;
  DP answers show to their accuracy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from kernel_client import SyftKernel
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection

ROWS = 240


def diabetes(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(20, 80, rows).astype(float),
            "bmi": rng.normal(28.0, 5.0, rows).round(1),
            "progression": rng.normal(150.0, 60.0, rows).round(),
        }
    )


PRIVATE = diabetes(ROWS, 1)
MOCK = diabetes(60, 2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One hospital with `diabetes` (DP queries auto-approved up to epsilon 0.5, a budget of
    1.0 for the scientist), and the scientist's kernel connected to it."""
    root = tmp_path_factory.mktemp("cells")
    scientist_home, scientist = person(root, "scientist")
    owner_home, owner = person(root, "owner")
    node = DomainProcess(root, "hospital-a", owner_home)
    node.start()
    kernel = None
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("diabetes", private=PRIVATE, mock=MOCK, description="bmi and age")
        admin.add_user(scientist.peer_id)
        admin.set_policy("diabetes", auto_approve=True, max_query_epsilon=0.5)
        admin.set_budget(scientist.peer_id, "diabetes", epsilon=1.0)
        kernel = SyftKernel(scientist_home)
        cell = kernel.execute(f"%syft connect {node.address}")
        assert cell.status == "ok", cell.text
        yield {"admin": admin, "kernel": kernel, "node": node, "scientist": scientist.peer_id}
    finally:
        if kernel is not None:
            kernel.stop()
        node.kill()


def value(kernel: SyftKernel, expression: str) -> object:
    cell = kernel.execute(f"import json as _json; print(_json.dumps({expression}))")
    assert cell.status == "ok", cell.text
    return json.loads(cell.text)


def test_a_kernel_value_goes_with_the_request_and_mock_and_domain_agree(world: dict) -> None:
    kernel, admin = world["kernel"], world["admin"]
    assert kernel.execute("threshold = 30").status == "ok"
    body = "# patients over the threshold\nint((df['bmi'] > threshold).sum())"

    mock = kernel.execute(f"%%mock hospital-a/diabetes as df\n{body}")
    assert mock.status == "ok", mock.text
    assert "from this kernel: threshold = 30" in mock.text
    assert f"\n{int((MOCK['bmi'] > 30).sum())}" in mock.text

    before = {r.id for r in admin.requests()}
    cell = kernel.execute(f"%%request hospital-a/diabetes as df --out over\n{body}")
    assert cell.status == "ok", cell.text
    [review] = [r for r in admin.requests("pending") if r.id not in before]
    assert review.info.function_name == "patients_over_the_threshold"  # the owner sees the name
    assert review.code.splitlines()[:3] == [
        "def patients_over_the_threshold(df):",
        "    threshold = 30  # from the scientist's kernel",
        "    # patients over the threshold",
    ]
    assert "threshold = 30" in review._repr_html_()  # the owner's review panel shows it
    review.approve()
    kernel.update(cell.display_id, "result bound to over")
    assert value(kernel, "over") == int((PRIVATE["bmi"] > 30).sum())

    # the same cell on the mock, run as the function that was sent, gives the mock's answer
    again = kernel.execute(f"%%mock hospital-a/diabetes as df\n{body}")
    assert f"\n{int((MOCK['bmi'] > 30).sum())}" in again.text


def test_modules_are_imported_again_and_name_option(world: dict) -> None:
    kernel, admin = world["kernel"], world["admin"]
    kernel.execute("import numpy as np\ncut = np.float64(25.5)\nweights = np.array([0.5, 2.0])")
    body = "float(np.mean(df['bmi'] > cut) * weights.sum())"
    mock = kernel.execute(f"%%mock hospital-a/diabetes as df\n{body}")
    assert mock.status == "ok", mock.text
    expected_mock = float(np.mean(MOCK["bmi"] > 25.5) * 2.5)
    assert f"\n{expected_mock!r}" in mock.text

    cell = kernel.execute(f"%%request hospital-a/diabetes as df --name share_over_cut\n{body}")
    [review] = admin.requests("pending")
    assert review.info.function_name == "share_over_cut"
    assert "    import numpy as np  # from the scientist's kernel" in review.code
    assert "    cut = numpy.float64(25.5)  # from the scientist's kernel" in review.code
    assert "    weights = numpy.array([0.5, 2.0], dtype='float64')" in review.code
    review.approve()
    kernel.update(cell.display_id, "result bound to _request")
    assert value(kernel, "_request") == pytest.approx(float(np.mean(PRIVATE["bmi"] > 25.5) * 2.5))


def test_what_cannot_travel_is_refused_before_sending_with_one_line(world: dict) -> None:
    kernel, admin = world["kernel"], world["admin"]
    kernel.execute("def helper(frame):\n    return len(frame)")
    before = [r.id for r in admin.requests()]
    message = "`helper` is a function defined in this kernel: define it inside the cell"

    request = kernel.execute("%%request hospital-a/diabetes as df\nhelper(df)")
    assert request.status == "error"
    assert f"UsageError: {message} (nothing was sent)" in request.text
    assert [r.id for r in admin.requests()] == before  # nothing reached the domain

    mock = kernel.execute("%%mock hospital-a/diabetes as df\nhelper(df)")
    assert mock.status == "error" and f"UsageError: {message}" in mock.text

    typo = kernel.execute("%%mock hospital-a/diabetes as df\nlen(df) + thresold")
    assert "`thresold` is not defined, in the cell or in this kernel" in typo.text
    big = kernel.execute("big = list(range(100_000))")
    assert big.status == "ok"
    too_large = kernel.execute("%%request hospital-a/diabetes as df\nlen(big)")
    assert "`big` is too large to go with the request" in too_large.text
    assert [r.id for r in admin.requests()] == before


def test_the_mock_runs_with_the_requests_namespace_only(world: dict) -> None:
    kernel = world["kernel"]
    # `total` is bound in the cell, so it is not taken from the kernel: it fails here as it
    # would on the domain, instead of quietly reading the kernel's value
    kernel.execute("total = 100")
    cell = kernel.execute("%%mock hospital-a/diabetes as df\ntotal = total + len(df)\ntotal")
    assert cell.status == "error" and "UnboundLocalError" in cell.text
    assert value(kernel, "len(df)") == len(MOCK)  # the mock stays to explore


def test_mock_displays_say_mock(world: dict) -> None:
    kernel = world["kernel"]
    cell = kernel.execute(
        "import jupyter_syft as syft\n"
        f"hospital = syft.connect({world['node'].address!r})\n"
        "ds = hospital.datasets['diabetes']\n"
        "ds.mock"
    )
    assert cell.status == "ok", cell.text
    [result] = [m for m in cell.outputs if m["msg_type"] == "execute_result"]
    text, markup = result["content"]["data"]["text/plain"], result["content"]["data"]["text/html"]
    assert text.startswith("[MOCK data, not the private data: the mock of 'diabetes']")
    assert ">MOCK</span>" in markup and "<table" in markup
    assert value(kernel, "float(ds.mock['bmi'].mean())") == pytest.approx(MOCK["bmi"].mean())
    assert "MOCK" in kernel.execute("ds.mock.head(2)").text


def same_places(text: str, pattern: str) -> re.Match:
    """The DP answer `pattern` finds in `text`, its value and accuracy to the same decimals."""
    found = re.search(pattern + r" = (\d+(?:\.\d+)?) ± (\d+(?:\.\d+)?)", text)
    assert found is not None, text
    assert len(found[1].partition(".")[2]) == len(found[2].partition(".")[2]), text
    return found


def test_dp_on_the_mock_is_free_and_dp_answers_are_rounded(world: dict) -> None:
    kernel, admin, peer = world["kernel"], world["admin"], world["scientist"]
    spent = admin.budget("diabetes", peer).epsilon_spent
    line = "hospital-a/diabetes as df --dp-epsilon 0.5"
    mock = kernel.execute(f'%%mock {line}\ndf.mean("bmi", bounds=(15, 50))')
    assert mock.status == "ok", mock.text
    assert "[MOCK data, not the private data" in mock.text
    assert "MOCK: computed here on the mock of 'diabetes'" in mock.text
    assert "epsilon 0.5 not charged" in mock.text
    same_places(mock.text, r"mean\(bmi\)")
    assert admin.budget("diabetes", peer).epsilon_spent == spent  # nothing charged
    refused = kernel.execute(f'%%mock {line}\ndf.mean("bmi")')
    assert "the DP query was refused" in refused.text and "nothing was sent" in refused.text

    real = kernel.execute(f'%%request {line} --out noisy\ndf.mean("bmi", bounds=(15, 50))')
    assert real.status == "ok", real.text
    bound = "result bound to noisy"  # answered at once (auto-approved), or moments later
    done = real.text if bound in real.text else kernel.update(real.display_id, bound)
    shown = same_places(done, r"mean\(bmi\)")
    full = value(kernel, "noisy.value")
    places = len(shown[1].partition(".")[2])
    assert isinstance(full, float) and f"{full:.{places}f}" == shown[1]
    assert repr(full) != shown[1]  # every digit stays for code, the display rounds
    same_places(value(kernel, "repr(noisy)"), r"mean\(bmi\)")
    assert admin.budget("diabetes", peer).epsilon_spent == pytest.approx(spent + 0.5)
