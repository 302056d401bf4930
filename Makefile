# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
LAB_SOURCES := package.json package-lock.json tsconfig.json $(wildcard labextension/*/*)
CHROMIUM := /usr/bin/chromium

.PHONY: demo demo-headless test test-fast fuzz screenshots lint bench bench-ray bench-network bench-peers clean

# The JupyterLab extension's build tools, exactly as locked (see .npmrc for why the lock).
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

# Debian's chromium for the browser tests (`playwright install` cannot download browsers here).
$(CHROMIUM):
	apt-get update
	apt-get install -y chromium chromium-driver

# torch==2.13.0 first: its CPU build lies on these machines' disk; a looser range would pull a
# multi-GB CUDA build (see TOOLCHAIN.md). The project's own range accepts it.
# The install builds the JupyterLab extension (npm run build:prod, via hatch-jupyter-builder)
# and installs it with the kernelspec and the server extension's config.
# The job sandbox's seccomp filter needs the system's libseccomp (Debian's libseccomp2).
$(STAMP): pyproject.toml kernels/syft/kernel.json $(NODE_STAMP) $(LAB_SOURCES)
	ldconfig -p | grep -q libseccomp.so.2 || (apt-get update && apt-get install -y libseccomp2)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[demo,test]'
	touch $(STAMP)

# JupyterLab with the demo network, both sides' notebooks and the Syft sidebar; prints its URL.
# Your notebooks in demo-data/notebooks are kept from run to run; `make demo RESET=1` puts the
# shipped ones (examples/) back.
demo: $(STAMP)
	$(BIN)/jupyter-syft demo --lab $(if $(RESET),--reset)

# The scripted demo in the terminal, for machines without a browser.
demo-headless: $(STAMP)
	$(BIN)/jupyter-syft demo

test: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest

# The unit tests only (no node, kernel or browser started): well under a minute.
test-fast: $(STAMP)
	$(BIN)/pytest -m unit -q

# The long wire-fuzzing run (100,000 cases against a live domain and network node).
fuzz: $(STAMP)
	$(BIN)/python benchmarks/fuzz_wire.py

# The README's screenshots, from the browser tests (every step's are in tests/browser/artifacts).
screenshots: $(STAMP) $(CHROMIUM)
	SYFT_SCREENSHOTS=docs/screenshots $(BIN)/pytest tests/browser

# Style, the layering (import-linter's contracts in pyproject.toml) and types (mypy).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_foundation.py
	$(BIN)/python benchmarks/bench_kernel.py
	$(BIN)/python benchmarks/bench_privacy.py
	$(BIN)/python benchmarks/bench_crypto.py
	$(BIN)/python benchmarks/bench_he_domain.py
	$(BIN)/python benchmarks/bench_secagg_domains.py
	$(BIN)/python benchmarks/bench_federated.py
	$(BIN)/python benchmarks/bench_environments.py
	$(BIN)/python benchmarks/bench_sandbox.py
	$(BIN)/python benchmarks/bench_load.py
	$(MAKE) $(CHROMIUM)
	$(BIN)/python benchmarks/bench_sidebar.py

# The local pool against a two-node Ray cluster in a network namespace (root): ~8 minutes.
bench-ray: $(STAMP)
	$(BIN)/python benchmarks/bench_ray.py

# 20 domain processes and a network node: ~12 minutes on 2 cores.
bench-network: $(STAMP)
	$(BIN)/python benchmarks/bench_network.py

# PySyft 0.9.5 and Flower in venvs under .bench/ (made once), timed beside ours in one run:
# ~15 minutes on 2 cores. Logs in .bench/logs/.
bench-peers: $(STAMP)
	$(BIN)/python benchmarks/bench_peers.py

clean:
	rm -rf $(VENV) demo-data .bench node_modules lib jupyter_syft/labextension
