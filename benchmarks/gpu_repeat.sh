#!/bin/bash
# Does the same prune give the same bytes twice on a CUDA GPU? The device check of docs/engine.md
# ("On a GPU again"): the CUDA-only tests, then one prune command run twice into fresh folders,
# printing each run's phases and the sha256 of its surrogate, scores and coreset.
#
#   bash benchmarks/gpu_repeat.sh PREPARED OUT [prune options, e.g. --surrogate SURR --effort-batch-size 512]
#
# Without Ray (--workers 0: capture and effort run in the command's process, on the GPU). Set
# DEALREC_CACHE to a folder that holds the catalogue's item embeddings when the encoder's weights are
# not on the machine.
set -u
DATA=$1; OUT=$2; shift 2
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pytest tests/test_devices.py -q -p no:cacheprovider -W ignore -rs 2>&1 | tail -3
for RUN in a b; do
  rm -rf "$OUT/run-$RUN"
  T0=$(date +%s.%N)
  python3 -m dealrec prune "$DATA" --n 1024 --out "$OUT/run-$RUN" --workers 0 --device cuda --quiet "$@" \
    > "$OUT/prune-$RUN.log" 2>&1
  echo "run $RUN: exit $? in $(python3 -c "print(round($(date +%s.%N) - $T0, 1))") s"
  tail -1 "$OUT/prune-$RUN.log"
  sha256sum "$OUT/run-$RUN"/surrogate/model.safetensors "$OUT/run-$RUN"/scores.parquet \
    "$OUT/run-$RUN"/coreset.parquet 2>/dev/null | cut -c1-16,65-
done
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/prune_phases.py "$OUT/run-a" "$OUT/run-b"   # phases, bytes
for F in scores.parquet coreset.parquet; do
  if [ ! -f "$OUT/run-a/$F" ] || [ ! -f "$OUT/run-b/$F" ]; then echo "$F: missing (a run failed: see its log)"
  elif cmp -s "$OUT/run-a/$F" "$OUT/run-b/$F"; then echo "$F: the same bytes"; else echo "$F: DIFFERENT"; fi
done
