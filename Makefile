# riskstream — targets a newcomer can guess. Everything runs inside .venv, created on demand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install prometheus broker demo models test e2e reliability bench lint format unit clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v promtool >/dev/null || $(MAKE) --no-print-directory prometheus
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install riskstream with training and dev extras

prometheus: ## install the Prometheus server and promtool (Debian package; the tests run them)
	@command -v promtool >/dev/null || { \
	  if command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "install Prometheus (prometheus, promtool) with your package manager"; exit 1; fi; }
	@promtool --version | head -1

broker: $(STAMP) ## run the embedded Kafka-compatible broker on 127.0.0.1:9092
	$(BIN)/riskstream broker

demo: $(STAMP) ## the whole loop: embedded broker, worker, synthetic events, live view
	$(BIN)/riskstream demo

# The models shipped inside the package (stream/models), made by riskstream's own code from
# seeded synthetic data: the demo and the stream tests need no ../shared data and no training.
SYNTH := build/synthetic
models: $(STAMP) ## rebuild the shipped default models from seeded synthetic data
	rm -rf stream/models && mkdir -p $(SYNTH)
	$(BIN)/riskstream simulate transactions --seed 1 --out $(SYNTH)/transactions.csv.gz
	$(BIN)/riskstream train fraud --data $(SYNTH)/transactions.csv.gz --out stream/models --seed 0
	$(BIN)/riskstream simulate market --seed 1 --out $(SYNTH)/market.csv --vix-out $(SYNTH)/vix.csv
	$(BIN)/riskstream train market --data $(SYNTH)/market.csv --vix $(SYNTH)/vix.csv --out stream/models --seed 0
	$(BIN)/riskstream simulate credit --seed 1 --rows 20000 --out $(SYNTH)/credit.csv
	$(BIN)/riskstream train tabular --data $(SYNTH)/credit.csv --label SeriousDlqin2yrs --name credit --out stream/models --seed 0

lint: $(STAMP) ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff: fix what can be fixed and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

unit: $(STAMP) ## fast tests only (no broker, no training)
	$(BIN)/pytest -m "not broker and not slow" -q

test: $(STAMP) ## everything CI runs: lint, then the test suite
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q --durations=10

e2e: $(STAMP) ## only the end-to-end stream tests (handbook and market replays through real workers)
	$(BIN)/pytest -q -m e2e

reliability: $(STAMP) ## only the crash, rebalance and broker-trouble tests
	$(BIN)/pytest -q -m crash

bench: $(STAMP) ## the performance benchmark (prints a table; not part of the tests)
	$(BIN)/python bench/run.py

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
