"""n-step returns for collector batches, with the episode's end carried to the window's end.

TorchRL's :class:`~torchrl.data.postprocs.MultiStep` turns a ``[*, T]`` collector
batch into n-step transitions: ``("next", "reward")`` becomes the discounted sum
of up to n rewards and every other ``"next"`` entry moves up to n steps ahead.
It leaves the done flags (``done``, ``terminated``, ``truncated``) at step t,
though, so a window that ends in a *termination* (reaching the goal) keeps
``terminated=False`` while its next observation is already the terminal one:
the TD target then bootstraps from the value of a terminal state, which is
never trained directly, and DQN drifts (measured here: DoorKey-5x5 reached
0.6 greedy success and collapsed back to 0).

:class:`NStepReturns` runs ``MultiStep`` and then moves the done flags to the
window's last step, which gives the standard target

    y_t = Σ_{k<m} γ^k r_{t+k} + γ^m (1 − terminated_{t+m−1}) max_a Q(s_{t+m}, a),   m = min(n, steps left).
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.data.postprocs import MultiStep

__all__ = ["NStepReturns"]

_DONE_KEYS = ("done", "terminated", "truncated")


class NStepReturns(nn.Module):
    """n-step returns (``MultiStep``) with the done flags moved to each window's end.

    Args:
        gamma: the discount.
        n_steps: the look-ahead n; windows are cut at the end of an episode and
            at the end of the batch (``steps_to_next_obs`` says how far each went,
            and TorchRL's value estimators discount by ``gamma ** steps_to_next_obs``).

    The batch must be laid out ``[*envs, T]`` with time last, as a collector gives it.
    """

    def __init__(self, gamma: float, n_steps: int):
        super().__init__()
        self.multistep = MultiStep(gamma=gamma, n_steps=n_steps)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        raw = {
            key: tensordict.get(("next", key)).clone()
            for key in _DONE_KEYS
            if ("next", key) in tensordict.keys(include_nested=True)
        }
        out = self.multistep(tensordict)
        steps = out.get("steps_to_next_obs")
        time = out.ndim - 1
        window_end = torch.arange(out.shape[time], device=steps.device) + steps.reshape(out.shape) - 1
        for key, flag in raw.items():
            index = window_end.reshape(*window_end.shape, *([1] * (flag.ndim - window_end.ndim))).expand_as(flag)
            out.set(("next", key), flag.gather(time, index))
        return out
