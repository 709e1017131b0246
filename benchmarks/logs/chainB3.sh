#!/bin/bash
# Issue 5 noise sweep: noisy planner at error rates 0.2 and 0.4, λ 0.5, PPO, 200k steps, 3 seeds.
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
.venv/bin/python benchmarks/distill_efficiency.py --envs MiniGrid-LavaGapS7-v0 MiniGrid-Dynamic-Obstacles-6x6-v0 --algos ppo --coeffs 0.5 --noise 0.2 0.4 --seeds 3 --frames 200000 --no-record
echo CHAIN B3 DONE
