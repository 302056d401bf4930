"""The operators' kit in `network/`: what cannot run here (systemd, containers, Kubernetes)
is still checked: the config files load, the manifests parse, and every command line they
run is a real `jupyter-syft` command that parses."""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shlex
from pathlib import Path

import pytest

from jupyter_syft import cli
from jupyter_syft.network.config import load_config

pytestmark = pytest.mark.unit

KIT = Path(__file__).resolve().parents[1] / "network"
DATA_ROOT = "/var/lib/jupyter-syft"


def parsed_command(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> argparse.Namespace:
    """What `jupyter-syft ARGV` parses to, without running it."""
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(cli, "run_network_command", lambda args: seen.append(args) or 0)
    assert cli.main(argv) == 0
    return seen[0]


def check_network_start(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Path:
    args = parsed_command(monkeypatch, argv)
    assert (args.command, args.network_command) == ("network", "start")
    return args.config


def test_example_config_loads() -> None:
    config = load_config(KIT / "network.example.toml", {})
    assert config.name and config.join_policy == "manual"
    assert config.data_dir == Path(DATA_ROOT) / "network"
    assert config.listen == "/ip4/0.0.0.0/tcp/4001"


def test_systemd_unit_runs_a_real_command(monkeypatch: pytest.MonkeyPatch) -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(KIT / "jupyter-syft-network.service")
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/jupyter-syft")
    config = check_network_start(monkeypatch, argv[1:])
    assert config == Path("/etc/jupyter-syft/network.toml")
    assert service["StateDirectory"] == Path(DATA_ROOT).name
    assert service["Environment"] == f"JUPYTER_SYFT_HOME={DATA_ROOT}/operator"
    assert "multi-user.target" in unit["Install"]["WantedBy"]


def test_containerfile_runs_a_real_command(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (KIT / "Containerfile").read_text()
    instructions = re.findall(r"^(ENTRYPOINT|CMD|VOLUME|EXPOSE|COPY|ENV) (.+)$", text, re.M)
    found = {k: v for k, v in instructions if k != "COPY"}
    argv = json.loads(found["ENTRYPOINT"]) + json.loads(found["CMD"])
    assert argv[0] == "jupyter-syft"
    config = check_network_start(monkeypatch, argv[1:])
    assert ("COPY", f"network/network.example.toml {config}") in instructions
    assert found["VOLUME"] == DATA_ROOT and found["EXPOSE"] == "4001"
    assert found["ENV"] == f"JUPYTER_SYFT_HOME={DATA_ROOT}/operator"


def kubernetes_documents() -> list[dict]:
    """The manifest's documents: with PyYAML when installed, else a check of the subset used."""
    text = (KIT / "kubernetes.yaml").read_text()
    assert "\t" not in text
    try:
        import yaml
    except ImportError:
        return [_mini_yaml(doc) for doc in text.split("\n---\n")]
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _mini_yaml(document: str) -> dict:
    """Top-level kind, the container args (a flow list), mounts and the ConfigMap's file."""
    doc: dict = {}
    for key in ("apiVersion", "kind"):
        match = re.search(rf"^{key}: (\S+)$", document, re.M)
        assert match, f"a document without {key}"
        doc[key] = match.group(1)
    args = re.search(r"^\s+args: (\[.*\])$", document, re.M)
    if args:
        doc["args"] = json.loads(args.group(1))
    doc["mounts"] = re.findall(r"mountPath: (\S+)", document)
    toml = re.search(r"network\.toml: \|\n((?:    .*\n?)+)", document)
    if toml:
        doc["toml"] = "\n".join(line[4:] for line in toml.group(1).splitlines())
    return doc


def test_kubernetes_manifest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    documents = kubernetes_documents()
    kinds = [d["kind"] for d in documents]
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"]
    config_map, _, deployment, _ = documents
    if "spec" in deployment:  # parsed by PyYAML: follow the real structure
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        args = container["args"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        claims = {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}
        assert claims["data"]["claimName"] == documents[1]["metadata"]["name"]
        assert deployment["spec"]["replicas"] == 1
        toml = config_map["data"]["network.toml"]
    else:
        args, toml = deployment["args"], config_map["toml"]
        mounts = dict(zip(("data", "config"), deployment["mounts"], strict=True))
    config_path = check_network_start(monkeypatch, args)
    assert config_path.parent == Path(mounts["config"])
    (tmp_path / "network.toml").write_text(toml)
    config = load_config(tmp_path / "network.toml", {})
    # The identity and index live on the persistent volume.
    assert config.data_dir.is_relative_to(mounts["data"])


def test_operator_commands_in_the_readme_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (KIT / "README.md").read_text()
    commands = re.findall(r"^\s*(?:\$ )?jupyter-syft (network .+)$", readme, re.M)
    assert {c.split()[1] for c in commands} >= {"start", "approve", "members", "remove"}
    for command in commands:
        args = parsed_command(monkeypatch, shlex.split(command.split("  #")[0]))
        assert args.command == "network"
