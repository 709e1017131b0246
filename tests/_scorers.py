"""Scorers with injected faults, for the service tests.

They live in a module of their own so that the spawned scoring process can
import them by name.
"""
import time

import torch

from torchrl_vlm.scoring.base import validate_clips


class LengthScorer:
    """P(yes) = the clip's real length / L: shows whether the mask matches the clip."""

    needs_frames = False

    def __call__(self, clips):
        validate_clips(clips, require_frames=False)
        return clips["mask"].sum(-1).float() / clips["mask"].shape[-1]


class BrokenAtStart:
    needs_frames = False

    def __init__(self):
        raise OSError("weights for 'acme/missing-vlm' are not on this machine")


class HangingScorer:
    needs_frames = False

    def __call__(self, clips):
        time.sleep(3600)


class RaisingScorer:
    needs_frames = False

    def __call__(self, clips):
        raise RuntimeError("CUDA error: out of memory (injected)")


class SlowConstantScorer:
    """Answers 1.0 after a pause; counts nothing, holds nothing."""

    needs_frames = False

    def __init__(self, latency_s: float = 0.2):
        self.latency_s = latency_s

    def __call__(self, clips):
        time.sleep(self.latency_s)
        return torch.ones(clips.batch_size[0])


class LastFrameScorer:
    """P(yes) = a fingerprint of the clip's last real frame, in [0, 1): shows which frame came last."""

    needs_frames = True

    def __call__(self, clips):
        validate_clips(clips)
        last = clips["mask"].sum(-1) - 1
        frames = clips["frames"][torch.arange(clips.batch_size[0]), last]
        return last_frame_fingerprint(frames)


def last_frame_fingerprint(frames):
    """A number in [0, 1) per frame ([B, H, W, 3] uint8), sensitive to where the agent is."""
    weights = torch.arange(1, frames[0].numel() + 1, dtype=torch.float64)
    return ((frames.reshape(frames.shape[0], -1).double() * weights).sum(-1) % 9973 / 9973).float()


def clip_fingerprint(clip_id):
    """A number in [0, 1) that differs from clip to clip (int64 clip ids in, float32 out)."""
    return ((clip_id * 2654435761) % 1000003).double().div(1000003).float()


class ClipFingerprintScorer:
    """P(yes) = :func:`clip_fingerprint` of the clip's id: a verdict that names its clip, so a misplaced write shows."""

    needs_frames = False

    def __init__(self, latency_s: float = 0.0):
        self.latency_s = latency_s

    def __call__(self, clips):
        validate_clips(clips, require_frames=False)
        time.sleep(self.latency_s)
        return clip_fingerprint(clips["clip_id"])


class BuildHangsWhenFlagged:
    """Builds at once, unless the file ``flag`` exists: then building hangs (a restart that never loads)."""

    needs_frames = False

    def __init__(self, flag: str):
        import os

        while os.path.exists(flag):
            time.sleep(0.1)

    def __call__(self, clips):
        return torch.zeros(clips.batch_size[0])


class BuildFailsWhenFlagged:
    """Builds, unless the file ``flag`` exists: then building raises (a restart that cannot load its model)."""

    needs_frames = False

    def __init__(self, flag: str):
        import os

        if os.path.exists(flag):
            raise RuntimeError("CUDA error: out of memory (injected, while rebuilding)")

    def __call__(self, clips):
        return torch.zeros(clips.batch_size[0])


class FrameMeanScorer:
    """P(yes) = the mean of a clip's real frames / 255, and counts the clips it was asked about."""

    needs_frames = True

    def __init__(self):
        self.asked = 0

    def __call__(self, clips):
        validate_clips(clips)
        self.asked += clips.batch_size[0]
        mask = clips["mask"]
        frames = clips["frames"].float().mean((-3, -2, -1))
        return (frames * mask).sum(-1) / mask.sum(-1) / 255.0


class HangsOnSingleStepClips:
    """Answers 1.0, except that a batch holding a one-step clip (a "poison" clip) hangs for an hour."""

    needs_frames = False

    def __call__(self, clips):
        if bool((clips["mask"].sum(-1) == 1).any()):
            time.sleep(3600)
        return torch.ones(clips.batch_size[0])


class FrameShapeScorer:
    """P(yes) = 1 where the clip's frames are uint8 [L, 64, 96, 3]: shows the size a scorer receives."""

    def __call__(self, clips):
        validate_clips(clips)
        ok = tuple(clips["frames"].shape[2:]) == (64, 96, 3)
        return torch.full((clips.batch_size[0],), float(ok))


def event_in_clip(clips):
    """A plain function scorer (no needs_frames): yes where the clip's first event column fires."""
    return (clips["events"][..., 0] & clips["mask"]).any(-1).float()


def two_argument_scorer(clips, threshold):
    return clips["mask"].any(-1).float()


def keyword_scorer(clips, k=1.0):
    return clips["mask"].any(-1).float() * k


class FactoryObject:
    """A callable object of no argument: a factory, called in the scoring process."""

    def __call__(self):
        return event_in_clip


class PropertyScorer:
    """needs_frames as a property: only an instance can say."""

    @property
    def needs_frames(self):
        return False

    def __call__(self, clips):
        return clips["mask"].any(-1).float()
