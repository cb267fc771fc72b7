# The README's two commands: `make train` and `make test`. Each sets up what it needs.
#   PYTHON  interpreter for the virtual environment (3.11, 3.12 or 3.13)
#   VENV    where the virtual environment lives
#   MPI     pypi: MPICH + mpi4py wheels from PyPI | system: mpi4py built on the site's MPI
#   NP      ranks for `make train`
#   MARKS   for `make test`: a pytest marker expression (MARKS='not slow': the quick tests)
PYTHON ?= python3
VENV ?= .venv
MPI ?= pypi
NP ?= 2
ARGS ?=

BIN := $(abspath $(VENV))/bin
MPIEXEC := $(if $(filter pypi,$(MPI)),$(BIN)/mpiexec,mpiexec)
STAMP := $(VENV)/.installed-$(MPI)

.PHONY: setup train test lint docs gpu-wheels gpu-check-dry-run clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-mpi.txt scripts/build_wheels.py scripts/setup.sh setup.cfg
	@scripts/setup.sh "$(PYTHON)" "$(VENV)" "$(MPI)"
	@rm -f $(VENV)/.installed-*
	@touch $@

train: setup
	$(MPIEXEC) -n $(NP) $(BIN)/python -m launch.train -c configs/smoke.yaml $(ARGS)
	$(MPIEXEC) -n $(NP) $(BIN)/python -m launch.evaluate -c configs/smoke.yaml $(ARGS)
	$(BIN)/python -m launch.view_samples -c configs/smoke.yaml $(ARGS)

lint: setup
	$(BIN)/flake8

# docs/configuration.md from the config dataclasses (tests/distributed/test_config.py fails
# while they differ).
docs: setup
	$(BIN)/python -m launch.config_reference docs/configuration.md

# MARKS: a pytest marker expression that narrows both runs, e.g. MARKS='not slow'.
test: lint
	$(BIN)/python -m pytest tests $(if $(MARKS),-m "$(MARKS)")
	timeout 900 $(MPIEXEC) -n 2 $(BIN)/python -m pytest -m "mpi$(if $(MARKS), and ($(MARKS)))" \
		-p no:cacheprovider -q tests

# The GPU path checked without a GPU (tests/system/test_cuda_kernels.py): the training path imported
# with CuPy 14 as the GPU machines have it, and the CUDA sources of a ResNet-50 step compiled by
# NVRTC against CUDA 13's headers; the cuDNN path's graphs of a ResNet-50 step described through
# the real cuDNN frontend (tests/distributed/test_cudnn_frontend.py). Its own virtual
# environment (~1.4 GB: requirements-cuda.txt) keeps `make test` light. CUDA_PYTHON: best the GPU machines' Python, 3.12.
CUDA_PYTHON ?= $(PYTHON)
CUDA_VENV ?= .venv-cuda
CUDA_STAMP := $(CUDA_VENV)/.installed-cuda

.PHONY: cuda-check
cuda-check: $(CUDA_STAMP)
	REQUIRE_CUDA_CHECK=1 $(CUDA_VENV)/bin/python -m pytest -m cuda -p no:cacheprovider -q \
		tests/system/test_cuda_kernels.py tests/distributed/test_cudnn_frontend.py

$(CUDA_STAMP): requirements.txt requirements-mpi.txt requirements-cuda.txt \
		scripts/build_wheels.py scripts/setup.sh setup.cfg
	@scripts/setup.sh "$(CUDA_PYTHON)" "$(CUDA_VENV)" pypi
	grep -v '^nvidia-cudnn-frontend' requirements-cuda.txt > $(CUDA_VENV)/requirements.txt
	$(CUDA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r $(CUDA_VENV)/requirements.txt
	$(CUDA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
		$$(grep '^nvidia-cudnn-frontend' requirements-cuda.txt)
	@touch $@

# .whl/ for scripts/gpu_check.sh on a GPU machine without internet (Python 3.12, x86_64):
# chainer and chainercv as pure-Python wheels, and the binary wheels that machine's image
# lacks (simplejpeg, MPICH's runtime, mpi4py, the cuDNN frontend), ~27 MiB; refused over the 64 MiB that travel.
gpu-wheels: setup
	$(BIN)/python scripts/build_wheels.py --gpu-set --requirements requirements.txt \
		--mpi-requirements requirements-mpi.txt --cuda-requirements requirements-cuda.txt \
		--dest .whl

# The GPU check's dry run on this machine (a Python 3.12, PyPI): what CI runs.
gpu-check-dry-run: gpu-wheels
	scripts/gpu_check.sh --dry-run

clean:
	rm -rf $(VENV) .whl
	rm -rf $(CUDA_VENV)
