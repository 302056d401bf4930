"""Declared environments: the packages a job asks for, built by uv, hash-locked and cached.

A request may declare requirements (`requirements=["statsmodels==0.14.4"]`). Before its job
runs, the node resolves them against its own installed packages, locks the result with hashes,
installs it into `DIR/environments/<lock hash>/site-packages` and hands that folder to the job,
which puts it first on `sys.path` in the same warm worker: a cache hit costs what a plain job
costs. `Environments.prepare` is the front door; `check_requirements` and `check_allowed` run
at submission, so a request the node could never build is refused before anyone reviews it.

Threat model, one line per layer:
- wheels only (`--only-binary :all:`; no URL, VCS or local path in a requirement): building
  an sdist runs its setup code in the node, with the node's files and network; unpacking a wheel
  runs nothing, so no code a scientist chose runs outside the job's sandbox.
- hash lock (`uv pip compile --generate-hashes`, then install with `--require-hashes`): the
  files installed are the files resolved; an index, mirror or cache that swaps a file between
  the two steps fails the build instead of reaching a job.
- a separate build step in the node, the only step with network: jobs never get network, so a
  package cannot fetch more code or send data anywhere; what a job imports is already on disk.
- layered on the domain's own packages, each constrained to its installed version and left out
  of the lock: a requirement cannot replace torch, numpy, pandas, pyarrow (which workers
  preload) or anything else the node runs on; a direct one that would is refused at
  submission, and a dependency that needs another version fails to resolve.
- an atomic cache: built in `.build-*`, renamed into place when complete, one build at a time
  per key; a build killed halfway leaves only a `.build-*` folder, removed at the next start.
What it does not stop: a package from the index is code the job runs, bounded only by the
job's sandbox; the owner's policy (`requirements="none"` or a list of names) says which
packages a request may ask for, and the reviewer sees them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import cache
from importlib.metadata import distributions
from pathlib import Path

import trio
import uv
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from jupyter_syft.wire.messages import RequirementsPolicy
from jupyter_syft.words import counted

PYPI = "https://pypi.org/simple"
MAX_REQUIREMENTS = 32
MAX_REQUIREMENT_CHARS = 200
MAX_MESSAGE_CHARS = 4000
BUILD_TIMEOUT_S = 900.0
_NOT_FROM_INDEX = re.compile(r"://|^(git|hg|svn|bzr)\+|^file:|^[./~\\]|\.(whl|zip|tar\.gz|tgz)$")
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


class RequirementError(ValueError):
    """A requirement the node will not build; the message says what is wrong."""


class BuildError(Exception):
    """The environment could not be built; the message is the resolver's or installer's."""


@dataclass(frozen=True)
class Environment:
    site_packages: Path  # what the job puts first on sys.path
    lock_hash: str
    built: bool  # False: taken from the cache
    seconds: float
    packages: list[str]  # name==version of each package the lock installs


@cache
def installed() -> dict[str, str]:
    """The node's own distributions, by canonical name: what every job already has."""
    found: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def check_requirements(requirements: list[str]) -> list[str]:
    """Each requirement in canonical form, sorted; RequirementError if one is not allowed."""
    if len(requirements) > MAX_REQUIREMENTS:
        raise RequirementError(f"at most {MAX_REQUIREMENTS} requirements, not {len(requirements)}")
    checked = {str(_requirement(text)) for text in requirements}
    return sorted(checked)


def _requirement(text: str) -> Requirement:
    text = text.strip()
    if not text or len(text) > MAX_REQUIREMENT_CHARS:
        raise RequirementError(f"a requirement has 1 to {MAX_REQUIREMENT_CHARS} characters")
    if text.startswith("-"):
        raise RequirementError(
            f"requirement {text!r}: options are not allowed, only a package name and versions"
        )
    if _NOT_FROM_INDEX.search(text):
        raise RequirementError(
            f"requirement {text!r}: a URL, VCS or local path is not allowed; name a package "
            "of the domain's package index (wheels only)"
        )
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise RequirementError(f"requirement {text!r} is not valid: {exc}") from exc
    if requirement.url:
        raise RequirementError(
            f"requirement {text!r}: a direct reference (name @ URL) is not allowed; name a "
            "package of the domain's package index (wheels only)"
        )
    name = requirement.name = canonicalize_name(requirement.name)
    version = installed().get(name)
    if version is not None and not requirement.specifier.contains(version, prereleases=True):
        raise RequirementError(
            f"requirement {text!r} would replace {name} {version}, which this domain runs on "
            f"and every job already has: ask for a version that {version} satisfies, or leave "
            "it out"
        )
    return requirement


def check_requirements_policy(policy: RequirementsPolicy) -> RequirementsPolicy:
    """An owner's per-dataset setting in canonical form: "any", "none" or a list of names."""
    if isinstance(policy, str):
        return policy
    for name in policy:
        if not _PROJECT_NAME.match(name):
            raise RequirementError(f"{name!r} is not a package name")
    return sorted({canonicalize_name(name) for name in policy})


def check_allowed(requirements: list[str], policy: RequirementsPolicy, dataset: str) -> None:
    """RequirementError, saying which and why, if the dataset's policy forbids a requirement."""
    if not requirements or policy == "any":
        return
    if policy == "none":
        raise RequirementError(
            f"the owner's policy on dataset {dataset!r} allows no requirements: "
            "the code must use the domain's own packages"
        )
    for text in requirements:
        name = _name(text)
        if name not in policy:
            allowed = ", ".join(policy) or "none"
            raise RequirementError(
                f"the owner's policy on dataset {dataset!r} does not allow {name} "
                f"(allowed: {allowed})"
            )


class Environments:
    """The environments of one domain, under `root` (DIR/environments).

    `index` is a package index URL (default PyPI) or a local folder of wheels (then no index
    is asked at all: `--no-index --find-links`).
    """

    def __init__(self, root: Path, index: str = PYPI) -> None:
        self.root = root
        self.index = str(Path(index).resolve()) if Path(index).is_dir() else index
        (root / "resolved").mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(".build-*"):  # builds killed halfway
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in (root / "resolved").glob(".*"):  # a record killed while being written
            leftover.unlink()
        self._uv = uv.find_uv_bin()
        pins = {name: _public(version) for name, version in installed().items()}
        self._base = sorted(f"{name}=={version}" for name, version in pins.items() if version)
        self._ready: dict[str, Environment] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def prepare(
        self, requirements: list[str], on_stage: Callable[[str], None] = lambda stage: None
    ) -> Environment:
        """The environment for these (checked) requirements: from the cache, or built now,
        telling `on_stage` what the build is doing (the node's words, shown to the scientist).

        BuildError with the resolver's or installer's message if it cannot be built.
        """
        key = self._key(requirements)
        async with self._locked(key):
            found = self.cached(requirements)
            if found is None:
                found = await self._build(key, requirements, on_stage)
                self._ready[key] = replace(found, built=False, seconds=0.0)  # now a cache hit
            return found

    def cached(self, requirements: list[str]) -> Environment | None:
        """The environment if it is built already (no waiting: a job can start at once)."""
        key = self._key(requirements)
        found = self._ready.get(key) or self._from_disk(key)
        if found is not None:
            self._ready[key] = found
        return found

    def _key(self, requirements: list[str]) -> str:
        """What decides the lock: the requirements, the index, Python and the base packages."""
        spec = [requirements, self.index, sys.version, self._base]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()

    def _from_disk(self, key: str) -> Environment | None:
        """An environment built for `key` before (by this node or an earlier run of it)."""
        try:
            lock_hash = (self.root / "resolved" / key).read_text()
        except FileNotFoundError:
            return None
        folder = self.root / lock_hash
        if not (folder / "site-packages").is_dir():
            return None
        lock = (folder / "requirements.lock").read_text()
        return Environment(folder / "site-packages", lock_hash, False, 0.0, _pins(lock))

    async def _build(
        self, key: str, requirements: list[str], on_stage: Callable[[str], None]
    ) -> Environment:
        started = time.monotonic()
        build = self.root / f".build-{uuid.uuid4().hex}"
        try:
            build.mkdir()
            # What the domain has already (checked to satisfy them at submission) is not
            # asked of the index: only packages it lacks are resolved.
            needed = [r for r in requirements if _name(r) not in installed()]
            (build / "requirements.in").write_text("".join(r + "\n" for r in needed))
            (build / "constraints.txt").write_text("".join(p + "\n" for p in self._base))
            (build / "requirements.lock").write_text("")
            if needed:
                on_stage(f"resolving {counted(len(needed), 'requirement')}")
                await self._uv_run("could not resolve the requirements", self._compile(build))
            lock = (build / "requirements.lock").read_text()
            lock_hash = hashlib.sha256(lock.encode()).hexdigest()
            folder = self.root / lock_hash
            async with self._locked(lock_hash):
                built = not folder.is_dir()
                if built:
                    (build / "site-packages").mkdir()
                    if _pins(lock):
                        on_stage(f"installing {counted(len(_pins(lock)), 'package')}")
                        await self._uv_run("could not install them", self._install(build))
                    os.rename(build, folder)  # complete, or not there at all
            _write_atomically(self.root / "resolved" / key, lock_hash)
        except OSError as exc:  # e.g. the disk is full: the request fails, the node carries on
            message = str(exc).replace(str(self.root), "")
            raise BuildError(f"could not build the environment: {message}") from exc
        finally:
            shutil.rmtree(build, ignore_errors=True)
        seconds = time.monotonic() - started
        on_stage("done")
        return Environment(folder / "site-packages", lock_hash, built, seconds, _pins(lock))

    def _compile(self, build: Path) -> list[str]:
        """Resolve against the base packages (constrained, left out of the lock), with hashes."""
        command = [self._uv, "pip", "compile", str(build / "requirements.in")]
        command += ["--constraint", str(build / "constraints.txt")]
        command += ["--output-file", str(build / "requirements.lock"), "--generate-hashes"]
        command += ["--no-header", "--no-annotate", "--quiet"]
        for pin in self._base:
            command += ["--no-emit-package", pin.split("==")[0]]
        return command + self._common()

    def _install(self, build: Path) -> list[str]:
        """Exactly the lock, with bytecode compiled now: jobs cannot write it (read-only), and
        compiling a large package at every import would cost each job seconds."""
        command = [self._uv, "pip", "install", "--requirements", str(build / "requirements.lock")]
        command += ["--target", str(build / "site-packages"), "--require-hashes", "--no-deps"]
        return [*command, "--compile-bytecode", "--quiet", *self._common()]

    def _common(self) -> list[str]:
        source = ["--no-index", "--find-links", self.index]
        if not Path(self.index).is_dir():
            source = ["--index-url", self.index]
        return ["--no-config", "--python", sys.executable, "--only-binary", ":all:", *source]

    async def _uv_run(self, what: str, command: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
        env |= {"UV_CACHE_DIR": str(self.root / ".uv-cache"), "NO_COLOR": "1"}
        try:
            with trio.fail_after(BUILD_TIMEOUT_S):
                done = await trio.run_process(
                    command, capture_stdout=True, capture_stderr=True, check=False, env=env
                )
        except trio.TooSlowError:
            raise BuildError(f"{what}: uv took longer than {BUILD_TIMEOUT_S:g} s") from None
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip().replace(str(self.root), "")
            if done.returncode < 0:
                message = f"uv was killed by signal {-done.returncode}"
            raise BuildError(f"{what}: {message[:MAX_MESSAGE_CHARS]}")

    @asynccontextmanager
    async def _locked(self, key: str) -> AsyncIterator[None]:
        """One build at a time per key; other keys build side by side."""
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            yield


def _name(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


def _public(version: str) -> str:
    """`2.13.0+cpu` -> `2.13.0`: the index's version that an installed local build matches."""
    try:
        return Version(version).public
    except InvalidVersion:
        return ""


def _pins(lock: str) -> list[str]:
    """name==version of each package in a hash-locked requirements file."""
    return [line.split()[0] for line in lock.splitlines() if line[:1] not in ("", " ", "#")]


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)
