#!/bin/bash
# Issue 4 study, continued (replaces chainA.sh once vlm_events:1 is running): 8x8 uniform seed 1, then the λmax ablation on 6x6.
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
PY=.venv/bin/python
R=benchmarks/results/sample_efficiency/MiniGrid-DoorKey-8x8-v0_first_progress
E8="--env MiniGrid-DoorKey-8x8-v0 --frames 1000000 --definition first_progress --eval-interval 25000"
while pgrep -f "cell vlm_events:1" > /dev/null; do sleep 20; done
$PY benchmarks/sample_efficiency.py $E8 --cell uniform:1
$PY benchmarks/sample_efficiency.py --env MiniGrid-DoorKey-6x6-v0 --frames 300000 --seeds 3 --definition first_progress --methods vlm_pure --no-record
echo CHAIN A2 DONE
