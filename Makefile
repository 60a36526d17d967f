# clinicflow: the two commands are `make up` and `make test`.
# Each installs what it needs: a .venv at the repo root (Python packages from PyPI),
# Apache Kafka's jars (Maven Central, on first use, cached in ~/.cache/clinicflow),
# redis-server, Chromium, promtool and kcat (Debian packages, when missing and running as root).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test venv system-packages lint typecheck unit integration e2e down bench bench-packages soak clean

# re-installs when pyproject.toml is newer than the stamp
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) system-packages

# Debian packages the stack and the browser tests use, installed only when missing. The
# policy-rc.d guard keeps apt from starting a system-wide Redis on 6379 as it installs it.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; fi; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	    status=$$?; if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; [ $$status = 0 ] || exit $$status; \
	  else \
	    echo "note: missing Debian packages:$$missing (as root: apt-get install$$missing)" >&2; \
	  fi; \
	fi

## make up: the whole local stack, the four services and a simulated clinic day; Ctrl-C stops all
up: venv
	$(BIN)/clinicflow up

## make test: lint, type check and every test against a real Kafka, Redis and Chromium.
## The tests start their own Kafka and Redis on free ports (a running `make up` is left alone).
test: venv lint typecheck
	$(BIN)/pytest tests -q --durations=20

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy shared services tools bench

unit: venv
	$(BIN)/pytest tests/unit -q

integration: venv
	$(BIN)/pytest tests/integration -q

e2e: venv
	$(BIN)/pytest tests/e2e -q

## make down: stop a stack started with `clinicflow stack up --detach`
down: venv
	$(BIN)/clinicflow stack down

## make bench: benchmarks (results in bench/results/ and docs/performance.md)
bench: venv bench-packages
	$(BIN)/python -m bench

# the HTTP benchmarks' load generator (wrk, a Debian package), installed only when missing
bench-packages:
	@if ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing: wrk"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null; \
	  else \
	    echo "note: missing Debian package: wrk (as root: apt-get install wrk)" >&2; \
	  fi; \
	fi

## make soak: hours of a simulated clinic network with memory sampled
soak: venv
	$(BIN)/pytest tests/soak -q -m soak -o addopts=""

clean:
	-test -x $(BIN)/clinicflow && $(BIN)/clinicflow stack down
	rm -rf $(VENV) .clinicflow test-artifacts
