# Real-Time ML Serving — the course's commands. `make help` lists them.
#
# Everything runs inside .venv, created from requirements.txt on first use, so
# `make lab` and `make test` work on a fresh clone with only Python 3.10+ installed.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
LESSONS := $(sort $(notdir $(wildcard assessments/source/*)))
PORT ?= 8888
# Jupyter refuses to run as root unless told; containers often run as root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
# The course kernel is "python3" from .venv: put .venv first so Jupyter and
# nbgrader start their kernels with the course interpreter.
export PATH := $(BIN):$(PATH)
export MPLBACKEND ?= Agg

.PHONY: help setup redis scale data lab serve bench test test-full lint notebooks autograde feedback \
	grades clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed, found " + sys.version' \
		|| { echo "Set PYTHON=/path/to/python3.11, e.g. make setup PYTHON=python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(STAMP) redis data  ## create .venv, install the pinned environment, make the data

# Lesson 06's shared cache runs on a real Redis: Debian's redis-server, installed here when
# this can (root and apt-get, as in CI and containers). Otherwise the lessons and tests use
# fakeredis's TCP server, and say so; `sudo apt-get install redis-server` (or `brew install
# redis`) gives you the real one.
redis:  ## install redis-server where this can (else lessons use fakeredis's server and say so)
	@command -v redis-server >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's redis-server"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && \
		    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null 2>&1; }; } \
		|| echo "could not install redis-server: the fakeredis fallback will serve"; \
	else \
		echo "redis-server not found: the fakeredis fallback will serve (see README, Redis)"; \
	fi

# Ray Serve for lesson 07's last section: an optional extra (large), never needed by `make test`.
scale: $(STAMP)  ## install the optional Ray Serve extra (lesson 07's "past one machine" cell)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[scale]"

data: $(STAMP)  ## train the course models into data/models, export ONNX to data/onnx (skips what exists)
	$(BIN)/python -m helpers.training

lab: setup  ## start JupyterLab on the course (PORT=8888 by default)
	$(BIN)/jupyter lab --port=$(PORT) $(ALLOW_ROOT) --ServerApp.root_dir=$(CURDIR) \
		--ServerApp.default_url=/lab/tree/notebooks

serve: setup  ## run the model server on 127.0.0.1:8000 (extra flags: ARGS="--max-queue 64")
	$(BIN)/python -m helpers.server $(ARGS)

bench: setup  ## measure batching, server overhead, KV cache, continuous batching, load balancing; results in benchmarks/results/
	$(BIN)/python benchmarks/bench_serving.py $(ARGS)
	$(BIN)/python benchmarks/bench_generation.py
	$(BIN)/python benchmarks/bench_balancing.py

lint: $(STAMP)  ## ruff over the package and the tests
	$(BIN)/ruff check helpers tests benchmarks nbgrader_config.py assessments/*.py

# Each lesson runs once in full in `make test`, in the autograde round trip
# (tests/course/test_pipeline.py): the source, whose run also proves every solution cell
# runs. The grading corpus runs each exercise's set-up once more, with its answers (the
# release's untouched one among them). nbval runs the solutions on their own in test-full.
# The helpers' tests assert behaviour, never timings, so they run on two workers; the
# lessons measure, so at most two notebooks run at once (the round trip beside the corpus).
test: setup lint  ## every check: unit tests, every lesson executed and autograded, grading
	COURSE_PROFILE=quick $(BIN)/python -m pytest tests/helpers -n 2 -p no:cacheprovider
	COURSE_PROFILE=quick $(BIN)/python -m pytest tests/course -p no:cacheprovider

test-full: setup  ## every solution executed in the full profile students get (slow; before a release)
	COURSE_PROFILE=full $(BIN)/python -m pytest solutions --durations=0 \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=600 -p no:cacheprovider

notebooks: $(STAMP)  ## regenerate notebooks/ and solutions/ from assessments/source
	$(BIN)/python assessments/course_pipeline.py generate $(LESSONS)

autograde: $(STAMP)  ## grade assessments/submitted/<student>/<lesson>/ (lessons without any skipped)
	$(BIN)/python assessments/course_pipeline.py autograde

feedback: $(STAMP)  ## HTML feedback for autograded submissions into assessments/feedback/
	$(BIN)/python assessments/course_pipeline.py feedback

grades: $(STAMP)  ## export every grade to assessments/grades.csv
	$(BIN)/python assessments/course_pipeline.py grades

clean:  ## remove generated data, grading state and lesson scratch files (keeps .venv)
	rm -rf data/models data/onnx assessments/gradebook.db assessments/submitted assessments/autograded \
		assessments/feedback assessments/grades.csv assessments/exchange
	find . -name scratch -type d -prune -not -path './.venv/*' -exec rm -rf {} +
