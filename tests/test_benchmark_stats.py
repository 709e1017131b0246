"""The benchmarks' statistics (steps to a level, seed pairing, paired overhead ratios) and RESULTS.md."""
import json
import math
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import RESULTS, paired_slowdown, record_results, replace_section, sections  # noqa: E402
from distill_efficiency import (  # noqa: E402
    STUDIES,
    cell_overrides,
    cell_path,
    speedup,
    steps_to_solve,
    study_groups,
    success_curves,
    teacher_overrides,
)
from sample_efficiency import (  # noqa: E402
    ablation_points,
    ablation_rows,
    average_ranks,
    compare_with,
    curve_panels,
    first_reach,
    load_cell,
    median_steps,
    pair_by_seed,
    permutation_p,
    schedule_overrides,
    seed_ratio,
    settings_differ,
    study_cells,
)
from sample_efficiency import cell_overrides as dqn_cell_overrides  # noqa: E402  (distill_efficiency has one too)
from sample_efficiency import cell_path as dqn_cell_path  # noqa: E402
from sample_efficiency import parse_args as parse_sample_efficiency_args  # noqa: E402


def test_a_short_run_on_a_long_runs_schedules_anneals_over_the_same_steps():
    # The recipe: ε over 0.2 of the budget, λ over 0.5. A 1M-step run: 200k and 500k steps; at 600k
    # the same steps are 1/3 and 5/6 of the budget.
    eps, warmup = schedule_overrides(600_000, 1_000_000)
    assert int(float(eps.split("=")[1]) * 600_000) == pytest.approx(200_000, abs=1)
    assert int(float(warmup.split("=")[1]) * 600_000) == pytest.approx(500_000, abs=1)
    assert (eps.split("=")[0], warmup.split("=")[0]) == ("collector.eps_fraction", "buffer.warmup_fraction")
    with pytest.raises(ValueError, match="too short"):
        schedule_overrides(400_000, 1_000_000)  # λ would need 5/4 of the budget
    args = SimpleNamespace(env="MiniGrid-DoorKey-8x8-v0", frames=600_000, eval_interval=25_000, eval_episodes=16,
                           definition="first_progress", fpr=0.1, fnr=0.1, override=[], schedule_frames=None)
    plain = dqn_cell_overrides(args, "uniform", 0)
    assert not any("fraction" in o for o in plain)
    args.schedule_frames = 600_000  # the run's own budget: the recipe's fractions
    assert dqn_cell_overrides(args, "uniform", 0) == plain
    args.schedule_frames = 1_000_000
    assert dqn_cell_overrides(args, "uniform", 0) == plain + [eps, warmup]


def test_a_stored_cell_with_other_scorer_settings_is_refused_for_every_vlm_rb_method():
    args = SimpleNamespace(env="MiniGrid-DoorKey-8x8-v0", frames=600_000, eval_interval=25_000, eval_episodes=16,
                           definition="first_progress", fpr=0.1, fnr=0.1, override=[], schedule_frames=None)
    stored = {m: {"method": m, "seed": 0, "overrides": dqn_cell_overrides(args, m, 0)}
              for m in ("uniform", "iqn_uniform", "vlm_events", "iqn_vlm_events")}
    args.override = ["vlm.clip_len=16"]  # this call's scorer settings differ from the stored cells'
    assert settings_differ(stored["uniform"], args) == settings_differ(stored["iqn_uniform"], args) == []
    assert settings_differ(stored["vlm_events"], args) == ["vlm.clip_len=16"]
    assert settings_differ(stored["iqn_vlm_events"], args) == ["vlm.clip_len=16"]  # IQN with VLM-RB too


def test_the_noisy_scorer_at_zero_error_is_the_event_scorer_and_rates_touch_the_noisy_scorer_only():
    args = SimpleNamespace(env="MiniGrid-DoorKey-8x8-v0", frames=600_000, eval_interval=25_000, eval_episodes=16,
                           definition="first_progress", fpr=0.1, fnr=0.1, override=[], schedule_frames=None)
    events = dqn_cell_overrides(args, "vlm_events", 0)
    noisy = dqn_cell_overrides(args, "vlm_noisy", 0)

    def swapped(overrides, **values):  # the stored cell's overrides, with vlm.<name>=value for each name given
        return [f"vlm.{o[4:].split('=')[0]}={values[o[4:].split('=')[0]]}"
                if o.startswith("vlm.") and o[4:].split("=")[0] in values else o for o in overrides]

    ideal = swapped(noisy, false_positive_rate="0.0", false_negative_rate="0.0")  # noisy_sweep's noisy_f0_n0
    assert settings_differ({"method": "vlm_events", "seed": 0, "overrides": ideal}, args) == []
    other_rates = swapped(events, false_positive_rate="0.3")  # the event scorer ignores the rates
    assert settings_differ({"method": "vlm_events", "seed": 0, "overrides": other_rates}, args) == []
    half_noisy = swapped(noisy, false_positive_rate="0.0")  # fnr 0.1 still flips verdicts
    assert settings_differ({"method": "vlm_events", "seed": 0, "overrides": half_noisy}, args) != []
    assert settings_differ({"method": "vlm_noisy", "seed": 0, "overrides": swapped(noisy, false_positive_rate="0.10")},
                           args) == []  # the same rate, spelt another way
    assert settings_differ({"method": "vlm_noisy", "seed": 0, "overrides": swapped(noisy, false_positive_rate="0.3")},
                           args) == ["vlm.false_positive_rate=0.1", "vlm.false_positive_rate=0.3"]


def test_ties_share_their_mean_rank_and_never_ranks_last():
    ranks = average_ranks(np.array([275.0, math.inf, 225.0, 275.0, math.inf]))
    np.testing.assert_allclose(ranks, [2.5, 4.5, 1.0, 2.5, 4.5])


@pytest.mark.parametrize(
    "candidate, baseline, expected",
    [
        ([1, 2, 3], [4, 5, 6], 1 / 20),  # fully separated: the one most extreme split of C(6, 3) = 20
        ([4, 5, 6], [1, 2, 3], 1.0),  # the other way round: every split is at least as low
        ([5, 5, 5], [5, 5, 5], 1.0),  # no information
        ([1, 2, 3], [math.inf] * 3, 1 / 20),  # the baseline never got there
        ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], 1 / 252),  # five seeds an arm: C(10, 5) = 252
    ],
)
def test_permutation_p_is_the_exact_share_of_splits_at_least_as_extreme(candidate, baseline, expected):
    assert permutation_p(candidate, baseline) == pytest.approx(expected)


def test_three_8x8_seeds_by_hand():
    # DoorKey-8x8, first_progress, 1M steps, seeds 0-2 (benchmarks/RESULTS.md): VLM-RB 600k, 275k, 225k; uniform
    # 350k, 275k, never. Ranks 5, 2.5, 1 against 4, 2.5, 6: 5 of the 20 splits have a rank sum of 8.5 or less.
    assert permutation_p([600e3, 275e3, 225e3], [350e3, 275e3, math.inf]) == pytest.approx(5 / 20)


def recorded_sample_efficiency_commands() -> dict[str, list[str]]:
    """Each sample-efficiency study RESULTS.md records, by results folder: the arguments of its section's command
    (a hand-written analysis under its own heading has none)."""
    commands = {}
    for heading, block in sections(RESULTS.read_text()):
        command = re.search(r"^- command: `python benchmarks/sample_efficiency.py (.*)`$", block, re.M)
        if heading["title"].startswith("Sample efficiency: ") and command:
            commands[heading["title"].removeprefix("Sample efficiency: ")] = shlex.split(command.group(1))
    return commands


# Every sample-efficiency study in RESULTS.md: each cell of the command recorded for it must be on disk and carry
# the overrides that command runs with, or `--merge-only` would leave it out of the tables without anyone noticing
# (the 8x8 claim rests on 10 + 10 cells, seeds 0-4 run on older code; the ablation study's uniform and vlm_events
# cells are copied from the noisy sweep).
SAMPLE_EFFICIENCY_STUDIES = recorded_sample_efficiency_commands()


@pytest.mark.parametrize("folder", sorted(SAMPLE_EFFICIENCY_STUDIES))
def test_a_sample_efficiency_studys_stored_cells_are_what_its_recorded_command_merges(folder):
    _, args = parse_sample_efficiency_args(SAMPLE_EFFICIENCY_STUDIES[folder])
    assert f"{args.env}{args.tag}" == folder  # the command names the folder its section is about
    paths = {cell: dqn_cell_path(args.env, *cell, args.tag) for cell in study_cells(args.methods, args.seeds)}
    assert [cell for cell, path in paths.items() if not path.exists()] == []
    for cell, path in paths.items():
        assert settings_differ(load_cell(path), args) == [], cell


def test_seed_ratio_says_which_arm_never_got_there():
    assert seed_ratio(300.0, 600.0) == "0.50"
    assert seed_ratio(300.0, math.inf) == "< 1 (baseline never)"
    assert seed_ratio(math.inf, 300.0) == "> 1 (never)"
    assert seed_ratio(math.inf, math.inf) == "—"


# --- steps to a success level -----------------------------------------------------------------------------------

EVALS = [
    {"frames": 10, "success_greedy": 0.25, "success_eps": 0.5},
    {"frames": 20, "success_greedy": 0.9, "success_eps": 0.75},
    {"frames": 30, "success_greedy": 0.5, "success_eps": 1.0},
    {"frames": 40, "success_greedy": 1.0, "success_eps": 1.0},
]


@pytest.mark.parametrize(
    "key, level, expected",
    [
        ("success_greedy", 0.9, 20),  # the level itself counts, and a later dip (0.5 at 30) does not undo it
        ("success_greedy", 0.2, 10),  # reached at the first evaluation
        ("success_eps", 0.9, 30),
        ("success_greedy", 1.01, math.inf),  # never within the budget
    ],
)
def test_first_reach_is_the_first_evaluation_at_the_level(key, level, expected):
    assert first_reach(EVALS, key, level) == expected


def test_first_reach_of_a_run_without_evaluations_is_never():
    assert first_reach([], "success_greedy", 0.5) == math.inf


def test_load_cell_drops_the_duplicate_end_of_run_evaluation(tmp_path):
    path = tmp_path / "uniform_s0.json"
    rows = [{"frames": 10, "success_greedy": 0.0}, {"frames": 20, "success_greedy": 1.0},
            {"frames": 20, "success_greedy": 0.5}]
    path.write_text(json.dumps({"method": "uniform", "seed": 0, "evals": rows}))
    assert load_cell(path)["evals"] == rows[:2]


@pytest.mark.parametrize(
    "values, expected",
    [
        ([200e3, 300e3, math.inf], "300k (2/3)"),
        ([200e3, math.inf, math.inf], "— (1/3)"),  # the median seed never got there
        ([100e3, 200e3, math.inf, math.inf], "— (2/4)"),  # half: the median is (200k + inf) / 2
        ([100e3, 200e3, 300e3, math.inf], "250k (3/4)"),
    ],
)
def test_median_steps_counts_never_as_infinite(values, expected):
    assert median_steps(values) == expected


def test_study_cells_gives_a_method_its_own_seed_count():
    assert study_cells(["uniform", "per:2", "vlm_events"], 3) == [
        ("uniform", 0), ("per", 0), ("vlm_events", 0),
        ("uniform", 1), ("per", 1), ("vlm_events", 1),
        ("uniform", 2), ("vlm_events", 2),
    ]
    with pytest.raises(ValueError):
        study_cells(["uniform", "bogus"], 3)
    with pytest.raises(ValueError):
        study_cells(["per:two"], 3)


# --- seed pairing --------------------------------------------------------------------------------------------------


def cell(method: str, seed: int, greedy: list[float]) -> dict:
    """A sample-efficiency cell with an evaluation every 100 steps."""
    return {"method": method, "seed": seed,
            "evals": [{"frames": 100 * (i + 1), "success_greedy": g} for i, g in enumerate(greedy)]}


RESULTS_ROWS = [
    cell("vlm_events", 3, [1.0, 1.0, 1.0, 1.0]),  # no uniform run with env seed 3
    cell("uniform", 1, [0.0, 0.0, 0.2, 1.0]),  # 0.9 at 400, last three 0.4
    cell("vlm_events", 0, [0.9, 1.0, 1.0, 1.0]),  # 0.9 at 100, last three 1.0
    cell("uniform", 0, [0.0, 0.9, 0.9, 0.3]),  # 0.9 at 200, last three 0.7
    cell("uniform", 2, [1.0, 1.0, 1.0, 1.0]),  # no VLM-RB run with env seed 2
    cell("vlm_events", 1, [0.0, 0.8, 0.8, 0.8]),  # never 0.9, last three 0.8
    cell("per", 5, [1.0, 1.0, 1.0, 1.0]),  # shares no seed with uniform
    cell("iqn_uniform", 0, [0.0, 0.0, 0.0, 0.9]),  # IQN's baseline: 0.9 at 400
    cell("iqn_vlm_events", 0, [0.0, 0.9, 1.0, 1.0]),  # 0.9 at 200: half of IQN's uniform, not of DQN's
]


def test_pair_by_seed_pairs_equal_env_seeds_and_leaves_out_unmatched_ones():
    pairs = pair_by_seed(RESULTS_ROWS, "vlm_events", "uniform")
    assert [seed for seed, _, _ in pairs] == [0, 1]
    for seed, candidate, baseline in pairs:
        assert (candidate["method"], candidate["seed"]) == ("vlm_events", seed)
        assert (baseline["method"], baseline["seed"]) == ("uniform", seed)
    assert pair_by_seed(RESULTS_ROWS, "per", "uniform") == []


def test_compare_with_uses_only_the_paired_seeds():
    # Paired seeds 0 and 1. Steps to 0.9: VLM-RB 100, never; uniform 200, 400: per seed 0.50 and "> 1 (never)".
    # Ranks of (100, inf | 200, 400) are (1, 4 | 2, 3): 4 of the 6 splits have a rank sum <= 5, p = 0.67.
    # Late success, negated: (-1.0, -0.8 | -0.7, -0.4) ranks (1, 2 | 3, 4): only 1 split of 6 as low, p = 0.17.
    # Seeds 2 and 3 would change both if they were paired with anything; PER shares no seed, so it has no row.
    rows = compare_with(RESULTS_ROWS, ["uniform", "per", "vlm_events"])
    assert rows == [["vlm_events", "uniform", "s0: 0.50, s1: > 1 (never)", "0.67", "0.17"]]


def test_the_ablation_table_lines_each_axis_up_against_uniform_on_the_same_seeds():
    # Uniform seeds 0, 1 reach 0.9 at 200k and 400k (seed 2 has no ablation partner). λmax: vlm_lam0.25 at 100k and
    # 300k (median 200k against 300k: +33%), vlm_events (0.5) at 100k and never; vlm_pure shares no seed: no point.
    # Clip length has one value run (vlm_events), so it is no axis yet.
    results = [cell("uniform", s, g) for s, g in enumerate([[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])]
    results += [cell("vlm_lam0.25", 0, [1, 1, 1, 1]), cell("vlm_lam0.25", 1, [0, 0, 1, 1]),
                cell("vlm_events", 0, [1, 1, 1, 1]), cell("vlm_events", 1, [0, 0, 0, 0]), cell("vlm_pure", 5, [1] * 4)]
    for row in (row for c in results for row in c["evals"]):
        row["frames"] *= 1000  # evaluations every 100k steps, so the table's thousands read
    points = ablation_points(results)
    assert list(points) == ["λmax"]
    assert [(value, method) for value, method, *_ in points["λmax"]] == [("0.25", "vlm_lam0.25"), ("0.5", "vlm_events")]
    # p: ranks (1, 3 | 2, 4) give 2 of 6 splits with a sum <= 4; (1, 4 | 2, 3) give 4 of 6 with a sum <= 5.
    assert ablation_rows(points) == [
        ["λmax", "0.25", "vlm_lam0.25", 2, "100k, 300k", "200k (2/2)", "+33%", "0.33"],
        ["λmax", "0.5", "vlm_events", 2, "100k, never", "— (1/2)", "—", "0.67"],
    ]


def test_learning_curves_get_a_panel_per_ablation_axis_and_for_iqn_but_one_panel_for_a_plain_study():
    ablation_study = ["uniform", "vlm_events", "vlm_pure", "vlm_lam0.25", "vlm_lam1", "vlm_L8", "vlm_L64",
                      "iqn_uniform", "iqn_vlm_events"]
    assert curve_panels(ablation_study) == [
        ("λmax", ["uniform", "vlm_lam0.25", "vlm_events", "vlm_lam1", "vlm_pure"]),
        ("clip length L", ["uniform", "vlm_L8", "vlm_events", "vlm_L64"]),
        ("IQN", ["iqn_uniform", "iqn_vlm_events"]),
    ]
    # per and vlm_noisy belong to no axis, and vlm_events alone (one value of each) makes none: one panel.
    assert curve_panels(["uniform", "per", "vlm_noisy", "vlm_events"]) == [
        ("", ["uniform", "per", "vlm_noisy", "vlm_events"])]
    assert curve_panels(["uniform", "per", "vlm_lam1", "vlm_events"]) == [
        ("replay", ["uniform", "per"]), ("λmax", ["uniform", "vlm_events", "vlm_lam1"])]
    assert curve_panels(["uniform", "vlm_events", "vlm_pure"]) == [("", ["uniform", "vlm_events", "vlm_pure"])]


def test_an_iqn_method_is_compared_with_iqn_uniform_replay():
    # One paired seed: 200 / 400 = 0.50 (against DQN's uniform seed 0 it would read 200 / 200 = 1.00).
    # One seed an arm: the candidate ranks first in 1 of the 2 splits, p = 0.50 on both tests.
    rows = compare_with(RESULTS_ROWS, ["iqn_uniform", "iqn_vlm_events"])
    assert rows == [["iqn_vlm_events", "iqn_uniform", "s0: 0.50", "0.50", "0.50"]]


# --- distillation: steps to solve, speed-ups, curves, the study's cells ----------------------------------------------


def test_steps_to_solve_is_infinite_for_a_run_that_never_solved():
    assert steps_to_solve({"solved_at": None}) == math.inf
    assert steps_to_solve({"solved_at": 16128}) == 16128


def test_speedup_is_a_lower_bound_when_the_baseline_never_got_there():
    assert speedup(100_000, 20_000, 200_000) == ("5.00×", "5.00×")
    # LavaGapS7, PPO, λ 0.5 (RESULTS.md): solved at 16,128 steps, no teacher never within 200k: > 12.4×.
    assert speedup(math.inf, 16_128, 200_000) == ("> 12.4×", "> 12.4× (no teacher: never within 200k)")
    assert speedup(50_000, math.inf, 200_000) is None  # the teacher's runs did not get there: no ratio


def test_success_curves_carry_a_solved_run_s_last_evaluation_forward():
    solved = {"evals": [{"frames": 8, "success": 0.5}, {"frames": 16, "success": 0.95}]}  # stopped when solved
    unsolved = {"evals": [{"frames": 8, "success": 0.0}, {"frames": 16, "success": 0.25},
                          {"frames": 24, "success": 0.5}]}
    frames, success = success_curves([solved, unsolved])
    np.testing.assert_array_equal(frames, [8, 16, 24])
    np.testing.assert_array_equal(success, [[0.5, 0.95, 0.95], [0.0, 0.25, 0.5]])


def test_the_distillation_study_names_the_cells_it_ran():
    groups = study_groups(STUDIES["lvlm2p-200k"]["grids"])
    assert len(groups) == 24  # 72 cells of 3 seeds
    assert [(algo, teacher) for env, algo, teacher in groups if env == "MiniGrid-LavaGapS7-v0"] == [
        ("ppo", "none"),
        ("ppo", "planner_l0.01"),
        ("ppo", "planner_l0.5"),
        ("ppo", "noisy0.2_l0.5"),
        ("ppo", "noisy0.4_l0.5"),
        ("ppo", "noisy0.6_l0.5"),
        ("ppo", "noisy0.8_l0.5"),
        ("a2c", "none"),
        ("a2c", "planner_l0.5"),
    ]
    assert [(algo, teacher) for env, algo, teacher in groups if env == "MiniGrid-Fetch-6x6-N2-v0"] == [
        ("ppo", "none"),
        ("ppo", "planner_l0.01"),
        ("ppo", "planner_l0.5"),
    ]
    assert [env for env, _, _ in groups][::9][:2] == ["MiniGrid-LavaGapS7-v0", "MiniGrid-Dynamic-Obstacles-6x6-v0"]


def test_teacher_overrides_are_read_from_the_variant_name():
    assert teacher_overrides("none") == ["teacher=none"]
    assert teacher_overrides("planner_l0.01") == ["teacher=planner", "loss.distill_coeff=0.01"]
    assert teacher_overrides("noisy0.2_l0.5") == [
        "teacher=noisy_planner",
        "teacher_planner.error_rate=0.2",
        "loss.distill_coeff=0.5",
    ]
    with pytest.raises(ValueError):
        teacher_overrides("oracle_l0.5")


def test_the_study_s_stored_cells_match_what_its_runner_would_run():
    # The runner skips a stored cell only if it ran with the same overrides (else it refuses to go on), so the
    # committed cells of the study must match: then `--study lvlm2p-200k` merges them instead of rerunning.
    study = STUDIES["lvlm2p-200k"]
    args = SimpleNamespace(frames=study["frames"], eval_interval=study["frames"] // 25, solved=0.9)
    for env, algo, teacher in study_groups(study["grids"]):
        for seed in range(study["seeds"]):
            stored = json.loads(cell_path(env, algo, teacher, seed, study["frames"]).read_text())
            assert set(stored["overrides"]) == set(cell_overrides(args, env, algo, teacher, seed)), stored["overrides"]


# --- pipeline overhead: paired rounds ------------------------------------------------------------------------------


def test_paired_slowdown_is_each_round_s_ratio_and_their_median():
    # The pipeline-overhead run in RESULTS.md: SPS per round of uniform, PER and VLM-RB.
    uniform, per, vlm = [925, 843, 852], [921, 721, 807], [806, 720, 769]
    rounds, median = paired_slowdown(vlm, uniform)
    # 1 - 806/925, 1 - 720/843, 1 - 769/852: 12.9%, 14.6%, 9.7%; the median is round 0's.
    np.testing.assert_allclose(rounds, [0.128649, 0.145907, 0.097418], atol=1e-6)
    assert median == pytest.approx(0.128649, abs=1e-6)
    # Not the ratio of the medians (769 / 852: 9.7%, which met the 10% target the paired figure misses).
    assert median != pytest.approx(1 - np.median(vlm) / np.median(uniform), abs=1e-3)
    assert paired_slowdown(vlm, per)[1] == pytest.approx(1 - 769 / 807)  # rounds 12.5%, 0.1%, 4.7%
    assert paired_slowdown(uniform, uniform)[1] == 0.0


def test_paired_slowdown_median_of_an_even_number_of_rounds_and_mismatched_rounds():
    rounds, median = paired_slowdown([90, 70, 100, 60], [100, 100, 100, 100])
    np.testing.assert_allclose(rounds, [0.1, 0.3, 0.0, 0.4])
    assert median == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    with pytest.raises(ValueError):  # one round against three would broadcast silently
        paired_slowdown([90], [100, 100, 100])


# --- RESULTS.md: one current section per study ---------------------------------------------------------------------

RESULTS_TEXT = """# Benchmark results

Intro.

## Sampler throughput (2026-01-01 10:00)

- command: `a`

### Sampling

old sampler table

## Distillation efficiency (LVLM2P), 200k steps (2026-01-02 10:00)

distill notes


## Pipeline overhead (2026-01-03 10:00)

old pipeline
"""


def test_replace_section_replaces_the_study_s_section_in_place():
    new = replace_section(RESULTS_TEXT, "Sampler throughput", "## Sampler throughput (2026-02-01 09:00)\n\nnew table\n")
    assert (
        new
        == """# Benchmark results

Intro.

## Sampler throughput (2026-02-01 09:00)

new table

## Distillation efficiency (LVLM2P), 200k steps (2026-01-02 10:00)

distill notes

## Pipeline overhead (2026-01-03 10:00)

old pipeline
"""
    )


def test_replace_section_appends_a_new_study_and_leaves_the_others():
    # "Distillation efficiency (LVLM2P)" is another title than the 200k study's, though one is a prefix of the other.
    section = "## Distillation efficiency (LVLM2P) (2026-02-01 09:00)\n\n60k table"
    new = replace_section(RESULTS_TEXT, "Distillation efficiency (LVLM2P)", section)
    assert new == RESULTS_TEXT.replace("distill notes\n\n\n", "distill notes\n\n") + "\n" + section + "\n"


def test_replace_section_keeps_one_section_of_a_title_written_twice():
    twice = RESULTS_TEXT + "\n## Sampler throughput (2026-01-04 10:00)\n\nsecond copy\n"
    new = replace_section(twice, "Sampler throughput", "## Sampler throughput (2026-02-01 09:00)\n\nnew table")
    assert new.count("## Sampler throughput") == 1
    assert "second copy" not in new and "old sampler table" not in new
    assert new.index("new table") < new.index("## Distillation efficiency")


def test_replace_section_keeps_a_hand_written_section_after_the_study():
    # An analysis under its own heading, dated without a time, is not part of the study above it.
    text = RESULTS_TEXT.replace(
        "## Distillation", "## Sampler throughput: what it shows (2026-01-01)\n\nanalysis\n\n## Distillation"
    )
    new = replace_section(text, "Sampler throughput", "## Sampler throughput (2026-02-01 09:00)\n\nnew table")
    assert "old sampler table" not in new
    assert new.index("new table") < new.index("## Sampler throughput: what it shows (2026-01-01)\n\nanalysis")
    again = replace_section(
        new, "Sampler throughput: what it shows", "## Sampler throughput: what it shows (2026-02-02)\n\nv2"
    )
    assert "analysis" not in again and again.index("new table") < again.index("v2") < again.index("## Distillation")


def test_record_results_writes_one_current_section_per_title(tmp_path):
    path = tmp_path / "RESULTS.md"
    record_results("Pipeline overhead", "first run", path=path)
    record_results("Sampler throughput", "### Sampling\n\nsampler table", path=path)
    record_results("Pipeline overhead", "second run", path=path)
    text = path.read_text()
    assert text.startswith("# Benchmark results\n")
    headings = re.findall(r"^## (.+) \(\d{4}-\d\d-\d\d \d\d:\d\d\)$", text, flags=re.MULTILINE)
    assert headings == ["Pipeline overhead", "Sampler throughput"]
    assert "second run" in text and "first run" not in text and "### Sampling\n\nsampler table" in text
    assert "- machine: " in text and "- command: `python " in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".RESULTS.md.lock", "RESULTS.md"]  # no temp file left


def test_noisy_sweep_gain_and_its_table_for_the_probe(tmp_path, monkeypatch):
    import noisy_sweep

    assert noisy_sweep.gain([200e3, 250e3, 300e3], [300e3, 350e3, 400e3]) == pytest.approx(1 - 250 / 350)
    assert noisy_sweep.gain([math.inf, math.inf, 1], [1, 1, 1]) is None  # the median seed never got there
    assert noisy_sweep.CELL.match(noisy_sweep.cell_name(0.1, 0.3))["fnr"] == "0.3"
    # The merged table is what the probe reads: the nearest cell to a measured (fpr, fnr).
    from torchrl_vlm.probe.report import place_on_gain_table

    table = tmp_path / "gain.json"
    table.write_text(
        json.dumps(
            {
                "env": "E",
                "definition": "first_progress",
                "cells": [
                    {"fpr": 0.0, "fnr": 0.0, "gain": 0.3, "p": 0.05, "seeds": 3},
                    {"fpr": 0.3, "fnr": 0.6, "gain": -0.1, "p": 0.8, "seeds": 3},
                ],
            }
        )
    )
    cell = place_on_gain_table(0.25, 0.5, table)
    assert (cell["fpr"], cell["fnr"], cell["gain"], cell["env"]) == (0.3, 0.6, -0.1, "E")
    assert place_on_gain_table(0.1, 0.1, tmp_path / "none.json") is None


def test_the_continuous_study_times_levels_in_env_steps_and_reads_old_and_new_counter_names():
    import continuous_efficiency as ce

    evals = [
        {"frames": 2000, "env_steps": 8000, "return": 500.0},
        {"frames": 4000, "env_steps": 16000, "return": 910.0},
    ]
    assert ce.reach(evals, "return", 900) == 16000 and math.isinf(ce.reach(evals, "return", 950))
    args = ce.parse_args(["--env", "cartpole-swingup_sparse", "--frames", "400000", "--eval-interval", "4"])[1]
    assert ce.action_repeat(args) == 8 and ce.agent_steps(args, 400_000) == 50_000
    assert ce.agent_steps(args, 4) == 1 and ce.agent_steps(args, 0) == 0  # an interval never rounds to "at the end"
    old = {"clips_scored": 100.0, "positives": 10.0, "num_positive": 50.0, "size": 1000.0, "priority_fraction": 0.5}
    new = {
        "clips_scored": 100.0,
        "positive_clips": 20.0,
        "positive_slots": 100.0,
        "size": 1000.0,
        "priority_fraction": 0.5,
        "td_error_mean": 2.0,
        "td_error_positive_mean": 1.0,
    }
    (row,) = ce.vlm_diagnostics(
        [{"method": "vlm_events", "vlm_stats": old}, {"method": "vlm_events", "vlm_stats": new}]
    )
    assert row[0] == "vlm_events" and row[1] == "0.150 [0.100, 0.200]" and row[2] == "0.075 [0.050, 0.100]"
    assert row[4] == "2.000 [2.000, 2.000]"  # the older cell has no |δ| logged: left out, not zero


def test_covr_cells_report_their_prior_and_fine_tunes_and_ignore_other_methods_settings():
    import continuous_efficiency as ce

    parser, args = ce.parse_args(["--env", "cartpole-swingup", "--tiny-vlm", "--methods", "uniform", "covr"])
    assert any(o.startswith("covr.model=") for o in args.override)
    stats = {
        "prior_rows_answered": 100.0,
        "prior_coverage": 0.4,
        "covr_finetunes": 2.0,
        "covr_finetunes_failed": 1.0,
        "covr_adapters_rejected": 0.0,
        "covr_finetunes_skipped": 0.0,
        "covr_last_kept": 30.0,
        "covr_last_offered": 120.0,
        "covr_last_loss_before": 2.0,
        "covr_last_loss_after": 1.0,
        "parse_failures": 25.0,
        "prior_answers": 100.0,
    }
    cells = [{"method": "covr", "vlm_stats": stats}, {"method": "uniform", "vlm_stats": {}}]
    (row,) = ce.covr_diagnostics(cells)
    assert row == [
        "covr",
        "0.400 [0.400, 0.400]",
        "2 [2, 2]",
        "1 [1, 1]",
        "0 [0, 0]",
        "0.250 [0.250, 0.250]",
        "2.000 [2.000, 2.000]",
        "1.000 [1.000, 1.000]",
        "0.250 [0.250, 0.250]",
    ]
    # A uniform cell stored without the prior's settings is the same cell; a COVR cell is not.
    for method, differs in (("uniform", False), ("covr", True)):
        stored = {
            "method": method,
            "seed": 0,
            "overrides": [o for o in ce.cell_overrides(args, method, 0) if not o.startswith("covr.model")],
        }
        assert bool(ce.settings_differ(stored, args)) == differs
