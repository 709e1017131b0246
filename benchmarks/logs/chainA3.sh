#!/bin/bash
# Issue 4: DoorKey-8x8 seed 2 of each method, each started when a core frees up.
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
E8="--env MiniGrid-DoorKey-8x8-v0 --frames 1000000 --definition first_progress --eval-interval 25000"
(while pgrep -f chainB3b.sh > /dev/null; do sleep 15; done; .venv/bin/python benchmarks/sample_efficiency.py $E8 --cell vlm_events:2) &
(while pgrep -f chainA2.sh > /dev/null; do sleep 15; done; .venv/bin/python benchmarks/sample_efficiency.py $E8 --cell uniform:2) &
wait
echo CHAIN A3 DONE
