#!/bin/bash
# Issue 4 study, lane D: DoorKey-12x12 first_progress, 2M steps, eval every 100k (uniform / PER / VLM-RB).
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
PY=.venv/bin/python
E12="--env MiniGrid-DoorKey-12x12-v0 --frames 2000000 --definition first_progress --eval-interval 100000"
$PY benchmarks/sample_efficiency.py $E12 --cell vlm_events:0
$PY benchmarks/sample_efficiency.py $E12 --cell uniform:1
$PY benchmarks/sample_efficiency.py $E12 --cell per:1
echo CHAIN D DONE
