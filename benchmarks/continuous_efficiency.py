"""Sample efficiency of VLM-RB in continuous control: SAC (or TD3) with uniform, PER and TD-boosted VLM-RB replay,
on DeepMind Control (``--family dmc``) or OGBench's scene tasks (``--family ogbench``).

Each (method, seed) cell is one run of ``recipes/sac.py`` (``--algo td3``: ``recipes/td3.py``) with equal
budgets and hyperparameters; only the replay differs. Methods: ``uniform``, ``per`` (TorchRL's
PrioritizedSampler on TD errors), ``vlm_events`` (VLM-RB with TD boosting, q_P ∝ p_VLM·(|δ|+ε), and the ideal
event scorer) and ``vlm_noisy`` (the same with --fpr/--fnr errors).

Budgets are env steps, as the DMControl literature reports them: agent steps × the action repeat
(``make_dmc_env``'s per-domain default: cartpole 8, finger 2, others 4; OGBench has none).

What is measured (fixed before VLM-RB is looked at, by the pilot in RESULTS.md):

- DMControl: env steps until the mean evaluation return first reaches ``--level`` (a task's level is set
  from where uniform SAC's pilot run levels off), the mean return of the last three evaluations, and the
  success rate (the goal holds at an episode's last step);
- OGBench: env steps until the mean number of the task's five subgoals satisfied at the end of an episode
  first reaches ``--level`` (default 3; one holds at the start), its last-three mean, and success.

Each method is compared with uniform replay seed by seed, with the exact one-sided permutation test of
``sample_efficiency.py``.

Cells are long, so they survive being stopped: a cell writes a checkpoint every ``--checkpoint-interval``
env steps under ``benchmarks/out/continuous/`` (ignored by git), and the next call of the same command resumes
it from there (a cell's evaluations so far are in its checkpoint). A finished cell writes
``benchmarks/results/continuous/<family>_<env>_<algo>[tag]/<method>_s<seed>.json`` and drops its checkpoint.
A cell on disk with other settings is an error when running and left out when merging: use --tag to keep
variants apart. The merge writes a CSV of every evaluation, a PNG of learning curves and a table, which
replaces the study's section of ``benchmarks/RESULTS.md`` ("Continuous control: <results folder>").

    # the pilot: uniform SAC on the sparse tasks (one task a command), which picks the study's tasks and levels
    python benchmarks/continuous_efficiency.py --env ball_in_cup-catch --frames 400000 --seeds 2 --methods uniform
    # the study (RESULTS.md records each command)
    python benchmarks/continuous_efficiency.py --env ball_in_cup-catch --frames 400000 --seeds 5 --level 900 \\
        --methods uniform per vlm_events
    # OGBench at the paper's budget: a GPU job (~7 h a cell on one CPU core here)
    python benchmarks/continuous_efficiency.py --family ogbench --env scene-singletask-task5-v0 --frames 1000000 \\
        --seeds 5 --eval-interval 50000 --methods uniform per vlm_events
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
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
from sample_efficiency import first_reach, median_steps, pair_by_seed, permutation_p, seed_ratio, study_cells

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "continuous"  # committed: JSON, CSV, PNG
RUNS_DIR = Path(__file__).resolve().parent / "out" / "continuous"  # ignored: logs and checkpoints of cells

#: Replay choices compared, as overrides of the recipe's YAML.
METHODS = {
    "uniform": ["buffer.sampler=uniform"],
    "per": ["buffer.sampler=per"],
    "vlm_events": ["buffer.sampler=vlm", "vlm.scorer=events", "buffer.td_boost=true"],
    "vlm_noisy": ["buffer.sampler=vlm", "vlm.scorer=noisy_events", "buffer.td_boost=true"],
    # COVR (SAC only): the VLM action prior, fine-tuned (covr), frozen (the paper's DPL), and the paper's ablations
    # M1 (random filtering of EDDF's size) and M8 (no RALW); "uniform" is plain SAC beside them.
    "covr": ["buffer.sampler=uniform", "covr.prior=covr"],
    "covr_frozen": ["buffer.sampler=uniform", "covr.prior=frozen"],
    "covr_no_eddf": ["buffer.sampler=uniform", "covr.prior=covr", "covr.filter=random"],
    "covr_no_ralw": ["buffer.sampler=uniform", "covr.prior=covr", "covr.weighting=uniform"],
}
#: What --tiny-vlm sets: the offline random VLM as COVR's prior (it knows nothing before its first fine-tune). A fixed
#: place outside the checkout, so that the cells' settings are the same from any worktree.
TINY_VLM_DIR = Path.home() / ".cache" / "torchrl_vlm" / "tiny-vlm"
ALGOS = ("sac", "td3")
#: Per family: the default task, budget (env steps), evaluation interval (env steps), level, and the measure.
FAMILY_DEFAULTS = {
    "dmc": {"env": "ball_in_cup-catch", "frames": 400_000, "eval_interval": 20_000, "level": 500.0,
            "measure": "return"},
    "ogbench": {"env": "scene-singletask-task3-v0", "frames": 100_000, "eval_interval": 10_000, "level": 3.0,
                "measure": "subgoals"},
}


def study_name(args) -> str:
    return f"{args.family}_{args.env}_{args.algo}{args.tag}"


def cell_path(args, method: str, seed: int) -> Path:
    return RESULTS_DIR / study_name(args) / f"{method}_s{seed}.json"


def action_repeat(args) -> int:
    """Env steps per agent step: an ``env.action_repeat=`` in --override, else the family's default."""
    for override in args.override:
        match = re.fullmatch(r"env\.action_repeat=(\d+)", override)
        if match:
            return int(match.group(1))
    if args.family == "ogbench":
        return 1
    from torchrl_vlm.envs.dmc_goals import default_action_repeat

    return default_action_repeat(args.env.partition("-")[0])


def agent_steps(args, env_steps: int) -> int:
    """An env-step budget or interval in the recipe's agent steps (rounded down to whole agent steps; a nonzero
    interval stays at least one agent step, since 0 means "only at the end")."""
    return max(env_steps // action_repeat(args), 1 if env_steps > 0 else 0)


def cell_overrides(args, method: str, seed: int) -> list[str]:
    """The recipe overrides that make two cells comparable (or the same cell)."""
    total = agent_steps(args, args.frames)
    return [
        f"env.family={args.family}",
        f"env.name={args.env}",
        f"env.seed={seed}",
        f"collector.total_frames={total}",
        # As large as the run (nothing is evicted either way), so that a checkpoint holds the transitions,
        # not 1M rows of empty storage.
        f"buffer.capacity={min(total, 1_000_000)}",
        f"eval.interval={agent_steps(args, args.eval_interval)}",
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
    saving = [f"checkpoint.interval={agent_steps(args, args.checkpoint_interval)}", "checkpoint.at_end=true",
              f"checkpoint.resume={ckpt if resume else 'null'}"]
    summary = recipe(args.algo).train(recipe_config(args.algo, overrides + saving), run_dir)
    if summary["interrupted"]:
        raise SystemExit(f"{method} seed {seed}: stopped at {summary['frames']} frames; the same command resumes it")
    return {
        "family": args.family,
        "env": args.env,
        "algo": args.algo,
        "method": method,
        "seed": seed,
        "env_steps": summary["env_steps"],  # what ran: the budget rounded up to whole collector batches
        "action_repeat": summary["action_repeat"],
        "overrides": overrides,
        "evals": summary["evals"],
        "sps": summary["sps"] * summary["action_repeat"],  # env steps a second, of the last segment if resumed
        "resumed_at": summary["start_frames"],
        "final_return": summary["final_return"],
        "final_success": summary["final_success"],
        "vlm_stats": summary["buffer_stats"],
    }


def settings_differ(cell: dict, args) -> list[str]:
    """The overrides of a cell on disk that this call would not use (empty: same settings)."""
    differ = set(cell["overrides"]) ^ set(cell_overrides(args, cell["method"], cell["seed"]))
    if not cell["method"].startswith("vlm"):  # the scorer's settings do not touch uniform, PER or COVR runs
        differ = {o for o in differ if not o.startswith("vlm.")}
    if not cell["method"].startswith("covr"):  # nor the prior's the others
        differ = {o for o in differ if not o.startswith("covr.")}
    return sorted(differ)


def late_mean(evals: list[dict], key: str, last: int = 3) -> float:
    """Mean of ``key`` over the last ``last`` evaluations."""
    return float(np.mean([row[key] for row in evals[-last:]]))


def reach(evals: list[dict], key: str, level: float) -> float:
    """Env steps at the first evaluation whose ``key`` is at least ``level`` (``inf``: never)."""
    return first_reach([{**row, "frames": row["env_steps"]} for row in evals], key, level)


def spread(values: list[float], fmt: str = ".2f") -> str:
    return f"{np.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def summarise(results: list[dict], methods: list[str], measure: str, level: float) -> tuple[list[list], dict]:
    """Per method: seeds, steps to the level (median and per seed), late measure and success, SPS; and curves."""
    rows, curves = [], {}
    fmt = ".0f" if measure == "return" else ".2f"
    for method in methods:
        cells = [r for r in results if r["method"] == method]
        if not cells:
            continue
        steps = [reach(c["evals"], measure, level) for c in cells]
        has_success = all("success" in c["evals"][0] for c in cells)
        rows.append([
            method,
            len(cells),
            median_steps(steps),
            ", ".join("never" if not math.isfinite(v) else f"{v / 1000:.0f}k" for v in steps),
            spread([late_mean(c["evals"], measure) for c in cells], fmt),
            spread([late_mean(c["evals"], "success") for c in cells]) if has_success else "—",
            f"{np.median([c['sps'] for c in cells]):.0f}",
        ])
        n = min(len(c["evals"]) for c in cells)
        env_steps = np.array([row["env_steps"] for row in cells[0]["evals"][:n]])
        keys = (measure, "success") if has_success else (measure,)
        curves[method] = (env_steps, *(np.array([[row[k] for row in c["evals"][:n]] for c in cells]) for k in keys))
    return rows, curves


def compare_with(results: list[dict], methods: list[str], measure: str, level: float, baseline: str = "uniform"):
    """Per method: seed-by-seed steps-to-level ratios against the baseline, and permutation p-values."""
    rows = []
    for method in methods:
        pairs = pair_by_seed(results, method, baseline) if method != baseline else []
        if not pairs:
            continue
        cand, base = [c["evals"] for _, c, _ in pairs], [b["evals"] for _, _, b in pairs]
        steps = [[reach(e, measure, level) for e in arm] for arm in (cand, base)]
        late = [[-late_mean(e, measure) for e in arm] for arm in (cand, base)]
        has_success = all("success" in e[0] for e in cand + base)
        late_success = [[-late_mean(e, "success") for e in arm] for arm in (cand, base)] if has_success else None
        rows.append([
            method,
            ", ".join(f"s{s}: {seed_ratio(c, b)}" for (s, _, _), c, b in zip(pairs, *steps, strict=True)),
            f"{permutation_p(*steps):.2f}",
            f"{permutation_p(*late):.2f}",
            f"{permutation_p(*late_success):.2f}" if late_success else "—",
        ])
    return rows


def vlm_diagnostics(results: list[dict]) -> list[list]:
    """Per VLM-RB method, from each cell's end-of-run buffer stats: positive clip share, positive slot share, the
    q_P share of the last batch, and mean |δ| over all slots and over the positive ones."""

    def column(cells, fn):
        values = [v for v in (fn(c["vlm_stats"]) for c in cells) if v is not None and v == v]
        return spread(values, ".3f") if values else "—"

    rows = []
    for method in METHODS:
        cells = [r for r in results if r["method"] == method and method.startswith("vlm")
                 and "clips_scored" in r.get("vlm_stats", {})]
        if not cells:
            continue
        rows.append([
            method,
            column(cells, lambda st: st.get("positive_clips", st.get("positives", 0)) / max(st["clips_scored"], 1)),
            column(cells, lambda st: st.get("positive_slots", st.get("num_positive", 0)) / max(st.get("size", 0), 1)),
            column(cells, lambda st: st.get("priority_fraction")),
            column(cells, lambda st: st.get("td_error_mean")),
            column(cells, lambda st: st.get("td_error_positive_mean")),
        ])
    return rows


def covr_diagnostics(results: list[dict]) -> list[list]:
    """Per COVR method, from each cell's end-of-run buffer stats: the share of rows holding a valid prior, the
    fine-tunes done (and failed or skipped), the last fine-tune's samples kept of those offered and its loss before
    and after, and the prior's answers that did not parse."""

    def column(cells, fn, fmt=".3f"):
        values = [v for v in (fn(c["vlm_stats"]) for c in cells) if v is not None and v == v]
        return spread(values, fmt) if values else "—"

    rows = []
    for method in METHODS:
        cells = [r for r in results if r["method"] == method and "prior_rows_answered" in r.get("vlm_stats", {})]
        if not cells:
            continue
        rows.append([
            method,
            column(cells, lambda st: st["prior_coverage"]),
            column(cells, lambda st: st.get("covr_finetunes"), ".0f"),
            column(cells, lambda st: st.get("covr_finetunes_failed", 0) + st.get("covr_adapters_rejected", 0)
                   if "covr_finetunes" in st else None, ".0f"),
            column(cells, lambda st: st.get("covr_finetunes_skipped"), ".0f"),
            column(cells, lambda st: st["covr_last_kept"] / max(st["covr_last_offered"], 1)
                   if "covr_last_kept" in st else None),
            column(cells, lambda st: st.get("covr_last_loss_before")),
            column(cells, lambda st: st.get("covr_last_loss_after")),
            column(cells, lambda st: st["parse_failures"] / max(st["prior_answers"], 1) if "prior_answers" in st
                   else None),
        ])
    return rows


def plot(curves: dict, path: Path, title: str, measure: str, level: float, top: float) -> None:
    """Mean ± std over seeds of the measure (and success, where the task has it) against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(1, f"eval {measure}", top)]
    if all(len(curve) > 2 for curve in curves.values()):
        panels.append((2, "eval success (goal holds at the episode's end)", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    colors = {"uniform": "k", "per": "C0", "vlm_events": "C3", "vlm_noisy": "C1", "covr": "C2", "covr_frozen": "C4",
              "covr_no_eddf": "C5", "covr_no_ralw": "C6"}
    for ax, (index, name, high) in zip(axes[0], panels, strict=True):
        for method, curve in curves.items():
            steps, values = curve[0], curve[index]
            mean, std = values.mean(0), values.std(0)
            ax.plot(steps, mean, color=colors.get(method), label=f"{method} (n={values.shape[0]})")
            ax.fill_between(steps, np.clip(mean - std, 0, high), np.clip(mean + std, 0, high),
                            color=colors.get(method), alpha=0.2)
        ax.set_xlabel("env steps")
        ax.set_title(name, fontsize=10)
        ax.set_ylim(-0.02 * high, 1.02 * high)
        ax.grid(alpha=0.3)
    axes[0][0].axhline(level, color="grey", lw=0.8, ls="--")
    axes[0][0].set_ylabel("mean ± std over seeds")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The command line, with the family's defaults filled in where an argument is left out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="dmc", choices=list(FAMILY_DEFAULTS))
    parser.add_argument("--env", default=None, help="dmc: domain-task (default ball_in_cup-catch); ogbench: a scene "
                                                    "task (default scene-singletask-task3-v0)")
    parser.add_argument("--algo", default="sac", choices=list(ALGOS))
    parser.add_argument("--frames", type=int, default=None, help="env steps a cell (dmc: 400k; ogbench: 100k)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["uniform", "vlm_events"], metavar="METHOD[:SEEDS]",
                        help=f"of {', '.join(METHODS)}; METHOD:N runs N seeds of it instead of --seeds")
    parser.add_argument("--definition", default="first_progress", choices=["any", "first_progress", "goal_only"],
                        help="what the event scorer counts as meaningful")
    parser.add_argument("--fpr", type=float, default=0.1, help="vlm_noisy: false-positive rate")
    parser.add_argument("--fnr", type=float, default=0.1, help="vlm_noisy: false-negative rate")
    parser.add_argument("--eval-interval", type=int, default=None, help="env steps (dmc: 20k; ogbench: 10k)")
    parser.add_argument("--eval-episodes", type=int, default=8)
    parser.add_argument("--level", type=float, default=None,
                        help="the level of the measure whose first crossing is timed (dmc: a return, default "
                             "500; ogbench: subgoals, default 3)")
    parser.add_argument("--checkpoint-interval", type=int, default=40_000,
                        help="env steps between a cell's checkpoints, from which a stopped cell resumes")
    parser.add_argument("--cell", default=None, help="run one cell, METHOD:SEED, and exit")
    parser.add_argument("--merge-only", action="store_true", help="do not run, only merge the study's cells on disk")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="cells run at once (default: one per core)")
    parser.add_argument("--tag", default="", help="suffix of the results folder, to keep variants apart")
    parser.add_argument("--override", nargs="*", default=[], help="extra recipe overrides for every cell")
    parser.add_argument("--no-record", action="store_true", help="print the table; leave RESULTS.md alone")
    parser.add_argument(
        "--tiny-vlm",
        action="store_true",
        help="COVR methods: the offline tiny random VLM as the prior (built once in ~/.cache/torchrl_vlm)",
    )
    args = parser.parse_args(argv)
    if args.tiny_vlm:
        args.override = [f"covr.model={TINY_VLM_DIR}", "covr.max_new_tokens=24", *args.override]
    defaults = FAMILY_DEFAULTS[args.family]
    args.env = args.env or defaults["env"]
    args.frames = args.frames or defaults["frames"]
    args.eval_interval = args.eval_interval or defaults["eval_interval"]
    args.level = defaults["level"] if args.level is None else args.level
    args.measure = defaults["measure"]
    return parser, args


def cell_command(args, method: str, seed: int) -> list[str]:
    """The command line that runs one cell of this study in its own process."""
    if args.tiny_vlm and method.startswith("covr"):
        from torchrl_vlm.testing import make_tiny_vlm

        make_tiny_vlm(TINY_VLM_DIR)  # once, before the cells that load it start
    return cell_argv(__file__, method, seed, args, ("family", "env", "algo", "frames", "eval_interval",
                                                   "eval_episodes", "definition", "fpr", "fnr", "tag",
                                                   "checkpoint_interval"))


def main():
    parser, args = parse_args()
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
        print(
            f"{method} seed {seed}: final return {result['final_return']:.1f} -> {path.relative_to(ROOT)}", flush=True
        )
        return

    if not args.merge_only:
        todo = cells_to_run(parser, cells, functools.partial(cell_path, args),
                            lambda path: settings_differ(json.loads(path.read_text()), args))
        run_cells([cell_command(args, method, seed) for method, seed in todo], args.jobs)

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
    measure, level = args.measure, args.level
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    rows, curves = summarise(results, methods, measure, level)
    keys = sorted({k for r in results for row in r["evals"] for k in row})
    with (folder / "evals.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", *keys])
        for r in results:
            for row in r["evals"]:
                writer.writerow([r["method"], r["seed"], *(row.get(k, "") for k in keys)])
    png = folder / "learning_curves.png"
    title = (
        f"{args.algo.upper()} on {args.family} {args.env}, {args.frames:,} env steps"
        f" (action repeat {action_repeat(args)}), scorer definition '{args.definition}'"
    )
    plot(curves, png, title, measure, level, top=1000.0 if measure == "return" else 5.0)
    lvl = f"{level:g}"
    table = markdown_table(
        [
            "method",
            "seeds",
            f"env steps to {measure} {lvl}",
            "per seed",
            f"last 3 evals {measure}, median [min, max]",
            "last 3 evals success, median [min, max]",
            "env SPS",
        ],
        rows,
    )
    comparison = compare_with(results, methods, measure, level)
    if comparison:
        table += (
            f"\n\nAgainst uniform replay, seed by seed (same env seeds): env steps to {measure} {lvl}, method / "
            "uniform; p: exact one-sided permutation test on ranks (a seed that never got there ranks last) that the "
            f"method is faster there, and that its last-3-evaluation {measure} and success are higher.\n\n"
            + markdown_table(
                [
                    "method",
                    f"steps to {measure} {lvl} vs uniform, per seed",
                    "p (faster)",
                    f"p (higher late {measure})",
                    "p (higher late success)",
                ],
                comparison,
            )
        )
    covr_rows = covr_diagnostics(results)
    if covr_rows:
        table += (
            "\n\nWhat COVR's prior did, at each COVR cell's end (median over seeds [min, max]): the share of replay "
            "rows holding a valid prior, fine-tunes done, failed (or adapters rejected) and skipped (too few samples "
            "kept), the last fine-tune's share of D_f kept and its RALW loss before and after, and the share of the "
            "prior's answers that did not parse.\n\n"
            + markdown_table(
                [
                    "method",
                    "rows with a prior",
                    "fine-tunes",
                    "failed",
                    "skipped",
                    "kept / D_f",
                    "loss before",
                    "loss after",
                    "unparsed answers",
                ],
                covr_rows,
            )
        )
    diagnostics = vlm_diagnostics(results)
    if diagnostics:
        table += (
            "\n\nWhat VLM-RB's prioritised half held, at each VLM-RB cell's end (median over seeds [min, max]): the "
            "share of scored clips the scorer said yes to, the share of the buffer's slots holding priority 1, the "
            "share of the last batch drawn from q_P, and the mean |δ| of all slots against that of the positive "
            "ones (cells run before these were logged show —).\n\n"
            + markdown_table(
                [
                    "method",
                    "positive clips / scored",
                    "positive slots / buffer",
                    "q_P share of a batch",
                    "mean |δ|, all slots",
                    "mean |δ|, positive slots",
                ],
                diagnostics,
            )
        )
    recipe_cfg = recipe_config(args.algo, cell_overrides(args, "uniform", 0))
    settings = (
        f"lr {recipe_cfg.optim.lr:g}, batch {recipe_cfg.buffer.batch_size}, "
        f"{'×'.join(map(str, recipe_cfg.network.hidden))}, γ {recipe_cfg.loss.gamma}, τ {recipe_cfg.loss.tau}, "
        f"{recipe_cfg.collector.init_random_frames:,} random agent steps, {recipe_cfg.env.num_envs} envs, "
        f"{recipe_cfg.optim.updates_per_frame:g} update per agent step"
    )
    body = (
        f"{title}. {args.algo.upper()} with the `env.family={args.family}` defaults ({settings}); VLM-RB: TD "
        f"boosting, λmax {recipe_cfg.buffer.lam_max} over the first half; vlm_noisy: fpr {args.fpr}, fnr {args.fnr}"
        + (f"; further overrides: `{' '.join(args.override)}`" if args.override else "")
        + f". Evaluation every {args.eval_interval:,} env steps on {args.eval_episodes} greedy episodes"
        + (
            "; 'subgoals' is the mean number of the task's 5 subgoals satisfied when an episode ends (one holds at "
            "the start)"
            if measure == "subgoals"
            else "; return: the episode's summed reward (at most 1000)"
        )
        + ". Medians count a seed that never got there as infinite (reached/seeds in brackets). Env SPS is the "
        "cell's own wall-clock rate, with whatever shared (or paused) the machine meanwhile: it does not compare "
        "methods.\n\n"
        f"{table}\n\nCurves: `{png.relative_to(ROOT)}`; every evaluation: "
        f"`{(folder / 'evals.csv').relative_to(ROOT)}`.\n"
        + (
            f"\n**Interim**: {len(missing)} of the study's {len(cells)} cells are not finished and are left out "
            f"({', '.join(missing)}); the same command resumes them.\n"
            if missing
            else ""
        )
    )
    print(body)
    if not args.no_record:
        record_results(f"Continuous control: {folder.name}", body)


if __name__ == "__main__":
    main()
