#!/usr/bin/env bash
# How the shipped CPU demo (checkpoints/demo-cifar10-cpu-200ep) was trained: over several sessions on a
# 2-core CPU. It is done; the script stays as the record, and to train a successor the same way.
#
# No GPU has been lent for the demo, and a long CPU run outlasts one session, while nothing on these
# machines but the repository outlasts a session. So the run's resumable state is kept in
# benchmarks/demo-run/ between sittings: last.pt (networks, target, optimiser, 19 MB), its config,
# status and metrics, and the snapshots the finished demo will keep. Each sitting trains in
# local/runs/ (git-ignored) and commits the state back.
#
#   bash benchmarks/demo_run.sh start     # the first sitting: a new run (the cpu preset, 200 epochs)
#   bash benchmarks/demo_run.sh continue  # resume it in the background, from local/runs/ or the saved state
#   bash benchmarks/demo_run.sh status    # its step, epoch, speed and latest kNN
#   bash benchmarks/demo_run.sh save      # stop it gracefully and copy its state here, to commit
#   bash benchmarks/demo_run.sh finish    # once finished: make checkpoints/$NAME and measure its neighbours
#
# After finish, the new demo replaces the old one and benchmarks/demo-run/ is deleted (by hand: both
# are commits). A successor needs a new DEMO_RUN_NAME: make_demo.py refuses to write over a demo.
# The data is the real copy at ../shared/data. The shipped demo was trained with the cpu preset's
# AdamW form at the 1x predictor; a successor started now gets the preset as it is: SGD, the 3x predictor.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=${DEMO_RUN_NAME:-demo-cifar10-cpu-200ep}
EPOCHS=200
RUNS=${DEMO_RUN_RUNS:-local/runs}  # the DEMO_RUN_* variables are for trying the script on a tiny run
RUN=$RUNS/$NAME
SAVED=${DEMO_RUN_SAVED:-benchmarks/demo-run}
LOG=local/$NAME.log
PYTHON=${PYTHON:-.venv/bin/python}
# The snapshots the demo keeps: epochs 0, 10, 20, 50, 100 and 200 (195 steps an epoch), so the map can
# be watched forming early, where it changes most.
KEEP_STEPS=${DEMO_RUN_KEEP_STEPS:-"0 1950 3900 9750 19500 39000"}
# Where it trained, for demo.json: every sitting so far ran on the same kind of machine.
MACHINE=${DEMO_RUN_MACHINE:-"a 2-core Intel Xeon, both cores, bf16 + channels-last, resumed across sittings"}

saved_step() {  # the step a run folder's last.pt was saved at (-1 without a readable one)
    "$PYTHON" -c 'import sys; from byol.checkpoint import checkpoint_step; s = checkpoint_step(sys.argv[1]); print(-1 if s is None else s)' "$1/last.pt" 2>/dev/null || echo -1
}

running() {
    pgrep -f "byol (train|resume) .*$NAME" > /dev/null
}

case "${1:-}" in
start)
    [ -e "$RUN" ] && { echo "$RUN exists already: use continue"; exit 1; }
    mkdir -p "$RUNS"
    # kNN over all 50,000 training images and 10,000 test queries, as the demo records it.
    nohup "$PYTHON" -m byol train --preset cpu --epochs "$EPOCHS" --eval-every 10 \
        --set eval_bank_size=0 --set eval_query_size=0 --data ../shared/data/cifar10-jpg.tar.gz --runs-dir "$RUNS" --name "$NAME" \
        --set "notes=The shipped demo: the cpu preset's recipe for $EPOCHS epochs on both cores of a 2-core CPU, resumed across sittings" \
        >> "$LOG" 2>&1 &
    echo "training in the background; log: $LOG"
    ;;
continue)
    running && { echo "it is training already"; exit 0; }
    [ -e "$RUN/status.json" ] || [ -e "$SAVED/status.json" ] || { echo "no run at $RUN or $SAVED: use start"; exit 1; }
    # A machine that kept local/ since the last sitting may be ahead of the saved state: take the later.
    saved=$(saved_step "$SAVED") local_step=$(saved_step "$RUN")  # each read starts Python and torch once
    if [ "$saved" -gt "$local_step" ]; then
        rm -rf "$RUN" && mkdir -p "$RUN" && cp "$SAVED"/* "$RUN"/
        local_step=$saved
        echo "restored step $saved from $SAVED"
    fi
    nohup "$PYTHON" -m byol resume "$RUN" >> "$LOG" 2>&1 &
    echo "resumed in the background from step $local_step; log: $LOG"
    ;;
status)
    [ -e "$RUN/status.json" ] || { echo "no run at $RUN (continue restores the saved one)"; exit 1; }
    "$PYTHON" - "$RUN" <<'EOF'
import sys
from byol import runs
status = runs.read_status(sys.argv[1])  # a run whose process is gone reads "interrupted"
rows = runs.read_metric_rows(sys.argv[1])  # a torn last line (a kill mid-write) is skipped
knn = [(r["epoch"], r["knn"]) for r in rows if r.get("knn") is not None]
p = status.get("progress") or {}
if "step" in p:
    print(f"{status['state']}: step {p['step']:,} of {p['total_steps']:,} (epoch {p['epoch']:.1f}), {p['images_per_s']:.0f} images/s")
else:  # a resumed run writes no progress until its first logged step
    print(f"{status['state']}: {status.get('message', '')}")
print("kNN by epoch:", ", ".join(f"{e:.0f}: {k:.1f}%" for e, k in knn))
EOF
    ;;
save)
    if running; then
        pkill -TERM -f "byol (train|resume) .*$NAME"
        while running; do sleep 2; done  # the step finishes and last.pt is written
    fi
    [ -e "$RUN/last.pt" ] || { echo "no checkpoint at $RUN to save"; exit 1; }
    rm -rf "$SAVED" && mkdir -p "$SAVED"
    cp "$RUN"/config.json "$RUN"/status.json "$RUN"/metrics.jsonl "$RUN"/last.pt "$SAVED"/
    for step in $KEEP_STEPS; do
        snapshot=$(printf "%s/step-%08d.pt" "$RUN" "$step")
        [ -e "$snapshot" ] && cp "$snapshot" "$SAVED"/
    done
    echo "saved step $(saved_step "$SAVED") to $SAVED: $(du -sh "$SAVED" | cut -f1)"
    ;;
finish)
    running && { echo "it is still training: let it finish (status shows where it is)"; exit 1; }
    OUT=${DEMO_RUN_OUT:-checkpoints/$NAME}
    DATA=${DEMO_RUN_DATA:-cifar10}  # the demo names cifar10: it opens on any local copy at a documented place
    # make_demo refuses a run that has not finished; the artefacts it ships take some minutes of CPU.
    # shellcheck disable=SC2086  # KEEP_STEPS is a list of steps
    "$PYTHON" benchmarks/make_demo.py "$RUN" --out "$OUT" --machine "$MACHINE" --data "$DATA" --steps $KEEP_STEPS --ship-artefacts
    "$PYTHON" benchmarks/neighbours.py "$OUT" ${DEMO_RUN_DATA:+--data "$DATA"} | tee "local/$NAME-neighbours.txt"
    echo "du: $(du -sh "$OUT" | cut -f1). If it beats the shipped demo, remove the old one (tests/helpers.shipped_demo"
    echo "expects exactly one), update the README's demo paragraph and figures, and delete $SAVED."
    ;;
*)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
