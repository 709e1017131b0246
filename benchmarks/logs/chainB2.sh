#!/bin/bash
# Issue 5 study, continued (replaces chainB.sh): A2C after the PPO invocation ends; the noise sweep runs beside them (chainB3.sh).
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
PY=.venv/bin/python
ENVS="MiniGrid-LavaGapS7-v0 MiniGrid-Dynamic-Obstacles-6x6-v0"  # A2C on two of the four tasks: the time left in the session
while pgrep -f "algos ppo --coeffs 0.01 0.5" > /dev/null; do sleep 15; done
$PY benchmarks/distill_efficiency.py --envs $ENVS --algos a2c --coeffs 0.5 --seeds 3 --frames 200000 --no-record
echo CHAIN B2 DONE
