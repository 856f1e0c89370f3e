# Two commands for a new user on a fresh machine:
#   make run    set up (if needed), then run the whole pipeline embedded on the `tiny` profile
#   make test   set up (if needed, with test tools), start what the tests need, run every test
SHELL := /bin/bash
PY := .venv/bin/python
PROFILE ?= tiny

.PHONY: setup setup-dev run test proto bench clean up-local images

setup:
	@scripts/install.sh

setup-dev:
	@scripts/install.sh --dev

run: setup
	$(PY) -m shared.cli run --profile $(PROFILE) --approve-failed-gates "make run: a demo profile; every failed gate is listed in the summary"

test: setup-dev
	@scripts/test.sh

# Every service as a local process, SeaweedFS as S3, auth on: the distributed shape without Docker (Ctrl-C
# stops it). Options: make up-local UP_LOCAL_ARGS="--dir DIR --base-port P"; see `agentforge up-local -h`.
up-local: setup-dev
	$(PY) -m shared.cli up-local $(UP_LOCAL_ARGS)

# Regenerate agentforge/v1/* from proto/ (a test fails when the committed code differs).
proto: setup-dev
	@scripts/gen_proto.sh

bench: setup-dev
	$(PY) bench/store_bench.py

# Build the seven service images with Docker (BuildKit), named and tagged as shared/deploy/topology.py says.
# The shared stages are built once and reused from the build cache. Needs only python3 and docker.
images:
	@command -v docker >/dev/null || { echo "make images: docker is not installed (validate with make test)" >&2; exit 1; }
	@set -o pipefail; \
	python3 -c 'from shared.deploy.topology import SERVICES; [print(s.dockerfile, s.image) for s in SERVICES]' | \
	  while read -r dockerfile image; do \
	    echo "building $$image from $$dockerfile"; \
	    DOCKER_BUILDKIT=1 docker build -f "$$dockerfile" -t "$$image" . || exit 1; \
	  done

clean:
	rm -rf .venv .agentforge .pytest_cache
