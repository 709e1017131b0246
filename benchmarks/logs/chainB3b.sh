#!/bin/bash
# Issue 5 noise sweep, extended: error rates 0.6 and 0.8 (0.2 and 0.4 barely slowed the student).
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
.venv/bin/python benchmarks/distill_efficiency.py --envs MiniGrid-LavaGapS7-v0 MiniGrid-Dynamic-Obstacles-6x6-v0 --algos ppo --coeffs 0.5 --noise 0.6 0.8 --seeds 3 --frames 200000 --no-record
echo CHAIN B3b DONE
