"""LVLM2P's distillation losses: TorchRL's PPO and A2C losses plus a KL term towards a teacher.

LVLM2P (seed 003; ``PAPERS.md`` §2) trains the student with::

    L = L_RL + λ · KL(π_T(·|o) ‖ π_θ(·|s)),        λ = 0.01,

where π_T is the teacher's distribution over actions (from a VLM that sees the
rendered frame, here also an exact planner) and π_θ the student's policy on its
own (symbolic) observation. The KL term is computed on the actor's *current*
logits, so its gradient reaches the actor only, and it is reported as its own
``loss_distill`` entry, which TorchRL recipes sum with the other ``loss_*``.

Samples without a teacher answer (``teacher_mask`` False, or a non-finite
teacher row) are left out of the mean; a batch with none gives a zero loss,
never NaN.
"""
from __future__ import annotations

import contextlib

import torch
from tensordict import TensorDictBase
from torchrl.objectives import A2CLoss, ClipPPOLoss

__all__ = ["DistillA2CLoss", "DistillClipPPOLoss", "distillation_kl"]


def distillation_kl(teacher_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ softmax(student_logits)) per sample (LVLM2P's distillation term).

    Args:
        teacher_probs: ``[*, A]`` teacher distributions (rows sum to 1; zeros allowed).
        student_logits: ``[*, A]`` unnormalised student logits.

    Returns:
        ``[*]``: Σ_a p_T(a) (log p_T(a) − log p_θ(a)), with 0·log 0 = 0.
    """
    if teacher_probs.shape != student_logits.shape:
        raise ValueError(
            f"teacher_probs {list(teacher_probs.shape)} and student_logits {list(student_logits.shape)} differ"
        )
    log_student = torch.log_softmax(student_logits, dim=-1)
    teacher = teacher_probs.to(log_student.dtype)
    return (torch.xlogy(teacher, teacher) - teacher * log_student).sum(-1)


class _Distillation:
    """The part LVLM2P adds to a TorchRL policy-gradient loss (PPO or A2C).

    Listed before the TorchRL loss in the bases, so ``super()`` reaches it.
    """

    def __init__(
        self,
        actor_network,
        critic_network=None,
        *,
        distill_coeff: float = 0.01,
        distill_decay_frames: int | None = None,
        hard_targets: bool = False,
        teacher_key: str = "teacher_probs",
        teacher_mask_key: str = "teacher_mask",
        **kwargs,
    ):
        super().__init__(actor_network, critic_network, **kwargs)
        if not distill_coeff >= 0:
            raise ValueError(f"distill_coeff must be >= 0, got {distill_coeff}")
        if distill_decay_frames is not None and distill_decay_frames <= 0:
            raise ValueError(f"distill_decay_frames must be > 0 or None, got {distill_decay_frames}")
        self.distill_coeff_init = float(distill_coeff)
        self.distill_decay_frames = distill_decay_frames
        self.hard_targets = bool(hard_targets)
        self.teacher_key = teacher_key
        self.teacher_mask_key = teacher_mask_key
        self.register_buffer("distill_frames", torch.zeros((), dtype=torch.long))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = super().forward(tensordict)
        loss, kl = self._distillation_loss(tensordict)
        out.set("loss_distill", loss)
        out.set("distill_kl", kl)
        out.set("distill_coeff", torch.tensor(self.distill_coeff))
        return out

    @property
    def distill_coeff(self) -> float:
        """λ now: ``distill_coeff``, decayed linearly to 0 over ``distill_decay_frames`` if set."""
        if self.distill_decay_frames is None:
            return self.distill_coeff_init
        left = max(0.0, 1.0 - float(self.distill_frames) / self.distill_decay_frames)
        return self.distill_coeff_init * left

    def step_distillation(self, frames: int) -> None:
        """Advances the λ schedule by ``frames`` env steps (call once per collected batch)."""
        self.distill_frames += int(frames)

    def _student_logits(self, tensordict: TensorDictBase) -> torch.Tensor:
        actor = self.actor_network
        with (
            self.actor_network_params.to_module(actor, preserve_module_state=False)
            if self.functional
            else contextlib.nullcontext()
        ):
            dist = actor.get_dist(tensordict.select(*actor.in_keys, strict=False).copy())
        logits = getattr(dist, "logits", None)
        if logits is None:
            raise TypeError(
                f"the actor's distribution {type(dist).__name__} has no logits; distillation needs a "
                "categorical policy over discrete actions"
            )
        return logits

    def _distillation_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """(coeff · masked mean KL, the mean KL itself for logging)."""
        teacher = tensordict.get(self.teacher_key, None)
        if teacher is None and self.distill_coeff_init == 0:
            # Distillation switched off (the no-teacher baseline): nothing to compare with.
            zero = torch.zeros((), device=tensordict.device)
            return zero, zero
        if teacher is None:
            raise KeyError(
                f"the batch has no teacher distribution under {self.teacher_key!r}: query the teacher "
                "once per rollout and store its probabilities there (or pass teacher_key=...)"
            )
        logits = self._student_logits(tensordict)
        teacher = teacher.to(logits.device)
        valid = torch.isfinite(teacher).all(-1)
        mask = tensordict.get(self.teacher_mask_key, None)
        if mask is not None:
            valid = valid & mask.reshape(valid.shape).to(valid.device)
        teacher = torch.where(valid.unsqueeze(-1), teacher, torch.full_like(teacher, 1.0 / teacher.shape[-1]))
        if self.hard_targets:
            teacher = torch.nn.functional.one_hot(teacher.argmax(-1), teacher.shape[-1]).to(logits.dtype)
        kl = distillation_kl(teacher, logits)
        count = valid.sum()
        mean_kl = torch.where(valid, kl, torch.zeros_like(kl)).sum() / count.clamp(min=1)
        return self.distill_coeff * mean_kl, mean_kl.detach()


class DistillClipPPOLoss(_Distillation, ClipPPOLoss):
    """TorchRL's :class:`~torchrl.objectives.ClipPPOLoss` plus ``loss_distill = λ · KL(π_T ‖ π_θ)``.

    Args:
        actor_network, critic_network: as for ``ClipPPOLoss``.
        **kwargs: as for ``ClipPPOLoss``.
        distill_coeff: λ (LVLM2P: 0.01).
        distill_decay_frames: decay λ linearly to 0 over this many env steps
            (advance with :meth:`step_distillation`); ``None`` keeps it constant.
        hard_targets: distil towards the one-hot argmax of the teacher instead of
            its distribution (the paper's ablation: soft targets are better).
        teacher_key: where the batch holds the teacher's probabilities ``[*, A]``.
        teacher_mask_key: optional bool ``[*]``; False marks samples without an answer.

    The output holds ``loss_objective``, ``loss_critic``, ``loss_entropy`` (as
    ``ClipPPOLoss``) and ``loss_distill``, plus ``distill_kl`` and ``distill_coeff`` for logging.
    With ``distill_coeff=0`` and no teacher in the batch, ``loss_distill`` is 0
    (the no-teacher baseline).
    """


class DistillA2CLoss(_Distillation, A2CLoss):
    """TorchRL's :class:`~torchrl.objectives.A2CLoss` plus ``loss_distill = λ · KL(π_T ‖ π_θ)``.

    Arguments as :class:`DistillClipPPOLoss`, with ``A2CLoss``'s own keyword arguments.
    """
