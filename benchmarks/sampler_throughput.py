"""Sampler speed at replay scale, and what rendering frames costs per env step.

Part 1 (the issue's target): capacity 1M, batch 256, 10% positive slots, one
thread. It times ``sampler.sample(storage, 256)`` and the write-back of one
clip's 32 priorities for

- MixtureSampler, binary priorities (the VLM-RB default, λ = 0.5);
- MixtureSampler with TD boosting (sum tree);
- TorchRL's RandomSampler and PrioritizedSampler (α = 0.6, β = 0.4),

all in one run, alternating between them, and reports medians and ratios. It
also times a whole ``rb.sample()`` for each, since TensorDictReplayBuffer
copies every info entry into the batch.

Part 2: MiniGrid env steps with and without rendering the full-grid frame.

One command for both parts; it replaces the "Sampler throughput" section of
benchmarks/RESULTS.md (``--no-record``: print only; ``--quick``: a smoke run,
never recorded). The table there came from

    python benchmarks/sampler_throughput.py
"""
from __future__ import annotations

import argparse
import time

import torch
from common import interleaved_medians, markdown_table, record_results
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, PrioritizedSampler, RandomSampler

from torchrl_vlm import MixtureSampler, make_minigrid_env, make_replay_buffer


def build(capacity: int, batch: int, positives: float):
    storage = LazyTensorStorage(capacity)
    data = TensorDict(
        {
            "observation": torch.zeros(capacity, 4),
            "vlm_priority": torch.zeros(capacity),
            "td_error": torch.zeros(capacity),
        },
        [capacity],
    )
    n_pos = int(positives * capacity)
    pos = torch.randperm(capacity)[:n_pos]
    samplers = {
        "Mixture (binary)": MixtureSampler(lam_max=0.5, warmup=0, max_capacity=capacity),
        "Mixture (TD boost)": MixtureSampler(lam_max=0.5, warmup=0, td_boost=True, max_capacity=capacity),
        "TorchRL RandomSampler": RandomSampler(),
        "TorchRL PrioritizedSampler": PrioritizedSampler(capacity, alpha=0.6, beta=0.4),
    }
    buffers = {}
    for name, sampler in samplers.items():
        rb = make_replay_buffer(capacity, sampler=sampler, batch_size=batch)
        index = rb.extend(data)
        if isinstance(sampler, MixtureSampler):
            rb.update_priority(pos, torch.ones(n_pos))
            if sampler.td_boost:
                sampler.update_td_error(index, torch.rand(capacity))
        elif isinstance(sampler, PrioritizedSampler):
            rb.update_priority(index, torch.rand(capacity))
        buffers[name] = rb
    del storage
    return buffers


def sampler_part(capacity: int, batch: int, rounds: int, per_round: int) -> str:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    buffers = build(capacity, batch, 0.10)
    clip = torch.randint(capacity, (32,))
    ones = torch.ones(32)

    sample_fns = {name: (lambda rb=rb: rb.sampler.sample(rb.storage, batch)) for name, rb in buffers.items()}
    rb_fns = {name: (lambda rb=rb: rb.sample()) for name, rb in buffers.items()}

    def write(rb):
        s = rb.sampler
        if isinstance(s, MixtureSampler):
            # A clip's verdict: all 32 slots positive, then (next clip) back to 0,
            # so both the insert and the removal path of the positive set are timed.
            s.update_priority(clip, ones, storage=rb.storage)
            s.update_priority(clip, 0.0, storage=rb.storage)
        elif isinstance(s, PrioritizedSampler):
            s.update_priority(clip, ones, storage=rb.storage)
            s.update_priority(clip, ones * 0.5, storage=rb.storage)

    write_fns = {
        name: (lambda rb=rb: write(rb)) for name, rb in buffers.items() if not isinstance(rb.sampler, RandomSampler)
    }
    sample_t = interleaved_medians(sample_fns, rounds, per_round)
    rb_t = interleaved_medians(rb_fns, rounds, per_round // 4)
    write_t = interleaved_medians(write_fns, rounds, per_round // 4)

    ref_rand = sample_t["TorchRL RandomSampler"]
    ref_per = sample_t["TorchRL PrioritizedSampler"]
    rows = []
    for name in buffers:
        w = write_t.get(name)
        # write() does two priority writes per call
        w_s = "n/a (no priorities)" if w is None else f"{w / 2 * 1e6:.1f}"
        rows.append(
            [
                name,
                f"{sample_t[name] * 1e6:.1f}",
                f"{sample_t[name] / ref_rand:.2f}",
                f"{sample_t[name] / ref_per:.2f}",
                f"{rb_t[name] * 1e6:.1f}",
                w_s,
            ]
        )
    table = markdown_table(
        [
            "sampler",
            "sample µs (median)",
            "÷ RandomSampler",
            "÷ PrioritizedSampler",
            "rb.sample() µs",
            "write-back of 32 µs",
        ],
        rows,
    )
    mix = sample_t["Mixture (binary)"]
    verdict = (
        f"Target (binary MixtureSampler ≤ 1.0× PrioritizedSampler and ≤ 2× RandomSampler): "
        f"{mix / ref_per:.2f}× and {mix / ref_rand:.2f}× → "
        f"{'met' if mix <= ref_per and mix <= 2 * ref_rand else 'MISSED'}."
    )
    return (
        f"Capacity {capacity:,}, batch {batch}, 10% positive, λ = 0.5, one thread; "
        f"{rounds} alternating rounds of {per_round} calls.\n\n{table}\n\n{verdict}\n"
    )


def render_part(steps: int) -> str:
    """Env steps with and without frames, and the renderer against minigrid's own."""
    import gymnasium as gym

    from torchrl_vlm.envs.minigrid import render_full_grid

    torch.set_num_threads(1)
    rows = []
    for env_name in ("MiniGrid-DoorKey-8x8-v0", "MiniGrid-DoorKey-16x16-v0"):
        per_step = {}
        for render in (False, True):
            env = make_minigrid_env(env_name, render=render, seed=0)
            td = env.reset()
            t0 = time.perf_counter()
            for _ in range(steps):
                td = env.rand_step(td)
                td = env.step_mdp(td) if not td["next", "done"].any() else env.reset()
            per_step[render] = (time.perf_counter() - t0) / steps
        frame = make_minigrid_env(env_name, seed=0).reset()["pixels"].shape
        raw = gym.make(env_name)
        raw.reset(seed=0)
        render = interleaved_medians(
            {
                "minigrid": lambda raw=raw: raw.unwrapped.get_frame(highlight=False, tile_size=8),
                "ours": lambda raw=raw: render_full_grid(raw, 8),
            },
            rounds=5,
            per_round=max(steps // 10, 10),
        )
        rows.append(
            [
                env_name,
                f"{per_step[False] * 1e6:.0f}",
                f"{per_step[True] * 1e6:.0f}",
                f"{per_step[True] / per_step[False]:.2f}",
                "×".join(str(s) for s in frame[:2]),
                f"{render['minigrid'] * 1e6:.0f}",
                f"{render['ours'] * 1e6:.0f}",
            ]
        )
    table = markdown_table(
        [
            "env (TorchRL, 1 env)",
            "step µs, no frames",
            "step µs, frames",
            "ratio",
            "frame",
            "minigrid get_frame µs",
            "render_full_grid µs",
        ],
        rows,
    )
    return (
        f"MiniGrid steps through the TorchRL env, {steps} random steps each; and one full-grid frame "
        f"drawn by minigrid's `get_frame(highlight=False)` against torchrl_vlm's `render_full_grid` "
        f"(the same pixels; a test checks it).\n\n{table}\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=400)
    parser.add_argument("--render-steps", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run (not recorded)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    if args.quick:
        args.capacity, args.rounds, args.per_round, args.render_steps = 10_000, 2, 40, 50

    body = "### Sampling and write-back\n\n" + sampler_part(args.capacity, args.batch, args.rounds, args.per_round)
    body += "\n### Rendering cost\n\n" + render_part(args.render_steps)
    print(body)
    if not (args.quick or args.no_record):
        record_results("Sampler throughput", body)


if __name__ == "__main__":
    main()
