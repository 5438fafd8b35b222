.PHONY: setup serve test unit lint lint-only bench openapi layers synth infra-test

setup:
	@bash scripts/setup.sh

serve: setup
	.venv/bin/billow serve --config billow.yaml

SERVICES ?= bash scripts/services.sh
TOOLCHAINS ?= bash scripts/toolchains.sh
PYTEST ?= .venv/bin/python -m pytest
# Starts the services and exports their addresses, or stops the recipe: a failed start (whose $$(...) would
# otherwise eval to nothing) or a missing address must not become a run whose service tests never ran.
WITH_SERVICES = env_out="$$($(SERVICES) start)" || { echo "make: scripts/services.sh start failed" >&2; exit 1; }; \
	eval "$$env_out"; \
	for v in BILLOW_TEST_PG_URL BILLOW_TEST_KAFKA BILLOW_TEST_AWS_ENDPOINT; do \
	  eval "[ -n \"\$${$$v:-}\" ]" || { echo "make: scripts/services.sh did not export $$v" >&2; exit 1; }; \
	done;

# Installs Chromium and Go if missing (scripts/toolchains.sh), starts PostgreSQL, LocalStack and the Tansu
# broker, runs the whole suite (chdb is the ClickHouse engine, in-process). -ra prints every skip (and failure)
# with its reason; under CI=true (.ci/run) a skip fails the run (tests/conftest.py).
test: setup lint-only
	@$(TOOLCHAINS)
	@$(WITH_SERVICES) $(PYTEST) -q -ra -n 2 --dist loadfile

unit: setup
	.venv/bin/python -m pytest -q tests/unit

lint: setup lint-only

lint-only:
	.venv/bin/ruff check shared functions tests bench infra layers
	.venv/bin/mypy

bench: setup
	@$(WITH_SERVICES) .venv/bin/python -m bench

openapi: setup
	.venv/bin/python scripts/gen_openapi.py ../shared/reference/openmeter/openapi.yaml

# AWS: Lambda assets from uv.lock (no Docker), the CloudFormation template (cdk-nag runs on it), its tests.
layers: setup
	.venv/bin/python -m layers.build

synth: setup
	.venv/bin/python -m infra.app

infra-test: setup
	.venv/bin/python -m pytest -q tests/infra
