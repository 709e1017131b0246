"""TransformersScorer throughput: clips/s and frames/s, batched vs one clip at a time.

Scores ``--clips`` synthetic MiniGrid-looking clips (random coloured tiles,
uint8) twice with the same loaded model: in calls of ``--batch-size`` clips
(one forward pass each) and in calls of one clip. It reports per-call latency
percentiles, clips/s, VLM frames/s (frames actually shown to the model,
``min(num_frames, clip_len)`` per clip) and env steps/s (clip steps covered),
the share of time spent in the processor (PIL conversion, chat template,
tokenizer, image processor), and the batched/single speed-up.

With no ``--model`` it builds the tiny random Idefics3 model of
``torchrl_vlm.testing`` offline: those numbers measure the pipeline's own
overhead, not a real VLM's speed. With a GPU and a real model, e.g.

    python benchmarks/scorer_throughput.py --model facebook/Perception-LM-1B --device cuda

it gives the kind of figure the VLM-RB paper reports (69 FPS for a 1B model
on an RTX 4090).

    python benchmarks/scorer_throughput.py [--model ID_OR_PATH] [--device auto] [--clips 64]
        [--batch-size 8] [--num-frames 8] [--clip-len 32] [--frame-size 64] [--rounds 3] [--no-append]

It replaces its section of benchmarks/RESULTS.md, "Scorer throughput" for the tiny
model and "Scorer throughput: MODEL on DEVICE" otherwise (``--no-append``: print
only). The table there (the tiny model, CPU) came from

    python benchmarks/scorer_throughput.py
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import markdown_table, minigrid_like_clips, record_results, tiny_vlm_path
from tensordict import TensorDict

from torchrl_vlm.scoring.transformers import TransformersScorer
from torchrl_vlm.testing import TINY_VLM_MARKER

TINY_NOTE = (
    "The tiny random model measures the scoring pipeline's overhead (frame selection, PIL, chat template, "
    "processor, a millisecond forward pass), NOT a real VLM's speed. With a GPU and a real model "
    "(`--model facebook/Perception-LM-1B --device cuda`) this script gives the paper's kind of figure "
    "(69 FPS for a 1B model on an RTX 4090)."
)


def run(scorer: TransformersScorer, clips: TensorDict, per_call: int):
    """Scores ``clips`` in calls of ``per_call`` clips; returns per-call seconds and processor seconds."""
    prepare = scorer.prepare
    spent = []

    def timed_prepare(chunk):
        t0 = time.perf_counter()
        out = prepare(chunk)
        spent.append(time.perf_counter() - t0)
        return out

    scorer.prepare = timed_prepare  # instance attribute: __call__ picks it up
    scorer.batch_size = per_call
    try:
        scorer(clips[:per_call])  # warm-up (allocator, kernels, lazy imports)
        spent.clear()
        lat = []
        for start in range(0, clips.batch_size[0], per_call):
            chunk = clips[start : start + per_call]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            scorer(chunk)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            lat.append(time.perf_counter() - t0)
    finally:
        del scorer.prepare
    return np.array(lat), float(np.sum(spent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="hub id or local folder; default: the tiny offline model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto (default: per device)")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--clip-len", type=int, default=32)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both modes (medians reported)")
    parser.add_argument("--no-append", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    for name in ("clips", "batch_size", "num_frames", "clip_len", "frame_size", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    model = args.model
    if model is None:
        model = tiny_vlm_path()
    tiny = (Path(model) / TINY_VLM_MARKER).is_file()

    t0 = time.perf_counter()
    scorer = TransformersScorer(
        model, num_frames=args.num_frames, batch_size=args.batch_size, device=args.device, dtype=args.dtype
    )
    load_s = time.perf_counter() - t0
    clips = minigrid_like_clips(args.clips, args.clip_len, args.frame_size)
    shown = min(args.num_frames, args.clip_len)

    # These machines are noisy: alternate the two modes over several rounds so
    # that noise hits both alike, and report medians over rounds.
    modes = {"batched": args.batch_size, "one clip at a time": 1}
    lat = {label: [] for label in modes}
    totals = {label: [] for label in modes}
    prep = {label: 0.0 for label in modes}
    for r in range(args.rounds):
        order = list(modes) if r % 2 == 0 else list(modes)[::-1]
        for label in order:
            latency, p = run(scorer, clips, modes[label])
            lat[label].append(latency)
            totals[label].append(float(latency.sum()))
            prep[label] += p
    rows = []
    speed = {}
    for label, per_call in modes.items():
        calls = np.concatenate(lat[label])
        total = float(np.median(totals[label]))
        speed[label] = args.clips / total
        rows.append(
            [
                label,
                per_call,
                len(calls),
                f"{args.clips / total:.1f}",
                f"{args.clips * shown / total:.1f}",
                f"{args.clips * args.clip_len / total:.1f}",
                f"{1e3 * np.percentile(calls, 50):.1f}",
                f"{1e3 * np.percentile(calls, 95):.1f}",
                f"{100 * prep[label] / sum(totals[label]):.0f}%",
            ]
        )
    table = markdown_table(
        [
            "mode",
            "clips/call",
            "calls",
            "clips/s",
            "VLM frames/s",
            "env steps/s",
            "p50 ms/call",
            "p95 ms/call",
            "processor share",
        ],
        rows,
    )
    ratio = speed["batched"] / speed["one clip at a time"]
    body = "\n".join(
        [
            f"- model: `{Path(model).name if tiny else model}`"
            f"{' (tiny random Idefics3 from torchrl_vlm.testing, in a temporary folder)' if tiny else ''}, "
            f"device {scorer.device}, dtype {scorer.dtype}, torch threads {torch.get_num_threads()}, "
            f"load {load_s:.1f} s",
            f"- {args.clips} clips of {args.clip_len} steps, {args.frame_size}x{args.frame_size} px; "
            f"{shown} frames shown per clip (VLM frames/s counts those; env steps/s counts every clip step); "
            f"clips/s etc. are medians over {args.rounds} alternating rounds, latencies pool all calls; "
            "processor share = time in `prepare` (PIL, chat template, tokenizer, image processor)",
            "",
            table,
            "",
            f"Batched / one-at-a-time throughput: **{ratio:.2f}x**.",
            "",
            f"> {TINY_NOTE}" if tiny else "",
        ]
    )
    print(body)
    if not args.no_append:
        # One section per model and device: a real VLM's figures do not replace the tiny model's.
        title = "Scorer throughput" if tiny else f"Scorer throughput: {model} on {scorer.device}"
        record_results(title, body)
        print("\nrecorded in benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
