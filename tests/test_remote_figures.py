"""Figures: a request's figure comes back as a checked PNG and shows inline in the kernel; a
figure on a mock carries the MOCK banner. A real domain process and a Syft kernel."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from kernel_client import SyftKernel
from nodes import person
from shared_domains import SharedDomain

from jupyter_syft.wire.values import PNG_SIGNATURE, PNGImage, check_png

TABLE = pd.DataFrame({"bmi": np.linspace(18.0, 40.0, 60)})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clinic: SharedDomain) -> Iterator[dict]:
    """The shared clinic domain (conftest.py) with this module's dataset, "plots", and its
    scientist's kernel."""
    scientist_home, scientist = person(tmp_path_factory.mktemp("figures"), "scientist")
    admin = clinic.admin()
    admin.create_dataset("plots", private=TABLE, mock=TABLE.head(10))
    admin.add_user(scientist.peer_id)
    kernel = SyftKernel(scientist_home)
    try:
        assert kernel.execute(f"%syft connect {clinic.node.address}").status == "ok"
        yield {"admin": admin, "kernel": kernel}
    finally:
        kernel.stop()


def images(kernel: SyftKernel, msg_id: str) -> list[dict]:
    return [
        m["content"]["data"]
        for m in kernel.messages
        if m["parent_header"].get("msg_id") == msg_id
        and m["msg_type"] == "display_data"
        and "image/png" in m["content"]["data"]
    ]


def test_a_requests_figure_renders_inline_as_png(world: dict) -> None:
    kernel = world["kernel"]
    cell = kernel.execute('%%request clinic/plots as df --out plot\ndf["bmi"].hist()')
    assert cell.status == "ok", cell.text
    for review in world["admin"].requests("pending"):
        review.approve()
    done = kernel.update(cell.display_id, "result bound to plot", timeout=60)
    assert "a figure" in done and "PNG" in done
    msg_id = cell.reply["parent_header"]["msg_id"]
    [image] = _wait_for_image(kernel, msg_id)  # the image follows the status
    data = base64.b64decode(image["image/png"])
    assert data.startswith(PNG_SIGNATURE) and check_png(data)[0] > 100
    assert "computed on the private data of domain clinic" in image["text/plain"]


def _wait_for_image(kernel: SyftKernel, msg_id: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while not images(kernel, msg_id):
        kernel._pump(deadline, "the figure's image output")
    return images(kernel, msg_id)


def test_a_mock_figure_has_the_mock_banner(world: dict) -> None:
    kernel = world["kernel"]
    cell = kernel.execute('%%mock clinic/plots as df\ndf["bmi"].hist()')
    assert cell.status == "ok", cell.text
    outputs = [m["content"]["data"] for m in cell.outputs if m["msg_type"] == "display_data"]
    [figure] = outputs  # the stamped one only: the inline backend does not show it again
    assert "MOCK" in figure["text/plain"]
    from matplotlib import image

    pixels = image.imread(io.BytesIO(base64.b64decode(figure["image/png"])), format="png")
    banner = pixels[:20, :, :3].reshape(-1, 3)  # the stamp's background, atop the image
    assert np.any(np.all(np.abs(banner - _colour()) < 0.05, axis=1))


def test_a_figure_a_mock_cell_draws_but_does_not_return_has_the_banner_too(world: dict) -> None:
    kernel = world["kernel"]
    cell = kernel.execute('%%mock clinic/plots as df\ndf["bmi"].hist()\nlen(df)')
    assert cell.status == "ok", cell.text
    outputs = [m["content"]["data"] for m in cell.outputs if m["msg_type"] == "display_data"]
    figures = [o for o in outputs if "image/png" in o]
    [figure] = figures  # stamped, and not shown bare again by the inline backend
    assert "MOCK" in figure["text/plain"]
    assert any("10" in o["text/plain"] and "MOCK" in o["text/plain"] for o in outputs)


def _colour() -> np.ndarray:
    from jupyter_syft.safe_html import COLOURS

    hex_colour = COLOURS["mock"].lstrip("#")
    return np.array([int(hex_colour[i : i + 2], 16) for i in (0, 2, 4)]) / 255


@pytest.mark.unit
def test_only_a_real_capped_png_is_accepted() -> None:
    with pytest.raises(ValueError, match="not a PNG"):
        PNGImage(b"<svg onload=alert(1)>")
    header = PNG_SIGNATURE + (13).to_bytes(4, "big") + b"IHDR"
    with pytest.raises(ValueError, match="pixels"):
        PNGImage(header + (10**6).to_bytes(4, "big") + (10).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="over the cap"):
        PNGImage(header + b"\0" * (3 * 2**20))
