"""Sample efficiency of LVLM2P distillation: PPO/A2C with and without a teacher, on MiniGrid.

For each env, runs ``recipes/ppo_minigrid_distill.py`` for PPO and A2C, each
without a teacher and with the exact planner teacher (a perfect teacher standing
in for the VLM), over N seeds, and reports the env steps until greedy
evaluation success first reaches ``--solved`` (0.9), their medians and spread,
and the speed-up ratio. ``--noise`` adds runs with a noisy planner at the given
error rates, to show how the gain falls as the teacher gets worse. Cells run in
their own process and are stored as JSON in
``benchmarks/results/distill_efficiency/<env>/<budget>k/``; cells on disk are skipped.

    python benchmarks/distill_efficiency.py --quick    # LavaGapS7 + Dynamic-Obstacles-6x6, PPO, λ 0.5, 3 seeds (~15 min)
    # the study in RESULTS.md (200k steps, 3 seeds; --jobs 2 runs two cells at once):
    python benchmarks/distill_efficiency.py --algos ppo --coeffs 0.01 0.5 --seeds 3 --frames 200000
    python benchmarks/distill_efficiency.py --algos a2c --coeffs 0.5 --seeds 3 --frames 200000
    python benchmarks/distill_efficiency.py --envs MiniGrid-LavaGapS7-v0 MiniGrid-Dynamic-Obstacles-6x6-v0 \
        --algos ppo --coeffs 0.5 --noise 0.2 0.4 --seeds 3 --frames 200000
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from common import append_results, markdown_table, recipe, recipe_config, run_cells

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "distill_efficiency"
RUNS_DIR = Path(__file__).resolve().parent / "out" / "distill_efficiency"
ENVS = (
    "MiniGrid-LavaGapS7-v0",
    "MiniGrid-Dynamic-Obstacles-6x6-v0",
    "MiniGrid-Fetch-6x6-N2-v0",
    "MiniGrid-GoToDoor-6x6-v0",
)


def teachers(coeffs: list[float], noise: list[float]) -> list[tuple[str, list[str]]]:
    """(name, recipe overrides) of each teacher variant: none, the planner at each λ, noisy planners at the last λ."""
    out = [("none", ["teacher=none"])]
    out += [(f"planner_l{c:g}", ["teacher=planner", f"loss.distill_coeff={c}"]) for c in coeffs]
    out += [
        (f"noisy{rate:g}_l{coeffs[-1]:g}",
         ["teacher=noisy_planner", f"teacher_planner.error_rate={rate}", f"loss.distill_coeff={coeffs[-1]}"])
        for rate in noise
    ]
    return out


def cell_dir(env: str, frames: int) -> Path:
    """Cells of one env and budget (the λ schedule and the curves depend on the budget)."""
    return RESULTS_DIR / env / f"{frames // 1000}k"


def cell_path(env: str, algo: str, teacher: str, seed: int, frames: int) -> Path:
    return cell_dir(env, frames) / f"{algo}_{teacher}_s{seed}.json"


def run_cell(args, env: str, algo: str, teacher: str, overrides: list[str], seed: int) -> dict:
    all_overrides = [
        f"algo={algo}",
        f"env.name={env}",
        f"env.seed={seed}",
        f"collector.total_frames={args.frames}",
        f"eval.interval={args.eval_interval}",
        f"eval.solved_success={args.solved}",
        "logger.backend=csv",
        "logger.progress=false",
        "checkpoint.at_end=false",
        "eval.stop_when_solved=true",  # steps-to-solve is the measure: a solved run has nothing left to show
        *overrides,
    ]
    summary = recipe("ppo_minigrid_distill").train(
        recipe_config("ppo_minigrid_distill", all_overrides), RUNS_DIR / env / f"{algo}_{teacher}_s{seed}"
    )
    return {"env": env, "algo": algo, "teacher": teacher, "seed": seed, "frames": args.frames,
            "overrides": all_overrides, "evals": summary["evals"], "solved_at": summary["solved_at"],
            "final_success": summary["final_success"], "sps": summary["sps"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    parser.add_argument("--algos", nargs="+", default=["ppo", "a2c"], choices=["ppo", "a2c"])
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (--quick: 3)")
    parser.add_argument("--frames", type=int, default=None, help="default 500k (--quick: 150k)")
    parser.add_argument("--eval-interval", type=int, default=None, help="default: frames / 25")
    parser.add_argument("--solved", type=float, default=0.9)
    parser.add_argument("--coeffs", nargs="+", type=float, default=None,
                        help="distillation λ values for the planner teacher (the paper: 0.01); "
                             "default 0.01 0.5 (--quick: 0.5)")
    parser.add_argument("--noise", nargs="*", type=float, default=[], help="noisy-planner error rates to add")
    parser.add_argument("--cell", default=None, help="run one cell ENV:ALGO:TEACHER:SEED and exit")
    parser.add_argument("--merge-only", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once (each is single-threaded)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.envs = ["MiniGrid-LavaGapS7-v0", "MiniGrid-Dynamic-Obstacles-6x6-v0"]
        args.algos = ["ppo"]
    args.coeffs = args.coeffs or ([0.5] if args.quick else [0.01, 0.5])
    args.seeds = args.seeds or (3 if args.quick else 5)
    args.frames = args.frames or (150_000 if args.quick else 500_000)
    args.eval_interval = args.eval_interval or max(1000, args.frames // 25)
    choices = teachers(args.coeffs, args.noise)

    if args.cell:
        env, algo, teacher, seed = args.cell.split(":")
        overrides = dict(choices)[teacher]
        result = run_cell(args, env, algo, teacher, overrides, int(seed))
        path = cell_path(env, algo, teacher, int(seed), args.frames)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=float))
        print(f"{env} {algo} teacher={teacher} seed {seed}: solved at {result['solved_at']}, "
              f"final {result['final_success']:.2f}, SPS {result['sps']:.0f}", flush=True)
        return

    if not args.merge_only:
        commands = [
            [sys.executable, __file__, "--cell", f"{env}:{algo}:{teacher}:{seed}",
             "--frames", str(args.frames), "--eval-interval", str(args.eval_interval),
             "--solved", str(args.solved), "--coeffs", *map(str, args.coeffs), "--noise", *map(str, args.noise)]
            for env in args.envs for seed in range(args.seeds) for algo in args.algos for teacher, _ in choices
            if not cell_path(env, algo, teacher, seed, args.frames).exists()
        ]
        run_cells(commands, args.jobs)

    rows, ratios = [], []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.envs), figsize=(5 * len(args.envs), 3.8), squeeze=False)
    csv_rows = []
    for ax, env in zip(axes[0], args.envs):
        for algo in args.algos:
            base = None
            for teacher, _ in choices:
                paths = sorted(cell_dir(env, args.frames).glob(f"{algo}_{teacher}_s*.json"))
                cells = [json.loads(p.read_text()) for p in paths]
                if not cells:
                    continue
                solved = [c["solved_at"] if c["solved_at"] is not None else math.inf for c in cells]
                reached = sum(math.isfinite(s) for s in solved)
                median = float(np.median(solved))
                if teacher == "none":
                    base = median
                ratio = None
                if base is not None and teacher != "none" and math.isfinite(median):
                    if math.isfinite(base):
                        ratio = short = f"{base / median:.2f}×"
                    else:  # the baseline never got there within the budget: a lower bound
                        short = f"> {args.frames / median:.1f}×"
                        ratio = f"{short} (no teacher: never within {args.frames // 1000}k)"
                    if teacher.startswith("planner"):
                        ratios.append(f"{env.replace('MiniGrid-', '')} {algo} {teacher}: {short}")
                spread = ", ".join("never" if not math.isfinite(s) else f"{s / 1000:.0f}k" for s in solved)
                rows.append([env.replace("MiniGrid-", ""), algo, teacher, len(cells),
                             "never (median)" if not math.isfinite(median) else f"{median / 1000:.0f}k",
                             f"{reached}/{len(cells)}", spread,
                             "—" if ratio is None else ratio,
                             f"{np.median([c['final_success'] for c in cells]):.2f}"])
                # Solved runs stop early: their last evaluation is carried forward.
                longest = max((c["evals"] for c in cells), key=len)
                frames = np.array([r["frames"] for r in longest])
                succ = np.array([[c["evals"][min(i, len(c["evals"]) - 1)]["success"] for i in range(len(frames))]
                                 for c in cells])
                # One colour per teacher and one line style per algorithm, the same in every panel.
                color = plt.cm.tab10([name for name, _ in choices].index(teacher) % 10)
                ax.plot(frames, succ.mean(0), label=f"{algo}+{teacher}", color=color,
                        linestyle="-" if algo == "ppo" else "--")
                ax.fill_between(frames, np.clip(succ.mean(0) - succ.std(0), 0, 1),
                                np.clip(succ.mean(0) + succ.std(0), 0, 1), color=color, alpha=0.12)
                for c in cells:
                    for r in c["evals"]:
                        csv_rows.append([env, algo, teacher, c["seed"], r["frames"], r["success"], r["return"]])
        ax.set_title(env.replace("MiniGrid-", ""))
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("greedy eval success (mean ± std)")
    labels = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    fig.legend(labels.values(), labels.keys(), loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 6), 1, 1))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    png = RESULTS_DIR / f"learning_curves_{args.frames // 1000}k.png"
    fig.savefig(png, dpi=110)
    with (RESULTS_DIR / f"evals_{args.frames // 1000}k.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["env", "algo", "teacher", "seed", "frames", "success", "return"], *csv_rows])
    table = markdown_table(["env", "algo", "teacher", "seeds", f"steps to success ≥ {args.solved} (median)",
                            "reached", "per seed", "speed-up vs no teacher", "success at the end"], rows)
    speedups = "; ".join(ratios) if ratios else "n/a"
    body = (f"{args.frames:,} env steps per run; 3 envs × 128-step rollouts, lr 1e-3, γ 0.99, GAE 0.95, "
            f"entropy 0.01; PPO 4 epochs of minibatch 256, A2C one step on the whole rollout; the student sees "
            f"the symbolic view, direction and mission words; soft targets, distillation λ as named (planner_lX: λ = X); evaluation every {args.eval_interval:,} steps on "
            f"16 greedy episodes; a run ends at its first evaluation with success ≥ {args.solved} "
            f"(curves carry that value forward), so 'success at the end' covers the whole budget only for runs that "
            f"never got there. Teacher 'planner' is the exact MiniGrid planner (a perfect teacher, an upper bound "
            f"of what a VLM gives); 'noisyR' names a wrong action on a share R of states.\n\n{table}\n\n"
            f"Speed-ups with the exact planner teacher, where the student got there ('>': the baseline did not "
            f"within the budget, so a lower bound): {speedups} "
            f"(target ≥ 2×; the paper: 2.56× PPO, 2.86× A2C with Gemini). Curves: `{png.relative_to(ROOT)}`.\n")
    print(body)
    if not args.no_record:
        append_results("Distillation efficiency (LVLM2P)", body)


if __name__ == "__main__":
    main()
