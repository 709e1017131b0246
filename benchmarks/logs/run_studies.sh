#!/usr/bin/env bash
# The benchmark queue of this session, one after the other (cells already on disk are skipped).
set -x
cd "$(dirname "$0")/../.."
export WANDB_MODE=disabled RL_WARNINGS=False
PY=.venv/bin/python
while pgrep -f "sample_efficiency.py --quick" > /dev/null; do sleep 10; done
$PY benchmarks/pipeline_overhead.py --frames 30000 --rounds 3 > benchmarks/logs/pipeline_overhead.log 2>&1
$PY benchmarks/distill_efficiency.py --envs MiniGrid-LavaGapS7-v0 --algos ppo --seeds 3 --frames 60000 \
    --coeffs 0.01 0.5 > benchmarks/logs/distill_efficiency.log 2>&1
$PY benchmarks/sample_efficiency.py --env MiniGrid-DoorKey-6x6-v0 --frames 300000 --seeds 3 \
    --definition first_progress --methods uniform vlm_events
$PY benchmarks/sample_efficiency.py --env MiniGrid-DoorKey-6x6-v0 --frames 300000 --seeds 5 \
    --definition first_progress --methods uniform vlm_events
