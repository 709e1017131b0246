"""Which frames an env renders for a scorer (VLM-RB step 3): only those the scorer will read.

A VLM scorer shows a few frames of each clip; rendering the others is wasted work, and in software
rendering most of what frames cost. :class:`FrameSchedule` is the env's side (which states to render),
:data:`FRAME_RENDERED_KEY` the entry that tells the replay buffer which frames are real, and
:func:`frame_stride_for` the stride that still leaves a scorer the frames it shows. Envs and replay
buffers both import this module; it imports neither.
"""
from __future__ import annotations

from torchrl_vlm._checks import check_int

__all__ = ["FRAME_RENDERED_KEY", "FrameSchedule", "frame_stride_for"]

#: The per-step bool entry an env with a :class:`FrameSchedule` writes beside its frames: ``True`` where the
#: step's frame was rendered (the others are zeros). :class:`~torchrl_vlm.VLMReplayBuffer` turns it into the
#: clips' ``frame_mask``.
FRAME_RENDERED_KEY = "frame_rendered"


class FrameSchedule:
    """Which steps of an episode an env renders, for a scorer that reads every ``frame_stride``-th step of a clip.

    A VLM scorer shows a few frames of each clip (:class:`~torchrl_vlm.TransformersScorer`: 8 of
    32). Rendering the others is wasted work, and in software rendering it is most of what frames
    cost. With ``frame_stride = s`` the env renders the states at clip steps ``0, s, 2s, ...`` and
    the state each episode ends in; every other step's frame is zeros, and
    :data:`FRAME_RENDERED_KEY` says which are real. The clip's last frame, the state its last action
    reached, is always rendered: it is either the first state of the next clip (step 0) or the
    episode's end. ``frame_stride=1`` renders every step.

    The schedule counts steps since the episode's reset, so it agrees with the ``clip_step`` that
    :class:`~torchrl_vlm.RenderClips` writes (clip step = steps since reset modulo ``clip_len``).

    Args:
        clip_len: the env's clip length L.
        frame_stride: render every ``frame_stride``-th step of a clip (``1 <= frame_stride``).

    Examples:
        >>> schedule = FrameSchedule(clip_len=8, frame_stride=4)
        >>> [schedule.reset()] + [schedule.step(ended=False) for _ in range(9)] + [schedule.step(ended=True)]
        [True, False, False, False, True, False, False, False, True, False, True]
    """

    def __init__(self, clip_len: int, frame_stride: int = 1):
        self.clip_len = check_int("clip_len", clip_len)
        self.frame_stride = check_int("frame_stride", frame_stride)
        self._t = 0

    def reset(self) -> bool:
        """Starts an episode; its first state is always rendered."""
        self._t = 0
        return True

    def step(self, ended: bool) -> bool:
        """Whether the state this step reached is rendered (``ended``: the episode ends in it)."""
        self._t += 1
        return bool(ended) or (self._t % self.clip_len) % self.frame_stride == 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clip_len={self.clip_len}, frame_stride={self.frame_stride})"


def frame_stride_for(clip_len: int, num_frames: int) -> int:
    """The env's render stride that still leaves a scorer ``num_frames`` frames of a full clip.

    With stride ``s`` an env renders clip steps ``0, s, 2s, ...`` and the clip's last frame
    (:class:`~torchrl_vlm.frames.FrameSchedule`): ``s = clip_len // num_frames`` leaves at
    least ``num_frames`` of them, and renders the fewest. A clip cut short by its episode's end
    may hold fewer.

    Examples:
        >>> frame_stride_for(32, 8)  # TransformersScorer's 8 frames of VLM-RB's 32-step clips
        4
        >>> frame_stride_for(32, 64)
        1
    """
    return max(1, check_int("clip_len", clip_len) // check_int("num_frames", num_frames))
