#!/usr/bin/env bash
# The sample-efficiency studies of this session, one after the other (cells on disk are skipped).
set -x
cd "$(dirname "$0")/../.."
export WANDB_MODE=disabled RL_WARNINGS=False
PY=.venv/bin/python
while pgrep -f "sample_efficiency.py --quick" > /dev/null; do sleep 10; done
$PY benchmarks/sample_efficiency.py --env MiniGrid-DoorKey-6x6-v0 --frames 300000 --seeds 5 \
    --definition first_progress --methods uniform vlm_events
