"""The scorer protocol: a batch of clips in, P(yes) per clip out (VLM-RB step 4).

A batch of clips is a :class:`~tensordict.TensorDict` with ``batch_size=[B]``:

- ``frames``: uint8 ``[B, L, H, W, 3]``, the rendered frames of each clip, padded
  to the longest clip of the batch;
- ``mask``: bool ``[B, L]``, ``True`` on real steps (a clip cut short by the end
  of an episode is padded with ``False``);
- ``mission``: one string per clip (a non-tensor entry), where the env has one;
- ``events``: bool ``[B, L, E]`` per-step flags, where the env gives them. Row
  ``t`` holds the events that the transition's own action caused (the
  collector's ``("next", "events")``).
- ``clip_id`` (int64 ``[B]``) and ``step`` (int64 ``[B]``, the transitions the
  :class:`~torchrl_vlm.VLMReplayBuffer` had taken in when it sent the clip), for
  audits; a scorer's answer must not depend on them.

A scorer returns a float tensor ``[B]`` of P(yes) in [0, 1]; the replay buffer
thresholds it into a binary priority.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from tensordict import TensorDictBase

__all__ = ["Scorer", "check_scores", "clip_missions", "frame_indices", "validate_clips"]


@runtime_checkable
class Scorer(Protocol):
    """Maps a TensorDict of clips to P(yes) per clip, a float tensor ``[B]`` in [0, 1].

    ``needs_frames`` tells the pipeline whether the scorer looks at ``frames``
    (a ground-truth scorer does not, so rendering can be turned off).
    """

    needs_frames: bool

    def __call__(self, clips: TensorDictBase) -> torch.Tensor:
        ...


def validate_clips(clips: TensorDictBase, *, require_frames: bool = True) -> None:
    """Raises a clear ``TypeError``/``ValueError`` if ``clips`` breaks the protocol above."""
    if not isinstance(clips, TensorDictBase):
        raise TypeError(f"clips must be a TensorDict, got {type(clips).__name__}")
    if clips.batch_dims != 1:
        raise ValueError(f"clips must have batch_size [B], got {list(clips.batch_size)}")
    if clips.batch_size[0] == 0:
        raise ValueError("clips is empty: a batch needs at least one clip")
    mask = clips.get("mask", None)
    if mask is None:
        raise ValueError("clips has no 'mask' entry (bool [B, L])")
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"clips['mask'] must be bool [B, L], got {mask.dtype} {list(mask.shape)}")
    if not bool(mask.any(-1).all()):
        raise ValueError("every clip needs at least one real step in 'mask'")
    frames = clips.get("frames", None)
    if frames is None:
        if require_frames:
            raise ValueError("clips has no 'frames' entry (uint8 [B, L, H, W, 3])")
        return
    if frames.dtype != torch.uint8:
        raise TypeError(f"clips['frames'] must be uint8, got {frames.dtype}")
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"clips['frames'] must be [B, L, H, W, 3], got {list(frames.shape)}")
    if frames.shape[:2] != mask.shape:
        raise ValueError(
            f"clips['frames'] {list(frames.shape[:2])} and clips['mask'] {list(mask.shape)} disagree on [B, L]"
        )


def clip_missions(clips: TensorDictBase) -> list[str | None]:
    """One mission string per clip (``None`` each if ``clips`` has no ``mission`` entry).

    Accepts one string for all, a stack of strings or bytes, or per-step lists (the
    mission is constant within an episode: the first step's tells).
    """
    n = clips.batch_size[0]
    if "mission" not in clips.keys():
        return [None] * n
    value = clips.get("mission")
    # NonTensorData (one mission for all) and NonTensorStack both list out per clip.
    value = value.tolist() if hasattr(value, "tolist") else value
    if isinstance(value, (str, bytes)):
        value = [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"clips['mission'] holds {len(value)} entries for {n} clips")
    out = []
    for m in value:
        while isinstance(m, (list, tuple)) and m:
            m = m[0]
        if isinstance(m, bytes):
            m = m.decode()
        if not isinstance(m, str):
            raise TypeError(f"clips['mission'] entries must be strings, got {type(m).__name__}")
        out.append(m)
    return out


def frame_indices(mask: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Indices of at most ``num_frames`` real steps of one clip, evenly spaced, first and last included.

    ``mask`` is the clip's bool ``[L]`` mask. A clip with fewer real steps than
    ``num_frames`` gives all of them; a request for one frame gives the last real
    step (where a clip cut at success shows the goal).
    """
    real = torch.nonzero(mask, as_tuple=False).flatten()
    n = real.numel()
    if n == 0:
        raise ValueError("mask has no real step")
    k = min(num_frames, n)
    if k == 1:
        return real[-1:]
    # k <= n makes the spacing (n - 1) / (k - 1) >= 1, so rounded positions are distinct.
    pos = torch.linspace(0, n - 1, k).round().long()
    return real[pos]


def check_scores(scores: torch.Tensor, n: int, who: str) -> torch.Tensor:
    """Checks that a scorer returned ``n`` finite probabilities; returns them as float32 on CPU."""
    if not isinstance(scores, (torch.Tensor, list, tuple)) and not hasattr(scores, "__array__"):
        raise TypeError(
            f"{who} returned {type(scores).__name__} ({scores!r:.80}); a scorer returns a float tensor [B] of P(yes)"
        )
    try:
        scores = torch.as_tensor(scores).detach().float().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{who} returned {scores!r:.80}, not numbers: {err}") from None
    if scores.numel() != n:
        raise ValueError(f"{who} returned {scores.numel()} scores for {n} clips")
    if not bool(torch.isfinite(scores).all()) or bool((scores < 0).any() | (scores > 1).any()):
        raise ValueError(f"{who} returned scores outside [0, 1]: {scores.tolist()[:8]}")
    return scores
