#!/bin/bash
# Issue 4 study: DoorKey-8x8 first_progress, 1M steps (seeds 1, 2; seed 0 ran as a pilot), then the λmax ablation on 6x6.
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
PY=.venv/bin/python
R=benchmarks/results/sample_efficiency/MiniGrid-DoorKey-8x8-v0_first_progress
while [ ! -f $R/uniform_s0.json ] || [ ! -f $R/vlm_events_s0.json ]; do sleep 20; done
E8="--env MiniGrid-DoorKey-8x8-v0 --frames 1000000 --definition first_progress --eval-interval 25000"
$PY benchmarks/sample_efficiency.py $E8 --cell vlm_events:1
$PY benchmarks/sample_efficiency.py $E8 --cell uniform:1
$PY benchmarks/sample_efficiency.py --env MiniGrid-DoorKey-6x6-v0 --frames 300000 --seeds 5 --definition first_progress --methods uniform vlm_events vlm_pure --no-record
$PY benchmarks/sample_efficiency.py $E8 --cell vlm_events:2
$PY benchmarks/sample_efficiency.py $E8 --cell uniform:2
echo CHAIN A DONE
