# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   create the environment, install, materialize the whole asset graph on the synthetic default
#   make test   create the environment, install, run the full test suite (what CI runs)
# (`make test-fast` skips the tests marked slow: a few minutes.)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export PYTHONUNBUFFERED := 1
# The demo window: the synthetic internet's default days (settings.py); a range runs in one Dagster run.
DEMO_RANGE ?= 2024-07-01...2024-07-02
# Where the UIs listen: `make dev PORT=3300`, `make mlflow-ui PORT=5050 HOST=0.0.0.0`.
HOST ?= 127.0.0.1
dev: PORT ?= 3000
mlflow-ui: PORT ?= 5000
# The data root as the project settings see it (the PINGLLM_CONFIG file, PINGLLM_DATA_ROOT, else var/).
DATA_ROOT = $(shell $(BIN)/python -c 'from pingllm_core.settings import load_settings; print(load_settings().data_root)')

# The laptop recipe: a week of the synthetic internet, the tiny tier trained 9 minutes (docs/ABLATIONS.md).
LAPTOP_ROOT ?= $(CURDIR)/var/laptop
LAPTOP_RANGE ?= 2024-07-01...2024-07-07

# Real data without the internet: the RIPE Atlas sample in tests/data/ripe-public/v6-first, served on loopback.
RIPE_SAMPLE_ROOT ?= $(CURDIR)/var/ripe-sample
RIPE_SAMPLE_PORT ?= 8765

.PHONY: install browser demo laptop ripe-sample test test-fast dev mlflow-ui lint clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/activate

install: $(BIN)/activate
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(CURDIR)/dagster_instance.yaml $(DAGSTER_HOME)/dagster.yaml

# Headless Chromium for the browser test of the Dagster UI (Playwright drives Debian's package; no browser
# download). Idempotent: installs only when /usr/bin/chromium is missing (CI runs as root).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

demo: install
	$(BIN)/dg launch --assets '*' --partition-range $(DEMO_RANGE)
	@echo "Done. Outputs under var/, the DuckDB catalog in var/pingllm.duckdb; run history: make dev"

laptop: install
	mkdir -p $(LAPTOP_ROOT)/dagster_home && ln -sf $(CURDIR)/dagster_instance.yaml $(LAPTOP_ROOT)/dagster_home/dagster.yaml
	DAGSTER_HOME=$(LAPTOP_ROOT)/dagster_home PINGLLM_DATA_ROOT=$(LAPTOP_ROOT) PINGLLM_END_DAY=$(lastword $(subst ..., ,$(LAPTOP_RANGE))) \
		$(BIN)/dg launch --assets 'group:data or group:model' --partition-range $(LAPTOP_RANGE) \
		--config pingllm_assets/recipes/laptop.yaml
	@echo "Done. Outputs under $(LAPTOP_ROOT); the evaluation in $(LAPTOP_ROOT)/evaluation/report.md"

ripe-sample: install
	mkdir -p $(RIPE_SAMPLE_ROOT)/dagster_home
	ln -sf $(CURDIR)/dagster_instance.yaml $(RIPE_SAMPLE_ROOT)/dagster_home/dagster.yaml
	$(BIN)/python -m http.server $(RIPE_SAMPLE_PORT) --bind 127.0.0.1 --directory tests/data/ripe-public/v6-first \
		>/dev/null 2>&1 & server=$$!; trap "kill $$server" EXIT; sleep 1; \
	DAGSTER_HOME=$(RIPE_SAMPLE_ROOT)/dagster_home PINGLLM_SOURCE=ripe PINGLLM_DATA_ROOT=$(RIPE_SAMPLE_ROOT) PINGLLM_START_DAY=2019-04-24 PINGLLM_END_DAY=2019-04-24 \
	PINGLLM_RIPE_BASE_URL=http://127.0.0.1:$(RIPE_SAMPLE_PORT) \
		$(BIN)/dg launch --assets 'group:data or group:model' --partition-range 2019-04-24...2019-04-24 \
		--config pingllm_assets/recipes/ripe_sample.yaml
	@echo "Done. Outputs under $(RIPE_SAMPLE_ROOT); the evaluation in $(RIPE_SAMPLE_ROOT)/evaluation/report.md"

test: install browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The quick loop: every test but those marked slow (over ~20 s on 2 cores: the end-to-end runs, training).
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

dev: install
	$(BIN)/dg dev --host $(HOST) --port $(PORT)

mlflow-ui: install
	@$(BIN)/python -c 'from pingllm_core.model.tracking_mlflow import experiment_ui_url as url; \
		print("MLflow UI, experiment pingllm:", url("$(DATA_ROOT)", "$(HOST)", $(PORT)))'
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(DATA_ROOT)/mlflow/mlflow.db -h $(HOST) -p $(PORT)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf var .dagster_home
