# Every target that needs Python depends on the venv stamp, so a fresh clone needs nothing
# but `make run` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

USERS ?= 100
DURATION ?= 60s
# Seconds between an agent's posts; empty: each agent follows its policy's upload_interval_s.
INTERVAL ?=
PROCESSES ?= 0
# make chaos: seconds agents post, agents, faults of every kind, seed (empty: a random one).
CHAOS_DURATION ?= 180
CHAOS_AGENTS ?= 16
CHAOS_FAULTS ?= 5
SEED ?=
# Generated cases per API operation and per decoder/parser in `make fuzz`.
FUZZ_EXAMPLES ?= 50

LINTED := protocol gateway backend devsim chaos tests bench loadtests scripts

.PHONY: run test lint typecheck pytest system-deps bench loadtest loadtest-headless chaos fuzz screenshots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/devstack.py

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy

# nginx for the reverse-proxy topology test; installed with apt-get when missing (CI is root).
system-deps:
	bash scripts/system-deps.sh

pytest: $(STAMP) system-deps
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Hostile input against real servers and every decoder; prints one JSON object.
fuzz: $(STAMP)
	@$(BIN)/python scripts/fuzz.py --examples $(FUZZ_EXAMPLES)

loadtest: $(STAMP)
	PYTHONPATH=. $(BIN)/locust -f loadtests/agents.py --host http://127.0.0.1:8080 --web-host 127.0.0.1 --web-port 8089

loadtest-headless: $(STAMP)
	$(BIN)/python -m loadtests.headless --users $(USERS) --duration $(DURATION) \
		--processes $(PROCESSES) $(if $(INTERVAL),--interval-s $(INTERVAL))

# Prints one JSON object (exit 1 when anything acknowledged was lost or doubled, or a command
# was stuck or ran twice).
chaos: $(STAMP)
	@$(BIN)/python -m chaos --duration $(CHAOS_DURATION) --agents $(CHAOS_AGENTS) \
		--faults-each $(CHAOS_FAULTS) $(if $(SEED),--seed $(SEED))

# A PNG of each dashboard page into docs/screenshots/, from a real site in Debian's chromium.
screenshots: $(STAMP) system-deps
	PYTHONPATH=. $(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
