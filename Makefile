# The two commands of the README: `make run` (the pipeline on the embedded default) and `make test`.
# Each sets up .venv on first use (idempotent: redone only when the dependency files change).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU torch with a torchvision that imports beside it (dreamsim needs torchvision); clusters bring their own.
TORCH := torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE := 1

.PHONY: run test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

run: $(STAMP)
	$(BIN)/snakemake --cores all --workflow-profile workflow/profiles/default
	$(BIN)/python -m diversegrpo.timings

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

bench: $(STAMP)
	$(BIN)/python benchmarks/creative_reward.py

clean:
	rm -rf results/* logs benchmarks/stages .snakemake
