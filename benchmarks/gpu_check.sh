#!/usr/bin/env bash
# The GPU benchmarks of one device run (issue: training and exploration on the GPU), every JSON line kept in $OUT:
# the production train job on CPU and CUDA, model speed with operator counts, biased MD at production size.
# Carried to the GPU machine with .whl (ase, vesin wheels) and .benchdata/train1000.npz (bench_train.py --dataset).
set -uo pipefail
OUT="${OUT:-/tmp/alkit-gpu}"
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/device.txt"
cd benchmarks
timeout 240 python3 bench_train.py --epochs 20 --dataset ../.benchdata/train1000.npz 2>&1 | tee "$OUT/train.log"
timeout 150 python3 bench_model.py --production 2>&1 | tee "$OUT/model.log"
timeout 90 python3 bench_biased_md.py --model default --members 4 --walkers 32 --device cuda --steps 10 --repeat 3 2>&1 \
    | tee "$OUT/biased_cuda.log"
timeout 120 python3 bench_biased_md.py --model default --members 4 --walkers 32 --device cpu --steps 3 --repeat 2 2>&1 \
    | tee "$OUT/biased_cpu.log"
grep -h '^{' "$OUT"/*.log > "$OUT/results.jsonl"
