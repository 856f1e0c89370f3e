# Two commands for a new user on a fresh machine:
#   make run    set up (if needed), then run the whole pipeline embedded on the `tiny` profile
#   make test   set up (if needed, with test tools), start what the tests need, run every test
SHELL := /bin/bash
PY := .venv/bin/python
PROFILE ?= tiny

.PHONY: setup setup-dev run test proto bench clean

setup:
	@scripts/install.sh

setup-dev:
	@scripts/install.sh --dev

run: setup
	$(PY) -m shared.cli run --profile $(PROFILE)

test: setup-dev
	@scripts/test.sh

# Regenerate agentforge/v1/* from proto/ (a test fails when the committed code differs).
proto: setup-dev
	@scripts/gen_proto.sh

bench: setup-dev
	$(PY) bench/store_bench.py

clean:
	rm -rf .venv .agentforge .pytest_cache
