# pneumosite: `make run` starts the site and a Celery worker; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test lint venv dev-venv clean-var

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip

# Reinstall only when the requirements change (stamp files are newer otherwise).
$(VENV)/.requirements.stamp: requirements.txt | $(VPY)
	$(VPY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.requirements-dev.stamp: requirements-dev.txt requirements.txt | $(VPY)
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $(VENV)/.requirements.stamp $@

venv: $(VENV)/.requirements.stamp

dev-venv: $(VENV)/.requirements-dev.stamp

run: venv
	./scripts/run.sh || [ $$? -eq 130 ]  # Ctrl-C is the normal way to stop

test: dev-venv
	$(VPY) -m pytest $(PYTEST_ARGS)

lint: dev-venv
	$(VENV)/bin/ruff check .
