"""What the VLM-RB pipeline costs the learner, in env steps per second.

On MiniGrid (``--domain minigrid``, the default) it runs the DQN recipe (collect →
extend → sample → update, one update per 4 env steps) four ways, alternating them
over several rounds in one process:

- ``uniform``: uniform replay, no frames rendered (the cheapest loop);
- ``per``: TorchRL's PrioritizedSampler with TD-error write-back (the paper's reference);
- ``vlm``: the full VLM-RB path as the recipe runs it with the event scorer: the
  VLMReplayBuffer cutting clips and shipping them to the scoring process, the
  MixtureSampler, and a scorer that answers after a fixed latency without using CPU
  (a VLM on its own GPU). The event scorer looks at no frame, so none is rendered;
- ``vlm_frames``: the same with the frames a VLM scorer reads rendered and shipped with the
  clips: ``TransformersScorer`` shows 8 frames of each 32-step clip, so the env renders every
  4th step and each clip's last (``env.frame_stride=4``, what ``auto`` picks for it);
- ``vlm_frames_every_step``: the same with a frame rendered at every step (``env.frame_stride=1``),
  what the frames path cost before the env learnt to render only what a scorer reads.

The SPS is the training loop's own (start-up and the final evaluation excluded).
Target: VLM-RB at most 5% below uniform (the paper reports about 12% below PER).
Slowdowns are paired round by round (``common.paired_slowdown``), then the
median over rounds is reported. Each run is a fresh process, as a user's run is, and the order of the
loops turns by one every round, so that no loop always follows the same one (a fixed order once put the
frames path 18% behind uniform, where rotating and fresh processes show what the path itself costs).

``--domain ogbench`` does the same for ``recipes/sac.py env.family=ogbench`` on OGBench scene
(uniform, PER and VLM-RB with TD boosting and the event scorer; one update per env
step), against a target of 10%.

One command each; it replaces its section of benchmarks/RESULTS.md ("Pipeline
overhead", "Pipeline overhead: OGBench scene (SAC)"; ``--no-record``: print only):

    python benchmarks/pipeline_overhead.py --frames 20000 --rounds 6    # the defaults, with --latency 0.25
    python benchmarks/pipeline_overhead.py --domain ogbench --rounds 4
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from common import markdown_table, paired_slowdown, recipe, recipe_config, record_results

VARIANTS = {
    "uniform": ["buffer.sampler=uniform", "env.render=false"],
    "per": ["buffer.sampler=per", "env.render=false"],
    "vlm": ["buffer.sampler=vlm", "vlm.scorer=events", "env.render=auto"],
    "vlm_frames": ["buffer.sampler=vlm", "vlm.scorer=events", "env.render=true", "env.frame_stride=4"],
    "vlm_frames_every_step": ["buffer.sampler=vlm", "vlm.scorer=events", "env.render=true", "env.frame_stride=1"],
}


#: What each domain runs: the recipe, its env, the loops compared and the overhead target.
DOMAINS = {
    "minigrid": {
        "recipe": "dqn_minigrid",
        "env": "MiniGrid-DoorKey-8x8-v0",
        "variants": VARIANTS,
        "random_frames": 2048,
        "extra": ["logger.gallery_interval=0"],
        "target": 0.05,
        "title": "Pipeline overhead",
        "loop": "8 envs, batch 128, one update per 4 steps",
    },
    "ogbench": {
        "recipe": "sac",
        "env": "scene-singletask-task3-v0",
        # No frames: rendering one costs ~55 ms here (software EGL), which no replay choice can hide.
        "variants": {name: VARIANTS[name] for name in ("uniform", "per", "vlm")},
        "random_frames": 1024,
        "extra": ["env.family=ogbench"],
        "target": 0.10,
        "title": "Pipeline overhead: OGBench scene (SAC)",
        "loop": "SAC, 8 envs, batch 256, 256×256, one update per env step, TD boosting",
    },
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="minigrid", choices=list(DOMAINS))
    parser.add_argument("--env", default=None, help="default: DoorKey-8x8 (minigrid), scene task 3 (ogbench)")
    parser.add_argument("--frames", type=int, default=None, help="default: 20k (minigrid), 4k (ogbench)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--latency", type=float, default=0.25,
                        help="minigrid: seconds per scorer call (16 clips at most)")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # LOOP:ROUND, in a child: one run's summary
    args = parser.parse_args()

    def run_in_fresh_process(name: str, r: int) -> dict:
        argv = [sys.executable, __file__, "--domain", args.domain, "--env", args.env, "--frames", str(args.frames),
                "--latency", str(args.latency), "--one", f"{name}:{r}"]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name} (round {r}) failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    domain = DOMAINS[args.domain]
    args.env = args.env or domain["env"]
    args.frames = args.frames or (20_000 if args.domain == "minigrid" else 4_000)
    variants = domain["variants"]

    common = [
        f"env.name={args.env}",
        f"collector.total_frames={args.frames}",
        f"collector.init_random_frames={domain['random_frames']}",
        "eval.interval=0",
        "eval.episodes=2",
        "logger.backend=",
        "logger.progress=false",
        "checkpoint.at_end=false",
        *domain["extra"],
        *([f"vlm.latency_s={args.latency}"] if args.domain == "minigrid" else []),
    ]
    if args.one:
        name, _, r = args.one.partition(":")
        print(json.dumps(run_once(domain["recipe"], [*common, *variants[name], f"env.seed={r}"]), default=float))
        return
    sps: dict[str, list[float]] = {name: [] for name in variants}
    stats = {}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            summary = run_in_fresh_process(name, r)
            sps[name].append(summary["sps"])
            if name == "vlm":
                stats = summary["buffer_stats"]
            print(f"round {r} {name}: {summary['sps']:.0f} SPS", flush=True)

    rows = []
    for name, values in sps.items():
        vs_uniform, median_vs_uniform = paired_slowdown(values, sps["uniform"])
        rows.append([
            name,
            f"{np.median(values):.0f}",
            ", ".join(f"{v:.0f}" for v in values),
            f"{median_vs_uniform * 100:+.1f}% ({', '.join(f'{x * 100:+.1f}' for x in vs_uniform)})",
            f"{paired_slowdown(values, sps['per'])[1] * 100:+.1f}%",
        ])
    table = markdown_table(
        ["loop", "SPS (median)", "per round", "slower than uniform, median of rounds (each round)", "slower than PER"],
        rows,
    )
    vs_uniform = paired_slowdown(sps["vlm"], sps["uniform"])[1]
    vs_per = paired_slowdown(sps["vlm"], sps["per"])[1]
    target = domain["target"]
    verdict = (f"VLM-RB overhead against uniform: {vs_uniform * 100:.1f}% (median of the rounds' paired ratios; "
               f"target ≤ {target * 100:.0f}%: {'met' if vs_uniform <= target else 'MISSED'}); against PER: "
               f"{vs_per * 100:.1f}% (the paper: about 12%).")
    if "vlm_frames" in sps:
        frames_vs_uniform = paired_slowdown(sps["vlm_frames"], sps["uniform"])[1]
        every_step = paired_slowdown(sps["vlm_frames_every_step"], sps["vlm"])[1]
        frames_cost = paired_slowdown(sps["vlm_frames"], sps["vlm"])[1]
        verdict += (f" The frames path (a VLM's 8 frames of 32 rendered and shipped): {frames_vs_uniform * 100:.1f}% "
                    f"below uniform (target ≤ {target * 100:.0f}%: {'met' if frames_vs_uniform <= target else 'MISSED'}"
                    f"), {frames_cost * 100:.1f}% below the event scorer's path; rendering every step instead costs "
                    f"{every_step * 100:.1f}% (vlm_frames_every_step against vlm).")
    scorer = (
        f"Scorer of the last VLM-RB round: {stats.get('clips_submitted', 0):.0f} clips submitted, "
        f"{stats.get('clips_scored', 0):.0f} scored, {stats.get('clips_dropped', 0):.0f} dropped, "
        f"latency mean {stats.get('latency_mean_s', float('nan')):.2f}s, "
        f"p95 {stats.get('latency_p95_s', float('nan')):.2f}s, "
        f"coverage {stats.get('coverage', 0):.2f}."
    )
    latency = (
        f"the VLM-RB scorer answers after {args.latency}s per call (a sleep: no CPU); frames are 8 px per cell"
        if args.domain == "minigrid"
        else "the VLM-RB scorer is the event scorer (no frames)"
    )
    body = (
        f"{args.env}, {args.frames:,} env steps per run ({domain['random_frames']:,} random first), "
        f"{domain['loop']}, {args.rounds} rounds (each run a fresh process; the order turns every round); "
        f"{latency}.\n\n{table}\n\n{verdict}\n{scorer}\n"
    )
    print(body)
    if not args.no_record:
        record_results(domain["title"], body)


def run_once(recipe_name: str, overrides: list[str]) -> dict:
    """One training run in this process; its SPS and the replay buffer's stats."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        summary = recipe(recipe_name).train(recipe_config(recipe_name, overrides), Path(tmp))
    return {"sps": summary["sps"], "buffer_stats": summary.get("buffer_stats", {})}


if __name__ == "__main__":
    main()
