"""Replay buffers for VLM-RB and its baselines, built from TorchRL parts."""
from __future__ import annotations

from pathlib import Path

import torch
from torchrl.data import (
    LazyMemmapStorage,
    LazyTensorStorage,
    PrioritizedSampler,
    RandomSampler,
    TensorDictReplayBuffer,
    TensorDictRoundRobinWriter,
)
from torchrl.data.replay_buffers.samplers import Sampler

from torchrl_vlm.replay.sampler import MixtureSampler

__all__ = ["make_replay_buffer"]

SAMPLER_CHOICES = ("uniform", "per")
STORAGE_CHOICES = ("tensor", "memmap")


def make_replay_buffer(
    capacity: int,
    *,
    sampler: str | Sampler = "uniform",
    batch_size: int | None = None,
    storage: str = "tensor",
    device: str | torch.device = "cpu",
    per_alpha: float = 0.6,
    per_beta: float = 0.4,
    scratch_dir: str | Path | None = None,
    prefetch: int | None = None,
) -> TensorDictReplayBuffer:
    """Builds a :class:`~torchrl.data.TensorDictReplayBuffer` for VLM-RB or a baseline.

    The writer is a round-robin writer that tracks slot generations, so that a
    score computed long after a transition was written can be written back with
    ``rb.update_if_present(index=..., generation=..., patch=...)`` and is
    rejected if the slot has been reused meanwhile. ``rb.writer.generations_of(index)``
    reads the generations right after ``extend``.

    Args:
        capacity: number of transitions the buffer holds.
        sampler: ``"uniform"`` (TorchRL's ``RandomSampler``), ``"per"``
            (TorchRL's ``PrioritizedSampler`` with ``per_alpha``/``per_beta``, priority
            key ``"td_error"``), or a :class:`MixtureSampler` (priority key is its
            ``priority_key``), or any other TorchRL ``Sampler``.
        batch_size: default batch size of ``rb.sample()``.
        storage: ``"tensor"`` (``LazyTensorStorage``, in RAM or on ``device``) or
            ``"memmap"`` (``LazyMemmapStorage`` under ``scratch_dir``).
        device: where the storage lives.
        per_alpha, per_beta: PER's exponents, used with ``sampler="per"``.
        scratch_dir: memmap folder (a temporary one when ``None``).
        prefetch: batches to prefetch in a background thread.
    """
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
    if storage == "tensor":
        store = LazyTensorStorage(capacity, device=device)
    elif storage == "memmap":
        store = LazyMemmapStorage(capacity, device=device, scratch_dir=scratch_dir)
    else:
        raise ValueError(f"storage must be one of {STORAGE_CHOICES}, got {storage!r}")

    priority_key = "td_error"
    if isinstance(sampler, str):
        if sampler == "uniform":
            sampler_obj: Sampler = RandomSampler()
        elif sampler == "per":
            sampler_obj = PrioritizedSampler(capacity, alpha=per_alpha, beta=per_beta)
        else:
            raise ValueError(
                f"sampler must be one of {SAMPLER_CHOICES} or a Sampler instance "
                f"(e.g. MixtureSampler), got {sampler!r}"
            )
    elif isinstance(sampler, Sampler):
        sampler_obj = sampler
        if isinstance(sampler, MixtureSampler):
            sampler._ensure_capacity(capacity)
            priority_key = sampler.priority_key
    else:
        raise TypeError(
            f"sampler must be a str in {SAMPLER_CHOICES} or a torchrl Sampler, got {type(sampler).__name__}"
        )
    return TensorDictReplayBuffer(
        storage=store,
        sampler=sampler_obj,
        writer=TensorDictRoundRobinWriter(track_generations=True),
        batch_size=batch_size,
        priority_key=priority_key,
        prefetch=prefetch,
    )
