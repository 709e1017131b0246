"""Implicit quantile networks (IQN) for TorchRL's DQN loop.

Dabney, Ostrovski, Silver & Munos, "Implicit Quantile Networks for Distributional
Reinforcement Learning", ICML 2018. The network maps a state and a quantile level
``τ ∈ [0, 1]`` to the ``τ``-quantile of each action's return, ``Z_τ(s, a)``; the loss is
the quantile Huber loss between ``N`` sampled online quantiles and ``N'`` target ones.
The paper's settings are the defaults: ``N = N' = 64`` for the loss, ``K = 32`` for acting,
``κ = 1``, a cosine embedding of ``n = 64`` cosines.

TorchRL 0.14 has no IQN (its ``DistributionalDQNLoss`` is C51). :class:`IQNQValues`
averages ``K`` quantiles into Q-values, so the DQN recipe's ``QValueModule`` /
``EGreedyModule`` policy and collector work unchanged.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase, TensorDictParams
from torch import nn
from torch.autograd.function import once_differentiable
from torchrl.objectives import LossModule

from torchrl_vlm._checks import check_int

__all__ = ["CosineTauEmbedding", "IQNLoss", "IQNNetwork", "IQNQValues", "quantile_huber_loss"]


class CosineTauEmbedding(nn.Module):
    """φ(τ)_j = ReLU(Σ_{i=0}^{n-1} cos(π i τ) w_ij + b_j): IQN's embedding of a quantile level (eq. 4)."""

    def __init__(self, out_features: int, num_cosines: int = 64):
        super().__init__()
        self.register_buffer("frequencies", math.pi * torch.arange(num_cosines, dtype=torch.float32),
                             persistent=False)
        self.linear = nn.Linear(num_cosines, out_features)

    def forward(self, taus: torch.Tensor) -> torch.Tensor:
        """``taus`` ``[..., N]`` to embeddings ``[..., N, out_features]``."""
        return torch.relu(self.linear(torch.cos(taus.unsqueeze(-1) * self.frequencies)))


class IQNNetwork(nn.Module):
    """``Z_τ(s, ·) = f(ψ(s) ⊙ φ(τ))``: a state torso ψ, the cosine embedding φ and a head f (IQN §3).

    Args:
        in_features: the observation's size.
        num_actions: the number of discrete actions.
        hidden: the torso's layer sizes; the last is the embedding size (the paper: 64 per τ feature).
        num_cosines: ``n`` of :class:`CosineTauEmbedding`.
    """

    def __init__(self, in_features: int, num_actions: int, hidden: Sequence[int] = (128, 128), num_cosines: int = 64):
        super().__init__()
        for name, value in (("in_features", in_features), ("num_actions", num_actions), ("num_cosines", num_cosines)):
            check_int(name, value)
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must list at least one layer size >= 1, got {hidden!r}")
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.torso = nn.Sequential(*layers)
        self.tau_embedding = CosineTauEmbedding(width, num_cosines)
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_actions))
        self.num_actions = num_actions

    def forward(self, observation: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        """Quantiles ``[B, N, A]`` of the returns, for observations ``[B, D]`` and levels ``taus`` ``[B, N]``."""
        psi = self.torso(observation).unsqueeze(-2)  # [B, 1, d]
        return self.head(psi * self.tau_embedding(taus))


class IQNQValues(nn.Module):
    """Q-values for acting: ``Q(s, a) = (1/K) Σ_k Z_{τ_k}(s, a)``, ``τ_k ~ U[0, 1]`` (IQN eq. 2, risk-neutral).

    Maps observations ``[*, D]`` to ``[*, A]``; wrap it in a ``TensorDictModule`` writing
    ``"action_value"`` and put a ``QValueModule`` after it, as for a DQN Q-network.
    """

    def __init__(self, network: IQNNetwork, num_quantiles: int = 32):
        super().__init__()
        check_int("num_quantiles", num_quantiles)
        self.network = network
        self.num_quantiles = num_quantiles

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        batch = observation.shape[:-1]
        flat = observation.reshape(-1, observation.shape[-1])
        taus = torch.rand(flat.shape[0], self.num_quantiles, device=flat.device)
        return self.network(flat, taus).mean(-2).reshape(*batch, -1)


def quantile_huber_loss(td_errors: torch.Tensor, taus: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """IQN's loss per sample (eqs. 3 and 10): ``Σ_i (1/N') Σ_j ρ^κ_{τ_i}(δ_ij)``.

    ``td_errors`` ``[B, N, N']`` are ``δ_ij = r + γ Z_{τ'_j}(s', a*) − Z_{τ_i}(s, a)`` and ``taus``
    ``[B, N]`` the online levels ``τ_i``. ``ρ^κ_τ(δ) = |τ − 1{δ < 0}| · L_κ(δ) / κ`` with the Huber
    loss ``L_κ(δ) = δ²/2`` if ``|δ| ≤ κ``, else ``κ(|δ| − κ/2)``. Returns ``[B]``.

    The gradient is written out, ``∂ρ^κ_τ/∂δ = |τ − 1{δ < 0}| · clamp(δ, −κ, κ) / κ`` (the weight
    is constant in δ away from 0, as the paper treats it), which saves autograd's pass through the
    ``[B, N, N']`` chain of element-wise steps (``benchmarks/iqn_update_cost.py`` times both).
    """
    if not kappa > 0:
        raise ValueError(f"kappa must be > 0, got {kappa!r}")
    return _QuantileHuber.apply(td_errors, taus, float(kappa))


def quantile_huber_loss_autograd(td_errors: torch.Tensor, taus: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """:func:`quantile_huber_loss` as plain autograd ops: the reference its written-out gradient is
    tested and timed against (``benchmarks/iqn_update_cost.py``)."""
    abs_err = td_errors.abs()
    huber = torch.where(abs_err <= kappa, 0.5 * td_errors.pow(2), kappa * (abs_err - 0.5 * kappa))
    return (_asymmetry(td_errors.detach(), taus) * huber / kappa).mean(-1).sum(-1)


class _QuantileHuber(torch.autograd.Function):
    @staticmethod
    def forward(ctx, td_errors: torch.Tensor, taus: torch.Tensor, kappa: float) -> torch.Tensor:
        abs_err = td_errors.abs()
        quadratic = abs_err.clamp(max=kappa)
        huber = quadratic * (abs_err - 0.5 * quadratic)  # δ²/2 inside κ, κ(|δ| − κ/2) outside
        ctx.save_for_backward(td_errors, taus)
        ctx.kappa = kappa
        return (_asymmetry(td_errors, taus) * huber).mean(-1).sum(-1) / kappa

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        td_errors, taus = ctx.saved_tensors
        scale = (grad_out / (ctx.kappa * td_errors.shape[-1])).reshape(*grad_out.shape, 1, 1)
        grad = _asymmetry(td_errors, taus) * td_errors.clamp(-ctx.kappa, ctx.kappa) * scale
        return grad, None, None


def _asymmetry(td_errors: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """``|τ_i − 1{δ_ij < 0}|``: the quantile regression weight, ``[B, N, N']``."""
    levels = taus.unsqueeze(-1)
    return torch.where(td_errors < 0, 1 - levels, levels)


class IQNLoss(LossModule):
    """The IQN loss as a TorchRL ``LossModule``, for the DQN recipe's replay batches.

    Args:
        network: an :class:`IQNNetwork` (the loss keeps its parameters and a target copy;
            ``HardUpdate``/``SoftUpdate`` refresh the copy).
        num_quantiles: ``N``, online levels per sample (paper: 64).
        num_target_quantiles: ``N'``, target levels per sample (paper: 64).
        num_policy_quantiles: ``K``, levels averaged to pick the next action (paper: 32).
        kappa: the Huber threshold κ (paper: 1).
        gamma: the discount; a batch with ``steps_to_next_obs`` (n-step returns) is discounted by
            ``gamma ** steps_to_next_obs``.
        double_dqn: pick the next action with the online network (evaluate it with the target).

    Reads ``observation``, ``action`` (indices or one-hot), ``("next", "observation")``,
    ``("next", "reward")``, ``("next", "terminated")`` and, if present, ``steps_to_next_obs`` and
    ``priority_weight`` (importance weights of PER or the mixture sampler; ``use_prioritized_weights``
    as in TorchRL's losses). Writes ``td_error`` into the batch, the mean absolute quantile error per
    sample, ``mean_ij |δ_ij|``: PER's priority and TD boosting's ``|δ|``. Unlike TorchRL's ``DQNLoss``,
    which writes ``(Q − target)²``, it is an absolute error, and it does not fall to zero at the fixed
    point: it keeps the spread of the return distribution. Every key can be renamed with
    ``loss.set_keys(...)``, as in TorchRL's losses.
    Returns ``TensorDict(loss=...)``.
    """

    @dataclass
    class _AcceptedKeys:
        """The tensordict keys the loss reads and writes (``loss.set_keys(name=key)`` changes them)."""

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        terminated: NestedKey = "terminated"
        steps_to_next_obs: NestedKey = "steps_to_next_obs"
        priority: NestedKey = "td_error"
        priority_weight: NestedKey = "priority_weight"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    out_keys = ["loss"]

    value_network: IQNNetwork
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(self, network: IQNNetwork, *, num_quantiles: int = 64, num_target_quantiles: int = 64,
                 num_policy_quantiles: int = 32, kappa: float = 1.0, gamma: float = 0.99, double_dqn: bool = True):
        super().__init__()
        if not isinstance(network, IQNNetwork):
            raise TypeError(f"network must be an IQNNetwork, got {type(network).__name__}")
        for name, value in (("num_quantiles", num_quantiles), ("num_target_quantiles", num_target_quantiles),
                            ("num_policy_quantiles", num_policy_quantiles)):
            check_int(name, value)
        if not kappa > 0:
            raise ValueError(f"kappa must be > 0, got {kappa!r}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        self.convert_to_functional(network, "value_network", create_target_params=True)
        self.num_quantiles, self.num_target_quantiles = num_quantiles, num_target_quantiles
        self.num_policy_quantiles = num_policy_quantiles
        self.kappa, self.gamma, self.double_dqn = float(kappa), float(gamma), bool(double_dqn)

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        return [keys.observation, keys.action, ("next", keys.observation), ("next", keys.reward),
                ("next", keys.terminated)]

    def _quantiles(self, params, observation: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        taus = torch.rand(observation.shape[0], n, device=observation.device)
        with params.to_module(self.value_network):
            return self.value_network(observation, taus), taus

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        keys = self.tensor_keys
        observation = tensordict.get(keys.observation)
        obs = observation.reshape(-1, observation.shape[-1])
        b = obs.shape[0]
        action = tensordict.get(keys.action)
        n_actions = self.value_network.num_actions
        if n_actions > 1 and action.ndim == observation.ndim and action.shape[-1] == n_actions:
            action = action.float().argmax(-1)  # one-hot
        action = action.reshape(b).long()
        z, taus = self._quantiles(self.value_network_params, obs, self.num_quantiles)  # [B, N, A]
        z = z.gather(-1, action.view(b, 1, 1).expand(b, self.num_quantiles, 1)).squeeze(-1)  # [B, N]

        with torch.no_grad():
            next_obs = tensordict.get(("next", keys.observation)).reshape(b, -1)
            chooser = self.value_network_params.data if self.double_dqn else self.target_value_network_params
            q_next = self._quantiles(chooser, next_obs, self.num_policy_quantiles)[0].mean(-2)  # [B, A]
            best = q_next.argmax(-1)
            z_next = self._quantiles(self.target_value_network_params, next_obs, self.num_target_quantiles)[0]
            z_next = z_next.gather(-1, best.view(b, 1, 1).expand(b, self.num_target_quantiles, 1)).squeeze(-1)
            reward = tensordict.get(("next", keys.reward)).reshape(b, 1).float()
            alive = 1.0 - tensordict.get(("next", keys.terminated)).reshape(b, 1).float()
            steps = tensordict.get(keys.steps_to_next_obs, None)
            discount = self.gamma if steps is None else self.gamma ** steps.reshape(b, 1).float()
            target = reward + discount * alive * z_next  # [B, N']
        td_errors = target.unsqueeze(-2) - z.unsqueeze(-1)  # [B, N, N']
        per_sample = quantile_huber_loss(td_errors, taus, self.kappa)
        weights = self._maybe_get_priority_weight(tensordict)
        if weights is not None:
            per_sample = per_sample * weights.reshape(b).to(per_sample.dtype)
        tensordict.set(keys.priority, td_errors.detach().abs().mean((-1, -2)).reshape(tensordict.shape))
        return TensorDict(loss=per_sample.mean())
