# Two entry points for users (README): `make demo` and `make test`. Both create .venv if missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint venv clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (or: make PY=python3 ...)"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CUDA wheel runs on CPU too, and torchvision 0.29 needs exactly 2.14.
	$(BIN)/pip install -q "torch>=2.14,<2.15" "torchvision>=0.29,<0.30"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The default audit, end to end, on the embedded Fashion-MNIST subset (CPU, about 2.5 minutes).
demo: $(STAMP)
	$(BIN)/lpla audit --out runs/demo

# Everything but GPU tests: ruff, mypy, the layering contract, then pytest (end-to-end runs included).
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -m "not gpu" -q

# Fast subset for iteration (skips the slow end-to-end runs).
test-fast: $(STAMP)
	$(BIN)/pytest -m "not gpu and not slow" -q -x

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
