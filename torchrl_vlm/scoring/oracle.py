"""Scorers that need no weights: ground truth, controlled noise, and fixed latency.

They are named stand-ins, never silent fallbacks:

- :class:`MiniGridEventScorer` (:class:`OGBenchEventScorer` for OGBench's
  ``scene`` tasks, :class:`DMCEventScorer` for DeepMind Control) reads the simulator's events and plays an
  *ideal* VLM, the upper bound of what a scorer can give VLM-RB;
- :class:`NoisyScorer` gives any scorer chosen false-positive and
  false-negative rates, which answers "how accurate must my VLM be?";
- :class:`DelayedScorer` adds a fixed latency that uses no CPU, to measure the
  pipeline's overhead as if a VLM ran on its own GPU.
"""

from __future__ import annotations

import functools
import time

import torch
from tensordict import TensorDictBase

from torchrl_vlm.envs.dmc_goals import DMC_EVENT_DEFINITIONS, DMC_EVENT_NAMES
from torchrl_vlm.envs.minigrid_names import EVENT_NAMES
from torchrl_vlm.envs.ogbench import OGBENCH_EVENT_NAMES
from torchrl_vlm.scoring.base import needs_frames, validate_clips

__all__ = [
    "DMCEventScorer",
    "DelayedScorer",
    "EVENT_DEFINITIONS",
    "MiniGridEventScorer",
    "NoisyScorer",
    "OGBENCH_EVENT_DEFINITIONS",
    "OGBenchEventScorer",
]

#: What counts as meaningful, by name. The paper's prompt asks for "goal
#: satisfaction"; ``any`` and ``first_progress`` also credit the sub-goals.
EVENT_DEFINITIONS = {
    # every key pick-up, door opening or goal
    "any": ("key_pickup", "door_open", "goal"),
    # the first pick-up and first opening of an episode, and the goal:
    # re-picking a dropped key is not progress
    "first_progress": ("first_key_pickup", "first_door_open", "goal"),
    # reaching the goal only
    "goal_only": ("goal",),
}

#: The same three definitions for OGBench's ``scene`` tasks, whose event columns
#: are :data:`~torchrl_vlm.envs.ogbench.OGBENCH_EVENT_NAMES`.
OGBENCH_EVENT_DEFINITIONS = {
    # every step at which a subgoal (cube, a button's lock state, drawer, window
    # at its target) becomes satisfied, and the goal
    "any": tuple(e for e in OGBENCH_EVENT_NAMES if e.startswith("subgoal_")) + ("goal",),
    # the first time in an episode that each subgoal becomes satisfied, and the
    # goal: a subgoal undone and redone is not new progress
    "first_progress": tuple(e for e in OGBENCH_EVENT_NAMES if e.startswith("first_subgoal_")) + ("goal",),
    # the task solved only
    "goal_only": ("goal",),
}


def _built(base):
    """A scorer from a scorer or its factory (a class or a ``functools.partial``)."""
    if isinstance(base, (type, functools.partial)):
        base = base()
    if not callable(base):
        raise TypeError(f"base must be a scorer or a factory of one, got {type(base).__name__}")
    return base


class _EventScorer:
    """Shared logic of the ground-truth event scorers: one subclass per domain.

    A subclass names its domain's event columns (``event_names``), its named
    definitions (``definitions``) and where the columns are documented
    (``names_label``). A clip is meaningful (P(yes) = 1) if any chosen event
    column fires on a real step (``mask``) of the clip, else 0.
    """

    needs_frames = False
    event_names: tuple[str, ...] = ()
    definitions: dict[str, tuple[str, ...]] = {}
    names_label = ""

    def __init__(self, definition: str | tuple[str, ...]):
        if isinstance(definition, str):
            if definition not in self.definitions:
                raise ValueError(
                    f"definition must be one of {sorted(self.definitions)} or a tuple of event "
                    f"names from {self.event_names}, got {definition!r}"
                )
            events = self.definitions[definition]
        else:
            events = tuple(definition)
            unknown = [e for e in events if e not in self.event_names]
            if unknown or not events:
                raise ValueError(f"unknown event names {unknown}; choose from {self.event_names}")
        self.definition = definition
        self.columns = torch.tensor([self.event_names.index(e) for e in events])

    def __call__(self, clips: TensorDictBase) -> torch.Tensor:
        validate_clips(clips, require_frames=False)
        events = clips.get("events", None)
        if events is None:
            raise ValueError(f"{type(self).__name__} needs the clips' 'events' entry (bool [B, L, E])")
        width = len(self.event_names)
        if events.ndim != 3 or events.shape[-1] != width:
            raise ValueError(f"clips['events'] must be [B, L, {width}] ({self.names_label}), got {list(events.shape)}")
        hit = events[..., self.columns].any(-1) & clips["mask"]
        return hit.any(-1).float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(definition={self.definition!r})"


class MiniGridEventScorer(_EventScorer):
    """An idealised VLM: P(yes) = 1 if a chosen ground-truth event happens in the clip, else 0.

    It reads the clips' ``events`` entry (bool ``[B, L, E]``, columns named by
    :data:`~torchrl_vlm.envs.minigrid_names.EVENT_NAMES`), only on real steps (``mask``).

    Args:
        definition: which events make a clip meaningful: a name from
            :data:`EVENT_DEFINITIONS` (``"any"``, ``"first_progress"``,
            ``"goal_only"``) or a tuple of event names.
    """

    event_names = EVENT_NAMES
    definitions = EVENT_DEFINITIONS
    names_label = "EVENT_NAMES"

    def __init__(self, definition: str | tuple[str, ...] = "any"):
        super().__init__(definition)


class OGBenchEventScorer(_EventScorer):
    """An idealised VLM for OGBench's ``scene`` tasks: P(yes) = 1 if a chosen event happens in the clip.

    It reads the clips' ``events`` entry (bool ``[B, L, E]``, columns named by
    :data:`~torchrl_vlm.envs.ogbench.OGBENCH_EVENT_NAMES`: a subgoal of the task
    (cube, either button's lock state, drawer, window at its target) becoming
    satisfied, the first time it does in the episode, or the task solved), only
    on real steps (``mask``).

    Args:
        definition: which events make a clip meaningful: a name from
            :data:`OGBENCH_EVENT_DEFINITIONS` or a tuple of event names:

            - ``"any"``: any subgoal becoming satisfied, or the goal;
            - ``"first_progress"`` (default): a subgoal becoming satisfied for
              the first time in the episode, or the goal; undoing and redoing a
              subgoal (pressing a button twice) earns nothing the second time;
            - ``"goal_only"``: the task solved.

    Examples:
        >>> scorer = OGBenchEventScorer("goal_only")
        >>> scorer.needs_frames
        False
    """

    event_names = OGBENCH_EVENT_NAMES
    definitions = OGBENCH_EVENT_DEFINITIONS
    names_label = "OGBENCH_EVENT_NAMES"

    def __init__(self, definition: str | tuple[str, ...] = "first_progress"):
        super().__init__(definition)


class DMCEventScorer(_EventScorer):
    """An idealised VLM for DeepMind Control: P(yes) = 1 if the task's visible goal is reached in the clip.

    It reads the clips' ``events`` entry (bool ``[B, L, 3]``, columns named by
    :data:`~torchrl_vlm.envs.dmc_goals.DMC_EVENT_NAMES`), only on real steps (``mask``). The tasks
    with a visible goal (the ball in the cup, the pole upright over a centred cart, the fingertip
    in the target, ...) are :data:`~torchrl_vlm.envs.dmc_goals.DMC_GOALS`; a task without one has
    no events and cannot be scored this way.

    Args:
        definition: which events make a clip meaningful: a name from
            :data:`~torchrl_vlm.envs.dmc_goals.DMC_EVENT_DEFINITIONS` or a tuple of event names:

            - ``"any"``: the goal entered (each time it is, in an episode);
            - ``"first_progress"`` (default): the goal entered for the first time in the episode;
            - ``"goal_only"``: any step at which the goal holds.

    Examples:
        >>> scorer = DMCEventScorer("first_progress")
        >>> scorer.columns.tolist()
        [2]
    """

    event_names = DMC_EVENT_NAMES
    definitions = DMC_EVENT_DEFINITIONS
    names_label = "DMC_EVENT_NAMES"

    def __init__(self, definition: str | tuple[str, ...] = "first_progress"):
        super().__init__(definition)


class NoisyScorer:
    """Wraps a scorer and flips its verdicts at chosen rates.

    The base verdict is ``base(clips) >= 0.5``. A positive verdict becomes 0
    with probability ``false_negative_rate``; a negative one becomes 1 with
    probability ``false_positive_rate``. The output is 0 or 1.

    Args:
        base: the scorer to corrupt, or its factory (a class or a
            ``functools.partial``), so the whole thing stays picklable for
            :class:`ScoringService` and the base is built in the scoring process.
        false_positive_rate: P(yes | not meaningful), in [0, 1].
        false_negative_rate: P(no | meaningful), in [0, 1].
        seed: seeds the flips, so runs are reproducible.
    """

    #: Set per instance from the wrapped scorer (``None`` here: a factory of this class cannot tell).
    needs_frames: bool | None = None

    def __init__(self, base, false_positive_rate: float = 0.0, false_negative_rate: float = 0.0, seed: int = 0):
        for name, rate in (("false_positive_rate", false_positive_rate), ("false_negative_rate", false_negative_rate)):
            if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a float in [0, 1], got {rate!r}")
        self.base = _built(base)
        self.false_positive_rate = float(false_positive_rate)
        self.false_negative_rate = float(false_negative_rate)
        self.seed = seed  # a setting: part of the scorer's cache identity
        self.generator = torch.Generator().manual_seed(seed)
        self.needs_frames = needs_frames(self.base)

    def __call__(self, clips: TensorDictBase) -> torch.Tensor:
        truth = torch.as_tensor(self.base(clips)).float().cpu() >= 0.5
        u = torch.rand(truth.shape, generator=self.generator)
        flipped = torch.where(truth, u < self.false_negative_rate, u < self.false_positive_rate)
        return (truth ^ flipped).float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r}, fpr={self.false_positive_rate}, fnr={self.false_negative_rate})"


class DelayedScorer:
    """Adds a fixed latency per call (a sleep, so it uses no CPU) to another scorer.

    It models a VLM on its own accelerator: the scoring process waits, the
    learner's CPU does not. Used by the pipeline-overhead benchmark and tests.
    """

    #: Set per instance from the wrapped scorer (``None`` here: a factory of this class cannot tell).
    needs_frames: bool | None = None

    def __init__(self, base, latency_s: float):
        if not latency_s >= 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s!r}")
        self.base = _built(base)
        self.latency_s = float(latency_s)
        self.needs_frames = needs_frames(self.base)

    def __call__(self, clips: TensorDictBase) -> torch.Tensor:
        time.sleep(self.latency_s)
        return self.base(clips)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r}, latency_s={self.latency_s})"
