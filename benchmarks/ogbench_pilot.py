"""Pilot study of VLM-RB on OGBench's scene tasks: SAC (or TD3) with uniform, PER and TD-boosted VLM-RB replay.

Each (method, seed) cell is one run of ``recipes/sac_ogbench.py`` (``--algo td3``:
``recipes/td3_ogbench.py``) with equal budgets and hyperparameters; only the replay
differs. Methods: ``uniform``, ``per`` (TorchRL's PrioritizedSampler on TD errors),
``vlm_events`` (VLM-RB with TD boosting, q_P ∝ p_VLM·(|δ|+ε), and the ideal event
scorer) and ``vlm_noisy`` (the same with --fpr/--fnr errors).

Why a pilot: the paper trains 1M steps. Here (2 CPU cores) one SAC step, an env step
and a gradient step of batch 256, costs about 25 ms, so 1M steps is about 7 hours a
cell, 40 hours for the minimum 3 + 3 seeds. The default budget, 100k steps (about 45
minutes a cell), is what fits; it shows the start of learning, the subgoals an agent
reaches, not the 1M-step success rates. The report says so.

Cells are long, so they survive being stopped: a cell writes a checkpoint every
``--checkpoint-interval`` steps under ``benchmarks/out/ogbench_pilot/`` (ignored by
git), and the next call of the same command resumes it from there (a cell's
evaluations so far are in its checkpoint). A finished cell writes
``benchmarks/results/ogbench_pilot/<env>_<algo>[tag]/<method>_s<seed>.json`` and
drops its checkpoint. A cell on disk with other settings is an error when running
and left out when merging: use --tag to keep variants apart.

Reported per method, over seeds: env steps until greedy evaluation success first
reaches 0.5, until the mean number of the task's five subgoals satisfied at the end
of an episode first reaches ``--subgoal-level`` (default 3; the task starts with one
of them satisfied), and the mean of the last three evaluations of both. Each method
is compared with uniform replay seed by seed, with the exact one-sided permutation
test of ``sample_efficiency.py``.

    python benchmarks/ogbench_pilot.py                     # task 3, uniform and vlm_events, 3 seeds, 100k steps
    python benchmarks/ogbench_pilot.py --methods uniform vlm_events per:2
    python benchmarks/ogbench_pilot.py --merge-only        # the table from the cells on disk
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
from sample_efficiency import first_reach, median_steps, pair_by_seed, permutation_p, seed_ratio, study_cells

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "ogbench_pilot"  # committed: JSON, CSV, PNG
RUNS_DIR = Path(__file__).resolve().parent / "out" / "ogbench_pilot"  # ignored: logs and checkpoints of cells

#: Replay choices compared, as overrides of the recipe's YAML.
METHODS = {
    "uniform": ["buffer.sampler=uniform"],
    "per": ["buffer.sampler=per"],
    "vlm_events": ["buffer.sampler=vlm", "vlm.scorer=events", "buffer.td_boost=true"],
    "vlm_noisy": ["buffer.sampler=vlm", "vlm.scorer=noisy_events", "buffer.td_boost=true"],
}
ALGOS = {"sac": "sac_ogbench", "td3": "td3_ogbench"}


def study_name(args) -> str:
    return f"{args.env}_{args.algo}{args.tag}"


def cell_path(args, method: str, seed: int) -> Path:
    return RESULTS_DIR / study_name(args) / f"{method}_s{seed}.json"


def cell_overrides(args, method: str, seed: int) -> list[str]:
    """The recipe overrides that make two cells comparable (or the same cell)."""
    return [
        f"env.name={args.env}",
        f"env.seed={seed}",
        f"collector.total_frames={args.frames}",
        # As large as the run (nothing is evicted either way, as with the YAML's 1M in a 1M run), so that
        # a checkpoint holds the transitions, not 1M rows of empty storage (about 0.5 GB).
        f"buffer.capacity={args.frames}",
        f"eval.interval={args.eval_interval}",
        f"eval.episodes={args.eval_episodes}",
        f"vlm.definition={args.definition}",
        f"vlm.false_positive_rate={args.fpr}",
        f"vlm.false_negative_rate={args.fnr}",
        "logger.backend=csv",
        "logger.progress=false",
        *METHODS[method],
        *args.override,
    ]


def run_cell(args, method: str, seed: int) -> dict:
    """Runs (or resumes) one training run in this process and returns its evaluation history."""
    overrides = cell_overrides(args, method, seed)
    run_dir = RUNS_DIR / study_name(args) / f"{method}_s{seed}"
    ckpt, stamp = run_dir / "checkpoint", run_dir / "overrides.json"
    resume = ckpt.exists() and stamp.exists() and json.loads(stamp.read_text()) == overrides
    if not resume:  # nothing to resume, or scratch of a cell with other settings
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        write_atomic(stamp, json.dumps(overrides))
    else:
        print(f"{method} seed {seed}: resuming from {ckpt.relative_to(ROOT)}", flush=True)
    # at_end: a cell stopped by Ctrl-C or SIGTERM checkpoints where it stopped (a finished one's is dropped).
    saving = [f"checkpoint.interval={args.checkpoint_interval}", "checkpoint.at_end=true",
              f"checkpoint.resume={ckpt if resume else 'null'}"]
    summary = recipe(ALGOS[args.algo]).train(recipe_config(ALGOS[args.algo], overrides + saving), run_dir)
    if summary["interrupted"]:
        raise SystemExit(f"{method} seed {seed}: stopped at {summary['frames']} frames; the same command resumes it")
    return {
        "env": args.env,
        "algo": args.algo,
        "method": method,
        "seed": seed,
        "frames": args.frames,
        "overrides": overrides,
        "evals": summary["evals"],
        "sps": summary["sps"],  # of the last segment, if the cell was resumed
        "resumed_at": summary["start_frames"],
        "final_success": summary["final_success"],
        "vlm_stats": summary["buffer_stats"],
    }


def settings_differ(cell: dict, args) -> list[str]:
    """The overrides of a cell on disk that this call would not use (empty: same settings)."""
    differ = set(cell["overrides"]) ^ set(cell_overrides(args, cell["method"], cell["seed"]))
    if not cell["method"].startswith("vlm"):  # the scorer's settings do not touch uniform or PER runs
        differ = {o for o in differ if not o.startswith("vlm.")}
    return sorted(differ)


def late_mean(evals: list[dict], key: str, last: int = 3) -> float:
    """Mean of ``key`` over the last ``last`` evaluations."""
    return float(np.mean([row[key] for row in evals[-last:]]))


def summarise(results: list[dict], methods: list[str], subgoal_level: float) -> tuple[list[list], dict]:
    rows, curves = [], {}
    for method in methods:
        cells = [r for r in results if r["method"] == method]
        if not cells:
            continue
        s50 = [first_reach(c["evals"], "success", 0.5) for c in cells]
        sub = [first_reach(c["evals"], "subgoals", subgoal_level) for c in cells]
        late_success = [late_mean(c["evals"], "success") for c in cells]
        late_sub = [late_mean(c["evals"], "subgoals") for c in cells]
        rows.append([
            method,
            len(cells),
            median_steps(s50),
            median_steps(sub),
            ", ".join("never" if not math.isfinite(v) else f"{v / 1000:.0f}k" for v in sub),
            f"{np.median(late_success):.2f} [{min(late_success):.2f}, {max(late_success):.2f}]",
            f"{np.median(late_sub):.2f} [{min(late_sub):.2f}, {max(late_sub):.2f}]",
            f"{np.median([c['sps'] for c in cells]):.0f}",
        ])
        n = min(len(c["evals"]) for c in cells)
        frames = np.array([row["frames"] for row in cells[0]["evals"][:n]])
        curves[method] = (frames, *(np.array([[row[k] for row in c["evals"][:n]] for c in cells])
                                    for k in ("success", "subgoals")))
    return rows, curves


def compare_with(results: list[dict], methods: list[str], subgoal_level: float, baseline: str = "uniform"):
    """Per method: seed-by-seed steps-to-subgoal-level ratios against the baseline, and permutation p-values."""
    rows = []
    for method in methods:
        pairs = pair_by_seed(results, method, baseline) if method != baseline else []
        if not pairs:
            continue
        cand, base = [c["evals"] for _, c, _ in pairs], [b["evals"] for _, _, b in pairs]
        steps = [[first_reach(e, "subgoals", subgoal_level) for e in arm] for arm in (cand, base)]
        late_sub = [[-late_mean(e, "subgoals") for e in arm] for arm in (cand, base)]
        late_success = [[-late_mean(e, "success") for e in arm] for arm in (cand, base)]
        rows.append([
            method,
            ", ".join(f"s{s}: {seed_ratio(c, b)}" for (s, _, _), c, b in zip(pairs, *steps)),
            f"{permutation_p(*steps):.2f}",
            f"{permutation_p(*late_sub):.2f}",
            f"{permutation_p(*late_success):.2f}",
        ])
    return rows


def plot(curves: dict, path: Path, title: str, subgoal_level: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, index, name, top in ((axes[0], 1, "eval success", 1), (axes[1], 2, "subgoals satisfied at episode end", 5)):
        for method, curve in curves.items():
            frames, values = curve[0], curve[index]
            mean, std = values.mean(0), values.std(0)
            ax.plot(frames, mean, label=f"{method} (n={values.shape[0]})")
            ax.fill_between(frames, np.clip(mean - std, 0, top), np.clip(mean + std, 0, top), alpha=0.2)
        ax.set_xlabel("env steps")
        ax.set_title(name)
        ax.set_ylim(-0.02 * top, 1.02 * top)
        ax.grid(alpha=0.3)
    axes[1].axhline(subgoal_level, color="grey", lw=0.8, ls="--")
    axes[0].set_ylabel("mean ± std over seeds")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="scene-singletask-task3-v0")
    parser.add_argument("--algo", default="sac", choices=list(ALGOS))
    parser.add_argument("--frames", type=int, default=100_000, help="env steps a cell (default: 100k; the paper: 1M)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["uniform", "vlm_events"], metavar="METHOD[:SEEDS]",
                        help=f"of {', '.join(METHODS)}; METHOD:N runs N seeds of it instead of --seeds")
    parser.add_argument("--definition", default="first_progress", choices=["any", "first_progress", "goal_only"],
                        help="what the event scorer counts as meaningful")
    parser.add_argument("--fpr", type=float, default=0.1, help="vlm_noisy: false-positive rate")
    parser.add_argument("--fnr", type=float, default=0.1, help="vlm_noisy: false-negative rate")
    parser.add_argument("--eval-interval", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=8)
    parser.add_argument("--subgoal-level", type=float, default=3.0,
                        help="the mean subgoals-at-episode-end level whose first crossing is timed")
    parser.add_argument("--checkpoint-interval", type=int, default=10_000,
                        help="env steps between a cell's checkpoints, from which a stopped cell resumes")
    parser.add_argument("--cell", default=None, help="run one cell, METHOD:SEED, and exit")
    parser.add_argument("--merge-only", action="store_true", help="do not run, only merge the study's cells on disk")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cells run at once (default: one per core)")
    parser.add_argument("--tag", default="", help="suffix of the results folder, to keep variants apart")
    parser.add_argument("--override", nargs="*", default=[], help="extra recipe overrides for every cell")
    parser.add_argument("--no-record", action="store_true", help="print the table; leave RESULTS.md alone")
    args = parser.parse_args()
    try:
        cells = study_cells(args.methods, args.seeds, METHODS)
    except ValueError as e:
        parser.error(str(e))

    if args.cell:
        method, _, seed = args.cell.partition(":")
        if method not in METHODS or not seed.isdigit():
            parser.error(f"--cell must be METHOD:SEED with METHOD one of {sorted(METHODS)}, got {args.cell!r}")
        result = run_cell(args, method, int(seed))
        path = cell_path(args, method, int(seed))
        write_atomic(path, json.dumps(result, indent=1, default=float))
        shutil.rmtree(RUNS_DIR / study_name(args) / f"{method}_s{seed}", ignore_errors=True)
        print(f"{method} seed {seed}: final success {result['final_success']:.2f}, "
              f"subgoals {result['evals'][-1]['subgoals']:.2f} -> {path.relative_to(ROOT)}", flush=True)
        return

    if not args.merge_only:
        commands = []
        for method, seed in cells:
            path = cell_path(args, method, seed)
            if path.exists():
                differ = settings_differ(json.loads(path.read_text()), args)
                if differ:
                    parser.error(f"{path.relative_to(ROOT)} was run with other settings ({', '.join(differ)}); "
                                 "pass --tag to keep this variant apart, or delete the cell")
                continue
            cmd = [sys.executable, __file__, "--cell", f"{method}:{seed}", "--env", args.env, "--algo", args.algo,
                   "--frames", str(args.frames), "--eval-interval", str(args.eval_interval),
                   "--eval-episodes", str(args.eval_episodes), "--definition", args.definition,
                   "--fpr", str(args.fpr), "--fnr", str(args.fnr), "--tag", args.tag,
                   "--checkpoint-interval", str(args.checkpoint_interval)]
            if args.override:
                cmd += ["--override", *args.override]
            commands.append(cmd)
        print(f"{len(cells) - len(commands)} of {len(cells)} cells on disk; running {len(commands)}, "
              f"{args.jobs} at a time", flush=True)
        run_cells(commands, args.jobs)

    folder = RESULTS_DIR / study_name(args)
    results, missing = [], []
    for method, seed in cells:
        path = cell_path(args, method, seed)
        if not path.exists():
            missing.append(path.stem)
            continue
        cell = json.loads(path.read_text())
        if settings_differ(cell, args):
            print(f"left out {path.stem}: run with other settings")
            continue
        results.append(cell)
    if missing:
        print(f"not on disk, left out: {', '.join(missing)}")
    if not results:
        print("no results to merge")
        return
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    rows, curves = summarise(results, methods, args.subgoal_level)
    with (folder / "evals.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", "frames", "success", "subgoals", "return"])
        for r in results:
            for row in r["evals"]:
                writer.writerow([r["method"], r["seed"], row["frames"], row["success"], row["subgoals"], row["return"]])
    png = folder / "learning_curves.png"
    title = f"{args.algo.upper()} on {args.env}, {args.frames:,} steps, scorer definition '{args.definition}'"
    plot(curves, png, title, args.subgoal_level)
    lvl = f"{args.subgoal_level:g}"
    table = markdown_table(
        ["method", "seeds", "steps to success 0.5", f"steps to {lvl} subgoals", f"per seed to {lvl} subgoals",
         "last 3 evals success, median [min, max]", "last 3 evals subgoals, median [min, max]", "SPS"],
        rows,
    )
    comparison = compare_with(results, methods, args.subgoal_level)
    if comparison:
        table += (
            f"\n\nAgainst uniform replay, seed by seed (same env seeds): steps to {lvl} subgoals, method / uniform; "
            "p: exact one-sided permutation test on ranks (a seed that never got there ranks last) that the method "
            "is faster there, and that its last-3-evaluation subgoals and success are higher.\n\n"
            + markdown_table([
                "method", f"steps to {lvl} subgoals vs uniform, per seed", "p (faster)", "p (more subgoals late)",
                "p (higher late success)"], comparison)
        )
    body = (
        f"{title}. {'SAC' if args.algo == 'sac' else 'TD3 (TorchRL TD3Loss)'} with OGBench's online SAC settings "
        f"(lr 1e-4, batch 256, 256×256, γ 0.99, τ 0.005, 10k random steps), 8 envs, one update per env step; "
        f"VLM-RB: TD boosting, λmax 0.5 over the first half"
        + (f"; further overrides: `{' '.join(args.override)}`" if args.override else "")
        + f". Evaluation every {args.eval_interval:,} steps on {args.eval_episodes} greedy episodes; 'subgoals' is "
        f"the mean number of the task's 5 subgoals satisfied when an episode ends (one holds at the start). "
        f"Medians count a seed that never got there as infinite (reached/seeds in brackets).\n\n{table}\n\n"
        f"Curves: `{png.relative_to(ROOT)}`; every evaluation: `{(folder / 'evals.csv').relative_to(ROOT)}`.\n"
        + (f"\n**Interim**: {len(missing)} of the study's {len(cells)} cells are not finished and are left out "
           f"({', '.join(missing)}); the same command resumes them.\n" if missing else "")
    )
    print(body)
    if not args.no_record:
        record_results(f"OGBench pilot: {folder.name}", body)


if __name__ == "__main__":
    main()
