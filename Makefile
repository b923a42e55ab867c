# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   create the environment, install, materialize the whole asset graph on the synthetic default
#   make test   create the environment, install, run the full test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export PYTHONUNBUFFERED := 1
# The demo window: the synthetic internet's default days (settings.py); a range runs in one Dagster run.
DEMO_RANGE ?= 2024-07-01...2024-07-02

.PHONY: install browser demo test dev mlflow-ui lint clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/activate

install: $(BIN)/activate
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(CURDIR)/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Headless Chromium for the browser test of the Dagster UI (Playwright drives Debian's package; no browser
# download). Idempotent: installs only when /usr/bin/chromium is missing (CI runs as root).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

demo: install
	$(BIN)/dagster asset materialize -m pingllm_assets.definitions --select '*' --partition-range $(DEMO_RANGE)
	@echo "Done. Outputs under var/; run history: make dev (http://127.0.0.1:3000)"

test: install browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

dev: install
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/var/mlflow/mlflow.db -h 127.0.0.1 -p 5000

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf var .dagster_home
