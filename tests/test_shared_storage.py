"""Datasets stored as partitioned Parquet at a location standing in for shared storage (a
folder of the test's), across real processes: a domain started with `--storage`, a dataset
with its own `location=`, jobs reading them as tables, a job trying to reach a sibling
dataset's folder at the same location, bad locations, a restart, `ds.distributed()`
submissions, and the distributed mock run on a local ray.data Dataset (in a kernel inside a
network namespace: Ray binds every interface, see jupyter_syft.client.distributed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from netns import NetNS
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.errors import InvalidError
from jupyter_syft.kernel.cells import CellError, parse_line

MARKER = "SIBLING-SECRET-7f3a9c"  # written only into the sibling dataset's rows
ROWS = 1000
VISITS = pd.DataFrame({"x": np.arange(ROWS, dtype=np.float64), "site": ["a", "b"] * (ROWS // 2)})
NOTES = pd.DataFrame({"note": [f"{MARKER} row {i}" for i in range(50)]})
NOTES_MOCK = pd.DataFrame({"note": ["a made-up note"] * 5})
TOTAL = "def total(df):\n    return float(df['x'].sum()), len(df)\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("storage")
    shared = root / "shared"  # stands in for a folder every machine of the cluster mounts
    shared.mkdir(mode=0o700)
    own = root / "own-location"
    own.mkdir(mode=0o700)
    owner_home, owner = person(root, "owner")
    _, mallory = person(root, "mallory")
    node = DomainProcess(root, "clinic", owner_home, "--storage", str(shared))
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset(
            "visits", VISITS, VISITS.head(10), location=f"file://{own}", partition_rows=250
        )
        admin.create_dataset("notes", NOTES, NOTES_MOCK)  # at --storage
        admin.create_dataset("plain", VISITS, VISITS.head(10), location="")  # the same way
        admin.add_user(mallory.peer_id, "data_scientist", "mallory")
        yield {
            "root": root,
            "shared": shared,
            "own": own,
            "node": node,
            "admin": admin,
            "mallory": DomainClient(NodeConnection(node.address, mallory)),
        }
    finally:
        node.kill()


def run(world: dict, code: str, function: str, dataset: str) -> object:
    request = world["mallory"].submit(textwrap.dedent(code), function, {"df": dataset})
    world["admin"].get_request(request.id).approve()
    return request.result(timeout=90)


def outside_the_data_dir(world: dict) -> list[str]:
    """Every file and folder of the test's root but the node's own (data dir, log, homes)."""
    root: Path = world["root"]
    return sorted(
        str(p)
        for p in root.rglob("*")
        if p.relative_to(root).parts[0] not in ("clinic", "clinic.log", "homes")
    )


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_dataset_at_a_location_is_partitioned_parquet_read_by_a_job_as_a_table(
    world: dict,
) -> None:
    own: Path = world["own"]
    parts = sorted(p.name for p in (own / "visits").iterdir())
    assert parts == [f"part-{i}.parquet" for i in range(4)]  # 1,000 rows, 250 a file
    data_dir: Path = world["node"].data_dir
    assert not (data_dir / "assets" / "visits" / "private.arrow").exists()
    assert (data_dir / "assets" / "visits" / "mock.arrow").exists()  # the mock stays
    datasets = world["mallory"].datasets
    assert datasets["visits"].info.partitions == 4 and datasets["visits"].rows == ROWS
    assert "4 partitions" in repr(datasets["visits"])
    assert datasets["notes"].info.partitions == 1  # --storage: every new table
    assert sorted(os.listdir(world["shared"])) == ["notes", "plain"]
    assert run(world, TOTAL, "total", "visits") == (float(VISITS["x"].sum()), ROWS)
    assert run(world, TOTAL, "total", "plain") == (float(VISITS["x"].sum()), ROWS)


def test_a_job_cannot_reach_a_sibling_dataset_at_the_same_location(world: dict) -> None:
    shared: Path = world["shared"]
    before = folder_hashes(shared)
    code = f"""
    import os

    def attack(df):
        seen = []
        def grab(path):
            try:
                if os.path.isdir(path):
                    seen.append(path + ": " + ",".join(sorted(os.listdir(path))))
                else:
                    with open(path, "rb") as f:
                        seen.append(path + ": " + f.read().decode("latin-1"))
            except OSError as e:
                seen.append(path + ": " + type(e).__name__)
        shared = {str(shared)!r}
        for path in (shared, shared + "/notes", shared + "/notes/part-0.parquet"):
            grab(path)
        for fd in os.listdir("/proc/self/fd"):
            base = "/proc/self/fd/" + fd
            grab(base)
            for up in ("/..", "/../..", "/../notes", "/../../notes/part-0.parquet"):
                grab(base + up)
            if os.path.isdir(base):
                for name in os.listdir(base):
                    grab(base + "/" + name)
                try:
                    open(base + "/written-by-a-job", "w").write("x")
                    seen.append("wrote into the partition folder")
                except OSError as e:
                    seen.append("write: " + type(e).__name__)
        for top, folders, files in os.walk("/"):
            if top.startswith(("/proc", "/sys")):
                folders[:] = []
            for name in files:
                if name.endswith(".parquet"):
                    grab(os.path.join(top, name))
        return seen
    """
    seen = run(world, code, "attack", "plain")
    text = "\n".join(seen)  # type: ignore[arg-type]
    assert MARKER not in text
    # It did see its own partitions (so the attack ran with the access a job has)...
    assert "part-0.parquet" in text and "PAR1" in text
    # ...could not write there, and found nothing of the location or its sibling.
    assert "wrote into the partition folder" not in text
    assert "write: OSError" in text or "write: PermissionError" in text
    assert f"{shared}: PermissionError" in text or f"{shared}: FileNotFoundError" in text
    assert folder_hashes(shared) == before


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("{root}/missing", "does not exist"),
        ("{root}/a-file", "is not a folder"),
        ("relative/folder", "is not an absolute path or a URI"),
        ("nosuchscheme://bucket/x", "is not an absolute path or a URI"),
        ("{data_dir}/assets", "overlaps the node's data dir"),
        ("{prefix}", "which every job may read"),
        ("{read_only}", "is not writable"),
    ],
)
def test_a_bad_location_is_refused_and_nothing_is_created(
    world: dict, where: str, says: str
) -> None:
    root: Path = world["root"]
    (root / "a-file").write_text("not a folder")
    read_only = root / "read-only"
    read_only.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], check=True
    )
    try:
        location = where.format(
            root=root,
            data_dir=world["node"].data_dir,
            prefix=os.path.realpath(sys.prefix),
            read_only=read_only,
        )
        before = outside_the_data_dir(world)
        with pytest.raises(InvalidError, match=says):
            world["admin"].create_dataset("refused", VISITS, VISITS.head(3), location=location)
        assert "refused" not in world["admin"].datasets
        assert outside_the_data_dir(world) == before
        assert not os.path.exists(os.path.join(location, "refused"))
        staging = world["node"].data_dir / "staging"
        assert list(staging.iterdir()) == []  # the upload was refused before any byte came
    finally:
        subprocess.run(["umount", str(read_only)], check=True)


def test_domain_start_refuses_a_bad_storage_and_creates_nothing(world: dict) -> None:
    root: Path = world["root"]
    data_dir = root / "never-made"
    started = subprocess.run(
        [sys.executable, "-m", "jupyter_syft.cli", "domain", "start", "--name", "x",
         "--data-dir", str(data_dir), "--storage", str(root / "missing-storage")],
        env={**os.environ, "JUPYTER_SYFT_HOME": str(root / "homes" / "owner")},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode != 0
    assert "--storage" in started.stderr and "does not exist" in started.stderr
    assert not data_dir.exists()


def test_a_tensor_is_not_stored_as_partitions(world: dict) -> None:
    tensor = np.zeros((10, 3))
    with pytest.raises(InvalidError, match="only tables are stored as partitions"):
        world["admin"].create_dataset("grid", tensor, tensor[:2], location=str(world["own"]))
    world["admin"].create_dataset("grid", tensor, tensor[:2])  # --storage: tables only
    assert world["admin"].datasets["grid"].info.partitions == 0
    assert "grid" not in os.listdir(world["shared"])


def test_distributed_submission_is_recorded_and_shown_as_distributed(world: dict) -> None:
    mallory: DomainClient = world["mallory"]
    visits = mallory.datasets["visits"]
    request = mallory.request("def rows(df):\n    return df.count()\n", df=visits.distributed())
    assert request.info.distributed == ["df"] and request.info.inputs == {"df": "visits"}
    review = world["admin"].get_request(request.id)
    assert review.info.distributed == ["df"]
    assert "visits (distributed)" in review._repr_html_()
    review.deny("only checking the submission")


def test_distributed_on_a_dataset_not_stored_as_partitions_is_refused(world: dict) -> None:
    mallory: DomainClient = world["mallory"]
    owner_without_storage = world["admin"]
    before = len(owner_without_storage.requests())
    with pytest.raises(InvalidError, match="'grid' is stored as one Arrow file"):
        mallory.request("def f(df):\n    return 1\n", df=mallory.datasets["grid"].distributed())
    with pytest.raises(InvalidError, match="'nope' is not an input of the request"):
        mallory.submit("def f(df):\n    return 1\n", "f", {"df": "visits"}, distributed=["nope"])
    assert len(owner_without_storage.requests()) == before  # nothing recorded


def test_a_partitioned_dataset_is_found_again_after_a_restart(world: dict) -> None:
    node: DomainProcess = world["node"]
    node.stop()
    node.start()
    owner = AdminClient(NodeConnection(node.address, person(world["root"], "owner")[1]))
    assert owner.datasets["visits"].info.partitions == 4
    world["admin"] = owner
    world["mallory"] = DomainClient(
        NodeConnection(node.address, person(world["root"], "mallory")[1])
    )
    for dataset in ("visits", "plain"):  # at its own location, and at --storage
        assert run(world, TOTAL, "total", dataset) == (float(VISITS["x"].sum()), ROWS)


# ---- the distributed mock run, with Ray, inside a network namespace --------------------------

KERNEL_SCRIPT = """
import json, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
import pandas as pd
from kernel_client import SyftKernel
from nodes import DomainProcess, person
from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
root = Path({root!r})
owner_home, owner = person(root, "owner")
scientist_home, scientist = person(root, "ada")
# No job runs here (the request stays pending): the node's sandbox is not what is tested.
node = DomainProcess(root, "clinic", owner_home, "--storage", {shared!r}, "--sandbox", "off")
node.start()
kernel = None
try:
    admin = AdminClient(NodeConnection(node.address, owner))
    rows = pd.DataFrame({{"x": [float(i) for i in range(100)]}})
    admin.create_dataset("visits", rows, rows.head(8), partition_rows=30)
    admin.add_user(scientist.peer_id, "data_scientist", "ada")
    kernel = SyftKernel(scientist_home, HOME=str(root / "ray-home"), RAY_TMPDIR={ray_tmp!r})
    out = {{}}
    out["connect"] = kernel.execute(f"%syft connect {{node.address}}").text
    cell = (
        "%%mock clinic/visits as df --distributed\\nimport ray.data\\n"
        "isinstance(df, ray.data.Dataset), df.mean('x'), df.count()"
    )
    started = time.monotonic()
    out["mock"] = kernel.execute(cell, timeout=240).text
    out["first_s"] = time.monotonic() - started
    started = time.monotonic()
    out["mock_again"] = kernel.execute(cell, timeout=240).text
    out["again_s"] = time.monotonic() - started
    request = "%%request clinic/visits as df --distributed --out r\\ndf.mean('x')"
    out["request"] = kernel.execute(request, timeout=60).text
    [pending] = admin.requests("pending")
    out["distributed"] = pending.info.distributed
    out["review"] = pending._repr_html_()
    print(json.dumps(out))
finally:
    if kernel is not None:
        kernel.stop()
    node.kill()
"""


@pytest.mark.timeout(420)
def test_the_distributed_mock_runs_on_a_local_ray_dataset_and_the_request_is_distributed(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    (tmp_path / "ray-home").mkdir()
    # Ray's unix sockets live in its temp dir, whose path must stay short (108 bytes a path).
    ray_tmp = tempfile.mkdtemp(prefix="syft-rt-")
    script = KERNEL_SCRIPT.format(
        tests=str(Path(__file__).parent), root=str(tmp_path), shared=str(shared), ray_tmp=ray_tmp
    )
    with NetNS() as ns, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, ray_tmp, ignore_errors=True)
        done = ns.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"distributed mock: first {out['first_s']:.1f} s (Ray starting), "
        f"then {out['again_s']:.2f} s"
    )
    mean = sum(range(8)) / 8  # the mock: the first 8 rows
    assert "starting a local Ray" in out["mock"]
    assert f"(True, {mean}, 8)" in out["mock"] and "MOCK" in out["mock"]
    assert "WARNING" not in out["mock"] + out["mock_again"]  # no Ray chatter in the cell
    assert "starting a local Ray" not in out["mock_again"]  # started once, on first use
    assert f"(True, {mean}, 8)" in out["mock_again"]
    assert out["distributed"] == ["df"], out
    assert "visits (distributed)" in out["review"]


@pytest.mark.unit
def test_the_distributed_flag_of_a_cell_line() -> None:
    parsed = parse_line("hospital-a/diabetes as df --distributed --cpus 2")
    assert parsed.distributed and dict(parsed.resources) == {"cpus": 2.0}
    assert not parse_line("hospital-a/diabetes as df").distributed
    with pytest.raises(CellError, match="--distributed is for code"):
        parse_line("hospital-a/diabetes as df --dp-epsilon 1 --distributed")
    with pytest.raises(CellError, match="no --distributed"):
        parse_line("*/diabetes as df --aggregate sum --distributed")
