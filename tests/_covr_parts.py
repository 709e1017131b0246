"""Priors and fine-tuners with known answers or injected faults, for the COVR tests.

They live in a module of their own so that the spawned processes can import them by name.
"""
import os
import time

import torch

from torchrl_vlm.covr.finetune import LoRAFineTuner


def frame_action(frames: torch.Tensor, action_dim: int) -> torch.Tensor:
    """The action a :class:`FramePrior` gives a frame: its mean pixel, mapped to [-1, 1], on every dimension."""
    return (frames.float().mean((1, 2, 3)) / 127.5 - 1.0).unsqueeze(-1).expand(-1, action_dim).clone()


class FramePrior:
    """A prior whose answer is a function of the row's own frame, so that a test can tell whose it is."""

    needs_frames = True

    def __init__(self, action_dim: int = 1, delay_s: float = 0.0):
        self.action_dim, self.delay_s = action_dim, delay_s

    def __call__(self, items):
        time.sleep(self.delay_s)
        return frame_action(items["frames"], self.action_dim)


class GarbagePrior:
    """A VLM whose every answer fails to parse."""

    needs_frames = True

    def __init__(self, action_dim: int = 1):
        self.action_dim = action_dim

    def __call__(self, items):
        return torch.full((items.batch_size[0], self.action_dim), float("nan"))


class OOMFineTuner(LoRAFineTuner):
    """Runs out of memory half-way through every fine-tune."""

    def _train(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class DyingFineTuner(LoRAFineTuner):
    """The fine-tuning process dies (as the OOM killer would kill it) in the middle of a fine-tune."""

    def _train(self, *args, **kwargs):
        os._exit(137)


class DamagingFineTuner(LoRAFineTuner):
    """Writes its adapter, then a bit of it rots on disk before the learner reads it."""

    def __call__(self, request):
        out = super().__call__(request)
        from torchrl_vlm.covr.adapter import adapter_path

        path = adapter_path(self.adapter_root, int(request["version"][0])) / "adapter_model.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        return out
