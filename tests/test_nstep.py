"""NStepReturns: n-step targets that stop at a termination."""
import pytest
import torch
from tensordict import TensorDict

from torchrl_vlm import NStepReturns


def _episode(T=8, end=4, terminated=True):
    td = TensorDict(
        {
            "obs": torch.arange(T).float().view(1, T, 1),
            "next": TensorDict(
                {
                    "obs": (torch.arange(T) + 1).float().view(1, T, 1),
                    "reward": torch.zeros(1, T, 1),
                    "done": torch.zeros(1, T, 1, dtype=torch.bool),
                    "terminated": torch.zeros(1, T, 1, dtype=torch.bool),
                    "truncated": torch.zeros(1, T, 1, dtype=torch.bool),
                },
                [1, T],
            ),
        },
        [1, T],
    )
    td["next", "done"][0, end] = True
    td["next", "terminated" if terminated else "truncated"][0, end] = True
    td["next", "reward"][0, end] = 1.0
    return td


def test_windows_that_reach_a_termination_do_not_bootstrap():
    out = NStepReturns(gamma=0.9, n_steps=3)(_episode())
    # Rows 2..4 see the goal within their window: terminal next obs, terminated, reward discounted.
    assert out["next", "obs"].view(-1).tolist() == [3, 4, 5, 5, 5, 8, 8, 8]
    assert out["next", "terminated"].view(-1).tolist() == [False, False, True, True, True, False, False, False]
    assert out["next", "reward"].view(-1).tolist() == pytest.approx([0, 0, 0.81, 0.9, 1.0, 0, 0, 0])
    assert out["steps_to_next_obs"].view(-1).tolist() == [3, 3, 3, 2, 1, 3, 2, 1]


def test_a_truncation_still_bootstraps():
    out = NStepReturns(gamma=0.9, n_steps=3)(_episode(terminated=False))
    assert not out["next", "terminated"].any()
    assert out["next", "truncated"].view(-1).tolist() == [False, False, True, True, True, False, False, False]
