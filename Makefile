# ulsad-bench: every set-up step lives here. Two commands do everything on a fresh machine:
#   make demo   -> sets up .venv and runs the main jobs on the built-in synthetic dataset
#   make test   -> sets up .venv and runs the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# Keep caches inside the project, never in $HOME. (PatchCore sets glibc's mmap threshold for its
# coreset loop itself, ulsad_bench/environment.py: exported for every job it slowed every model.)
export XDG_CACHE_HOME ?= $(CURDIR)/.cache/xdg
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= offline

DATASET ?= synthetic
MODELS ?= ulsad,patchcore,padim,efficientad,dfr,cflow,fastflow,draem,reverse_distillation
SEEDS ?= 0,1,2,3,4
RESULTS ?= outputs
N_JOBS ?= 1
DATASET_ROOT ?=
LAUNCHER ?=
PLAN ?=
DEVICE ?=
ARGS ?=
CACHE_DIR ?= $(or $(ULSAD_BENCH_CACHE),.cache/ulsad_bench)

# Variables read from the command line (make sweep MODELS=... ARGS="..."). Any other given there is
# refused before any target runs: a typo (MODEL=, DATASETS=) would otherwise be ignored silently.
KNOWN_VARIABLES := DATASET MODELS SEEDS RESULTS N_JOBS DATASET_ROOT LAUNCHER PLAN DEVICE ARGS CACHE_DIR \
	ULSAD_BENCH_CACHE PYTHON VENV XDG_CACHE_HOME WANDB_MODE
UNKNOWN_VARIABLES := $(filter-out $(KNOWN_VARIABLES),$(foreach v,$(.VARIABLES),$(if $(findstring command line,$(origin $(v))),$(v))))
ifneq ($(UNKNOWN_VARIABLES),)
$(error unknown variable(s) on the command line: $(UNKNOWN_VARIABLES). This Makefile reads: $(KNOWN_VARIABLES))
endif

# make clean-cache deletes $(CACHE_DIR)/features: refused, before any target runs, for an empty
# CACHE_DIR (it would be /features) and for one that is / or the home folder.
ifneq ($(filter clean-cache,$(MAKECMDGOALS)),)
ifeq ($(strip $(CACHE_DIR)),)
$(error make clean-cache: CACHE_DIR is empty, which would delete /features; give the cache folder, e.g. CACHE_DIR=.cache/ulsad_bench)
endif
CACHE_PATHS := $(abspath $(CACHE_DIR)) $(realpath $(CACHE_DIR))
ifneq ($(filter / //,$(CACHE_PATHS)),)
$(error make clean-cache: CACHE_DIR=$(CACHE_DIR) is the root folder; give the cache folder, e.g. CACHE_DIR=.cache/ulsad_bench)
endif
ifneq ($(HOME),)
ifneq ($(filter $(abspath $(HOME)) $(realpath $(HOME)),$(CACHE_PATHS)),)
$(error make clean-cache: CACHE_DIR=$(CACHE_DIR) is the home folder; give the cache folder, e.g. CACHE_DIR=.cache/ulsad_bench)
endif
endif
endif

.PHONY: install test test-all lint demo sweep tables bench bench-metrics clean clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,ray]"
	touch $(STAMP)

# Two test workers with one torch thread each: torch's default of one thread per core in each worker
# would run four threads on two cores and slow every test (README, measured section).
test: install
	$(PY) -m ruff check ulsad_bench tests run.py docs
	$(VENV)/bin/lint-imports
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(PY) -m ruff check ulsad_bench tests run.py docs
	$(VENV)/bin/lint-imports
	$(PY) -m ruff format --check ulsad_bench tests run.py docs

demo: install
	$(PY) -m ulsad_bench.demo

# ARGS: Hydra overrides for every job, e.g. ARGS="model.epochs=2 dataset.image_size=128".
# PLAN=1: print the jobs, how many are done, the time and cache disk they need; run nothing.
# LAUNCHER=gpus: one job per GPU (Ray); parallel: N_JOBS at once on one device; slurm: a cluster.
sweep: install
	$(PY) -m ulsad_bench.sweep dataset="$(DATASET)" models="$(MODELS)" seeds="$(SEEDS)" results="$(RESULTS)" \
		n_jobs="$(N_JOBS)" root="$(DATASET_ROOT)" launcher="$(LAUNCHER)" plan="$(PLAN)" -- $(ARGS)

tables: install
	$(PY) -m ulsad_bench.report $(RESULTS)

# DEVICE=cuda: Table 4 on a GPU (fp32 and bf16 + channels-last); refuses on a machine without CUDA.
bench: install
	$(PY) -m ulsad_bench.bench $(if $(DEVICE),device=$(DEVICE)) $(ARGS)

# Time and memory of all pixel metrics on a VisA-size test set (13 M pixels), one core.
bench-metrics: install
	$(PY) -m ulsad_bench.metrics_bench

# The bounded caches (frozen features, trained ULSAD models, EfficientAD teachers); recomputed when needed.
clean-cache:
	rm -rf "$(CACHE_DIR)/features"

clean:
	rm -rf outputs multirun .cache/ulsad_bench
