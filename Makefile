# One command to set up and run the tests (`make test`), one for the main job (`make demo`).
# Everything installs into ./.venv with pip: pip sees this machine's local wheels, uv and poetry do not.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# Debian packages the tests need (slurm-wlm, munge, chromium); needs root, quiet when present.
system-deps:
	bash .ci/system-deps.sh

test: setup system-deps
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/python -m adasched.demo --out results/demo

clean:
	rm -rf $(VENV) results .pytest_cache
