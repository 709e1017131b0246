#!/bin/bash
# Issue 4 study: PER on DoorKey-8x8 (first_progress, 1M steps), one cell per lane as the 8x8 seeds finish.
cd /work/main
export WANDB_MODE=disabled RL_WARNINGS=False OMP_NUM_THREADS=1
PY=.venv/bin/python
R=benchmarks/results/sample_efficiency/MiniGrid-DoorKey-8x8-v0_first_progress
E8="--env MiniGrid-DoorKey-8x8-v0 --frames 1000000 --definition first_progress --eval-interval 25000"
(while [ ! -f $R/vlm_events_s4.json ]; do sleep 10; done; $PY benchmarks/sample_efficiency.py $E8 --cell per:0) &
(while [ ! -f $R/uniform_s3.json ]; do sleep 10; done; $PY benchmarks/sample_efficiency.py $E8 --cell per:1) &
wait
echo CHAIN E DONE
