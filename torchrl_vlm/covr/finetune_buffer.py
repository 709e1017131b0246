"""COVR's fine-tuning buffer D_f: (frame, a_r, g) of the agent's finished episodes (Algorithm 1, step 4).

Frames still never enter the replay buffer: D_f keeps its own, at the VLM's input size, only until the next
fine-tune, after which it is cleared (as the paper does). An episode's samples wait in its env's open
trajectory until the episode ends, since g_t = Σ_k γ^(k−t) r_k needs the rest of it
(:func:`~torchrl_vlm.covr.returns_to_go`). An episode cut by a time limit (every DMControl episode) counts the
rewards it had, with no bootstrapped tail: the paper's return "to the end of the trajectory".

Memory is bounded: ``capacity`` samples in a TorchRL storage (RAM, or memory-mapped on disk once the frames
would take more than ``memmap_above_bytes``), the oldest overwritten first; an open trajectory is bounded by
its episode's length.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, ReplayBuffer

from torchrl_vlm._checks import check_int
from torchrl_vlm.covr.equations import returns_to_go

__all__ = ["FinetuneBuffer"]


class FinetuneBuffer:
    """D_f: finished episodes' (frame, action, return-to-go), bounded, cleared after each fine-tune.

    Args:
        capacity: most samples kept (the oldest are overwritten first).
        gamma: the discount of the returns-to-go (the agent's).
        memmap_above_bytes: memory-map the frames on disk (``scratch_dir``) when ``capacity`` of them would
            take more than this (default 1 GiB).
        scratch_dir: where memory-mapped frames live (a temporary folder when ``None``).
    """

    def __init__(self, capacity: int, *, gamma: float = 0.99, memmap_above_bytes: int = 1 << 30,
                 scratch_dir: str | Path | None = None) -> None:
        self.capacity = check_int("capacity", capacity)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        self.gamma = float(gamma)
        self.memmap_above_bytes = check_int("memmap_above_bytes", memmap_above_bytes, 0)
        self.scratch_dir = scratch_dir
        self._rb: ReplayBuffer | None = None  # made at the first finished episode, once the frame size is known
        self._open: dict[int, list[TensorDict]] = {}  # env -> the steps of its unfinished episode
        self.episodes = 0

    def _storage_for(self, sample: TensorDict):
        frame_bytes = sample["frames"].numel() * sample["frames"].element_size()
        if self.capacity * frame_bytes > self.memmap_above_bytes:
            return LazyMemmapStorage(self.capacity, scratch_dir=self.scratch_dir)
        return LazyTensorStorage(self.capacity)

    @property
    def memory_mapped(self) -> bool:
        return self._rb is not None and isinstance(self._rb.storage, LazyMemmapStorage)

    def add(self, frames: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, done: torch.Tensor) -> int:
        """Adds a collector batch laid out ``[envs, T]`` (or ``[T]`` for one env): frames uint8 ``[.., H, W, 3]``,
        actions ``[.., A]``, rewards and done ``[..]`` (or ``[.., 1]``). Returns the samples its finished
        episodes added."""
        if frames.ndim == 4:  # one env: [T, H, W, 3]
            frames, actions, rewards, done = frames[None], actions[None], rewards[None], done[None]
        envs, steps = frames.shape[:2]
        rewards = rewards.reshape(envs, steps).float()
        done = done.reshape(envs, steps).bool()
        added = 0
        for e in range(envs):
            chunk = TensorDict({"frames": frames[e], "action": actions[e].float(), "reward": rewards[e]}, [steps])
            ends = torch.nonzero(done[e]).reshape(-1).tolist()
            start = 0
            for end in ends:
                added += self._finish(e, chunk[start:end + 1])
                start = end + 1
            if start < steps:
                self._open.setdefault(e, []).append(chunk[start:].clone())
        return added

    def _finish(self, env: int, tail: TensorDict) -> int:
        parts = self._open.pop(env, []) + [tail]
        episode = torch.cat(parts) if len(parts) > 1 else parts[0]
        samples = TensorDict({"frames": episode["frames"], "action": episode["action"],
                              "return": returns_to_go(episode["reward"], self.gamma)}, episode.batch_size)
        samples = samples[-self.capacity:]
        if self._rb is None:
            self._rb = ReplayBuffer(storage=self._storage_for(samples[0]))
        self._rb.extend(samples)
        self.episodes += 1
        return samples.batch_size[0]

    def __len__(self) -> int:
        return 0 if self._rb is None else len(self._rb)

    def data(self) -> TensorDict:
        """Every sample held: ``frames``, ``action``, ``return`` (``[N]``), in RAM."""
        if not len(self):
            return TensorDict({}, [0])
        return self._rb.storage[: len(self)].clone()

    def clear(self) -> None:
        """Forgets the finished episodes' samples (after a fine-tune); open trajectories stay."""
        if self._rb is not None:
            self._rb.empty()

    @property
    def open_steps(self) -> int:
        return sum(part.batch_size[0] for parts in self._open.values() for part in parts)

    def state_dict(self) -> dict[str, Any]:
        return {
            "data": self.data().to_dict() if len(self) else None,
            "open": {int(e): torch.cat(p).to_dict() for e, p in self._open.items() if p},
            "episodes": self.episodes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clear()
        if state["data"] is not None:
            data = _rows(state["data"])
            if self._rb is None:
                self._rb = ReplayBuffer(storage=self._storage_for(data[0]))
            self._rb.extend(data)
        self._open = {int(e): [_rows(p)] for e, p in state["open"].items()}
        self.episodes = int(state["episodes"])


def _rows(columns: dict[str, torch.Tensor]) -> TensorDict:
    """A TensorDict ``[N]`` from a dict of columns of N rows each."""
    n = next(iter(columns.values())).shape[0]
    return TensorDict(dict(columns), batch_size=[n])
