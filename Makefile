# The two set-up commands of the README. Each creates .venv and installs what is missing;
# torch is pinned to the CPU wheel so pip never pulls a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: serve test install

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]" "$(TORCH)"
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/gptserve serve

test: install
	bash scripts/install_test_tools.sh  # chromium, prometheus (apt-get, root only); else those tests skip
	$(BIN)/python -m pytest -q
