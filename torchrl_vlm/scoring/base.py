"""The scorer protocol: a batch of clips in, P(yes) per clip out (VLM-RB step 4).

:class:`Scorer` documents what a scorer receives and returns; :func:`as_scorer_factory`
turns what a user passes (a scorer class, object or function, or a ``functools.partial``)
into what the scoring process is started from, and refuses what cannot travel there;
:func:`needs_frames` is the one rule for whether a scorer looks at frames.
"""
from __future__ import annotations

import functools
import inspect
import pickle
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from tensordict import TensorDictBase

from torchrl_vlm.frames import frame_stride_for

__all__ = [
    "FRAME_STEPS_KEY",
    "PACKED_FRAMES_KEY",
    "Scorer",
    "as_scorer_factory",
    "check_scores",
    "clip_frame_mask",
    "clip_missions",
    "factory_needs_frames",
    "frame_indices",
    "frame_stride_for",
    "needs_frames",
    "unpack_frames",
    "validate_clips",
]


@runtime_checkable
class Scorer(Protocol):
    """A scorer maps a batch of clips to P(yes) per clip: a float tensor ``[B]`` in [0, 1].

    The replay buffer thresholds the answer (``threshold``, 0.5 by default) into a binary
    priority that every step of the clip takes.

    **What it receives**: a :class:`~tensordict.TensorDict` with ``batch_size=[B]``:

    - ``mask``: bool ``[B, L]``, ``True`` on real steps. A clip has L steps (the env's
      :class:`~torchrl_vlm.RenderClips` ``clip_len``), fewer where its episode ended: it is
      padded with ``False`` (and zeros) to the longest clip of the batch;
    - ``frames``: uint8 ``[B, L, H, W, 3]``, where the env renders them. Step ``t``'s frame is
      the state *before* its action (``pixels``), except a clip's last step, whose frame is the
      state its action reached (``("next", "pixels")``), so that an outcome is in view;
    - ``frame_mask``: bool ``[B, L]``, where the env renders only some steps (its ``frame_stride``,
      :class:`~torchrl_vlm.frames.FrameSchedule`): ``True`` on the steps whose frame was rendered,
      the others' frames are zeros. A scorer picks its frames among :func:`clip_frame_mask` (``mask``
      without it);
    - ``events``: bool ``[B, L, E]``, where the env gives them: step ``t``'s are the ones its
      own action caused (the collector's ``("next", "events")``);
    - ``mission``: one string per clip (a non-tensor entry), where the env has one;
    - ``clip_id`` (int64 ``[B]``) and ``step`` (int64 ``[B]``, the transitions the
      :class:`~torchrl_vlm.VLMReplayBuffer` had taken in when it sent the clip), for
      audits: an answer must not depend on them.

    **What it may say about itself**: ``needs_frames`` (a bool, optional): ``False`` for a
    scorer that never looks at ``frames`` (the env then need not render them); a scorer
    without it is taken to look at them (:func:`needs_frames`). ``num_frames`` (an int,
    optional): it shows at most this many frames of a clip, so the env need only render every
    :func:`frame_stride_for`-th step (and each clip's last). ``cache_identity()`` (a
    JSON-able dict, optional): what a verdict cache keys it by (see
    :func:`~torchrl_vlm.scoring.cache.scorer_identity`).

    **How it reaches the scoring process**: a scorer runs in its own process. Pass the
    :class:`~torchrl_vlm.VLMReplayBuffer` (or :class:`~torchrl_vlm.ScoringService`) a scorer
    class, a ``functools.partial`` of one (built in that process: the place to load a model),
    a scorer object, or a module-level function of the clips (both pickled and sent); see
    :func:`as_scorer_factory`.

    Examples:
        A scorer of a custom env's clips, from the events it writes (here: the pole fell):

        >>> import torch
        >>> from tensordict import TensorDict
        >>> class FellScorer:
        ...     needs_frames = False
        ...     def __call__(self, clips):
        ...         fell = clips["events"][..., 0] & clips["mask"]
        ...         return fell.any(-1).float()
        >>> clips = TensorDict({"mask": torch.ones(2, 4, dtype=torch.bool),
        ...                     "events": torch.tensor([[[False], [False], [True], [False]],
        ...                                             [[False], [False], [False], [False]]])}, [2])
        >>> FellScorer()(clips)
        tensor([1., 0.])
        >>> isinstance(FellScorer(), Scorer)
        True
    """

    def __call__(self, clips: TensorDictBase) -> torch.Tensor:
        ...


def needs_frames(scorer: Any) -> bool:
    """Whether ``scorer`` looks at ``frames``: its ``needs_frames`` attribute, ``True`` where it has none.

    The one rule every wrapper (:class:`~torchrl_vlm.NoisyScorer`, :class:`~torchrl_vlm.CachedScorer`,
    ...) follows: a scorer that says nothing is assumed to need frames, the safe side.
    """
    return bool(getattr(scorer, "needs_frames", True))


def factory_needs_frames(factory: Any) -> bool | None:
    """Whether the scorer a factory builds looks at frames, where that can be told without building it
    (a class, a partial of a class, a scorer sent as it is); ``None`` where it cannot."""
    if isinstance(factory, functools.partial):
        if factory.func is _same:
            return needs_frames(factory.args[0])
        if getattr(factory.func, "__name__", "") == "_build_cached" and factory.args:  # a verdict cache's factory
            return factory_needs_frames(factory.args[0])
        factory = factory.func
    if isinstance(factory, type):
        # The rule, read on the class, where the class says it plainly; a wrapper class says None (its
        # instances take their base's), a property or an instance attribute cannot be read here.
        value = factory.__dict__.get("needs_frames", None) if "needs_frames" in vars(factory) else getattr(
            factory, "needs_frames", True)
        return value if isinstance(value, bool) else None
    return None


def _same(scorer):
    """The factory of a scorer object or function that was pickled as it is."""
    return scorer


_FORMS = (
    "Pass one of:\n"
    "  - a scorer class:              MyScorer                           (built in the scoring process)\n"
    "  - a functools.partial of one:  functools.partial(MyScorer, model='...')\n"
    "  - a scorer object:             MyScorer(...)                      (pickled and sent)\n"
    "  - a module-level function:     def my_scorer(clips): return ...   (called with each batch of clips)\n"
    "A lambda or a function defined inside another cannot be pickled: define it at module level."
)


def _required_positional(fn) -> int | None:
    """How many positional arguments ``fn`` needs (``None`` where its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in params)


def as_scorer_factory(scorer: Any, argument: str = "scorer") -> Callable[[], Any]:
    """What a scoring process is started from: a picklable zero-argument callable that returns the scorer.

    Accepts what users pass, and refuses the rest here, in the caller's process, with the forms
    that work (``argument`` names the argument in the message):

    - a class, or a ``functools.partial`` of one: returned as it is, and called in the scoring process;
    - a function, a ``functools.partial`` of one, or a callable object that still needs one argument (the
      clips): the scorer itself, sent as it is (pickled);
    - one that needs no argument: a factory, returned as it is, and called in the scoring process.

    Raises ``TypeError`` for what is not callable, a function of two or more required arguments,
    and anything that does not pickle (a lambda, a local function, an object holding a lock).

    Examples:
        >>> from torchrl_vlm import MiniGridEventScorer
        >>> as_scorer_factory(MiniGridEventScorer) is MiniGridEventScorer
        True
        >>> as_scorer_factory(MiniGridEventScorer("goal_only"))()
        MiniGridEventScorer(definition='goal_only')
        >>> as_scorer_factory(lambda clips: clips["mask"].any(-1).float())
        Traceback (most recent call last):
        ...
        TypeError: scorer=<lambda> cannot be sent to the scoring process ...
    """
    if isinstance(scorer, functools.partial) and scorer.func is _same:
        return scorer  # already made by this function (and checked)
    name = getattr(scorer, "__qualname__", None) or type(scorer).__name__
    if isinstance(scorer, type):
        factory = scorer
    elif isinstance(scorer, functools.partial) and isinstance(scorer.func, type):
        factory = scorer  # builds the scorer in the scoring process
    elif callable(scorer):
        # A function, a partial or a callable object, told apart by the arguments it still needs:
        # the clips (a scorer, sent as it is) or none (a factory, called in the scoring process).
        required = _required_positional(scorer)
        if required is not None and required > 1:
            raise TypeError(f"{argument}={name} takes {required} arguments; a scorer function takes the clips, a "
                            f"factory none.\n{_FORMS}")
        is_factory = required == 0 or (required is None and isinstance(scorer, functools.partial))
        factory = scorer if is_factory else functools.partial(_same, scorer)
    else:
        raise TypeError(f"{argument} must be a scorer or its factory (or a ScoringService, where one is taken), got "
                        f"{type(scorer).__name__} {scorer!r:.80}.\n{_FORMS}")
    try:
        pickle.dumps(factory)
    except Exception as err:  # noqa: BLE001 - pickling fails with many types
        raise TypeError(f"{argument}={name} cannot be sent to the scoring process ({type(err).__name__}: {err}).\n"
                        f"{_FORMS}") from None
    return factory


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
    rendered = clips.get("frame_mask", None)
    if rendered is not None:
        if rendered.dtype != torch.bool or rendered.shape != mask.shape:
            raise ValueError(f"clips['frame_mask'] must be bool {list(mask.shape)} like 'mask', got "
                             f"{rendered.dtype} {list(rendered.shape)}")
        if not bool((mask & rendered).any(-1).all()):
            raise ValueError("every clip needs at least one rendered frame (a real step with 'frame_mask' True)")


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


#: Clips on their way to a scoring process carry their frames packed: ``frames_packed`` (uint8
#: ``[B, K, H, W, 3]``, each clip's frames in step order, zeros past its last) and ``frame_steps`` (int64
#: ``[B, K]``, the clip step each frame shows, ``-1`` past the last), where ``K`` is the most frames a clip of the
#: batch has. A :class:`~torchrl_vlm.VLMReplayBuffer` sends them so (a strided env renders 9 of 32 steps: the
#: other 23 zeros never travel); :func:`unpack_frames` turns them into the ``frames`` a scorer receives.
PACKED_FRAMES_KEY = "frames_packed"
FRAME_STEPS_KEY = "frame_steps"


def unpack_frames(clips: TensorDictBase) -> TensorDictBase:
    """``clips`` with packed frames (:data:`PACKED_FRAMES_KEY`) turned into the protocol's ``frames``
    (uint8 ``[B, L, H, W, 3]``, zeros on steps without one); clips without them are returned as they are.

    Every scoring backend calls it on what it receives, before the scorer sees the clips. Where every step
    has its frame in place (an env that renders each step) the packed block already is ``frames``: no copy.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> packed = TensorDict({"mask": torch.ones(1, 4, dtype=torch.bool),
        ...                      "frames_packed": torch.full((1, 2, 1, 1, 3), 9, dtype=torch.uint8),
        ...                      "frame_steps": torch.tensor([[0, 3]])}, [1])
        >>> unpack_frames(packed)["frames"][0, :, 0, 0, 0]
        tensor([9, 0, 0, 9], dtype=torch.uint8)
    """
    packed = clips.get(PACKED_FRAMES_KEY, None)
    if packed is None:
        return clips
    frame_steps = clips.get(FRAME_STEPS_KEY)
    n_clips, length = clips.get("mask").shape
    width = frame_steps.shape[1]
    valid = frame_steps >= 0
    in_place = width == length and bool(((frame_steps == torch.arange(width)) | ~valid).all())
    if in_place:
        frames = packed
    else:
        frames = packed.new_zeros(n_clips, length, *packed.shape[2:])
        clip = torch.arange(n_clips).unsqueeze(1).expand_as(frame_steps)
        frames[clip[valid], frame_steps[valid]] = packed[valid]
    out = clips.exclude(PACKED_FRAMES_KEY, FRAME_STEPS_KEY)
    out.set("frames", frames)
    return out


def clip_frame_mask(clips: TensorDictBase) -> torch.Tensor:
    """The steps of each clip whose frame a scorer may show: bool ``[B, L]``, ``mask & frame_mask``."""
    mask = clips.get("mask")
    rendered = clips.get("frame_mask", None)
    return mask if rendered is None else mask & rendered


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
