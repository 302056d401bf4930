"""`jupyter-syft demo --lab`: the demo network in the background, JupyterLab in front.

It runs `jupyter-syft demo --keep-running` (a network, three hospitals, the scripted requests)
as a child process, then starts JupyterLab on 127.0.0.1 with the scientist's and the owner's
notebooks open (the federated learning notebook beside them) and the Syft sidebar acting as
the demo's people: the scientist and the hospitals' owners. Both children get their own
session, so Ctrl-C reaches only this process, which stops JupyterLab and (through the demo)
the nodes at once, saying what it stops. The next run starts with a fresh network and domains
but keeps the user's notebooks in DIR/notebooks (`--reset` puts the shipped ones back).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path

from jupyter_syft.demo import HOSPITALS, NOTEBOOKS_DIR, STOP_S, stop_all

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# Lab settings for the demo only (overrides.json): no "notified about Jupyter news?" prompt.
LAB_SETTINGS = ROOT / "jupyter-config" / "lab-settings"
RESET_HINT = "`make demo RESET=1` (or `jupyter-syft demo --lab --reset`) puts the shipped ones back"
OPENED = ("scientist.ipynb", "owner.ipynb")  # side by side in the workspace
NOTEBOOKS = (*OPENED, "federated.ipynb")
START_S = 180.0  # the scripted demo runs first (~10-30 s on a busy machine)
PREFERRED_PORT = 8888


def run_lab_demo(folder: Path, open_browser: bool = True, reset: bool = False) -> int:
    folder = folder.resolve()
    demo_file = folder / "demo.json"
    demo_file.unlink(missing_ok=True)  # a file left by a killed run is not this run's
    say(prepare_notebooks(folder / NOTEBOOKS_DIR, reset))
    demo = _start([sys.executable, "-m", "jupyter_syft.cli", "demo", "--keep-running",
                   "--dir", str(folder)])  # fmt: skip
    lab = None
    try:
        _wait_for(demo_file, demo)
        lab, url = _start_lab(folder, demo_file)
        say(f"\nJupyterLab: {url}\n(Ctrl-C stops JupyterLab, the network and the domains)\n")
        if open_browser and _has_display():
            webbrowser.open(url)
        lab.wait()
        return 1  # JupyterLab stopped by itself
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(lab, demo)


def say(text: str) -> None:
    """One line of this command's output, in order with the demo's (which shares stdout)."""
    print(text, flush=True)


def _stop(lab: subprocess.Popen | None, demo: subprocess.Popen) -> None:
    """JupyterLab and the demo's nodes at once: SIGINT makes the demo stop its nodes (saying
    which), as Ctrl-C would; this process says when each part is done."""
    if demo.poll() is not None and (lab is None or lab.poll() is not None):
        return  # nothing left running (the demo failed: it said why)
    started = time.monotonic()
    if demo.poll() is None:
        demo.send_signal(signal.SIGINT)
    if lab is not None:
        stop_all({"JupyterLab and its kernels": lab}, say)
    try:
        demo.wait(timeout=STOP_S + 5)  # its own nodes' bound, and a little to exit
    except subprocess.TimeoutExpired:
        demo.kill()
        demo.wait()
    if demo.returncode != 0:  # 130: stopped before its script's end
        say(f"the demo ended with exit code {demo.returncode}")
    say(f"stopped everything in {time.monotonic() - started:.1f} s")


def prepare_notebooks(notebooks: Path, reset: bool) -> str:
    """The notebooks JupyterLab opens: the user's copies are kept (their work), missing ones
    are copied from examples/ (all of them with `reset`). Returns what was done, to print."""
    notebooks.mkdir(parents=True, exist_ok=True)
    kept = [name for name in NOTEBOOKS if (notebooks / name).exists() and not reset]
    copied = [name for name in NOTEBOOKS if name not in kept]
    for name in copied:
        (notebooks / name).write_text(_as_opened(EXAMPLES / name))
    done = [f"kept yours: {', '.join(kept)}"] if kept else []
    if copied:
        shipped = "reset to the shipped ones" if reset else "copied from examples/"
        done.append(f"{shipped}: {', '.join(copied)}")
    hint = f". {RESET_HINT}" if kept else ""
    return f"notebooks in {notebooks}: {'; '.join(done)}{hint}"


def _as_opened(notebook: Path) -> str:
    """The notebook as JupyterLab leaves it on opening, so that opening does not mark it
    unsaved: Lab writes the kernel's language_info (with this Python's version) into it."""
    from ipykernel.ipkernel import IPythonKernel  # both kernels' (the Syft kernel's base)

    content = json.loads(notebook.read_text())
    content["metadata"]["language_info"] = IPythonKernel.language_info
    return json.dumps(content, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _has_display() -> bool:
    """Without one, `webbrowser` may start a text browser in this terminal: print only."""
    graphical = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    return sys.platform in ("darwin", "win32") or bool(graphical)


def _start(command: list[str], **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen(command, start_new_session=True, **kwargs)  # type: ignore[call-overload]


def _wait_for(demo_file: Path, demo: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_S
    while not demo_file.exists():
        if demo.poll() is not None:
            raise SystemExit(f"the demo stopped (exit code {demo.returncode}); see above")
        if time.monotonic() > deadline:
            raise SystemExit(f"the demo did not write {demo_file} in {START_S:.0f} s")
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", PREFERRED_PORT))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_lab(folder: Path, demo_file: Path) -> tuple[subprocess.Popen, str]:
    """JupyterLab over copies of examples/, its sidebar acting as the scientist and both owners."""
    demo = json.loads(demo_file.read_text())
    scientist_home = Path(demo["scientist_home"])
    owner_homes = [folder / "homes" / name for name in HOSPITALS]
    port, token = _free_port(), secrets.token_hex(24)
    notebooks = folder / NOTEBOOKS_DIR  # copies: running them leaves examples/ untouched
    env = {
        **os.environ,
        "JUPYTER_SYFT_HOME": str(scientist_home),  # kernels act as the scientist...
        "JUPYTER_SYFT_DEMO": str(demo_file),  # ...and find the demo (owner.ipynb: its owner)
    }
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={notebooks}", f"--LabApp.workspaces_dir={folder / 'workspaces'}",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--LabApp.app_settings_dir={LAB_SETTINGS}",
        f"--SyftServer.demo={demo_file}", *(["--allow-root"] if os.geteuid() == 0 else []),
        *(f"--SyftServer.homes={home}" for home in [scientist_home, *owner_homes]),
    ]  # fmt: skip
    log = (folder / "jupyterlab.log").open("ab")
    lab = _start(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    _open_notebooks(base, token, lab)
    return lab, f"{base}/lab/workspaces/syft-demo?token={token}"


def _open_notebooks(base: str, token: str, lab: subprocess.Popen) -> None:
    """A workspace with both notebooks side by side and the Syft sidebar open."""
    ids = [f"notebook:{name}" for name in OPENED]
    workspace = {
        "data": {
            "layout-restorer:data": {
                "main": {
                    "dock": {
                        "type": "split-area",
                        "orientation": "horizontal",
                        "sizes": [0.5, 0.5],
                        "children": [
                            {"type": "tab-area", "currentIndex": 0, "widgets": [i]} for i in ids
                        ],
                    },
                    "current": ids[0],
                },
                "left": {"collapsed": False, "visible": True, "current": "jp-syft-sidebar"},
            },
            **{f"notebook:{n}": {"data": {"path": n, "factory": "Notebook"}} for n in OPENED},
        },
        "metadata": {"id": "syft-demo"},
    }
    request = urllib.request.Request(
        f"{base}/lab/api/workspaces/syft-demo",
        data=json.dumps(workspace).encode(),
        method="PUT",
        headers={"Authorization": f"token {token}"},
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(request, timeout=10).close()
            return
        except (OSError, urllib.error.URLError):
            if lab.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("JupyterLab did not start; see jupyterlab.log") from None
            time.sleep(0.2)
