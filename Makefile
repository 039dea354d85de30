# HandEye: `make repro` runs the whole pipeline on the embedded demo, `make test` runs the tests.
# Both set everything up themselves on a fresh Debian 12 machine with Python 3.11.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= demo
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed
# DVC runs stage commands with the caller's PATH: put the venv's `handeye` and `dvc` first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test test-fast lint verify bands lock clean help data docker-test

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements.lock pyproject.toml scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh
	touch $@

setup: $(STAMP)  ## create .venv with the locked stack

data: $(STAMP)  ## fetch the demo data from the remote committed in the repository
	$(BIN)/dvc pull -q data.dvc

repro: data  ## run the pipeline (PROFILE=demo|paper) and say where the table and figures are
	@if [ "$(PROFILE)" != demo ]; then $(BIN)/handeye profile $(PROFILE) --out params.yaml; fi
	$(BIN)/dvc repro
	@echo "Table:   paper_figs/table_recognition.md (and .tex)"; \
	 echo "Figures: $$(ls paper_figs/*.png 2>/dev/null | tr '\n' ' ')"

test: $(STAMP) lint  ## lint, then run the test suite (GPU, Isaac Lab and Docker tests are skipped here)
	$(BIN)/python -m pytest -m "not gpu and not isaaclab and not docker" $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the tests without the slow end-to-end runs
	$(BIN)/python -m pytest -m "not slow and not gpu and not isaaclab and not docker" $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff, with the rules of pyproject.toml (the locked ruff: the same findings everywhere)
	$(BIN)/ruff check --no-cache .

lock: $(STAMP)  ## rewrite requirements.lock from what .venv has
	{ head -n 2 requirements.lock; $(BIN)/pip freeze --all --exclude-editable | grep -v -i -E '^(handeye|pip)=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:  ## remove pipeline outputs (not the data or .venv)
	rm -rf out paper_figs/*.png paper_figs/*.md paper_figs/*.tex

verify: data  ## re-run the whole pipeline (dvc repro -f): bits against dvc.lock, claims against their seed bands
	$(BIN)/handeye verify

bands: data  ## re-measure the claims' seed bands: the demo pipeline once per seed (reference/claims-demo.json)
	$(BIN)/handeye claims bands --seeds 0 1 2 3 4 --out reference/claims-demo.json

docker-test: $(STAMP)  ## build docker/Dockerfile with podman (no engine), run the demo in it, compare with dvc.lock
	scripts/docker_test.sh
