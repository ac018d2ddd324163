# Quick start: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast lint bench demo clean

# make demo INPUT=ct.nii.gz segments your own CT instead of the built-in phantom.
INPUT  ?=
DEMO_OUT ?= demo_out

$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU PyTorch first, pinned by the development constraints (the library itself asks for a range).
	$(PY) -m pip install --quiet -c constraints-dev.txt torch
	$(PY) -m pip install --quiet -c constraints-dev.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check TextGuidedSegLib TextGuidedSeg TextGuidedSegEffect Testing Training
	$(PY) -m pytest Testing

test-fast: $(STAMP)
	$(PY) -m pytest Testing -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check TextGuidedSegLib TextGuidedSeg TextGuidedSegEffect Testing Training

# make bench BENCH_ARGS="--size full" (clinical sizes, long) or BENCH_ARGS="--only five_prompts"; results in
# Testing/bench/results/bench.{json,md} (git-ignored).
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) Testing/bench/run_all.py $(BENCH_ARGS)

demo: $(STAMP)
	$(VENV)/bin/textguidedseg demo --overwrite -o $(DEMO_OUT) $(if $(INPUT),--input "$(INPUT)")

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
