#!/usr/bin/env bash
# The CPU train-step comparison behind benchmarks/README.md's "Speed on a CPU": gpt2, 8 x 128, float32, the seed's
# PyTorch recipe beside it. Run it on a quiet machine (nothing else running); it prints the load
# average around each run, and every record keeps the load average it started with.
#   1. separate processes, each as a user runs it: gptjax's command line (which restarts itself
#      under its malloc settings, gptjax/malloc.py) and PyTorch with glibc's defaults, taking
#      turns, twice; BEFORE=DIR adds, first, the command line of an older checkout in DIR;
#      ALSO_PYTHON=PATH adds to each round gptjax's command line under that Python (for instance a
#      virtualenv on Python >= 3.12, where pip serves the newest JAX);
#   2. one process, their steps interleaved (benchmarks/torch_baseline.py --with-gptjax): both with
#      glibc's defaults, then both under gptjax's malloc settings.
# Records are appended to benchmarks/results/cpu_quiet.jsonl (RESULTS=... to change).
set -euo pipefail
cd "$(dirname "$0")/.."
results=$(realpath -m "${RESULTS:-benchmarks/results/cpu_quiet.jsonl}")
shape=(--config=ner --config.train.batch_size=8)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
load() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }
unset GLIBC_TUNABLES
if [ -n "${BEFORE:-}" ]; then
  load; echo "gptjax before ($BEFORE):"
  (cd "$BEFORE" && python run.py "${shape[@]}" --workdir="$work/before" --mode=benchmark --results="$results") 2>&1 | grep -E "^1x" || true
fi
for round in 1 2; do
  load; python run.py "${shape[@]}" --workdir="$work/g$round" --mode=benchmark --results="$results" 2>&1 | grep -E "^1x" || true
  if [ -n "${ALSO_PYTHON:-}" ]; then
    load; echo "gptjax under $ALSO_PYTHON:"
    "$ALSO_PYTHON" run.py "${shape[@]}" --workdir="$work/a$round" --mode=benchmark --results="$results" 2>&1 | grep -E "^1x" || true
  fi
  load; python benchmarks/torch_baseline.py "${shape[@]}" --results="$results" 2>&1 | grep -E "^1x" || true
done
load; GLIBC_TUNABLES= python benchmarks/torch_baseline.py "${shape[@]}" --with-gptjax --results="$results" 2>&1 | tail -4
tunables=$(python -c 'from gptjax import malloc; print(malloc.TUNABLES)')
load; GLIBC_TUNABLES=$tunables python benchmarks/torch_baseline.py "${shape[@]}" --with-gptjax --results="$results" 2>&1 | tail -4
load
