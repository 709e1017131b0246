"""Sample efficiency of VLM-RB against uniform replay and PER on MiniGrid DoorKey.

Each (method, seed) cell is one run of ``recipes/dqn_minigrid.py`` with equal
budgets and hyperparameters; only the replay differs. Methods: ``uniform``,
``per`` (TorchRL's PrioritizedSampler, TD errors), ``vlm_events`` (VLM-RB with the
ideal event scorer), ``vlm_noisy`` (the same with --fpr/--fnr errors) and
``vlm_pure`` (λmax = null, pure prioritisation: the paper's ablation). The paper's
other ablations: ``vlm_lam0.25`` / ``vlm_lam0.75`` / ``vlm_lam1`` (λmax; ``vlm_events``
is 0.5) and ``vlm_L8`` / ``vlm_L16`` / ``vlm_L64`` (clip length L; ``vlm_events`` is 32).
``iqn_uniform`` and ``iqn_vlm_events`` are the same replay choices with IQN instead of DQN
(N = N' = 8 sampled levels, K = 32: ``benchmarks/iqn_update_cost.py``); an IQN method is
compared with ``iqn_uniform``, every other with ``uniform``.

What the event scorer counts as meaningful (--definition): ``any`` (every key
pick-up, door opening or goal), ``first_progress`` (the first pick-up and first
opening of an episode, and the goal) or ``goal_only``.

A cell runs in its own process and writes
``benchmarks/results/sample_efficiency/<env>[_<definition>]/<method>_s<seed>.json``
with the recipe overrides it ran with. A cell on disk with other settings is an
error when running and left out (with a warning) when merging: use --tag to keep
variants apart.

Reported per method, over seeds: env steps until greedy evaluation success first
reaches 0.5 and 0.9 (median, and how many seeds got there), the same with
ε=0.05 evaluation (greedy evaluation flickers), final success and the mean of the
last three evaluations (steadier than one 16-episode evaluation). Each method is
then compared with uniform replay seed by seed, with an exact one-sided permutation
test, so that a table of three seeds cannot read as more than it is.

One command runs a study: the cells it names (``--seeds`` seeds of each of
``--methods``; a method given as ``METHOD:N`` gets seeds 0 to N-1 instead) that are
not on disk yet, ``--jobs`` at a time (default: one per core), each in its own
process; then it merges those cells into a CSV of every evaluation, a PNG of
learning curves (mean ± std over seeds) and a table, which replaces the study's
section of ``benchmarks/RESULTS.md`` ("Sample efficiency: <results folder>";
``--no-record``: print only). A cell is written when it finishes, so a study
killed midway resumes when the same command runs again (only the cells that were
running start over). ``--merge-only`` only merges (the study's cells on disk);
``--cell METHOD:SEED`` runs one cell in this process (what the study does in each process).

The tables in RESULTS.md, one command each:

    python benchmarks/sample_efficiency.py --quick      # DoorKey-5x5, 'any', 60k steps, 3 seeds (~15 min on 2 cores)
    python benchmarks/sample_efficiency.py --env MiniGrid-DoorKey-6x6-v0 --frames 300000 --seeds 5 \\
        --definition first_progress --methods uniform vlm_events vlm_pure:3
    python benchmarks/sample_efficiency.py --env MiniGrid-DoorKey-8x8-v0 --frames 1000000 --seeds 10 \\
        --definition first_progress --eval-interval 25000 --methods uniform per:2 vlm_events
    python benchmarks/sample_efficiency.py --env MiniGrid-DoorKey-12x12-v0 --frames 2000000 --seeds 1 \\
        --definition first_progress --eval-interval 100000 --methods uniform per vlm_events

The paper's ablations and IQN on 8x8, 600k steps of the 1M study's ε and λ schedules (37 cells, 20-90 min each on
one core; run across four sessions, each resuming with the same command):

    python benchmarks/sample_efficiency.py --env MiniGrid-DoorKey-8x8-v0 --frames 600000 --schedule-frames 1000000 \\
        --seeds 3 --definition first_progress --eval-interval 25000 --methods uniform vlm_events \\
        vlm_lam0.25 vlm_lam0.75 vlm_lam1 vlm_pure vlm_L8 vlm_L16 vlm_L64 iqn_uniform:5 iqn_vlm_events:5
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from common import (
    cell_argv,
    cells_to_run,
    markdown_table,
    recipe,
    recipe_config,
    record_results,
    run_cells,
    write_atomic,
)

from torchrl_vlm.scoring.oracle import EVENT_DEFINITIONS

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "sample_efficiency"  # committed: JSON, CSV, PNG
RUNS_DIR = Path(__file__).resolve().parent / "out" / "sample_efficiency"  # ignored: each run's logs

#: IQN's sampled levels in these studies: 8 instead of the paper's 64, whose update costs ~17 DQN
#: updates on one CPU thread (RESULTS.md "IQN update cost"); K = 32 as in the paper.
IQN_CPU = ["iqn.num_quantiles=8", "iqn.num_target_quantiles=8"]

#: Replay choices compared, as overrides of recipes/dqn_minigrid.yaml.
METHODS = {
    "uniform": ["buffer.sampler=uniform"],
    "per": ["buffer.sampler=per"],
    "vlm_events": ["buffer.sampler=vlm", "vlm.scorer=events"],
    "vlm_noisy": ["buffer.sampler=vlm", "vlm.scorer=noisy_events"],
    "vlm_pure": ["buffer.sampler=vlm", "vlm.scorer=events", "buffer.lam_max=null"],
    **{f"vlm_lam{lam:g}": ["buffer.sampler=vlm", "vlm.scorer=events", f"buffer.lam_max={lam}"]
       for lam in (0.25, 0.75, 1.0)},
    **{f"vlm_L{clip_len}": ["buffer.sampler=vlm", "vlm.scorer=events", f"vlm.clip_len={clip_len}"]
       for clip_len in (8, 16, 64)},
    "iqn_uniform": ["algo=iqn", *IQN_CPU, "buffer.sampler=uniform"],
    "iqn_vlm_events": ["algo=iqn", *IQN_CPU, "buffer.sampler=vlm", "vlm.scorer=events"],
}
DEFAULT_METHODS = ("uniform", "per", "vlm_events", "vlm_noisy")

#: The paper's ablations: per axis, the methods that vary it and the value each sets, in order (vlm_events runs
#: the defaults, λmax 0.5 and L = 32; vlm_lam1 raises λ to 1 over the warm-up, vlm_pure prioritises from the start).
ABLATIONS = {
    "λmax": {"vlm_lam0.25": "0.25", "vlm_events": "0.5", "vlm_lam0.75": "0.75", "vlm_lam1": "1", "vlm_pure": "pure"},
    "clip length L": {"vlm_L8": "8", "vlm_L16": "16", "vlm_events": "32", "vlm_L64": "64"},
}


def study_cells(methods: list[str], seeds: int, known=METHODS) -> list[tuple[str, int]]:
    """The (method, seed) cells of a study, seed by seed: ``seeds`` seeds of each method, N of one given as
    METHOD:N; ``known``: the methods the study's runner has."""
    counts = {}
    for spec in methods:
        method, _, n = spec.partition(":")
        if method not in known or not (n == "" or n.isdigit()):
            raise ValueError(f"a method is METHOD or METHOD:SEEDS with METHOD one of {sorted(known)}, got {spec!r}")
        counts[method] = int(n) if n else seeds
    return [(method, seed) for seed in range(max(counts.values(), default=0))
            for method, n in counts.items() if seed < n]


def budget_suffix(frames: int, schedule_frames: int) -> str:
    """A run cut short of its schedules' length, as results folders spell it: ``600k_of_1000k``."""
    return f"{frames // 1000}k_of_{schedule_frames // 1000}k"


def cell_path(env: str, method: str, seed: int, tag: str) -> Path:
    return RESULTS_DIR / f"{env}{tag}" / f"{method}_s{seed}.json"


def schedule_overrides(frames: int, schedule_frames: int) -> list[str]:
    """ε's decay and λ's warm-up of a ``schedule_frames`` run (the recipe's fractions of it), for a
    ``frames`` run: the same steps, as fractions of the shorter budget. A run cut short this way
    is the longer run stopped early, where the recipe's own fractions would decay ε and raise λ sooner.
    Empty where the two budgets are one (the recipe's fractions as they are)."""
    if schedule_frames == frames:
        return []
    cfg = recipe_config("dqn_minigrid", [])
    scale = schedule_frames / frames
    eps, warmup = cfg.collector.eps_fraction * scale, cfg.buffer.warmup_fraction * scale
    if eps > 1 or warmup > 1:
        raise ValueError(f"{frames} frames is too short for the schedules of a {schedule_frames}-step run "
                         f"(ε over {cfg.collector.eps_fraction:g} of it, λ over {cfg.buffer.warmup_fraction:g})")
    return [f"collector.eps_fraction={eps:.6g}", f"buffer.warmup_fraction={warmup:.6g}"]


def cell_overrides(args, method: str, seed: int) -> list[str]:
    """The recipe overrides of one cell: what makes two cells comparable (or the same cell)."""
    return [
        f"env.name={args.env}",
        f"env.seed={seed}",
        f"collector.total_frames={args.frames}",
        f"eval.interval={args.eval_interval}",
        f"eval.episodes={args.eval_episodes}",
        f"vlm.definition={args.definition}",
        f"vlm.false_positive_rate={args.fpr}",
        f"vlm.false_negative_rate={args.fnr}",
        "logger.backend=csv",
        "logger.progress=false",
        "logger.gallery_interval=0",
        "checkpoint.at_end=false",
        *METHODS[method],
        *(schedule_overrides(args.frames, args.schedule_frames) if args.schedule_frames else []),
        *args.override,
    ]


def run_cell(args, method: str, seed: int) -> dict:
    """Runs one training run in this process and returns its evaluation history."""
    overrides = cell_overrides(args, method, seed)
    run_dir = RUNS_DIR / f"{args.env}{args.tag}" / f"{method}_s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # scratch of an earlier, killed attempt at this cell
    summary = recipe("dqn_minigrid").train(recipe_config("dqn_minigrid", overrides), run_dir)
    # SIGTERM/Ctrl-C (or eval.stop_when_solved) ends a run cleanly, short of its budget: that is no cell
    if summary["interrupted"] or summary["stopped_when_solved"]:
        why = "a signal" if summary["interrupted"] else "eval.stop_when_solved"
        raise SystemExit(f"{method} seed {seed}: stopped by {why} at {summary['frames']} frames, not recorded")
    return {
        "env": args.env,
        "method": method,
        "seed": seed,
        "frames": args.frames,
        "overrides": overrides,
        "evals": summary["evals"],
        "sps": summary["sps"],
        "final_success_greedy": summary["final_success_greedy"],
        "final_success_eps": summary["final_success_eps"],
        "vlm_stats": summary["buffer_stats"],  # the buffer's counters (scorer, λ, coverage) at the end
    }


def load_cell(path: Path) -> dict:
    """A cell's JSON, with the duplicate end-of-run evaluation older recipe versions recorded dropped."""
    cell = json.loads(path.read_text())
    evals = cell["evals"]
    cell["evals"] = [row for i, row in enumerate(evals) if i == 0 or row["frames"] != evals[i - 1]["frames"]]
    return cell


RATES = ("vlm.false_positive_rate", "vlm.false_negative_rate")


def run_settings(overrides: list[str]) -> set[str]:
    """``overrides`` as the run they make. The error rates touch the noisy scorer only, and the noisy
    scorer at fpr = fnr = 0 flips nothing: it is the event scorer (so noisy_sweep.py's ideal cell,
    ``noisy_f0_n0``, is a ``vlm_events`` cell of the same budget)."""
    pairs = [o.split("=", 1) for o in overrides]
    scorer = next((v for k, v in pairs if k == "vlm.scorer"), None)
    rates = {k: float(v) for k, v in pairs if k in RATES}
    if scorer == "noisy_events" and all(r == 0 for r in rates.values()):
        scorer = "events"
    settings = {o for o, (k, _) in zip(overrides, pairs, strict=True) if k not in (*RATES, "vlm.scorer")}
    if scorer is not None:
        settings.add(f"vlm.scorer={scorer}")
    if scorer == "noisy_events":
        settings |= {f"{k}={v:g}" for k, v in rates.items()}
    return settings


def settings_differ(cell: dict, args) -> list[str]:
    """The overrides of a cell on disk that this call would not use (empty: same settings)."""
    expected = cell_overrides(args, cell["method"], cell["seed"])
    differ = run_settings(cell["overrides"]) ^ run_settings(expected)
    if "buffer.sampler=vlm" not in METHODS.get(cell["method"], ()):  # the scorer's settings touch VLM-RB runs only
        differ = {o for o in differ if not o.startswith("vlm.")}
    return sorted(differ)


def first_reach(evals: list[dict], key: str, level: float) -> float:
    """Env steps at the first evaluation whose ``key`` is at least ``level`` (``inf``: never within the budget)."""
    for row in evals:
        if row[key] >= level:
            return row["frames"]
    return math.inf


def late_success(evals: list[dict], last: int = 3) -> float:
    """Mean greedy success over the last ``last`` evaluations."""
    return float(np.mean([row["success_greedy"] for row in evals[-last:]]))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (so every ``inf``, a seed that never got there, ties last)."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        ranks[values == value] = ranks[values == value].mean()
    return ranks


def permutation_p(candidate: list[float], baseline: list[float]) -> float:
    """Exact one-sided permutation test on ranks: P(candidate's rank sum is this low under relabelling).

    Low values are better (pass ``-success`` for success rates). With n seeds an arm the smallest p it can
    give is 1 / C(2n, n): 0.05 for three seeds each, 0.008 for five.
    """
    ranks = average_ranks(np.array([*candidate, *baseline], dtype=float))
    observed = ranks[: len(candidate)].sum()
    sums = [ranks[list(chosen)].sum() for chosen in itertools.combinations(range(len(ranks)), len(candidate))]
    return float(np.mean(np.array(sums) <= observed + 1e-9))


def seed_ratio(candidate: float, baseline: float) -> str:
    """Steps to a level, candidate over baseline, for one seed ("never" is beyond the budget)."""
    if math.isfinite(candidate) and math.isfinite(baseline):
        return f"{candidate / baseline:.2f}"
    if math.isfinite(candidate):
        return "< 1 (baseline never)"
    return "—" if not math.isfinite(baseline) else "> 1 (never)"


def pair_by_seed(results: list[dict], method: str, baseline: str) -> list[tuple[int, dict, dict]]:
    """(seed, method's cell, baseline's cell) for every env seed both ran, by seed; a seed only one ran is left out."""
    by_method = {m: {r["seed"]: r for r in results if r["method"] == m} for m in (method, baseline)}
    return [(seed, by_method[method][seed], by_method[baseline][seed])
            for seed in sorted(set(by_method[method]) & set(by_method[baseline]))]


def baseline_of(method: str) -> str:
    """What a method is compared with: uniform replay with the same algorithm."""
    return "iqn_uniform" if "algo=iqn" in METHODS[method] else "uniform"


def compare_with(results: list[dict], methods: list[str]) -> list[list]:
    """Per method: seed-by-seed steps-to-0.9 ratios against its baseline, and permutation p-values."""
    rows = []
    for method in methods:
        baseline = baseline_of(method)
        pairs = pair_by_seed(results, method, baseline) if method != baseline else []
        if not pairs:
            continue
        seeds = [seed for seed, _, _ in pairs]
        cand, base = [c["evals"] for _, c, _ in pairs], [b["evals"] for _, _, b in pairs]
        steps = [[first_reach(e, "success_greedy", 0.9) for e in arm] for arm in (cand, base)]
        late = [[-late_success(e) for e in arm] for arm in (cand, base)]
        rows.append(
            [
                method,
                baseline,
                ", ".join(f"s{s}: {seed_ratio(c, b)}" for s, c, b in zip(seeds, *steps, strict=True)),
                f"{permutation_p(*steps):.2f}",
                f"{permutation_p(*late):.2f}",
            ]
        )
    return rows


def steps_k(steps: float) -> str:
    """Steps to a level in thousands, "never" beyond the budget."""
    return "never" if not math.isfinite(steps) else f"{steps / 1000:.0f}k"


def gain(cell_steps: list[float], uniform_steps: list[float]) -> float | None:
    """1 − median(cell) / median(uniform) of steps to 0.9; None where either median seed never got there."""
    med_c, med_u = np.median(cell_steps), np.median(uniform_steps)
    if not (math.isfinite(med_c) and math.isfinite(med_u)):
        return None
    return float(1 - med_c / med_u)


def ablation_points(results: list[dict]) -> dict[str, list[tuple[str, str, list[float], list[float]]]]:
    """Per ablation axis with two or more of its values run: (value, method, steps to 0.9 greedy per seed,
    uniform's on the same env seeds), in the axis's order."""
    points = {}
    for axis, values in ABLATIONS.items():
        ran = []
        for method, value in values.items():
            pairs = pair_by_seed(results, method, "uniform")
            if pairs:
                steps = [first_reach(c["evals"], "success_greedy", 0.9) for _, c, _ in pairs]
                base = [first_reach(b["evals"], "success_greedy", 0.9) for _, _, b in pairs]
                ran.append((value, method, steps, base))
        if len(ran) >= 2:
            points[axis] = ran
    return points


def ablation_rows(points: dict) -> list[list]:
    """The ablation table: per axis and value, steps to 0.9 per seed, their median, the gain over uniform's
    median on the same seeds and the permutation p that it is faster."""
    rows = []
    for axis, ran in points.items():
        for value, method, steps, base in ran:
            g = gain(steps, base)
            rows.append([axis, value, method, len(steps), ", ".join(map(steps_k, steps)), median_steps(steps),
                         "—" if g is None else f"{100 * g:+.0f}%", f"{permutation_p(steps, base):.2f}"])
    return rows


def plot_ablations(points: dict, budget: int, path: Path, title: str) -> None:
    """Steps to 0.9 per seed (dots, "never" on the top line) and their median (bar) along each ablation axis,
    against uniform's median (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    never = 1.08 * budget
    fig, axes = plt.subplots(1, len(points), figsize=(5.5 * len(points), 4), sharey=True, squeeze=False)
    for ax, (axis, ran) in zip(axes[0], points.items(), strict=True):
        uniform = max((base for *_, base in ran), key=len)  # every value ran on these seeds, or on fewer
        for x, (_value, _, steps, _) in enumerate(ran):
            ys = [min(v, never) for v in steps]
            ax.scatter(x + np.linspace(-0.12, 0.12, len(ys)), ys, s=22, zorder=3)
            ax.hlines(min(np.median(steps), never), x - 0.3, x + 0.3, color="k", lw=2)
        ax.axhline(min(np.median(uniform), never), color="grey", ls="--",
                   label=f"uniform, median ({', '.join(map(steps_k, uniform))})")
        ax.axhline(never, color="lightgrey", lw=0.8)
        ax.text(-0.45, never, "never", va="bottom", fontsize=7, color="grey")
        ax.yaxis.set_major_formatter(lambda v, _: f"{v / 1000:.0f}k")
        ax.set_xticks(range(len(ran)), [value for value, *_ in ran])
        ax.set_xlabel(axis)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(loc="lower right", fontsize=7)
    axes[0][0].set_ylabel("env steps to 0.9 greedy success (top line: never)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def median_steps(values: list[float]) -> str:
    """Median steps to a level over seeds, in thousands, with (reached/seeds); "—" where the median seed never got
    there."""
    reached = [v for v in values if math.isfinite(v)]
    if len(reached) * 2 <= len(values):  # at least half never got there: the median is not reached
        return f"— ({len(reached)}/{len(values)})"
    return f"{np.median(values) / 1000:.0f}k ({len(reached)}/{len(values)})"


def summarise(results: list[dict], methods: list[str]) -> tuple[list[list], dict]:
    rows, curves = [], {}
    for method in methods:
        cells = [r for r in results if r["method"] == method]
        if not cells:
            continue
        per_seed = {
            level_key: [first_reach(c["evals"], key, level) for c in cells]
            for level_key, key, level in (
                ("g50", "success_greedy", 0.5),
                ("g90", "success_greedy", 0.9),
                ("e90", "success_eps", 0.9),
            )
        }

        finals = [c["final_success_greedy"] for c in cells]
        finals_eps = [c["final_success_eps"] for c in cells]
        lates = [late_success(c["evals"]) for c in cells]
        g90 = ", ".join(map(steps_k, per_seed["g90"]))
        rows.append(
            [
                method,
                len(cells),
                median_steps(per_seed["g50"]),
                median_steps(per_seed["g90"]),
                g90,
                median_steps(per_seed["e90"]),
                f"{np.median(finals):.2f} [{min(finals):.2f}, {max(finals):.2f}]",
                f"{np.median(finals_eps):.2f}",
                f"{np.median(lates):.2f} [{min(lates):.2f}, {max(lates):.2f}]",
                f"{np.median([c['sps'] for c in cells]):.0f}",
            ]
        )
        frames = np.array([row["frames"] for row in cells[0]["evals"]])
        n = min(len(c["evals"]) for c in cells)
        greedy = np.array([[row["success_greedy"] for row in c["evals"][:n]] for c in cells])
        eps = np.array([[row["success_eps"] for row in c["evals"][:n]] for c in cells])
        curves[method] = (frames[:n], greedy, eps)
    return rows, curves


def curve_panels(methods: list[str]) -> list[tuple[str, list[str]]]:
    """The methods' learning curves, one panel each: an ablation axis with two or more of its values run (with
    uniform), the IQN methods, and the rest (with uniform); one panel of them all where that makes only one."""
    panels, placed = [], set()
    for axis, values in ABLATIONS.items():
        ran = [m for m in values if m in methods]
        if len(ran) >= 2:
            panels.append((axis, ["uniform"] * ("uniform" in methods) + ran))
            placed.update(ran)
    iqn = [m for m in methods if baseline_of(m) == "iqn_uniform"]
    if iqn:
        panels.append(("IQN", iqn))
        placed.update(iqn)
    rest = [m for m in methods if m not in placed and m != "uniform"]
    if rest:
        panels.insert(0, ("replay", ["uniform"] * ("uniform" in methods) + rest))
    return panels if len(panels) > 1 else [("", list(methods))]


#: The baselines and VLM-RB at its defaults keep their colours from panel to panel.
CURVE_COLORS = {"uniform": "k", "iqn_uniform": "k", "vlm_events": "C3", "iqn_vlm_events": "C3"}


def plot(curves: dict, path: Path, title: str) -> None:
    """Mean ± std success over seeds against env steps, greedy and ε=0.05, one row per :func:`curve_panels`
    (eleven methods on one pair of axes read as noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(list(curves))
    fig, axes = plt.subplots(
        len(panels),
        2,
        figsize=(11, 4 if len(panels) == 1 else 3.4 * len(panels)),
        sharey=True,
        sharex=True,
        squeeze=False,
    )
    for row, (panel, methods) in zip(axes, panels, strict=True):
        for ax, index, name in ((row[0], 1, "greedy"), (row[1], 2, "ε = 0.05")):
            others = iter(f"C{i}" for i in (0, 1, 2, 4, 5, 6, 8, 9))
            for method in methods:
                frames, values = curves[method][0], curves[method][index]
                mean, std = values.mean(0), values.std(0)
                color = CURVE_COLORS.get(method) or next(others)
                ax.plot(frames, mean, color=color, label=f"{method} (n={values.shape[0]})")
                ax.fill_between(frames, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=color, alpha=0.2)
            ax.set_title(f"{panel + ': ' if panel else ''}eval success, {name}", fontsize=10)
            ax.grid(alpha=0.3)
        row[0].set_ylabel("success (mean ± std over seeds)")
        row[1].legend(loc="lower right", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("env steps")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The command line, with the defaults that depend on other arguments filled in (``--tag`` from the
    definition and the budget, so that a command names its results folder)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None, help="a DoorKey id (default: 8x8; --quick: 5x5)")
    parser.add_argument("--frames", type=int, default=None, help="default: 1.5M (--quick: 60k)")
    parser.add_argument("--seeds", type=int, default=None, help="default: 5 (--quick: 3)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        metavar="METHOD[:SEEDS]",
        help=f"of {', '.join(METHODS)}; METHOD:N runs N seeds of it instead of --seeds "
        f"(default: {' '.join(DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--definition",
        default="any",
        choices=list(EVENT_DEFINITIONS),
        help="what the event scorer counts as meaningful (see above)",
    )
    parser.add_argument("--fpr", type=float, default=0.1, help="vlm_noisy: false-positive rate")
    parser.add_argument("--fnr", type=float, default=0.1, help="vlm_noisy: false-negative rate")
    parser.add_argument(
        "--schedule-frames",
        type=int,
        default=None,
        help="ε and λ follow the schedules of a run this long, stopped at --frames (default: --frames)",
    )
    parser.add_argument("--eval-interval", type=int, default=None, help="default: frames / 30")
    parser.add_argument("--eval-episodes", type=int, default=16)
    parser.add_argument("--cell", default=None, help="run one cell, METHOD:SEED, and exit")
    parser.add_argument("--merge-only", action="store_true", help="do not run, only merge the study's cells on disk")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="cells run at once (each is single-threaded; default: one per core)",
    )
    parser.add_argument("--quick", action="store_true", help="DoorKey-5x5, 3 seeds, 60k steps")
    parser.add_argument("--tag", default="", help="suffix of the results folder, to keep variants apart")
    parser.add_argument("--override", nargs="*", default=[], help="extra recipe overrides for every cell")
    parser.add_argument("--no-record", action="store_true", help="print the table; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    args.env = args.env or ("MiniGrid-DoorKey-5x5-v0" if args.quick else "MiniGrid-DoorKey-8x8-v0")
    args.frames = args.frames or (60_000 if args.quick else 1_500_000)
    args.seeds = args.seeds or (3 if args.quick else 5)
    if args.eval_interval is None:
        args.eval_interval = max(1000, args.frames // 30)
    if not args.tag:
        if args.definition != "any":
            args.tag = f"_{args.definition}"
        if args.schedule_frames and args.schedule_frames != args.frames:
            args.tag += f"_{budget_suffix(args.frames, args.schedule_frames)}"
    return parser, args


def main():
    parser, args = parse_args()
    try:
        cells = study_cells(args.methods, args.seeds)
    except ValueError as e:
        parser.error(str(e))

    if args.cell:
        method, _, seed = args.cell.partition(":")
        if method not in METHODS or not seed.isdigit():
            parser.error(f"--cell must be METHOD:SEED with METHOD one of {sorted(METHODS)}, got {args.cell!r}")
        result = run_cell(args, method, int(seed))
        path = cell_path(args.env, method, int(seed), args.tag)
        write_atomic(path, json.dumps(result, indent=1, default=float))  # a killed run leaves no half-written cell
        print(
            f"{method} seed {seed}: final greedy success {result['final_success_greedy']:.2f}, "
            f"SPS {result['sps']:.0f} -> {path.relative_to(ROOT)}"
        )
        return

    if not args.merge_only:
        todo = cells_to_run(parser, cells, lambda method, seed: cell_path(args.env, method, seed, args.tag),
                            lambda path: settings_differ(load_cell(path), args))
        flags = ("env", "frames", "eval_interval", "eval_episodes", "definition", "fpr", "fnr", "tag",
                 *(("schedule_frames",) if args.schedule_frames else ()))
        run_cells([cell_argv(__file__, method, seed, args, flags) for method, seed in todo], args.jobs)

    # Merge the study's cells, and only them: the table is a function of the command.
    folder = RESULTS_DIR / f"{args.env}{args.tag}"
    results, other, missing = [], [], []
    for method, seed in cells:
        path = cell_path(args.env, method, seed, args.tag)
        if not path.exists():
            missing.append(path.stem)
            continue
        cell = load_cell(path)
        (other if settings_differ(cell, args) else results).append(cell)
    results.sort(key=lambda c: (c["method"], c["seed"]))
    if missing:
        print(f"not on disk, left out: {', '.join(missing)}")
    if other:
        print(
            f"left out {len(other)} cell(s) run with other settings: "
            + ", ".join(f"{c['method']}_s{c['seed']}" for c in other)
        )
    named = {cell_path(args.env, method, seed, args.tag) for method, seed in cells}
    stray = [p.stem for p in sorted(folder.glob("*_s*.json")) if p not in named]
    if stray:
        print(f"on disk but not in this study (not merged): {', '.join(stray)}")
    if not results:
        print("no results to merge")
        return
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    rows, curves = summarise(results, methods)
    csv_path = folder / "evals.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", "frames", "success_greedy", "success_eps", "return_greedy"])
        for r in results:
            for row in r["evals"]:
                writer.writerow(
                    [
                        r["method"],
                        r["seed"],
                        row["frames"],
                        row["success_greedy"],
                        row["success_eps"],
                        row["return_greedy"],
                    ]
                )
    png = folder / "learning_curves.png"
    title = f"{args.env}, {args.frames:,} steps, scorer definition '{args.definition}'"
    plot(curves, png, title)
    table = markdown_table(
        [
            "method",
            "seeds",
            "steps to 0.5 (greedy)",
            "steps to 0.9 (greedy)",
            "per seed to 0.9",
            "steps to 0.9 (ε=0.05)",
            "final success greedy, median [min, max]",
            "final ε=0.05",
            "last 3 evals greedy, median [min, max]",
            "SPS",
        ],
        rows,
    )
    comparison = compare_with(results, methods)
    if comparison:
        table += (
            "\n\nAgainst uniform replay with the same algorithm, seed by seed (same env seeds): steps to 0.9 "
            "greedy, method / baseline; p: exact one-sided permutation test on ranks (a seed that never got there "
            "ranks last) that the method is faster to 0.9, and that its last-3-evaluation success is higher.\n\n"
            + markdown_table(
                ["method", "baseline", "steps to 0.9 vs baseline, per seed", "p (faster)", "p (higher late success)"],
                comparison,
            )
        )
    points = ablation_points(results)
    if points:
        ablation_png = folder / "ablations.png"
        plot_ablations(points, args.frames, ablation_png, f"{title}: VLM-RB's ablations")
        table += (
            "\n\nThe ablations, one axis at a time (the other at its default), against uniform replay on the same env "
            "seeds: gain = 1 − median steps to 0.9 greedy / uniform's; p as above. Figure: "
            f"`{ablation_png.relative_to(ROOT)}`.\n\n"
            + markdown_table(
                [
                    "ablation",
                    "value",
                    "method",
                    "seeds",
                    "steps to 0.9 greedy, per seed",
                    "median",
                    "gain vs uniform",
                    "p (faster)",
                ],
                ablation_rows(points),
            )
        )
    recipe_cfg = recipe_config("dqn_minigrid", cell_overrides(args, "uniform", 0))
    eps_steps = round(recipe_cfg.collector.eps_fraction * args.frames)
    lam_steps = round(recipe_cfg.buffer.warmup_fraction * args.frames)
    schedule_note = (
        f" (the schedules of a {args.schedule_frames:,}-step run, stopped at {args.frames:,})"
        if args.schedule_frames and args.schedule_frames != args.frames
        else ""
    )
    body = (
        f"{title}. Double DQN (iqn_*: IQN, N = N' = 8, K = 32), MLP 2×128, Adam 2.5e-4, batch 128, 8 envs, "
        f"3-step returns, target every 1000 steps, one update per 4 steps; ε to 0.05 over the first "
        f"{eps_steps:,} steps; VLM-RB λ to λmax (0.5; vlm_lam*: the number, vlm_pure: pure prioritisation) over the "
        f"first {lam_steps:,}{schedule_note}; L = 32 (vlm_L*: the number); vlm_noisy: fpr {args.fpr}, fnr {args.fnr}"
        + (f"; further overrides: `{' '.join(args.override)}`" if args.override else "")
        + f". Evaluation every {args.eval_interval:,} steps on "
        f"{args.eval_episodes} episodes. Medians count a seed that never got there as infinite "
        f"(reached/seeds in brackets).\n\n{table}\n\nCurves: `{png.relative_to(ROOT)}`; "
        f"every evaluation: `{csv_path.relative_to(ROOT)}`.\n"
    )
    print(body)
    if not args.no_record:
        record_results(f"Sample efficiency: {folder.name}", body)


if __name__ == "__main__":
    main()
