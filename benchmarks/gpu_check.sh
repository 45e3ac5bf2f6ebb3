#!/usr/bin/env bash
# The GPU benchmarks of one device run (issue: training and exploration on the GPU), every JSON line kept in $OUT:
# the production explore job and train job on CPU and CUDA, model speed (Verlet MD steps, operator counts), biased MD
# at production size, and the pool benchmark's --device cuda path. Carried to the GPU machine with .whl (ase, vesin and
# vesin-torch wheels for Python 3.12). QUICK=1: the same script with every benchmark's --quick (a dry run on a CPU machine).
set -uo pipefail
OUT="${OUT:-/tmp/alkit-gpu}"
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
q=""
[ "${QUICK:-0}" = "1" ] && q="--quick"
(nvidia-smi -L || echo "no GPU") | tee "$OUT/device.txt"
cd benchmarks
timeout 150 "$PY" bench_explore.py $q 2>&1 | tee "$OUT/explore.log"
timeout 120 "$PY" bench_train.py $q ${q:+--configs 40} ${q:---epochs 20} 2>&1 | tee "$OUT/train.log"
timeout 180 "$PY" bench_model.py $q ${q:---production} --compile-step 2>&1 | tee "$OUT/model.log"
dev=cuda
[ -n "$q" ] && dev=cpu
timeout 60 "$PY" bench_biased_md.py $q --model default --members 4 --walkers 32 --device $dev --steps 10 --repeat 3 \
    2>&1 | tee "$OUT/biased_$dev.log"
timeout 60 "$PY" bench_pool_selection.py --quick --device $dev --cache "$OUT/pool_cache" --plot "$OUT/pool_quick.png" \
    > "$OUT/pool_quick.jsonl" 2> "$OUT/pool_quick.log"
tail -3 "$OUT/pool_quick.log"
rm -rf "$OUT/pool_cache"
grep -h '^{' "$OUT"/*.log > "$OUT/results.jsonl"
echo "pool quick records: $(grep -c '^{' "$OUT/pool_quick.jsonl")"
