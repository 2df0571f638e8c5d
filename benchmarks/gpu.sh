#!/usr/bin/env bash
# The GPU benchmark, prepared to run in one command on a lent GPU machine (about 4-5 minutes).
#
# That machine has its own torch (2.11 at last look), reaches no package registry and cannot see
# ../shared, so two steps:
#
#   bash benchmarks/gpu.sh prepare   # HERE: download the peers' wheels into .whl/ and copy the
#                                    # CIFAR-10 archive into local/ (both git-ignored)
#   bash benchmarks/gpu.sh           # THERE, from the repo root, with .whl and local carried:
#                                    # device run: command="bash benchmarks/gpu.sh", carry=[".whl", "local"]
#
# What it measures, printing the card's name with every figure:
#   1. images/s of one training step (augmentation included) for this engine in fp32 and bf16, for
#      byol-pytorch and for lightly's recipe (its DataLoader with 8 workers), on the same GPU:
#      benchmarks/speed.py --only steps at batch 512, ResNet-18 full width;
#   2. the `gpu` preset on the real CIFAR-10 copy for GPU_MINUTES minutes (default 2.5): images/s,
#      epochs done and the kNN curve (full 50k bank and 10k queries).
# Results land in $OUT (the device tool brings that folder back) or benchmarks/results/.
#
#   bash benchmarks/gpu.sh quality   # THERE, instead: the quality table (benchmarks/quality.py --mode gpu):
#                                    # 8 recipes and lightly's, complete 10-epoch schedules, full width,
#                                    # all 50k images, 5 at once on the card (QUALITY_PARALLEL), ~6-8 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIVE_NAME=cifar10-jpg.tar.gz

if [[ "${1:-}" == "prepare" ]]; then
  mkdir -p .whl local
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  # Pure-Python wheels of the two peers and what they import that the GPU image lacks.
  python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    byol-pytorch==0.9.1 lightly==1.6.0 beartype
  cp "${CIFAR_ARCHIVE:-../shared/data/$ARCHIVE_NAME}" "local/$ARCHIVE_NAME"
  du -sh .whl local
  echo "Prepared. On the GPU machine run: bash benchmarks/gpu.sh   (carry .whl and local)"
  exit 0
fi

OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ "${1:-}" == "quality" ]]; then
  # Scratch runs stay on the machine; only the table and its numbers come back.
  timeout "${QUALITY_TIMEOUT:-560}" python3 benchmarks/quality.py --mode gpu --parallel "${QUALITY_PARALLEL:-5}" \
    --data "local/$ARCHIVE_NAME" --scratch /tmp/quality-runs --out "$OUT_DIR" ${QUALITY_ARGS:-} 2>&1 \
    | tee "$OUT_DIR/quality-gpu.log"
  exit "${PIPESTATUS[0]}"
fi
CARD=$(python3 -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')")
echo "Card: $CARD; torch $(python3 -c 'import torch; print(torch.__version__)')"
if [[ "$CARD" == "no GPU" ]]; then echo "No GPU visible: nothing to measure here."; exit 1; fi

# 1. Training-step throughput against the peers (~1 minute). --no-bf16 is not passed: bf16 is the
#    best precision on any GPU of the last five years.
timeout 240 python3 benchmarks/speed.py --only steps --batch 512 --warmup 5 --steps 20 \
  --lightly-workers 8 --data "local/$ARCHIVE_NAME" --out "$OUT_DIR" 2>&1 | sed "s/^/[$CARD] /" \
  | tee "$OUT_DIR/gpu-steps.log"

# 2. The gpu preset on the real copy for a fixed time; the run stops gracefully when it is spent.
timeout 300 python3 benchmarks/time_budget_run.py --preset gpu --data "local/$ARCHIVE_NAME" \
  --minutes "${GPU_MINUTES:-2.5}" --set eval_every=1 --runs-dir /tmp/gpu-runs --name gpu-preset 2>&1 \
  | sed "s/^/[$CARD] /" | tee "$OUT_DIR/gpu-preset.log"
cp /tmp/gpu-runs/gpu-preset/metrics.jsonl "$OUT_DIR/gpu-preset-metrics.jsonl" 2>/dev/null || true
