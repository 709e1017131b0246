"""Sample efficiency of LVLM2P distillation: PPO/A2C with and without a teacher, on MiniGrid.

For each env, runs ``recipes/ppo_minigrid_distill.py`` for PPO and A2C, each
without a teacher and with the exact planner teacher (a perfect teacher standing
in for the VLM), over N seeds, and reports the env steps until greedy
evaluation success first reaches ``--solved`` (0.9), their medians and spread,
and the speed-up ratio. ``--noise`` adds runs with a noisy planner at the given
error rates, to show how the gain falls as the teacher gets worse.

Each (env, algo, teacher, seed) cell runs in its own process, ``--jobs`` at a
time (default: one per core), and is stored as JSON in
``benchmarks/results/distill_efficiency/<env>/<budget>k/`` when it finishes.
One command runs a study: the cells it names that are not on disk yet (so a
study killed midway resumes when the same command runs again; only the cells
that were running start over), then merges those cells into a table, a CSV and
a PNG; the table replaces the study's section of ``benchmarks/RESULTS.md``
("Distillation efficiency (LVLM2P), <budget>k steps"; ``--no-record``: print
only). A study is the grid ``--envs`` × ``--algos`` × teachers (none, the planner
at each of ``--coeffs``, the noisy planner at each ``--noise`` rate and the last
λ), or a named union of such grids (``--study``, see STUDIES). ``--merge-only``
only merges (the study's cells on disk); ``--cell ENV:ALGO:TEACHER:SEED`` runs one
cell in this process.

    # LavaGapS7 + Dynamic-Obstacles-6x6, PPO, λ 0.5, 3 seeds (~15 min)
    python benchmarks/distill_efficiency.py --quick
    # the study in RESULTS.md (200k steps, 3 seeds; PPO with λ 0.01 and 0.5 on the four tasks, A2C with λ 0.5
    # and the noisy planner at 0.2-0.8 with PPO on LavaGapS7 and Dynamic-Obstacles-6x6):
    python benchmarks/distill_efficiency.py --study lvlm2p-200k
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from common import markdown_table, recipe, recipe_config, record_results, run_cells, write_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "distill_efficiency"
RUNS_DIR = Path(__file__).resolve().parent / "out" / "distill_efficiency"
ENVS = (
    "MiniGrid-LavaGapS7-v0",
    "MiniGrid-Dynamic-Obstacles-6x6-v0",
    "MiniGrid-Fetch-6x6-N2-v0",
    "MiniGrid-GoToDoor-6x6-v0",
)


#: Named studies: unions of grids (envs × algos × teachers of ``teachers(coeffs, noise)``) at one budget.
STUDIES = {
    # The study in RESULTS.md. A2C and the noise sweep ran on the two tasks PPO + teacher solves quickly.
    "lvlm2p-200k": {
        "frames": 200_000,
        "seeds": 3,
        "grids": [
            {"envs": ENVS, "algos": ["ppo"], "coeffs": [0.01, 0.5], "noise": []},
            {"envs": ENVS[:2], "algos": ["a2c"], "coeffs": [0.5], "noise": []},
            {"envs": ENVS[:2], "algos": ["ppo"], "coeffs": [0.5], "noise": [0.2, 0.4, 0.6, 0.8]},
        ],
    },
}


def teachers(coeffs: list[float], noise: list[float]) -> list[str]:
    """Names of the teacher variants: none, the planner at each λ, noisy planners at the last λ."""
    return ["none"] + [f"planner_l{c:g}" for c in coeffs] + [f"noisy{rate:g}_l{coeffs[-1]:g}" for rate in noise]


def teacher_overrides(name: str) -> list[str]:
    """The recipe overrides of a teacher variant named by ``teachers``."""
    if name == "none":
        return ["teacher=none"]
    kind, _, coeff = name.rpartition("_l")
    if kind == "planner":
        return ["teacher=planner", f"loss.distill_coeff={float(coeff)}"]
    if kind.startswith("noisy"):
        rate = float(kind.removeprefix("noisy"))
        return ["teacher=noisy_planner", f"teacher_planner.error_rate={rate}", f"loss.distill_coeff={float(coeff)}"]
    raise ValueError(f"not a teacher variant: {name!r}")


def study_groups(grids: list[dict]) -> list[tuple[str, str, str]]:
    """The (env, algo, teacher) groups of a union of grids, once each, ordered by env, then algo, then teacher."""
    groups = {
        (env, algo, teacher)
        for grid in grids
        for env in grid["envs"]
        for algo in grid["algos"]
        for teacher in teachers(grid["coeffs"], grid["noise"])
    }

    def order(values):  # first appearance over the grids
        return list(dict.fromkeys(values))

    envs = order(env for grid in grids for env in grid["envs"])
    algos = order(algo for grid in grids for algo in grid["algos"])
    names = order(t for grid in grids for t in teachers(grid["coeffs"], grid["noise"]))
    return [(e, a, t) for e in envs for a in algos for t in names if (e, a, t) in groups]


def steps_to_solve(cell: dict) -> float:
    """Env steps at the run's first evaluation with success ≥ --solved (``inf``: never within the budget)."""
    return math.inf if cell["solved_at"] is None else float(cell["solved_at"])


def speedup(baseline: float, median: float, frames: int) -> tuple[str, str] | None:
    """Median steps to solve without a teacher over with one, as (short, long) labels.

    None where the teacher's runs did not get there; a lower bound (">", the whole budget over the
    median) where the baseline did not.
    """
    if not math.isfinite(median):
        return None
    if math.isfinite(baseline):
        short = f"{baseline / median:.2f}×"
        return short, short
    short = f"> {frames / median:.1f}×"
    return short, f"{short} (no teacher: never within {frames // 1000}k)"


def success_curves(cells: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Frames of the longest run's evaluations, and each cell's success at them (runs × evaluations).

    Solved runs stop early: their last evaluation is carried forward.
    """
    longest = max((c["evals"] for c in cells), key=len)
    frames = np.array([r["frames"] for r in longest])
    success = np.array(
        [[c["evals"][min(i, len(c["evals"]) - 1)]["success"] for i in range(len(frames))] for c in cells]
    )
    return frames, success


def cell_dir(env: str, frames: int) -> Path:
    """Cells of one env and budget (the λ schedule and the curves depend on the budget)."""
    return RESULTS_DIR / env / f"{frames // 1000}k"


def cell_path(env: str, algo: str, teacher: str, seed: int, frames: int) -> Path:
    return cell_dir(env, frames) / f"{algo}_{teacher}_s{seed}.json"


def cell_overrides(args, env: str, algo: str, teacher: str, seed: int) -> list[str]:
    """The recipe overrides of one cell: what makes two cells comparable (or the same cell)."""
    return [
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
        *teacher_overrides(teacher),
    ]


def run_cell(args, env: str, algo: str, teacher: str, seed: int) -> dict:
    all_overrides = cell_overrides(args, env, algo, teacher, seed)
    run_dir = RUNS_DIR / env / f"{algo}_{teacher}_s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # scratch of an earlier, killed attempt at this cell
    summary = recipe("ppo_minigrid_distill").train(recipe_config("ppo_minigrid_distill", all_overrides), run_dir)
    return {
        "env": env,
        "algo": algo,
        "teacher": teacher,
        "seed": seed,
        "frames": args.frames,
        "overrides": all_overrides,
        "evals": summary["evals"],
        "solved_at": summary["solved_at"],
        "final_success": summary["final_success"],
        "sps": summary["sps"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--study",
        default=None,
        choices=sorted(STUDIES),
        help="a named study (its grids, seeds and budget; see STUDIES) instead of the grid flags",
    )
    parser.add_argument("--envs", nargs="+", default=None, choices=ENVS, help="default: all four")
    parser.add_argument("--algos", nargs="+", default=None, choices=["ppo", "a2c"], help="default: ppo a2c")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (--quick: 3)")
    parser.add_argument("--frames", type=int, default=None, help="default 500k (--quick: 150k)")
    parser.add_argument("--eval-interval", type=int, default=None, help="default: frames / 25")
    parser.add_argument("--solved", type=float, default=0.9)
    parser.add_argument(
        "--coeffs",
        nargs="+",
        type=float,
        default=None,
        help="distillation λ values for the planner teacher (the paper: 0.01); default 0.01 0.5 (--quick: 0.5)",
    )
    parser.add_argument("--noise", nargs="*", type=float, default=None, help="noisy-planner error rates to add")
    parser.add_argument("--cell", default=None, help="run one cell ENV:ALGO:TEACHER:SEED and exit")
    parser.add_argument("--merge-only", action="store_true", help="do not run, only merge the study's cells on disk")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="cells run at once (each is single-threaded; default: one per core)",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="print the table; leave RESULTS.md alone")
    args = parser.parse_args()
    if args.study:
        given = [
            f"--{name}"
            for name in ("envs", "algos", "seeds", "frames", "coeffs", "noise", "quick")
            if getattr(args, name) not in (None, False)
        ]
        if given:
            parser.error(f"--study fixes the study's cells; drop {' '.join(given)}")
        study = STUDIES[args.study]
        args.frames, args.seeds, grids = study["frames"], study["seeds"], study["grids"]
    else:
        if args.quick:
            args.envs = ["MiniGrid-LavaGapS7-v0", "MiniGrid-Dynamic-Obstacles-6x6-v0"]
            args.algos = ["ppo"]
        args.coeffs = args.coeffs or ([0.5] if args.quick else [0.01, 0.5])
        args.seeds = args.seeds or (3 if args.quick else 5)
        args.frames = args.frames or (150_000 if args.quick else 500_000)
        grids = [
            {
                "envs": args.envs or list(ENVS),
                "algos": args.algos or ["ppo", "a2c"],
                "coeffs": args.coeffs,
                "noise": args.noise or [],
            }
        ]
    args.eval_interval = args.eval_interval or max(1000, args.frames // 25)

    if args.cell:
        env, algo, teacher, seed = args.cell.split(":")
        result = run_cell(args, env, algo, teacher, int(seed))
        path = cell_path(env, algo, teacher, int(seed), args.frames)
        write_atomic(path, json.dumps(result, indent=1, default=float))  # a killed run leaves no half-written cell
        print(
            f"{env} {algo} teacher={teacher} seed {seed}: solved at {result['solved_at']}, "
            f"final {result['final_success']:.2f}, SPS {result['sps']:.0f}",
            flush=True,
        )
        return

    groups = study_groups(grids)
    cells = [(env, algo, teacher, seed) for seed in range(args.seeds) for env, algo, teacher in groups]

    def same_settings(cell: dict) -> bool:
        return set(cell["overrides"]) == set(
            cell_overrides(args, cell["env"], cell["algo"], cell["teacher"], cell["seed"])
        )

    if not args.merge_only:
        commands = []
        for env, algo, teacher, seed in cells:
            path = cell_path(env, algo, teacher, seed, args.frames)
            if path.exists():  # done in an earlier call: a study resumes where it stopped
                if not same_settings(json.loads(path.read_text())):
                    parser.error(f"{path.relative_to(ROOT)} was run with other settings; delete it to rerun it")
                continue
            commands.append(
                [
                    sys.executable,
                    __file__,
                    "--cell",
                    f"{env}:{algo}:{teacher}:{seed}",
                    "--frames",
                    str(args.frames),
                    "--eval-interval",
                    str(args.eval_interval),
                    "--solved",
                    str(args.solved),
                ]
            )
        print(
            f"{len(cells) - len(commands)} of {len(cells)} cells on disk; running {len(commands)}, "
            f"{args.jobs} at a time",
            flush=True,
        )
        run_cells(commands, args.jobs)

    # Merge the study's cells, and only them: the table is a function of the command.
    by_group, missing, other = {}, [], []
    for env, algo, teacher, seed in cells:
        path = cell_path(env, algo, teacher, seed, args.frames)
        if not path.exists():
            missing.append(f"{env}/{path.stem}")
            continue
        cell = json.loads(path.read_text())
        if same_settings(cell):
            by_group.setdefault((env, algo, teacher), []).append(cell)
        else:
            other.append(f"{env}/{path.stem}")
    if missing:
        print(f"not on disk, left out: {', '.join(missing)}")
    if other:
        print(f"left out {len(other)} cell(s) run with other settings: {', '.join(other)}")
    if not by_group:
        print("no results to merge")
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(env for env, _, _ in groups))
    names = list(dict.fromkeys(teacher for _, _, teacher in groups))
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    panels = dict(zip(envs, axes[0], strict=True))
    rows, ratios, csv_rows, baselines = [], [], [], {}
    for env, algo, teacher in groups:
        cells_here = sorted(by_group.get((env, algo, teacher), []), key=lambda c: c["seed"])
        if not cells_here:
            continue
        solved = [steps_to_solve(c) for c in cells_here]
        reached = sum(math.isfinite(s) for s in solved)
        median = float(np.median(solved))
        if teacher == "none":
            baselines[env, algo] = median
        ratio = None
        if teacher != "none" and (env, algo) in baselines:
            ratio = speedup(baselines[env, algo], median, args.frames)
            if ratio is not None and teacher.startswith("planner"):
                ratios.append(f"{env.replace('MiniGrid-', '')} {algo} {teacher}: {ratio[0]}")
        spread = ", ".join("never" if not math.isfinite(s) else f"{s / 1000:.0f}k" for s in solved)
        rows.append(
            [
                env.replace("MiniGrid-", ""),
                algo,
                teacher,
                len(cells_here),
                "never (median)" if not math.isfinite(median) else f"{median / 1000:.0f}k",
                f"{reached}/{len(cells_here)}",
                spread,
                "—" if ratio is None else ratio[1],
                f"{np.median([c['final_success'] for c in cells_here]):.2f}",
            ]
        )
        frames, succ = success_curves(cells_here)
        # One colour per teacher and one line style per algorithm, the same in every panel.
        color = plt.cm.tab10(names.index(teacher) % 10)
        ax = panels[env]
        ax.plot(frames, succ.mean(0), label=f"{algo}+{teacher}", color=color, linestyle="-" if algo == "ppo" else "--")
        ax.fill_between(
            frames,
            np.clip(succ.mean(0) - succ.std(0), 0, 1),
            np.clip(succ.mean(0) + succ.std(0), 0, 1),
            color=color,
            alpha=0.12,
        )
        for c in cells_here:
            for r in c["evals"]:
                csv_rows.append([env, algo, teacher, c["seed"], r["frames"], r["success"], r["return"]])
    for env, ax in panels.items():
        ax.set_title(env.replace("MiniGrid-", ""))
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    panels[envs[0]].set_ylabel("greedy eval success (mean ± std)")
    labels = {}
    for ax in panels.values():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labels.setdefault(label, handle)
    fig.legend(labels.values(), labels.keys(), loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 6), 1, 1))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    png = RESULTS_DIR / f"learning_curves_{args.frames // 1000}k.png"
    fig.savefig(png, dpi=110)
    with (RESULTS_DIR / f"evals_{args.frames // 1000}k.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["env", "algo", "teacher", "seed", "frames", "success", "return"], *csv_rows])
    table = markdown_table(
        [
            "env",
            "algo",
            "teacher",
            "seeds",
            f"steps to success ≥ {args.solved} (median)",
            "reached",
            "per seed",
            "speed-up vs no teacher",
            "success at the end",
        ],
        rows,
    )
    speedups = "; ".join(ratios) if ratios else "n/a"
    body = (
        f"{args.frames:,} env steps per run; 3 envs × 128-step rollouts, lr 1e-3, γ 0.99, GAE 0.95, "
        f"entropy 0.01; PPO 4 epochs of minibatch 256, A2C one step on the whole rollout; the student sees "
        "the symbolic view, direction and mission words; soft targets, distillation λ as named (planner_lX: λ = X); "
        f"evaluation every {args.eval_interval:,} steps on "
        f"16 greedy episodes; a run ends at its first evaluation with success ≥ {args.solved} "
        f"(curves carry that value forward), so 'success at the end' covers the whole budget only for runs that "
        f"never got there. Teacher 'planner' is the exact MiniGrid planner (a perfect teacher, an upper bound "
        f"of what a VLM gives); 'noisyR' names a wrong action on a share R of states.\n\n{table}\n\n"
        f"Speed-ups with the exact planner teacher, where the student got there ('>': the baseline did not "
        f"within the budget, so a lower bound): {speedups} "
        f"(target ≥ 2×; the paper: 2.56× PPO, 2.86× A2C with Gemini). Curves: `{png.relative_to(ROOT)}`.\n"
    )
    print(body)
    if not args.no_record:
        record_results(f"Distillation efficiency (LVLM2P), {args.frames // 1000}k steps", body)


if __name__ == "__main__":
    main()
