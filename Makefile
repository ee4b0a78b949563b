# The README's two commands: `make test` and `make bench`. Both create .venv if it is missing,
# install what the project needs (torch included, unless one is already importable), build the
# extension with `pip install --no-build-isolation -e .` (ninja rebuilds only what changed) and run.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.pyvision_ops-deps
TORCH_SPEC ?= torch>=2.4
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: test bench build deps cmake-check check-cuda-tests compile-check gpu-check reliability fuzz sanitize clean

$(PY):
	# --system-site-packages: a torch already installed for this interpreter is used as it is.
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=64" wheel
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "using the installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
		$(PY) -m pip install --quiet "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install --quiet numpy scipy pytest pytest-benchmark expecttest tqdm matplotlib ninja pybind11 lapx faiss-cpu pytorch-metric-learning scikit-learn hypothesis
	touch $@

deps: $(DEPS_STAMP)

build: $(DEPS_STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(PY) -m pyvision_ops.info

test: build
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

bench: build
	$(PY) -m pyvision_ops.bench $(BENCH_ARGS)

# The CUDA tests are collected here too (and skipped without a GPU): make sure they still import
# and parametrise, so that they are not found broken on the GPU machine, and that the GPU check
# script parses and finds the benchmark's families.
check-cuda-tests: build
	@# pytest exits 0 only when it collected at least one test without a collection error.
	@$(PY) -m pytest tests --collect-only -q -p no:cacheprovider -m needs_cuda > .venv/cuda-collect.log || \
		{ tail -30 .venv/cuda-collect.log; echo "collecting the CUDA tests failed"; exit 1; }
	@tail -1 .venv/cuda-collect.log
	bash -n scripts/gpu_check.sh
	@test -n "$$($(PY) -m pyvision_ops.bench --families)" || { echo "bench --families lists nothing"; exit 1; }

# The bounded torch.compile (inductor, static and dynamic) and torch.export checks of every op,
# module and model (tests/test_reliability_compile.py; 2-3 minutes on 2 cores, CI runs it).
compile-check: build
	PVO_RELIABILITY_COMPILE=1 $(PY) -m pytest tests/test_reliability_compile.py -q -p no:cacheprovider $(PYTEST_ARGS)

# Builds csrc/ as a C++ library against libtorch with CMake and runs a small C++ program that
# calls pyvision_ops::max_unpool2d through the dispatcher (CPU).
cmake-check: $(DEPS_STAMP)
	$(PY) scripts/build_env.py --configure cmake-build
	cmake --build cmake-build --parallel $${MAX_JOBS:-2}
	./cmake-build/pyvision_ops_dispatch_check

# For a machine with a GPU (and a torch that has CUDA): build, CUDA tests, compute-sanitizer,
# CUDA benchmark; logs and JSON go to $GPU_CHECK_OUT (default gpu-check-results/).
gpu-check:
	bash scripts/gpu_check.sh

# Issue 14's figures: every reliability check (bad inputs, fuzzing, threads, determinism, memory,
# compilation, opcheck, sanitizers) in its bounded form, the table written to docs/reliability.md.
# RELIABILITY_ARGS=--full runs the long forms (fuzz profile, full sanitizer run, exhaustive compile).
RELIABILITY_ARGS ?=
reliability: build
	$(PY) scripts/reliability_report.py $(RELIABILITY_ARGS)

# The long hypothesis run (profile `fuzz`, not derandomized: 8000 examples per unit weight, about
# 6 minutes on 2 cores).
fuzz: build
	PVO_FUZZ_PROFILE=fuzz $(PY) -m pytest tests/test_fuzz.py -q $(PYTEST_ARGS)

# The CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (build-sanitize/) and
# the whole CPU test suite run under them; fails on any report from this project's code, and
# unless a copy with two planted bugs (--self-check) has both reported.
# SANITIZE_SUBSET=ci (what CI runs): every family's op tests on the SIMD path and the thread tests.
SANITIZE_SUBSET ?= all
sanitize: build
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) scripts/sanitize.py --self-check --subset $(SANITIZE_SUBSET) \
		--json build-sanitize/sanitize-$(SANITIZE_SUBSET).json

clean:
	rm -rf build cmake-build build-sanitize pyvision_ops/_C*.so
