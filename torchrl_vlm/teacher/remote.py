"""A teacher in its own process, for heavy models (LVLM2P with a real VLM).

On-policy distillation needs the teacher's answer before the update, so the
call still waits; what the separate process buys is placement: the VLM lives
on its own device (``env={"CUDA_VISIBLE_DEVICES": ...}``), with its own thread
budget, and never in the learner's memory. It reuses :class:`ScoringService`
(spawned worker, start-up errors that name the model, restarts) with a check
suited to action distributions.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDictBase

from torchrl_vlm.scoring.service import ScoringService

__all__ = ["RemoteTeacher", "check_action_probs"]


def check_action_probs(probs: torch.Tensor, n: int, who: str) -> torch.Tensor:
    """Checks a teacher's answer: ``[n, n_actions]`` rows that are distributions (or all-NaN: no answer)."""
    probs = torch.as_tensor(probs).detach().float().cpu()
    if probs.ndim != 2 or probs.shape[0] != n:
        raise ValueError(f"{who} returned shape {list(probs.shape)} for {n} states; expected [{n}, n_actions]")
    answered = ~torch.isnan(probs).all(-1)
    rows = probs[answered]
    if rows.numel() and (
        not bool(torch.isfinite(rows).all())
        or bool((rows < 0).any())
        or not torch.allclose(rows.sum(-1), torch.ones(rows.shape[0]), atol=1e-4)
    ):
        raise ValueError(f"{who} returned rows that are not probability distributions")
    return probs


class RemoteTeacher:
    """Calls a teacher (``td -> probs [*batch, n_actions]``) that lives in a separate process.

    Args:
        teacher_factory: a picklable zero-argument factory of the teacher, e.g.
            ``functools.partial(VLMTeacher, "HuggingFaceTB/SmolVLM-256M-Instruct", device="cuda:1")``.
        keys: the entries of the batch the teacher reads (others are not shipped).
        timeout_s: how long one call may wait for the answer.
        **service_kwargs: for :class:`ScoringService` (``num_threads``, ``env``,
            ``start_timeout_s``, ``max_restarts``...).
    """

    def __init__(
        self,
        teacher_factory: Callable[[], Any],
        *,
        keys: tuple[str, ...] = ("pixels", "mission", "state"),
        timeout_s: float = 600.0,
        **service_kwargs,
    ):
        self.keys = keys
        self.timeout_s = timeout_s
        service_kwargs.setdefault("max_pending", 1 << 20)  # one rollout is one request: never drop it
        self.service = ScoringService(teacher_factory, output_check=check_action_probs, **service_kwargs)

    def __call__(self, td: TensorDictBase) -> torch.Tensor:
        batch = td.batch_size
        flat = td.select(*self.keys, strict=False).reshape(-1)
        probs = self.service.request(flat, timeout_s=self.timeout_s)
        return probs.reshape(*batch, probs.shape[-1]).to(td.device)

    def close(self) -> None:
        self.service.close()

    def __enter__(self) -> RemoteTeacher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
