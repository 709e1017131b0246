"""DeepMind Control's tasks as VLM-RB sees them: each task's visible condition, its mission, its action repeat.

A DMControl task pays its reward for a state. The sparse tasks pay 1 exactly
while a condition holds that a person (or a VLM) can see in one frame: the ball
is in the cup, the pole is upright over a centred cart, the fingertip is inside
the target. That condition is the task's *goal*; :data:`DMC_EVENT_NAMES` are the
events built from it, and :data:`DMC_EVENT_DEFINITIONS` say which of them make a
clip meaningful. A dense task with the same visible condition (``cartpole-swingup``
pays for being near upright; ``reacher-easy`` is sparse with a larger target)
has the same goal; a task with none (``cheetah-run``, ``walker-walk``: a speed,
not a state) has no events, and asking an event scorer for it is an error.

Each condition is written out from dm_control's own task code, cited in its
docstring, and reads the physics after the action (the last physics step of an
action repeat).

This module imports neither torchrl nor dm_control (a scoring process reads
:data:`DMC_EVENT_NAMES` and starts fast); the conditions get the physics passed in.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "DMC_ACTION_REPEAT",
    "DMC_EVENT_DEFINITIONS",
    "DMC_EVENT_NAMES",
    "DMC_GOALS",
    "DMCGoal",
    "default_action_repeat",
    "dmc_goal",
    "dmc_mission",
]

#: Columns of a DMControl env's ``events`` flag vector, in order: ``goal`` while
#: the task's condition holds after this step's action; ``entered_goal`` on the
#: step that makes it hold (it did not before the action); ``first_goal`` on the
#: first such step of an episode.
DMC_EVENT_NAMES = ("goal", "entered_goal", "first_goal")

#: What counts as meaningful for :class:`~torchrl_vlm.DMCEventScorer`, by name, with the
#: same three names as MiniGrid and OGBench. Here the only progress is reaching the goal:
DMC_EVENT_DEFINITIONS = {
    # every entry into the goal state (a ball that falls out of the cup and is caught again counts again)
    "any": ("entered_goal",),
    # the first entry of an episode: what the agent had never done before in it
    "first_progress": ("first_goal",),
    # every step at which the goal holds (the paper's prompt: "goal satisfaction anywhere in the clip")
    "goal_only": ("goal",),
}

#: Action repeat per domain, as the pixel-based DMControl literature sets it (PlaNet, then SAC-AE, CURL,
#: DrQ, RAD): cartpole 8; finger and walker 2; every other domain 4. Env steps = agent steps × repeat.
DMC_ACTION_REPEAT = {"cartpole": 8, "finger": 2, "walker": 2}


def default_action_repeat(domain: str) -> int:
    """The literature's action repeat of ``domain`` (:data:`DMC_ACTION_REPEAT`; 4 elsewhere)."""
    return DMC_ACTION_REPEAT.get(domain, 4)


class DMCGoal(NamedTuple):
    """A task's visible goal: what it is, in words a prompt can use, and how the physics says it holds."""

    #: One sentence for a VLM's prompt (the env's ``mission``).
    mission: str
    #: ``(physics, task) -> bool``: the goal holds in the current physics state.
    holds: Callable


def _ball_in_cup(physics, task) -> bool:
    """ball_in_cup: the ball is inside the cup (``ball_in_cup.Physics.in_target``, the catch task's reward)."""
    return bool(physics.in_target() >= 1)


def _cartpole_upright(physics, task) -> bool:
    """cartpole: the pole within ~8° of upright (cos > 0.995) over a cart within 0.25 of the centre.

    The condition of the sparse tasks' reward (``cartpole.Balance._get_reward(physics, sparse=True)``, which
    is 1 inside both ranges and 0 outside); the dense ``swingup``/``balance`` reward peaks in the same state.
    """
    return bool(task._get_reward(physics, sparse=True) >= 1)


def _reacher_in_target(physics, task) -> bool:
    """reacher: the fingertip touches the target (distance below the two radii: ``reacher.Reacher.get_reward``,
    1 inside and 0 outside; the hard task's target is 0.015 wide, the easy task's 0.05)."""
    radii = physics.named.model.geom_size[["target", "finger"], 0].sum()
    return bool(physics.finger_to_target_dist() <= radii)


def _finger_tip_on_target(physics, task) -> bool:
    """finger turn: the spinner's tip is inside the target (``finger.Turn.get_reward``: ``dist_to_target <= 0``)."""
    return bool(physics.dist_to_target() <= 0)


def _finger_spinning(physics, task) -> bool:
    """finger spin: the spinner turns at 15 rad/s or more (``finger.Spin.get_reward``)."""
    return bool(physics.hinge_velocity() <= -15.0)


_CARTPOLE = DMCGoal("Swing the pole up and keep it balanced upright, with the cart near the centre.",
                    _cartpole_upright)
_REACHER = DMCGoal("Move the arm so that its fingertip touches the red target.", _reacher_in_target)
_TURN = DMCGoal("Turn the spinner until its tip touches the red target.", _finger_tip_on_target)

#: The tasks whose goal can be seen, by ``(domain, task)``. Every other dm_control suite task runs without
#: events (:func:`dmc_mission` still describes it).
DMC_GOALS = {
    ("ball_in_cup", "catch"): DMCGoal("Swing the ball up and catch it in the cup.", _ball_in_cup),
    ("cartpole", "swingup_sparse"): _CARTPOLE,
    ("cartpole", "swingup"): _CARTPOLE,
    ("cartpole", "balance_sparse"): _CARTPOLE,
    ("cartpole", "balance"): _CARTPOLE,
    ("reacher", "easy"): _REACHER,
    ("reacher", "hard"): _REACHER,
    ("finger", "turn_easy"): _TURN,
    ("finger", "turn_hard"): _TURN,
    ("finger", "spin"): DMCGoal("Flick the spinner so that it keeps spinning fast.", _finger_spinning),
}

# Missions of tasks without a visible goal: what they reward, for prompts.
_MISSIONS = {
    "cheetah": "Make the cheetah run forward as fast as it can.",
    "walker": "Make the walker {task} forward.",
    "hopper": "Make the hopper {task}.",
    "quadruped": "Make the quadruped {task}.",
    "humanoid": "Make the humanoid {task}.",
}


def dmc_goal(domain: str, task: str) -> DMCGoal | None:
    """The visible goal of ``domain``-``task`` (:data:`DMC_GOALS`), ``None`` for a task that has none."""
    return DMC_GOALS.get((domain, task))


def dmc_mission(domain: str, task: str) -> str:
    """One sentence describing the task, for a VLM's prompt."""
    goal = dmc_goal(domain, task)
    if goal is not None:
        return goal.mission
    template = _MISSIONS.get(domain, "Solve the {domain} task '{task}'.")
    return template.format(domain=domain.replace("_", " "), task=task.replace("_", " "))
