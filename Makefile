# imgflow: the README's commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The TFLite artefact, written by every build since it became the default (an older model.toml is Keras).
MODEL_SPEC := var/models/efficientnet-lite0/efficientnet-lite0.tflite

.DEFAULT_GOAL := help
.PHONY: help install lock model browser schemas demo screenshots test test-fast fuzz lint docs format bench bench-dashboard bench-frames bench-autoscale bench-recovery soak soak-memory clean

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# Installs exactly the lock (requirements/dev.txt: every package pinned, with hashes), then
# imgflow itself without dependencies. Production installs requirements/prod.txt (Dockerfile).
$(STAMP): requirements/dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install imgflow with its dev tools, from the lock

UV_EXPORT = $(BIN)/uv export --frozen --no-emit-project --no-dev --format requirements-txt --quiet
lock: ## Re-resolve uv.lock from pyproject.toml and write requirements/{prod,dev}.txt (then make install)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install --quiet uv
	$(BIN)/uv lock $(LOCK_ARGS)
	$(UV_EXPORT) -o requirements/prod.txt
	$(UV_EXPORT) --extra dev -o requirements/dev.txt

$(MODEL_SPEC): | $(STAMP)
	$(BIN)/faust -A imgflow build-model --out $(dir $(MODEL_SPEC))

model: $(MODEL_SPEC) ## Build the default model (EfficientNet-Lite0, offline, once)

demo: $(STAMP) $(MODEL_SPEC) ## Run the whole stack (embedded broker + MongoDB unless BROKER_URL/MONGO_URL are set)
	$(BIN)/python -m devstack.launcher demo $(DEMO_ARGS)

screenshots: $(STAMP) $(MODEL_SPEC) ## README pictures: the dashboard on the real stack in Chromium, the architecture -> docs/images/*.png (~3 min)
	$(BIN)/python scripts/architecture.py
	$(BIN)/python scripts/screenshots.py $(SCREENSHOTS_ARGS)

browser: ## Install Debian's Chromium for the dashboard's browser test (apt-get, needs root)
	bash scripts/install-browser.sh

schemas: ## Install KEDA's schemas for the manifest tests (npm @kubernetes-models/keda into var/schemas)
	bash scripts/install-schemas.sh

test: $(STAMP) browser schemas ## Run the whole test suite (starts embedded services unless BROKER_URL/MONGO_URL are set)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) schemas ## Unit tests only (no broker, no MongoDB, no TensorFlow model)
	$(BIN)/python -m pytest -q -m "not e2e and not slow"

fuzz: $(STAMP) $(MODEL_SPEC) ## 10,000 generated messages per topic through the parsers and the decoder, then 2,000 through a real worker (~30 min)
	IMGFLOW_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q tests/test_fuzz.py
	IMGFLOW_FUZZ_E2E_MESSAGES=2000 $(BIN)/python -m pytest -q tests/test_hostile_e2e.py -k generated

lint: $(STAMP) ## ruff, mypy (strict on the core and agents), import-linter (the layers), mkdocs build --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs: $(STAMP) ## Serve the documentation site on http://127.0.0.1:8000 (mkdocs, live reload)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

format: $(STAMP) ## Apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) $(MODEL_SPEC) ## Speed on camera-sized JPEGs: limit, 1-2 workers, latency, seed baseline -> benchmarks/results/latest.json
	$(BIN)/python -m benchmarks.throughput

bench-autoscale: $(STAMP) $(MODEL_SPEC) ## KEDA's lag rule applied to real workers under spikes, vs one fixed worker -> benchmarks/results/autoscale.json + .png
	$(BIN)/python -m benchmarks.autoscale $(BENCH_AUTOSCALE_ARGS)

bench-frames: $(STAMP) $(MODEL_SPEC) ## Frames at a webcam's rate, publish -> stored, classifier and face model; the Live tab in Chromium -> benchmarks/results/frames.json
	$(BIN)/python -m benchmarks.frames $(BENCH_FRAMES_ARGS)

bench-dashboard: $(STAMP) ## Dashboard and query cost at 10k, 100k, 1M stored images -> benchmarks/results/dashboard.json (BENCH_DASHBOARD_ARGS="--sizes 10000,100000")
	$(BIN)/python -m benchmarks.dashboard $(BENCH_DASHBOARD_ARGS)

MINUTES ?= 60
RATE ?= 20
soak-memory: $(STAMP) $(MODEL_SPEC) ## Memory of every demo process over time -> benchmarks/results/memory.json + .png (MINUTES=60 RATE=20)
	$(BIN)/python -m benchmarks.memory --minutes $(MINUTES) --rate $(RATE)

soak: $(STAMP) $(MODEL_SPEC) ## Kill/stop workers and MongoDB under load; check exactly-once and no stall (SOAK_ARGS="--runs 5")
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

bench-recovery: $(STAMP) $(MODEL_SPEC) ## Worker restart with ~100k table keys: memory:// vs rocksdb://
	$(BIN)/python -m benchmarks.recovery

clean: ## Remove the virtual environment and local state (var/)
	rm -rf $(VENV) var
