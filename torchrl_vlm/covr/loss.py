"""COVR's actor loss: TorchRL's SAC loss plus the VLM prior term λ‖a_v − a_r‖² (eq. 4).

The prior term is its own ``loss_prior`` entry, as LVLM2P's ``loss_distill`` is, so that TorchRL recipes sum it
with the other ``loss_*`` and log it apart. Which a_r enters is left open by the paper; here it is a
reparameterised sample of the current policy, ``a_r ~ π_θ(·|s)`` (eq. 4's a_r,t is the agent's action, and a
sample, unlike the mean, lets the term shape the policy's spread as well as its centre). It is a draw of its
own, independent of the one in SAC's actor loss: the same distribution, so the gradient is unbiased.
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import SACLoss

__all__ = ["COVRSACLoss", "prior_penalty"]


def prior_penalty(prior: torch.Tensor, action: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """COVR eq. 4's prior term without λ: the mean of ‖a_v − a_r‖² over the rows with a valid prior
    (0, not NaN, when there is none).

    Args:
        prior: ``[B, A]`` the VLM's actions a_v (any value where ``valid`` is False).
        action: ``[B, A]`` the policy's actions a_r (differentiable).
        valid: bool ``[B]``.
    """
    if prior.shape != action.shape or valid.shape != prior.shape[:-1]:
        raise ValueError(f"prior {list(prior.shape)}, action {list(action.shape)} and valid {list(valid.shape)} "
                         "must be [B, A], [B, A] and [B]")
    sq = ((prior.to(action.dtype) - action) ** 2).sum(-1)
    sq = torch.where(valid, sq, torch.zeros_like(sq))
    return sq.sum() / valid.sum().clamp_min(1)


class COVRSACLoss(SACLoss):
    """TorchRL's :class:`~torchrl.objectives.SACLoss` plus ``loss_prior = λ · mean ‖a_v − a_r‖²`` (COVR eq. 4).

    Args:
        actor_network, qvalue_network: as ``SACLoss``.
        **kwargs: as ``SACLoss``.
        prior_coeff: λ (paper: 2.0, fixed).
        prior_key: where a sample holds the VLM's action a_v (``[B, A]``).
        prior_valid_key: bool ``[B]``: the row's prior parsed (rows without one are left out of the mean).

    The output holds SACLoss's entries plus ``loss_prior`` and ``prior_valid_fraction``. A batch without the
    prior's columns gives ``loss_prior = 0`` (the plain SAC baseline runs the same loss).
    """

    def __init__(self, actor_network, qvalue_network, *, prior_coeff: float = 2.0, prior_key: str = "vlm_action",
                 prior_valid_key: str = "vlm_action_valid", **kwargs) -> None:
        super().__init__(actor_network, qvalue_network, **kwargs)
        if isinstance(prior_coeff, bool) or not isinstance(prior_coeff, (int, float)) or not prior_coeff >= 0:
            raise ValueError(f"prior_coeff must be a number >= 0, got {prior_coeff!r}")
        self.prior_coeff = float(prior_coeff)
        self.prior_key, self.prior_valid_key = prior_key, prior_valid_key

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = super().forward(tensordict)
        loss, share = self.prior_loss(tensordict)
        out.set("loss_prior", loss)
        out.set("prior_valid_fraction", share)
        return out

    def prior_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """(λ · prior penalty on a fresh reparameterised action, the share of rows with a valid prior)."""
        prior = tensordict.get(self.prior_key, None)
        zero = torch.zeros((), device=tensordict.device)
        if prior is None or self.prior_coeff == 0:
            return zero, zero
        valid = tensordict.get(self.prior_valid_key).reshape(prior.shape[:-1]).bool()
        if not bool(valid.any()):
            return zero, zero
        with set_exploration_type(ExplorationType.RANDOM), self.actor_network_params.to_module(
            self.actor_network, preserve_module_state=False
        ):
            dist = self.actor_network.get_dist(tensordict.select(*self.actor_network.in_keys, strict=False).copy())
            action = dist.rsample()
        return self.prior_coeff * prior_penalty(prior, action, valid), valid.float().mean()
