"""What COVR costs: SAC + COVR against SAC in env steps per second, the prior's answers per second, and the time
of a LoRA fine-tune at each point of the progressive schedule.

Paired rounds of ``recipes/sac.py`` on DMControl (state SAC, the CPU study's setting), alternating in one process:

- ``sac``: plain SAC, no frames rendered;
- ``sac_frames``: the same, rendering the frame the VLM would see at every step (what rendering alone costs),
  with ``env.render_quality=fast`` (the default: shadow map sized to the frame, no multisampling);
- ``sac_frames_full``: the same with dm_control's own render settings (``env.render_quality=full``);
- ``covr``: SAC + COVR with the VLM (``--model``, default the tiny offline one): the prior in its own process
  answering every row, the prior term in the actor's loss, D_f, and a fine-tune (``--psi0``) in a process of its
  own during the run.

Each run's phases (``timeit``: collect, extend, sample, update, ...) say where the learner's time goes. Then the
fine-tune alone: a :class:`~torchrl_vlm.covr.LoRAFineTuner` in this process on as many samples as EDDF can keep at
each of the schedule's first fine-tunes (half of D_f, which holds the agent steps since the last one: ψ0, 2ψ0, 6ψ0).

The tiny VLM (random weights, 2 layers of width 64) measures the pipeline, not a 3B model: on a GPU the prior's
and the fine-tune's times are the model's own. One command; it replaces the "COVR cost" section of
benchmarks/RESULTS.md (``--no-record``: print only):

    python benchmarks/covr_cost.py --rounds 3 --frames 1536
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import markdown_table, paired_slowdown, recipe, recipe_config, record_results, tiny_vlm_path

VARIANTS = {
    "sac": ["covr.prior=none", "env.render=false"],
    "sac_frames": ["covr.prior=none", "env.render=true"],
    "sac_frames_full": ["covr.prior=none", "env.render=true", "env.render_quality=full"],
    "covr": ["covr.prior=covr"],
}


def finetune_seconds(model: str, samples: int, frame_size: int, action_dim: int, batch_size: int) -> dict:
    """One fine-tune of ``samples`` random (frame, action) samples with RALW weights in [0, 1], timed."""
    from tensordict import TensorDict

    from torchrl_vlm.covr import LoRAFineTuner

    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        tuner = LoRAFineTuner(model, action_dim=action_dim, adapter_root=root, batch_size=batch_size, eval_samples=64)
        request = TensorDict({
            "frames": torch.randint(0, 256, (1, samples, frame_size, frame_size, 3), dtype=torch.uint8, generator=g),
            "action": torch.rand(1, samples, action_dim, generator=g) * 2 - 1,
            "weight": torch.rand(1, samples, generator=g),
            "version": torch.tensor([0]), "base_version": torch.tensor([-1]),
        }, [1])
        t0 = time.perf_counter()
        out = tuner(request)[0]
        wall = time.perf_counter() - t0
    return {"samples": samples, "steps": int(out[5]), "seconds": wall, "per_step": wall / max(int(out[5]), 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="cartpole-swingup")
    parser.add_argument("--frames", type=int, default=1536, help="agent steps per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--psi0", type=int, default=1024, help="the run's first fine-tune, in agent steps")
    parser.add_argument("--model", default=None, help="the prior's VLM (default: the tiny offline one)")
    parser.add_argument("--frame-size", type=int, default=32)
    parser.add_argument("--finetune-psi0", type=int, default=5000, help="the schedule whose fine-tunes are timed")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    model = args.model or tiny_vlm_path()
    from torchrl._utils import timeit

    torch.set_num_threads(1)  # the learner's budget in the recipe (num_threads=1); the fine-tune timing below too

    train = recipe("sac").train
    common = [f"env.name={args.env}", f"collector.total_frames={args.frames}", "collector.init_random_frames=256",
              "buffer.sampler=uniform", "eval.interval=0", "eval.episodes=2", "logger.backend=",
              "logger.progress=false", "checkpoint.at_end=false", f"env.frame_size={args.frame_size}",
              f"covr.model={model}", "covr.max_new_tokens=24", f"covr.psi0={args.psi0}"]
    sps = {name: [] for name in VARIANTS}
    phases = {name: [] for name in VARIANTS}
    covr_stats = []
    for r in range(args.rounds):
        for name, overrides in VARIANTS.items():
            timeit.erase()
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                summary = train(recipe_config("sac", [*common, *overrides, f"env.seed={r}"]), Path(tmp))
                wall = time.perf_counter() - t0
            sps[name].append(summary["sps"] * summary["action_repeat"])
            phases[name].append({k: float(v) for k, v in timeit.todict(percall=False).items()})
            if name == "covr":
                st = summary["buffer_stats"]
                loop_s = (summary["frames"] - summary["start_frames"]) / summary["sps"]
                covr_stats.append({"answers_per_s": st["prior_answers"] / loop_s, "latency": st["latency_mean_s"],
                                   "coverage": st["prior_coverage"], "finetunes": st.get("covr_finetunes", 0),
                                   "finetune_s": st.get("covr_last_seconds", float("nan")), "wall": wall})
            print(f"round {r} {name}: {sps[name][-1]:.0f} env steps/s", flush=True)

    rows = []
    for name, values in sps.items():
        per_round, median = paired_slowdown(values, sps["sac"])
        rows.append([name, f"{np.median(values):.0f}", ", ".join(f"{v:.0f}" for v in values),
                     f"{median * 100:+.1f}% ({', '.join(f'{x * 100:+.1f}' for x in per_round)})"])
    table = markdown_table(["loop", "env steps/s (median)", "per round", "slower than SAC, median (each round)"], rows)
    keys = sorted({k for name in phases for p in phases[name] for k in p})
    where = markdown_table(["phase (s per run, median)", *VARIANTS],
                           [[k, *(f"{np.median([p.get(k, 0.0) for p in phases[n]]):.1f}" for n in VARIANTS)]
                            for k in keys])
    prior = (f"The prior (its own process): {np.median([c['answers_per_s'] for c in covr_stats]):.0f} answers/s over "
             f"the loop, mean latency {np.median([c['latency'] for c in covr_stats]):.2f} s a batch, "
             f"{np.median([c['coverage'] for c in covr_stats]):.2f} of the rows holding a valid prior at the end; "
             f"fine-tunes during a run: {', '.join(str(int(c['finetunes'])) for c in covr_stats)}.")
    schedule = [args.finetune_psi0, 2 * args.finetune_psi0, 6 * args.finetune_psi0]
    tunes = [finetune_seconds(model, n // 2, args.frame_size, 1, 8) for n in schedule]
    tune_table = markdown_table(
        ["fine-tune", "D_f (agent steps since the last)", "samples (EDDF keeps at most half)", "gradient steps",
         "seconds", "s a step"],
        [[i + 1, f"{n:,}", f"{t['samples']:,}", t["steps"], f"{t['seconds']:.1f}", f"{t['per_step']:.3f}"]
         for i, (n, t) in enumerate(zip(schedule, tunes, strict=True))])
    body = (f"{args.env}, state SAC (8 envs, batch 256, 256×256, one update per agent step), {args.frames:,} agent "
            f"steps a run (256 random first), {args.rounds} alternating rounds; the VLM: `{Path(model).name}` "
            f"(frames {args.frame_size}×{args.frame_size}, at most 24 new tokens), a fine-tune at {args.psi0} agent "
            f"steps.\n\n{table}\n\nWhere the learner's time goes:\n\n{where}\n\n{prior}\n\nThe fine-tune alone "
            f"(this process, 1 epoch, batch 8, LoRA r 16 on the attention and MLP projections):\n\n{tune_table}\n")
    print(body)
    if not args.no_record:
        record_results("COVR cost", body)


if __name__ == "__main__":
    main()
