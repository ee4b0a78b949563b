#!/usr/bin/env bash
# `make gpu-check`: everything that needs a GPU, in one command, for a machine where nothing can be
# installed (it uses the python3 that already has a CUDA torch) and that is lent for minutes.
# Stages, each with its own time limit, each writing its log and a line of summary.txt to
# $GPU_CHECK_OUT (default gpu-check-results/) as soon as it ends, so a time-out keeps what was done:
#   build     the extension in place with every core
#   tests     the CUDA tests only (pytest -m needs_cuda)
#   sanitize  compute-sanitizer memcheck over a short subset of each family's CUDA tests
#   racecheck compute-sanitizer racecheck over a shorter subset of the CUDA tests of each family
#             whose kernels use shared memory (a `__shared__` in csrc/<family>/*.cu)
#   bench     python -m pyvision_ops.bench --device cuda --quick (JSON in bench-cuda.json)
# GPU_CHECK_PARTS=build,tests,sanitize,racecheck,bench (the default) chooses stages; the families come
# from the benchmark registry (python -m pyvision_ops.bench --families), not from this script.
# Limits (seconds): BUILD_TIMEOUT=150 TESTS_TIMEOUT=80 SANITIZE_TIMEOUT=22 (per family, 6 families)
# RACECHECK_TIMEOUT=18 (per family, 3 use shared memory) BENCH_TIMEOUT=60: under 8 minutes in
# all, the machine's start not included.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${GPU_CHECK_OUT:-gpu-check-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
PARTS=",${GPU_CHECK_PARTS:-build,tests,sanitize,racecheck,bench},"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
wants() { [[ "$PARTS" == *",$1,"* ]]; }
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }

note "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) parts=${GPU_CHECK_PARTS:-build,tests,sanitize,racecheck,bench} commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$summary"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee -a "$summary"

if wants build; then
  # Link with the system's own g++ when there is one: a compiler that links parts of libstdc++
  # statically into the extension gives it a second copy of the C++ runtime beside torch's, and
  # number formatting in error messages then crashed (seen on the H100 image, whose default CXX
  # is /opt/gcc/bin/g++).
  if [ -x /usr/bin/g++ ] && [ -z "${KEEP_CXX:-}" ]; then
    export CXX=/usr/bin/g++ CC=/usr/bin/gcc
  fi
  note "host compiler: ${CXX:-default} ($(${CXX:-g++} --version | head -1))"
  rm -rf build/temp-* pyvision_ops/_C*.so
  start=$(date +%s)
  if FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" timeout "${BUILD_TIMEOUT:-150}" \
      "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    note "build: ok ($(elapsed "$start"))"
  else
    note "build: FAILED or timed out ($(elapsed "$start"), see build.log)"; tail -40 "$OUT/build.log"; exit 1
  fi
  "$PY" -m pyvision_ops.info 2>&1 | tee -a "$summary"
  # A second, static copy of libstdc++ inside the extension is what crashed error messages before.
  note "libstdc++ ostream code linked into the extension: $(nm -C pyvision_ops/_C*.so | grep -c ' [TtWw] .*_M_insert<long>') symbols (0 expected)"
fi

if wants tests; then
  start=$(date +%s)
  timeout "${TESTS_TIMEOUT:-80}" "$PY" -m pytest tests -q -p no:cacheprovider -rfE -m needs_cuda \
    > "$OUT/tests.log" 2>&1
  rc=$?
  note "tests (-m needs_cuda): exit $rc, $(tail -1 "$OUT/tests.log") ($(elapsed "$start"))"
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20 | tee -a "$summary"
fi

if wants sanitize; then
  # memcheck over each family's CUDA tests, cut to a spread-out subset (--cuda-subset keeps at
  # most N of a file's CUDA tests, evenly over its parametrisations); the caching allocator is
  # off so that memcheck sees every allocation's true bounds.
  families=$("$PY" -m pyvision_ops.bench --families 2>/dev/null)
  : > "$OUT/sanitizer.log"
  for family in $families; do
    [ -f "tests/test_$family.py" ] || continue
    start=$(date +%s)
    before=$(grep -c '========= Invalid\|========= Program hit' "$OUT/sanitizer.log")
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZE_TIMEOUT:-22}" compute-sanitizer --tool memcheck \
      --error-exitcode 9 "$PY" -m pytest "tests/test_$family.py" -q -p no:cacheprovider -m "needs_cuda and not slow" \
      --cuda-subset "${SANITIZE_SUBSET:-40}" >> "$OUT/sanitizer.log" 2>&1
    rc=$?
    after=$(grep -c '========= Invalid\|========= Program hit' "$OUT/sanitizer.log")
    note "compute-sanitizer memcheck tests/test_$family.py: exit $rc, $(( after - before )) error reports ($(elapsed "$start"))"
  done
  grep -E "ERROR SUMMARY" "$OUT/sanitizer.log" | tail -3 | tee -a "$summary"
fi

if wants racecheck; then
  # racecheck (shared-memory hazards) is much slower than memcheck: a few tests per family.
  families=$("$PY" -m pyvision_ops.bench --families 2>/dev/null)
  : > "$OUT/racecheck.log"
  for family in $families; do
    [ -f "tests/test_$family.py" ] || continue
    grep -q "__shared__" csrc/"$family"/*.cu 2>/dev/null || continue
    start=$(date +%s)
    before=$(grep -c '========= Error\|========= Warning\|Race reported' "$OUT/racecheck.log")
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${RACECHECK_TIMEOUT:-18}" compute-sanitizer --tool racecheck \
      --racecheck-report analysis --error-exitcode 9 "$PY" -m pytest "tests/test_$family.py" -q -p no:cacheprovider \
      -m "needs_cuda and not slow" --cuda-subset "${RACECHECK_SUBSET:-6}" >> "$OUT/racecheck.log" 2>&1
    rc=$?
    after=$(grep -c '========= Error\|========= Warning\|Race reported' "$OUT/racecheck.log")
    note "compute-sanitizer racecheck tests/test_$family.py: exit $rc, $(( after - before )) hazard reports ($(elapsed "$start"))"
  done
  grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$OUT/racecheck.log" | tail -3 | tee -a "$summary"
fi

if wants bench; then
  start=$(date +%s)
  timeout "${BENCH_TIMEOUT:-60}" "$PY" -m pyvision_ops.bench --device cuda --quick --json "$OUT/bench-cuda.json" \
    > "$OUT/bench.log" 2>&1
  note "bench (--device cuda --quick): exit $? ($(elapsed "$start"))"
  tail -40 "$OUT/bench.log"
fi

note "gpu-check done in $(elapsed "$started")"
echo
cat "$summary"
