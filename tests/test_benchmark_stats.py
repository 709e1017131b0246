"""The statistics the sample-efficiency benchmark reports next to its medians."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sample_efficiency import average_ranks, permutation_p, seed_ratio  # noqa: E402


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


def test_the_8x8_seeds_do_not_establish_a_gain():
    # DoorKey-8x8, first_progress, 1M steps (benchmarks/RESULTS.md): VLM-RB 600k, 275k, 225k; uniform 350k, 275k, never.
    # Ranks 5, 2.5, 1 against 4, 2.5, 6: 5 of the 20 splits have a rank sum of 8.5 or less.
    assert permutation_p([600e3, 275e3, 225e3], [350e3, 275e3, math.inf]) == pytest.approx(5 / 20)


def test_seed_ratio_says_which_arm_never_got_there():
    assert seed_ratio(300.0, 600.0) == "0.50"
    assert seed_ratio(300.0, math.inf) == "< 1 (baseline never)"
    assert seed_ratio(math.inf, 300.0) == "> 1 (never)"
    assert seed_ratio(math.inf, math.inf) == "—"
