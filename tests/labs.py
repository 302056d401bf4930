"""A real Syft world and real Jupyter servers, for the widget, server and browser tests.

`SyftWorld`: a network node and a domain (`hospital-a`, joined to it) as processes, the
domain's owner, a scientist and a stranger, each with their own JUPYTER_SYFT_HOME, and a
`demo.json` like `jupyter-syft demo --keep-running` writes. `JupyterProcess`: `jupyter lab`
(or `jupyter server`) on 127.0.0.1 with a token, its own config/data/runtime/settings dirs
and the installed jupyter-syft server extension, acting as the identities it is given.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from networks import NetworkProcess, wait_for
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.network import NetworkClient, NetworkConnection
from jupyter_syft.demo import diabetes_frame, fake_like
from jupyter_syft.identity import Identity

REPO = Path(__file__).resolve().parents[1]
DOMAIN = "hospital-a"
# A description a hostile owner might write and a name with markup: text everywhere.
DESCRIPTION = "Blood pressure & BMI <img src=x onerror=alert(1)><script>alert(2)</script>"
SCIENTIST_NAME = "Dr. <b>Ada</b>"
# The demo's data (real patients; the example notebooks' cells expect its columns).
PRIVATE = diabetes_frame()
MOCK = fake_like(PRIVATE, 20, seed=0)
START_S = 60.0
NOTIFICATION_SETTINGS = ("@jupyterlab", "apputils-extension", "notification.jupyterlab-settings")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SyftWorld:
    """Network + one domain with a `diabetes` dataset; owner, scientist and stranger. The
    dataset's description and the scientist's name are hostile unless given (the browser
    tests give realistic ones: their pictures are the README's)."""

    def __init__(
        self, root: Path, description: str = DESCRIPTION, scientist_name: str = SCIENTIST_NAME
    ) -> None:
        self.root = root
        self.description = description
        self.scientist_name = scientist_name
        self.owner_home, self.owner = person(root, DOMAIN)
        self.scientist_home, self.scientist = person(root, "scientist")
        self.stranger_home, self.stranger = person(root, "stranger")
        operator_home, _ = person(root, "operator")
        self.network = NetworkProcess(root, "net", operator_home, "--offline-after", "2")
        self.domain_port = free_port()
        self.domain = DomainProcess(
            root,
            DOMAIN,
            self.owner_home,
            "--listen",
            f"/ip4/127.0.0.1/tcp/{self.domain_port}",
            "--heartbeat",
            "0.3",
        )
        self.demo_file = root / "demo.json"

    def start(self) -> SyftWorld:
        self.network.start()
        self.domain.extra += ["--network", self.network.address]
        self.domain.start()
        admin = self.admin(self.owner)
        admin.create_dataset("diabetes", private=PRIVATE, mock=MOCK, description=self.description)
        admin.add_user(self.scientist.peer_id, "data_scientist", self.scientist_name)
        demo = {
            "network": self.network.address,
            "domains": {DOMAIN: self.domain.address},
            "scientist_home": "homes/scientist",
        }
        self.demo_file.write_text(json.dumps(demo))
        net = NetworkClient(NetworkConnection(self.network.address, self.scientist))
        wait_for(lambda: net.search("diabetes"), timeout=START_S)  # the announcement arrived
        return self

    def admin(self, identity: Identity) -> AdminClient:
        return AdminClient(NodeConnection(self.domain.address, identity))

    def as_scientist(self) -> DomainClient:
        return DomainClient(NodeConnection(self.domain.address, self.scientist))

    def restart_domain(self) -> None:
        """Stop the domain and start it again on the same port (its data dir is kept)."""
        self.domain.stop()
        self.domain.start()

    def stop(self) -> None:
        self.domain.kill()
        self.network.kill()


class JupyterProcess:
    """`jupyter lab` (or `jupyter server`) with a token, as the identities in `homes`."""

    def __init__(
        self,
        root: Path,
        homes: list[Path],
        world: SyftWorld | None = None,
        app: str = "lab",
    ) -> None:
        self.root = root
        self.app = app
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log = root / f"jupyter-{self.port}.log"
        self.notebooks = root / "notebooks"
        self.notebooks.mkdir(parents=True, exist_ok=True)
        self.args = [f"--SyftServer.homes={home}" for home in homes]
        if world is not None:
            self.args.append(f"--SyftServer.network={world.network.address}")
        self.env = {
            **os.environ,
            "JUPYTER_SYFT_HOME": str(homes[0]),  # kernels act as the first identity
            "JUPYTER_SYFT_DEMO": str(world.demo_file if world else ""),
            "JUPYTER_CONFIG_DIR": str(root / "jupyter-config"),
            "JUPYTER_DATA_DIR": str(root / "jupyter-data"),
            "JUPYTER_RUNTIME_DIR": str(root / "jupyter-runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(root / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(root / "lab-workspaces"),
            "IPYTHONDIR": str(root / "ipython"),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> JupyterProcess:
        module = "jupyterlab" if self.app == "lab" else "jupyter_server"
        command = [
            sys.executable,
            "-m",
            module,
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            "--allow-root",
            f"--ServerApp.root_dir={self.notebooks}",
            *self.args,
        ]
        if self.app == "lab":
            command += [
                "--LabApp.news_url=",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.expose_app_in_browser=True",  # tests drive commands by name
            ]
            notifications = Path(self.env["JUPYTERLAB_SETTINGS_DIR"], *NOTIFICATION_SETTINGS)
            notifications.parent.mkdir(parents=True, exist_ok=True)
            notifications.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter exited:\n{self.log.read_text()}")
            try:
                self.get("/api/status")
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"jupyter did not answer in {START_S} s:\n{self.log.read_text()}")

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        """An HTTP call with the token; (status, decoded JSON body)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if token != "":
            request.add_header("Authorization", f"token {token or self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as error:
            text = error.read()
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, text.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        if status != 200:
            raise urllib.error.URLError(f"GET {path}: {status} {body}")
        return body

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


def copy_example(name: str, into: Path) -> Path:
    """An example notebook from `examples/`, copied where a test's JupyterLab serves it."""
    target = into / name
    shutil.copy(REPO / "examples" / name, target)
    return target
