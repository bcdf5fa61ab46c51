# Kannon developer commands. `make run` and `make test` work on a fresh clone: both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint generate bench images clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start Kannon standalone with the example config (demo sender, no external services).
run: install
	$(VENV)/bin/kannon standalone --config examples/standalone/kannon.yaml

## The whole test suite, against real PostgreSQL, nats-server, SMTP and DNS servers it starts itself.
test: install
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/ruff format --check src tests scripts bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

generate: install
	$(PY) scripts/generate_proto.py

bench: install
	$(PY) -m bench

images:
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "make images needs a Docker engine"; exit 1; }
	for c in base api validator dispatcher sender smtp tracker stats migrate; do \
	  docker build -f services/Dockerfile --target $$c -t kannon-$$c:dev . || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
