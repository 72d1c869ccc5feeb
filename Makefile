# Quick start: `make demo` then `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
# The second supported stack: Python 3.12 (pyenv's), PyPI torch, scvi-tools 1.5, anndata 0.13.
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12 2>/dev/null))
VENV312 := .venv312
PY312 := $(VENV312)/bin/python
STAMP312 := $(VENV312)/.installed

.PHONY: venv demo test test-py312 docs tutorials lint bench parity-fixtures clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# A CPU build of torch first: a bare `torch` requirement would pull GBs of CUDA wheels.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

# The docs extra on top of the base install (so torch is already the CPU build).
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[docs]"
	@touch $(DOCS_STAMP)

# PyPI's torch for Python 3.12 is a CUDA build that runs on the CPU (~7 GB, a few minutes).
$(STAMP312): pyproject.toml
	@test -n "$(PYTHON312)" || { echo "Python 3.12 not found: install it (pyenv install 3.12) or set PYTHON312=" >&2; exit 1; }
	@test -x $(PY312) || $(PYTHON312) -m venv $(VENV312)
	$(PY312) -m pip install --quiet --upgrade pip
	$(PY312) -m pip install --quiet "torch>=2.13,<2.15"
	$(PY312) -m pip install --quiet -e ".[test,annbatch]"
	@touch $(STAMP312)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo_output

test: $(STAMP)
	$(PY) -m pytest -q

# The same suite on the second stack (Python 3.12, scvi-tools 1.5, anndata 0.13, annbatch).
test-py312: $(STAMP312)
	$(PY312) -m pytest -q

# Re-run the tutorials and store their outputs (the docs render the stored outputs).
tutorials: $(DOCS_STAMP)
	$(PY) scripts/execute_tutorials.py

# Warnings are errors. Notebooks render from their stored outputs and are never executed.
docs: $(DOCS_STAMP)
	@# Stubs are regenerated from `__all__` every time: a stale one would fail the build.
	rm -rf docs/generated
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m ruff format --check src tests benchmarks scripts

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[benchmark]"
	$(PY) benchmarks/embed_throughput.py

parity-fixtures:
	bash scripts/official_env/setup.sh
	.official-venv/bin/python scripts/make_parity_fixtures.py

clean:
	rm -rf demo_output .pytest_cache docs/_build docs/generated
