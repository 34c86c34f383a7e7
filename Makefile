# The two front-door commands (see README.md):
#   make serve   set up .venv and run `impetus serve` on the built-in default model
#   make test    set up .venv with the dev tools and run lint, types and the tests
# `make check` is the before-commit routine on an existing .venv (no setup step).
PY ?= .venv/bin/python
PORT ?= 8080
SRC = impetus_cli tests benchmarks

.PHONY: serve test check lint format typecheck pytest setup setup-dev

setup:
	./scripts/setup.sh

setup-dev:
	./scripts/setup.sh --dev

serve: setup
	.venv/bin/impetus serve --port $(PORT)

test: setup-dev check

check: lint typecheck pytest

lint:
	$(PY) -m ruff check $(SRC)
	$(PY) -m ruff format --check $(SRC)

format:
	$(PY) -m ruff format $(SRC)
	$(PY) -m ruff check --fix $(SRC)

typecheck:
	$(PY) -m mypy impetus_cli

pytest:
	$(PY) -m pytest -q
