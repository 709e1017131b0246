"""A scripted behaviour policy for OGBench's ``scene`` tasks, from OGBench's own oracles.

The probe needs clips in which progress is not rare, and random arm motions almost
never press a button or move the drawer (a 100k-step SAC pilot rarely did either).
OGBench ships Markov oracles (``ogbench.manipspace.oracles.markov``), the scripted
controllers that collected its datasets: each brings one part of the scene (the cube, a
button, the drawer, the window) to a target read from the env's ``info``. In the
datasets' ``data_collection`` mode the env draws those targets and puts them in
``info`` itself; a single-task env (``mode='task'``) does not, so this module reads the
*task's* targets from the simulator and adds them, and the oracles then work towards the
task itself.

:class:`SceneScriptedPolicy` keeps one oracle at a time. When it is done (its part is at
the target, or its step budget is spent), the next part is drawn uniformly among the
task's unsatisfied subgoals; a drawer or window locked by its button (state 0 locks,
see ``SceneEnv._apply_button_states``) is first unlocked by pressing that button, and a cube
that is to go into the drawer (or come out of it) first has the drawer opened; the part whose
prerequisite was done comes next. This is
a behaviour policy for collecting clips, not a solver: it undoes satisfied subgoals on
the way (unlocking a button the task wants locked), and its oracles sometimes miss.

The oracles draw their resting poses from numpy's global generator (``np.random``), so a
collection is reproducible when that is seeded (:func:`~torchrl_vlm.probe.collect_clips`
does); the part is drawn from the policy's own generator, seeded by the env's reset seed.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SceneScriptedPolicy"]

# The subgoals' order is OGBENCH_SUBGOALS: cube, button_0, button_1, drawer, window.
_CUBE, _BUTTON_0, _BUTTON_1, _DRAWER, _WINDOW = range(5)
_LOCKED = 0  # a button in state 0 locks its part (button 0 the drawer, button 1 the window)
_LOCK_OF = {_DRAWER: _BUTTON_0, _WINDOW: _BUTTON_1}
_ORACLE_OF = {_CUBE: "cube", _BUTTON_0: "button", _BUTTON_1: "button", _DRAWER: "drawer", _WINDOW: "window"}
_DRAWER_OPEN = -0.16  # the drawer's slide range is [-0.16, 0] (0: shut); the window's is [0, 0.2]


class SceneScriptedPolicy:
    """Chooses 5-d actions for one OGBench ``scene`` env in task mode with OGBench's Markov oracles.

    Args:
        env: the gymnasium env (OGBench's ``SceneEnv``, possibly wrapped) whose
            simulator the oracles read.
        min_norm: the oracles' minimum displacement norm (OGBench's data collection: 0.4).

    Call :meth:`reset` after each env reset, then :meth:`act` with each step's ``info``
    (reset's, then each ``step``'s); :meth:`act` returns float ``[5]`` actions in ``[-1, 1]``.
    """

    def __init__(self, env, *, min_norm: float = 0.4):
        from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
        from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
        from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

        self.env = env
        base = env.unwrapped
        if getattr(base, "_num_cubes", None) != 1 or getattr(base, "_num_buttons", None) != 2:
            raise ValueError("SceneScriptedPolicy needs OGBench's scene env (one cube, two buttons)")
        # OGBench's data collection settings for the scene (its cube oracle's reset raises the
        # max_step=100 given here back to 200, as in OGBench's own datasets).
        self._oracles = {
            "cube": CubeMarkovOracle(env=env, min_norm=min_norm, max_step=100),
            "button": ButtonMarkovOracle(env=env, min_norm=min_norm),
            "drawer": DrawerMarkovOracle(env=env, min_norm=min_norm),
            "window": WindowMarkovOracle(env=env, min_norm=min_norm),
        }
        self._rng = np.random.default_rng()
        self._oracle = None
        self._target = None  # the current part's target: a button state, a slide position, or None (the cube)
        self._pending: int | None = None  # the part whose prerequisite the current oracle works on
        #: The subgoal index the current oracle works on (a button's, while it unlocks a part).
        self.part: int | None = None

    def reset(self, seed: int | None = None) -> None:
        """Starts a new episode; ``seed`` (the env's reset seed, if any) reseeds the part choice."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._oracle = None
        self._pending = None
        self.part = None

    def act(self, info: dict, satisfied: np.ndarray) -> np.ndarray:
        """The action for the state ``info`` describes; ``satisfied`` is which subgoals hold there."""
        if self._oracle is None or self._oracle.done:
            self._choose(satisfied)
        full = {**info, **self._target_info()}
        return np.asarray(self._oracle.select_action(None, full), dtype=np.float32)

    def _choose(self, satisfied: np.ndarray) -> None:
        satisfied = np.asarray(satisfied, dtype=bool)
        open_parts = np.flatnonzero(~satisfied)
        if self._pending is not None and not satisfied[self._pending]:
            part = self._pending  # its prerequisite is done: back to it before anything undoes that
        else:
            part = int(self._rng.choice(open_parts)) if open_parts.size else int(self._rng.integers(5))
        base = self.env.unwrapped
        if part == _CUBE:
            self._step_towards_cube()
        elif part in _LOCK_OF:
            target = base._target_drawer_pos if part == _DRAWER else base._target_window_pos
            self._step_towards_slide(part, float(target))
        else:
            self._start(part, int(base._target_button_states[part - _BUTTON_0]))
        self._pending = part if self.part != part else None
        self._oracle.reset(None, {})

    def _step_towards_cube(self) -> None:
        """The cube, or first the drawer's opening when the cube is to go into it or come out of it."""
        base = self.env.unwrapped
        target = base._data.mocap_pos[base._cube_target_mocap_ids[0]]
        cube = base._data.joint("object_joint_0").qpos[:3]
        drawer_shut = base._data.joint("drawer_slide").qpos[0] > _DRAWER_OPEN / 2
        if drawer_shut and (base._is_in_drawer(target) or base._is_in_drawer(cube)):
            self._step_towards_slide(_DRAWER, _DRAWER_OPEN)
        else:
            self._start(_CUBE, None)

    def _step_towards_slide(self, part: int, target: float) -> None:
        """The drawer or window to slide position ``target``, or first the press that unlocks it."""
        button = _LOCK_OF[part]
        if int(self.env.unwrapped._cur_button_states[button - _BUTTON_0]) == _LOCKED:
            self._start(button, 1 - _LOCKED)
        else:
            self._start(part, target)

    def _start(self, part: int, target) -> None:
        self.part, self._target = part, target
        self._oracle = self._oracles[_ORACLE_OF[part]]

    def _target_info(self) -> dict:
        """The ``privileged/target_*`` entries the current oracle reads (data-collection mode's), for now."""
        import ogbench.manipspace.lie as lie

        base = self.env.unwrapped
        data = base._data
        if self.part == _CUBE:
            mocap = base._cube_target_mocap_ids[0]
            return {"privileged/target_block": 0, "privileged/target_block_pos": data.mocap_pos[mocap].copy(),
                    "privileged/target_block_yaw": np.array(
                        [lie.SO3(wxyz=data.mocap_quat[mocap]).compute_yaw_radians()])}
        if self.part in (_BUTTON_0, _BUTTON_1):
            button = self.part - _BUTTON_0
            return {
                "privileged/target_button": button,
                "privileged/target_button_state": self._target,
                "privileged/target_button_top_pos": data.site_xpos[base._button_site_ids[button]].copy(),
            }
        # Where the handle would be with the slide at the target: it moves with the slide joint, along
        # the joint's axis in world coordinates (data.xaxis).
        name = _ORACLE_OF[self.part]
        joint = base._model.joint(f"{name}_slide").id
        handle = data.site_xpos[base._drawer_site_id if self.part == _DRAWER else base._window_site_id]
        shift = (self._target - data.qpos[base._model.jnt_qposadr[joint]]) * data.xaxis[joint]
        return {
            f"privileged/target_{name}_pos": np.array([self._target]),
            f"privileged/target_{name}_handle_pos": handle + shift,
        }
