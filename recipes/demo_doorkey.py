"""A short tour of the VLM-RB data path on DoorKey, with a random policy.

It runs the batched MiniGrid env with clip tagging under a TorchRL Collector,
writes transitions (without frames) into a MixtureSampler buffer, marks every
clip that contains a ground-truth event as meaningful, and shows how λ and the
share of each batch drawn from the priorities evolve. No model is trained.

    python recipes/demo_doorkey.py [--env MiniGrid-DoorKey-5x5-v0] [--frames 20000]
"""
from __future__ import annotations

import argparse
import time

import torch
from torchrl.collectors import Collector
from torchrl.envs.utils import RandomPolicy

from torchrl_vlm import EVENT_NAMES, MixtureSampler, make_minigrid_env, make_replay_buffer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="MiniGrid-DoorKey-5x5-v0")
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--frames-per-batch", type=int, default=512)
    parser.add_argument("--clip-len", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)

    env = make_minigrid_env(args.env, num_envs=args.num_envs, clip_len=args.clip_len, seed=0)
    collector = Collector(
        env, RandomPolicy(env.full_action_spec), frames_per_batch=args.frames_per_batch, total_frames=args.frames
    )
    sampler = MixtureSampler(lam_max=0.5, warmup=args.frames // 2)
    rb = make_replay_buffer(args.frames + args.frames_per_batch, sampler=sampler, batch_size=256)

    start = time.perf_counter()
    frames_rendered = 0
    print(f"{args.env}: {args.num_envs} envs, clips of {args.clip_len} steps, random policy")
    print(f"{'frames':>8} {'clips':>6} {'positive clips':>15} {'lambda':>7} {'batch from q_P':>15}")
    seen_clips: set[int] = set()
    meaningful: set[int] = set()
    for i, batch in enumerate(collector):
        batch = batch.reshape(-1)
        frames_rendered += batch["pixels"].shape[0]
        # Frames never enter the buffer: they exist only for the scorer.
        data = batch.exclude("pixels", ("next", "pixels"))
        data["vlm_priority"] = torch.zeros(data.shape[0])
        index = rb.extend(data)
        # Stand-in verdict for this tour: a clip is meaningful if any of its steps
        # caused a ground-truth event (the real pipeline asks a VLM, out of process).
        clip_id = data["clip_id"]
        hit = data["next", "events"].any(-1)
        positive_clips = torch.unique(clip_id[hit])
        rb.update_priority(index[torch.isin(clip_id, positive_clips)], 1.0)
        seen_clips.update(clip_id.tolist())
        meaningful.update(positive_clips.tolist())
        sample = rb.sample()
        if i % 4 == 0:
            print(
                f"{len(rb):>8} {len(seen_clips):>6} {len(meaningful):>15} "
                f"{float(sample['mixture_lambda'][0]):>7.3f} {float(sample['from_priority'].float().mean()):>15.3f}"
            )
    collector.shutdown()
    elapsed = time.perf_counter() - start
    events = rb[:]["next", "events"].sum(0)
    print(f"\n{len(rb)} transitions in {elapsed:.1f}s ({len(rb) / elapsed:.0f} env steps/s with rendering)")
    print(f"{frames_rendered} frames rendered, none stored; buffer columns: {sorted(rb[:1].keys())}")
    print("events seen: " + ", ".join(f"{n}={int(c)}" for n, c in zip(EVENT_NAMES, events)))
    print(f"positive slots: {sampler.num_positive} of {len(rb)}; final lambda {sampler.lam:.3f}")


if __name__ == "__main__":
    main()
