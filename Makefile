# Set-up and the two everyday commands. Each target builds the virtual environment first (once).
#   make tiny    RL on the tiny CPU preset (a few minutes on a laptop CPU), then its training curves
#   make test    the test suite
# On a Linux CPU machine without a local torch wheel, add TORCH_FLAGS='--index-url https://download.pytorch.org/whl/cpu'
# to get the small CPU build of torch instead of PyPI's CUDA build.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_FLAGS ?=
BIN := $(VENV)/bin

.PHONY: setup tiny test gpu-setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_FLAGS) '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

tiny: setup
	$(BIN)/python train.py --preset tiny --aug --estimator aapo --out runs/tiny --overwrite
	$(BIN)/python plot.py runs/tiny --out runs/tiny/curves.png

test: setup
	$(BIN)/python -m pytest -q tests

# GPU machines: vLLM brings its own pinned CUDA torch, so install it into a fresh environment.
gpu-setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[gpu,dev]'
	touch $(VENV)/.installed

clean:
	rm -rf $(VENV) runs *.egg-info
