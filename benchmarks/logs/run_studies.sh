#!/usr/bin/env bash
# The sample-efficiency studies of this session, run one after the other.
set -x
cd "$(dirname "$0")/../.."
export WANDB_MODE=disabled RL_WARNINGS=False
PY=.venv/bin/python
$PY benchmarks/sample_efficiency.py --quick
$PY benchmarks/sample_efficiency.py --env MiniGrid-DoorKey-6x6-v0 --frames 300000 --seeds 5 \
    --definition first_progress --methods uniform vlm_events per vlm_noisy
