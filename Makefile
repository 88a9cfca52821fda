# survfed — one-command setup. Every target creates .venv on first use and installs
# torch first, pinned, so pip never pulls a multi-GB CUDA build on a CPU-only machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.survfed-installed
REAL_CT ?= .cache/real-ct
DEMO_OUT ?= demo-run

.PHONY: setup demo test test-all lint bench gpu-check real-ct clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/survfed demo --out $(DEMO_OUT)

# Real CT from PyRadiomics' and TotalSegmentator's source archives on PyPI (checksummed; see
# benchmarks/fetch_real_ct.py): the tests check the DICOM reader and the lung pipeline on them,
# not only on phantoms.
# Offline, their tests are skipped (CI sets SURVFED_REQUIRE_REAL_CT=1 to make that a failure).
real-ct:
	$(PYTHON) benchmarks/fetch_real_ct.py --out $(REAL_CT) || \
		echo "make: the real CT could not be fetched (offline?): its tests are skipped"

test: $(STAMP) real-ct
	$(BIN)/ruff check survfed tests benchmarks
	SURVFED_REAL_CT=$(abspath $(REAL_CT)) $(BIN)/python -m pytest -n 2 -m "not gpu" --durations=15

test-all: $(STAMP) real-ct
	SURVFED_REAL_CT=$(abspath $(REAL_CT)) $(BIN)/python -m pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check survfed tests benchmarks
	$(BIN)/ruff format --check survfed tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/dicom_read.py
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/cox_simulation.py
	$(BIN)/python benchmarks/pooled_heldout.py
	$(BIN)/python benchmarks/detector.py

gpu-check: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) $(DEMO_OUT) gpu-check .pytest_cache build *.egg-info
