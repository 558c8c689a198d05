# kagglecv: `make` lists the targets. Every target that runs Python depends on `install`,
# so `make demo` and `make test` work straight from a fresh clone.
# The variables below reach each command through the environment and are read there as "$$NAME":
# a value is never pasted into the shell's text, so `make data COMP='; rm -rf ~ #'` runs nothing.
# On/off ones (UPLOAD, AGAIN, FORCE, RESUME, PUSH, KERNEL, LOOK) go as --upload="$$UPLOAD": kagglecv reads
# 1/true/yes/on and 0/false/no/off/empty, and stops on any other word.
.DEFAULT_GOAL := help
.PHONY: help install data inspect train tune lr-find submit kernel report runs blend lb predict export config bench demo list test lint format

# What was typed after `make`, taken as text: make would expand a `$(shell ...)` in a command-line
# value when it exports it to a recipe. Each becomes a simple variable holding exactly what was typed
# ($(...), $$ and backticks included), still exported as make exports every command-line variable.
COMMAND_LINE := $(strip $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v))))
$(foreach v,$(COMMAND_LINE),$(eval override $$(v) := $$(value $$(v)))$(eval export $$(v)))

PYTHON ?= python3
VENV := .venv
KCV := $(VENV)/bin/kagglecv
COMP ?=
CONFIG ?= configs/default.yaml
RUN ?=
SRC ?=
FOLDS ?=
GPUS ?= 1
RESUME ?=
ARGS ?=
UPLOAD ?=
AGAIN ?=
MSG ?=
FORCE ?=
PUSH ?=
KERNEL ?=
RUNS ?=
LOOK ?=
IMG ?=
TOPK ?=
TTA ?=
PARALLEL ?= data
TRIALS ?=
BUDGET ?= 30m
STORAGE ?=
TORCHRUN ?=
VARIABLES := PYTHON COMP CONFIG RUN SRC FOLDS GPUS RESUME ARGS UPLOAD AGAIN MSG FORCE RUNS LOOK IMG TOPK TTA PUSH KERNEL PARALLEL TRIALS BUDGET STORAGE TORCHRUN
export $(VARIABLES)

# A command-line variable kagglecv does not read (`make train run=x`, `make train epochs=3`) is named
# on stderr, not ignored in silence. KCV and VENV are for tests; environment settings
# (CUDA_VISIBLE_DEVICES=1, OMP_NUM_THREADS=4, ...) pass through to kagglecv's process unnamed.
PASSED_ON := KCV VENV KAGGLE% CUDA_% NCCL_% OMP_% MKL_% HF_% TORCH% PYTORCH_% TMPDIR
upper = $(subst a,A,$(subst b,B,$(subst c,C,$(subst d,D,$(subst e,E,$(subst f,F,$(subst g,G,$(subst h,H,$(subst i,I,$(subst j,J,$(subst k,K,$(subst l,L,$(subst m,M,$(subst n,N,$(subst o,O,$(subst p,P,$(subst q,Q,$(subst r,R,$(subst s,S,$(subst t,T,$(subst u,U,$(subst v,V,$(subst w,W,$(subst x,X,$(subst y,Y,$(subst z,Z,$(1)))))))))))))))))))))))))))
unknown = $(v)= is not a kagglecv make variable, kagglecv ignores it: $(if $(filter $(call upper,$(v)),$(VARIABLES)),make variables are upper case: $(call upper,$(v))=...,recipe settings go in ARGS: ARGS="$(v)=$(value $(v))"; make variables: $(VARIABLES))
$(foreach v,$(filter-out $(VARIABLES) $(PASSED_ON),$(COMMAND_LINE)),$(warning $(unknown)))

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(VENV)/.installed ## create .venv with plain pip and install kagglecv (idempotent)

$(VENV)/.installed: pyproject.toml
	"$$PYTHON" -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

list: install ## list known competitions (competitions/*.yaml)
	$(KCV) list

data: install ## fetch + lay out a competition: make data COMP=<slug> [FORCE=1] [SRC=dir/of/class/folders]
	$(KCV) data --comp="$$COMP" --force="$$FORCE" --src="$$SRC"

inspect: install ## what the prepared data holds (counts, sizes, duplicates, contact sheet): make inspect [COMP=..]
	$(KCV) inspect --comp="$$COMP"

train: install ## k-fold fine-tune: make train [COMP=..] [CONFIG=..] [ARGS="epochs=3"] [RESUME=1] [GPUS=N [PARALLEL=folds]] [RUN=name FOLDS=0,1]
	set -f; $(KCV) train --comp="$$COMP" --config="$$CONFIG" --run="$$RUN" --folds="$$FOLDS" --gpus="$$GPUS" --parallel="$$PARALLEL" --resume="$$RESUME" $$ARGS

tune: install ## Optuna search over the recipe's tune: block: make tune [COMP=..] [CONFIG=..] [TRIALS=N] [BUDGET=30m] [STORAGE=url]
	set -f; $(KCV) tune --comp="$$COMP" --config="$$CONFIG" --trials="$$TRIALS" --budget="$$BUDGET" --storage="$$STORAGE" $$ARGS

lr-find: install ## only the LR range test: make lr-find [COMP=..] [CONFIG=..] [ARGS=..]
	set -f; $(KCV) lr-find --comp="$$COMP" --config="$$CONFIG" $$ARGS

submit: install ## predict, write + check the CSV: make submit [COMP=..] [RUN=<run-id>] [UPLOAD=1 [MSG="..."] [AGAIN=1]] [TTA=none] [KERNEL=1]
	$(KCV) submit --comp="$$COMP" --run="$$RUN" --upload="$$UPLOAD" --again="$$AGAIN" --kernel="$$KERNEL" --message="$$MSG" --tta="$${TTA:-auto}"

kernel: install ## code competitions: notebook + dataset, dry run here, then Kaggle: make kernel [COMP=..] [RUN=..] [PUSH=1] [FORCE=1]
	$(KCV) kernel --comp="$$COMP" --run="$$RUN" --push="$$PUSH" --force="$$FORCE"

report: install ## HTML run report (curves, confusion, suspects, galleries, heatmaps, data map): make report [COMP=..] [RUN=..] [LOOK=1]
	$(KCV) report --comp="$$COMP" --run="$$RUN" --look="$$LOOK"

runs: install ## every run of a competition, best CV first (+ runs.csv, runs.html): make runs [COMP=..]
	$(KCV) runs --comp="$$COMP"

blend: install ## blend finished runs on their OOF (honest nested CV): make blend [COMP=..] [RUNS="a b c"]
	set -f; $(KCV) blend --comp="$$COMP" --runs $$RUNS

lb: install ## public LB score of every upload from Kaggle, CV vs LB, the two finals: make lb [COMP=..]
	$(KCV) lb --comp="$$COMP"

predict: install ## a run's answer for new images: make predict IMG="photo.jpg dir/ shots/*.png" (globs reach kagglecv unexpanded; "my dir/a.png" is one path) [COMP=..] [RUN=..] [TOPK=3]
	$(KCV) predict --comp="$$COMP" --run="$$RUN" --top-k="$${TOPK:-3}" --img="$$IMG"

export: install ## safetensors + model.json + standalone predict.py + ONNX (parity-checked): make export [COMP=..] [RUN=..] [FORCE=1]
	$(KCV) export --comp="$$COMP" --run="$$RUN" --force="$$FORCE"

config: install ## every recipe key: default, type, meaning, and its value in CONFIG: make config [CONFIG=..] [ARGS=..]
	set -f; $(KCV) config --config="$$CONFIG" $$ARGS

bench: install ## throughput: model alone vs data alone vs full training: make bench [ARGS="--models resnet50 --img-size 224"]
	set -f; $(KCV) bench $$ARGS

demo: install ## the whole workflow offline on built-in digits: data -> train -> submit, with scores
	set -f; $(KCV) demo $$ARGS

test: install ## run the test suite (CPU only; GPU tests skip without CUDA)
	$(VENV)/bin/python -m pytest -q

lint: install ## ruff (lint + format check) and lint-imports (data flows one way: no stage imports a later one)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/lint-imports

format: install ## ruff: apply formatting and safe fixes
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests
