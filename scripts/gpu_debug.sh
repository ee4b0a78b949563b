#!/usr/bin/env bash
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${GPU_CHECK_OUT:-gpu-check-results}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD"
which -a g++ gcc c++; echo "CXX=${CXX:-} CC=${CC:-}"; g++ --version | head -1; /usr/bin/g++ --version | head -1
ls /opt/gcc/lib64 2>/dev/null | grep -i stdc
python3 -c "import sysconfig as s; print(s.get_config_var('LDSHARED')); print(s.get_config_var('CXX'))"
rm -rf build pyvision_ops/_C*.so
CXX=/usr/bin/g++ CC=/usr/bin/gcc FORCE_CUDA=1 MAX_JOBS=16 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
grep -- "-shared" "$OUT/build.log" | cut -c1-200
nm -C pyvision_ops/_C*.so | grep -c "_M_insert<long>"
python3 -m pytest tests/test_unpool.py -q -p no:cacheprovider -m needs_cuda --tb=line -q -x -k "rejects_out_of_range_index" 2>&1 | tail -3
python3 -m pytest tests/test_unpool.py -q -p no:cacheprovider -m needs_cuda --tb=line -q > "$OUT/cuda-tests.log" 2>&1
grep -E "^/|Error" "$OUT/cuda-tests.log" | sort | uniq -c | sort -rn | head -30
tail -1 "$OUT/cuda-tests.log"
