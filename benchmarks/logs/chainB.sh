#!/bin/bash
# Issue 5 study: PPO (λ 0.01, 0.5), A2C (λ 0.5), noise sweep; 200k steps, 3 seeds; stops solved runs.
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
PY=.venv/bin/python
ENVS="MiniGrid-LavaGapS7-v0 MiniGrid-Dynamic-Obstacles-6x6-v0 MiniGrid-Fetch-6x6-N2-v0 MiniGrid-GoToDoor-6x6-v0"
$PY benchmarks/distill_efficiency.py --envs $ENVS --algos ppo --coeffs 0.01 0.5 --seeds 3 --frames 200000 --jobs ${JOBS:-1} --no-record
$PY benchmarks/distill_efficiency.py --envs $ENVS --algos a2c --coeffs 0.5 --seeds 3 --frames 200000 --jobs ${JOBS:-1} --no-record
$PY benchmarks/distill_efficiency.py --envs MiniGrid-LavaGapS7-v0 MiniGrid-Dynamic-Obstacles-6x6-v0 --algos ppo --coeffs 0.5 --noise 0.2 0.4 --seeds 3 --frames 200000 --jobs ${JOBS:-1} --no-record
echo CHAIN B DONE
