#!/usr/bin/env bash
# `make gpu-check`: everything that needs a GPU, in one command, for a machine where nothing can be
# installed (it uses the python3 that already has a CUDA torch). Builds the extension in place,
# runs the whole test suite (the CUDA tests included), compute-sanitizer memcheck over each
# family's CUDA tests, and the benchmark on CUDA. Logs and the benchmark JSON go to
# $GPU_CHECK_OUT (default gpu-check-results/); a short summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${GPU_CHECK_OUT:-gpu-check-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

note "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$summary"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee -a "$summary"

# Link with the system's own g++ when there is one: a compiler that links parts of libstdc++
# statically into the extension gives it a second copy of the C++ runtime beside torch's, and
# number formatting in error messages then crashed (seen on the H100 image, whose default CXX is
# /opt/gcc/bin/g++).
if [ -x /usr/bin/g++ ] && [ -z "${KEEP_CXX:-}" ]; then
  export CXX=/usr/bin/g++ CC=/usr/bin/gcc
fi
note "host compiler: ${CXX:-default} ($(${CXX:-g++} --version | head -1))"
rm -rf build/temp-* pyvision_ops/_C*.so
start=$(date +%s)
if FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  note "build: ok ($(( $(date +%s) - start )) s)"
else
  note "build: FAILED (see build.log)"; tail -40 "$OUT/build.log"; exit 1
fi
"$PY" -m pyvision_ops.info 2>&1 | tee -a "$summary"
# A second, static copy of libstdc++ inside the extension is what crashed error messages before.
note "libstdc++ ostream code linked into the extension: $(nm -C pyvision_ops/_C*.so | grep -c ' [TtWw] .*_M_insert<long>') symbols (0 expected)"

start=$(date +%s)
"$PY" -m pytest tests -q -p no:cacheprovider -rfE > "$OUT/tests.log" 2>&1
note "tests: $(tail -1 "$OUT/tests.log") ($(( $(date +%s) - start )) s)"
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20 | tee -a "$summary"

# memcheck each family's CUDA tests; the caching allocator is off so that memcheck sees every
# allocation's true bounds.
: > "$OUT/sanitizer.log"
for family_test in tests/test_unpool.py tests/test_gram.py tests/test_assign.py; do
  start=$(date +%s)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZER_TIMEOUT:-300}" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$PY" -m pytest "$family_test" -q -p no:cacheprovider -m "needs_cuda and not slow" >> "$OUT/sanitizer.log" 2>&1
  rc=$?
  note "compute-sanitizer memcheck $family_test: exit $rc, $(grep -c '========= Invalid\|========= Program hit' "$OUT/sanitizer.log") error reports ($(( $(date +%s) - start )) s)"
done
grep -E "ERROR SUMMARY" "$OUT/sanitizer.log" | tail -3 | tee -a "$summary"

start=$(date +%s)
"$PY" -m pyvision_ops.bench --device cuda --json "$OUT/bench-cuda.json" > "$OUT/bench.log" 2>&1
note "bench: exit $? ($(( $(date +%s) - start )) s)"
tail -30 "$OUT/bench.log"
echo
cat "$summary"
