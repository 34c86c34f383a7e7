# One command before every commit: `make check` (lint, format check, types, tests).
PY ?= .venv/bin/python

.PHONY: setup check lint format typecheck test

setup:
	./scripts/setup.sh

lint:
	$(PY) -m ruff check impetus_cli tests benchmarks

format:
	$(PY) -m ruff format impetus_cli tests benchmarks

typecheck:
	$(PY) -m mypy impetus_cli

test:
	$(PY) -m pytest -q

check: lint typecheck test
	$(PY) -m ruff format --check impetus_cli tests benchmarks
