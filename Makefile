# kagglecv: `make` lists the targets. Every target that runs Python depends on `install`,
# so `make demo` and `make test` work straight from a fresh clone.
.DEFAULT_GOAL := help
.PHONY: help install data train lr-find submit demo list test lint format

PYTHON ?= python3
VENV := .venv
KCV := $(VENV)/bin/kagglecv
COMP ?=
CONFIG ?= configs/default.yaml
RUN ?=
ARGS ?=

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(VENV)/.installed ## create .venv with plain pip and install kagglecv (idempotent)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

list: install ## list known competitions (competitions/*.yaml)
	$(KCV) list

data: install ## fetch + lay out a competition: make data COMP=<slug> [FORCE=1]
	$(KCV) data $(COMP) $(if $(FORCE),--force)

train: install ## k-fold fine-tune: make train [COMP=..] [CONFIG=configs/x.yaml] [ARGS="epochs=3 lr=auto"]
	$(KCV) train --comp "$(COMP)" --config $(CONFIG) $(ARGS)

lr-find: install ## only the LR range test: make lr-find [COMP=..] [CONFIG=..] [ARGS=..]
	$(KCV) lr-find --comp "$(COMP)" --config $(CONFIG) $(ARGS)

submit: install ## predict test set (folds + TTA), write + check the CSV: make submit [COMP=..] [RUN=<run-id>]
	$(KCV) submit --comp "$(COMP)" --run "$(RUN)"

demo: install ## the whole workflow offline on built-in digits: data -> train -> submit, with scores
	$(KCV) demo $(ARGS)

test: install ## run the test suite (CPU only; GPU tests skip without CUDA)
	$(VENV)/bin/python -m pytest -q

lint: install ## ruff: lint and format check
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: install ## ruff: apply formatting and safe fixes
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests
