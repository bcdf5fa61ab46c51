# Kannon developer commands. `make run` and `make test` work on a fresh clone: both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps bench-deps run test lint generate bench images clean

# Debian packages the tests need: dnsmasq (the real DNS server behind MX lookups in tests),
# chromium (the headless browser of the dashboard test) and opendkim-tools (opendkim-testmsg, the
# DKIM verifier that shares no code with Kannon or dkimpy: tests/peers/opendkim.py).
TEST_DEBS := dnsmasq-base chromium opendkim-tools
# And the benchmark: Postfix's smtp-sink/smtp-source (loopback SMTP limit) and wrk (HTTP load).
BENCH_DEBS := postfix wrk

define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "please install these Debian packages:$$missing"; exit 1; fi; \
	fi
endef

system-deps:
	$(call apt_install,$(TEST_DEBS))

bench-deps:
	$(call apt_install,$(BENCH_DEBS))

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) system-deps

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

bench: install bench-deps
	$(PY) -m bench

images:
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "make images needs a Docker engine"; exit 1; }
	for c in base api validator dispatcher sender smtp tracker stats webhooks migrate; do \
	  docker build -f services/Dockerfile --target $$c -t kannon-$$c:dev . || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
