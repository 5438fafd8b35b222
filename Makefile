.PHONY: setup serve test unit lint lint-only bench openapi layers synth infra-test

setup:
	@bash scripts/setup.sh

serve: setup
	.venv/bin/billow serve --config billow.yaml

# Installs Chromium and Go if missing (scripts/toolchains.sh), starts PostgreSQL, LocalStack and the Tansu
# broker, runs the whole suite (chdb is the ClickHouse engine, in-process).
test: setup lint-only
	@bash scripts/toolchains.sh
	@eval "$$(bash scripts/services.sh start)" && .venv/bin/python -m pytest -q -n 2 --dist loadfile

unit: setup
	.venv/bin/python -m pytest -q tests/unit

lint: setup lint-only

lint-only:
	.venv/bin/ruff check shared functions tests bench infra layers
	.venv/bin/mypy

bench: setup
	@eval "$$(bash scripts/services.sh start)" && .venv/bin/python -m bench

openapi: setup
	.venv/bin/python scripts/gen_openapi.py ../shared/reference/openmeter/openapi.yaml

# AWS: Lambda assets from uv.lock (no Docker), the CloudFormation template (cdk-nag runs on it), its tests.
layers: setup
	.venv/bin/python -m layers.build

synth: setup
	.venv/bin/python -m infra.app

infra-test: setup
	.venv/bin/python -m pytest -q tests/infra
