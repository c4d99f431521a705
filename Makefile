# One command to set up and run the main job (`make run`), one to set up and run the tests (`make test`).
# Everything installs into ./.venv with pip: pip sees this machine's local wheels, uv and poetry do not.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps test run clean

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

# The workflow on the embedded offline default (config.yaml): about 8 minutes on 2 CPU cores (docs/workflow.md).
run: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m snakemake --cores 2

clean:
	rm -rf $(VENV) results .pytest_cache
