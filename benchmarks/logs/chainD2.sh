#!/bin/bash
# Issue 4 study, lane D (replaces chainD.sh after its first cell): more DoorKey-8x8 seeds (3, 4).
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
PY=.venv/bin/python
R=benchmarks/results/sample_efficiency/MiniGrid-DoorKey-12x12-v0_first_progress
while [ ! -f $R/vlm_events_s0.json ]; do sleep 20; done
E8="--env MiniGrid-DoorKey-8x8-v0 --frames 1000000 --definition first_progress --eval-interval 25000"
$PY benchmarks/sample_efficiency.py $E8 --cell vlm_events:3
$PY benchmarks/sample_efficiency.py $E8 --cell uniform:4
$PY benchmarks/sample_efficiency.py $E8 --cell vlm_events:4
echo CHAIN D2 DONE
