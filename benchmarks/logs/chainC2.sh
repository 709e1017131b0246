#!/bin/bash
# Issue 4 study, lane C (replaces chainC.sh after its first cell; the 12x12 cells ran slower than planned):
# DoorKey-12x12 PER, then one more DoorKey-8x8 seed for uniform replay.
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
PY=.venv/bin/python
R=benchmarks/results/sample_efficiency/MiniGrid-DoorKey-12x12-v0_first_progress
while [ ! -f $R/uniform_s0.json ]; do sleep 20; done
E12="--env MiniGrid-DoorKey-12x12-v0 --frames 2000000 --definition first_progress --eval-interval 100000"
E8="--env MiniGrid-DoorKey-8x8-v0 --frames 1000000 --definition first_progress --eval-interval 25000"
$PY benchmarks/sample_efficiency.py $E12 --cell per:0
$PY benchmarks/sample_efficiency.py $E8 --cell uniform:3
echo CHAIN C2 DONE
