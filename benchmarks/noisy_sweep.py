"""How good must the VLM be? VLM-RB's gain over uniform replay against the scorer's error rates.

A :class:`~torchrl_vlm.NoisyScorer` over the ideal event scorer (``first_progress``) gives
VLM-RB a scorer with a chosen false-positive rate (P(yes | no progress)) and
false-negative rate (P(no | progress)). The sweep runs the DQN recipe on DoorKey-8x8
with each (fpr, fnr) of a grid, ``--seeds`` seeds a cell, against uniform replay on the
same seeds and budget. The budget, 600k steps, comes from the 8x8 study: learning happens
at 250–350k steps there. That study ran 1M steps, and the recipe's ε and λ schedules are
fractions of the budget, so a shorter run would decay ε and raise λ sooner and learn
differently (a first try at 600k with the default fractions: uniform seed 0 reached 0.9
only at its last evaluation). The sweep therefore keeps the schedules of a
``--schedule-frames`` (1M) run, ε over its first 200k steps and λ to 0.5 over its first
500k, and stops at ``--frames``: its cells are the 8x8 study's runs, cut at 600k.

Each (cell, seed) is one run of ``recipes/dqn_minigrid.py`` in its own process, with the
settings of ``sample_efficiency.py``'s 8x8 study; it writes
``benchmarks/results/noisy_sweep/<env>_<definition>_<frames>/<cell>_s<seed>.json`` when it
finishes, so a stopped sweep resumes when the same command runs again.

Reported per (fpr, fnr): the steps to 0.9 greedy success, per seed and their median, the
gain over uniform (1 − median / uniform's median: the share of steps saved; a median seed
that never got there is "—"), the seed-by-seed permutation test of ``sample_efficiency.py``,
and the late success. The picture is a heatmap of the gain with p in each cell. The table
also goes to ``torchrl_vlm/probe/noisy_gain_doorkey8x8.json``, from which the probe places a
measured scorer on the map.

    python benchmarks/noisy_sweep.py                       # fpr {0, .1, .3} x fnr {0, .3, .6}, 3 seeds, 600k
    python benchmarks/noisy_sweep.py --merge-only          # the table and heatmap from the cells on disk
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from common import markdown_table, record_results, run_cells, write_atomic
from sample_efficiency import (
    budget_suffix,
    first_reach,
    gain,
    late_success,
    median_steps,
    permutation_p,
    run_cell,
    schedule_overrides,
    seed_ratio,
    steps_k,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "noisy_sweep"
GAIN_TABLE = ROOT / "torchrl_vlm" / "probe" / "noisy_gain_doorkey8x8.json"
CELL = re.compile(r"^noisy_f(?P<fpr>[0-9.]+)_n(?P<fnr>[0-9.]+)$")


def cell_name(fpr: float, fnr: float) -> str:
    return f"noisy_f{fpr:g}_n{fnr:g}"


def budget_name(args) -> str:
    """The definition, the budget and the schedules' run length, as folder names spell them."""
    return f"{args.definition}_{budget_suffix(args.frames, args.schedule_frames)}"


def study_folder(args) -> Path:
    return RESULTS_DIR / f"{args.env}_{budget_name(args)}"


def recipe_args(args, fpr: float = 0.0, fnr: float = 0.0) -> SimpleNamespace:
    """What ``sample_efficiency.run_cell`` reads: the 8x8 study's settings, this sweep's budget and error rates."""
    # The tag names each run's scratch folder: one per (fpr, fnr), so that two cells running at once never share it.
    return SimpleNamespace(env=args.env, frames=args.frames, eval_interval=args.eval_interval,
                           eval_episodes=args.eval_episodes, definition=args.definition, fpr=fpr, fnr=fnr,
                           schedule_frames=args.schedule_frames, override=[],
                           tag=f"_sweep_{budget_name(args)}_f{fpr:g}_n{fnr:g}")


def run_one(args, name: str, seed: int) -> Path:
    if name == "uniform":
        result = run_cell(recipe_args(args), "uniform", seed)
    else:
        match = CELL.match(name)
        result = run_cell(recipe_args(args, float(match["fpr"]), float(match["fnr"])), "vlm_noisy", seed)
    result["cell"] = name
    path = study_folder(args) / f"{name}_s{seed}.json"
    write_atomic(path, json.dumps(result, indent=1, default=float))
    return path


def heatmap(cells: list[dict], fprs: list[float], fnrs: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.full((len(fprs), len(fnrs)), np.nan)
    labels = [["not run" for _ in fnrs] for _ in fprs]
    for c in cells:
        i, j = fprs.index(c["fpr"]), fnrs.index(c["fnr"])
        grid[i, j] = np.nan if c["gain"] is None else 100 * c["gain"]
        g = "—" if c["gain"] is None else f"{100 * c['gain']:+.0f}%"
        labels[i][j] = f"{g}\np={c['p']:.2f}\n({c['seeds']} seeds)"
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    bound = max(10.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 10.0)
    image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound, origin="lower")
    for i in range(len(fprs)):
        for j in range(len(fnrs)):
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(fnrs)), [f"{v:g}" for v in fnrs])
    ax.set_yticks(range(len(fprs)), [f"{v:g}" for v in fprs])
    ax.set_xlabel("false-negative rate (progress judged no)")
    ax.set_ylabel("false-positive rate (no progress judged yes)")
    fig.colorbar(image, ax=ax, label="fewer steps to 0.9 success than uniform (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(args) -> None:
    folder = study_folder(args)
    def load(name: str, seed: int) -> dict:
        cell = json.loads((folder / f"{name}_s{seed}.json").read_text())
        expected = {f"eval.interval={args.eval_interval}", f"eval.episodes={args.eval_episodes}",
                    *schedule_overrides(args.frames, args.schedule_frames)}
        if not expected <= set(cell["overrides"]):
            raise SystemExit(f"{folder / name}_s{seed}.json was run with other evaluation or schedule settings than "
                             f"{sorted(expected)}: delete it or pass its settings")
        return cell

    have = lambda name, seed: (folder / f"{name}_s{seed}.json").is_file()  # noqa: E731
    uniform = {s: load("uniform", s) for s in range(args.seeds) if have("uniform", s)}
    if not uniform:
        print("no uniform cell on disk yet: nothing to compare with")
        return
    u_steps = {s: first_reach(c["evals"], "success_greedy", 0.9) for s, c in uniform.items()}
    rows, cells = [], []
    rows.append(["uniform", "—", "—", len(uniform), ", ".join(steps_k(u_steps[s]) for s in sorted(u_steps)),
                 median_steps(list(u_steps.values())), "—", "—", "—",
                 f"{np.median([late_success(c['evals']) for c in uniform.values()]):.2f}"])
    for fpr in args.fpr:
        for fnr in args.fnr:
            name = cell_name(fpr, fnr)
            runs = {s: load(name, s) for s in range(args.seeds) if have(name, s)}
            seeds = sorted(set(runs) & set(u_steps))
            if not seeds:
                continue
            steps = [first_reach(runs[s]["evals"], "success_greedy", 0.9) for s in seeds]
            base = [u_steps[s] for s in seeds]
            late = [late_success(runs[s]["evals"]) for s in seeds]
            p = permutation_p(steps, base)
            g = gain(steps, base)
            # null, not Infinity, for a seed that never got there: Infinity is not JSON.
            cells.append({"fpr": fpr, "fnr": fnr, "gain": g, "p": p, "seeds": len(seeds),
                          "steps_to_0.9": _finite_or_none(steps), "uniform_steps_to_0.9": _finite_or_none(base),
                          "late_success": late})
            rows.append([name, f"{fpr:g}", f"{fnr:g}", len(seeds), ", ".join(steps_k(v) for v in steps),
                         median_steps(steps), "—" if g is None else f"{100 * g:+.0f}%",
                         ", ".join(seed_ratio(c, b) for c, b in zip(steps, base, strict=True)), f"{p:.2f}",
                         f"{np.median(late):.2f}"])
    budget = f"{args.frames:,} steps of a {args.schedule_frames:,}-step schedule"
    title = f"{args.env} ({args.definition}), {budget}: VLM-RB with a noisy scorer vs uniform"
    png = folder / "gain_heatmap.png"
    heatmap(cells, list(args.fpr), list(args.fnr), png,
            f"VLM-RB with a noisy scorer vs uniform\n{args.env} ({args.definition})\n{budget}")
    table = markdown_table(["cell", "fpr", "fnr", "seeds", "steps to 0.9 greedy, per seed", "median",
                            "gain vs uniform", "per seed / uniform", "p (faster)", "late success (median)"], rows)
    body = (
        f"{title}. The DQN recipe with the settings of the 8x8 study (Double DQN, 8 envs, 3-step returns, "
        f"λmax 0.5; ε's decay and "
        f"λ's warm-up those of a {args.schedule_frames:,}-step run: "
        f"`{' '.join(schedule_overrides(args.frames, args.schedule_frames)) or 'the recipe defaults'}`); "
        f"the VLM-RB scorer is `NoisyScorer(MiniGridEventScorer('{args.definition}'), fpr, "
        f"fnr)`. Evaluation every {args.eval_interval:,} steps on {args.eval_episodes} episodes; gain = 1 − median "
        f"steps to 0.9 greedy success / uniform's; p: exact one-sided permutation test, seed by seed, that the cell "
        f"is faster (3 seeds an arm: the smallest p possible is 0.05).\n\n{table}\n\nHeatmap: "
        f"`{png.relative_to(ROOT)}`; the probe reads the cells from `{GAIN_TABLE.relative_to(ROOT)}`.\n"
    )
    print(body)
    if not args.no_record:
        record_results(f"Gain against scorer error: {folder.name}", body)
        gain_table = {"env": args.env, "definition": args.definition, "frames": args.frames,
                      "schedule_frames": args.schedule_frames, "cells": cells}
        write_atomic(GAIN_TABLE, json.dumps(gain_table, indent=1, default=float))


def _finite_or_none(steps: list[float]) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="MiniGrid-DoorKey-8x8-v0")
    parser.add_argument("--definition", default="first_progress")
    parser.add_argument("--frames", type=int, default=600_000)
    parser.add_argument("--schedule-frames", type=int, default=1_000_000,
                        help="ε and λ follow the schedules of a run of this many steps (the 8x8 study's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fpr", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--fnr", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    parser.add_argument("--eval-interval", type=int, default=25_000)
    parser.add_argument("--eval-episodes", type=int, default=16)
    parser.add_argument("--cell", default=None, help="run one cell, NAME:SEED (uniform or noisy_fA_nB), and exit")
    parser.add_argument("--merge-only", action="store_true")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    for name in ("fpr", "fnr"):
        if any(not 0 <= v <= 1 for v in getattr(args, name)):
            parser.error(f"--{name} values must be in [0, 1], got {getattr(args, name)}")
    if args.cell:
        name, _, seed = args.cell.partition(":")
        if not (name == "uniform" or CELL.match(name)) or not seed.isdigit():
            parser.error(f"--cell must be uniform:SEED or noisy_fA_nB:SEED, got {args.cell!r}")
        print(f"{args.cell} -> {run_one(args, name, int(seed)).relative_to(ROOT)}", flush=True)
        return
    if not args.merge_only:
        # Seed by seed, uniform first: a sweep stopped early has complete comparisons to show.
        names = ["uniform"] + [cell_name(a, b) for a in args.fpr for b in args.fnr]
        todo = [(n, s) for s in range(args.seeds) for n in names
                if not (study_folder(args) / f"{n}_s{s}.json").is_file()]
        common = ["--env", args.env, "--definition", args.definition, "--frames", str(args.frames),
                  "--schedule-frames", str(args.schedule_frames),
                  "--eval-interval", str(args.eval_interval), "--eval-episodes", str(args.eval_episodes)]
        commands = [[sys.executable, __file__, "--cell", f"{n}:{s}", *common] for n, s in todo]
        print(f"{len(names) * args.seeds - len(todo)} of {len(names) * args.seeds} runs on disk; running "
              f"{len(todo)}, {args.jobs} at a time", flush=True)
        run_cells(commands, args.jobs)
    merge(args)


if __name__ == "__main__":
    main()
