# `make tune` and `make test` create .venv on first use (Python 3.11) and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip install -q -c constraints.txt
ARGS ?=

.PHONY: tune test test-fast test-avx2 test-qemu lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

# the main job needs only the PyTorch back end
$(VENV)/.installed-pytorch: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[pytorch]'
	touch $@

# the tests need every back end and the NLP model
$(VENV)/.installed-all: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[all,dev]'
	touch $@ $(VENV)/.installed-pytorch

tune: $(VENV)/.installed-pytorch
	$(PY) tune.py $(ARGS)

# The tests whose outcome depends on the CPU class run a second time with the AVX2 class's real
# kernels (LPOT_CPU_ISA=avx2, see lpot_research/core/cpu.py), so a machine of a newer class tests both;
# the slow end-to-end tests cover both classes themselves.
CPU_TESTS := tests/test_cpu.py tests/test_pytorch_adaptor.py tests/test_onnxrt_adaptor.py \
	tests/test_mxnet_adaptor.py tests/test_qat.py tests/test_api.py
# ONNX Runtime and LiteRT ignore LPOT_CPU_ISA (they read CPUID): their kernel tests run a third time
# under qemu-x86_64 with EPYC-Rome's CPUID (AVX2 only), so they meet the real AVX2 kernels on any x86 host.
ARCH := $(shell uname -m)
QEMU := $(if $(filter x86_64,$(ARCH)),$(shell command -v qemu-x86_64))
QEMU_CPU ?= EPYC-Rome
QEMU_CLASS ?= AVX2

# the models tests/test_cpu_kernels.py runs, built once per `make test` for its native pass and qemu stage
KERNEL_ARTIFACTS := $(abspath $(VENV))/kernel-artifacts

test: $(VENV)/.installed-all
	rm -rf $(KERNEL_ARTIFACTS)
	LPOT_KERNEL_ARTIFACTS=$(KERNEL_ARTIFACTS) $(PY) -m pytest -q $(PYTEST_ARGS)
	LPOT_CPU_ISA=avx2 $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) $(CPU_TESTS)
	LPOT_KERNEL_ARTIFACTS=$(KERNEL_ARTIFACTS) $(MAKE) --no-print-directory test-qemu

# the ONNX Runtime / LiteRT kernel tests under an AVX2-only CPUID (skipped, saying so, without qemu)
test-qemu: $(VENV)/.installed-all
ifeq ($(QEMU),)
	@echo "qemu stage SKIPPED: $(if $(filter x86_64,$(ARCH)),qemu-x86_64 is not installed (apt-get install qemu-user),an x86-64 CPUID cannot be emulated for this $(ARCH) venv), so ONNX Runtime's and LiteRT's AVX2 kernels are not tested here"
else
	@echo "qemu stage: tests/test_cpu_kernels.py on $(QEMU_CPU)'s CPUID ($(QEMU_CLASS)); qemu's 'TCG doesn't support' lines name CPU features the emulation leaves out"
	LPOT_EMULATED_CPU=$(QEMU_CLASS) $(QEMU) -cpu $(QEMU_CPU) $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) \
		tests/test_cpu_kernels.py
endif

# skips the slow end-to-end runs (the hard model, the fault suite, the random searches)
test-fast: $(VENV)/.installed-all
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# the CPU-dependent tests with the AVX2 class's kernels only
test-avx2: $(VENV)/.installed-all
	LPOT_CPU_ISA=avx2 $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) $(CPU_TESTS)

lint: $(VENV)/.installed-all
	$(VENV)/bin/ruff check lpot_research tests scripts tune.py

clean:
	rm -rf $(VENV) outputs multirun lpot_outputs
