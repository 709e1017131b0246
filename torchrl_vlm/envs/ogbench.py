"""OGBench's manipulation ``scene`` tasks for VLM-guided RL, as TorchRL envs.

The agent learns from OGBench's 40-d state observation; the VLM sees a frame
rendered offscreen by MuJoCo (only with ``render=True``). Ground-truth events
(a subgoal of the task becomes satisfied, the task is solved) are read from the
simulator, never from pixels, so that :class:`~torchrl_vlm.OGBenchEventScorer`
can stand in for an ideal VLM.

The scene (the same objects in every ``scene`` task) holds one cube, two
buttons, a drawer and a window; button 0 locks/unlocks the drawer and button 1
the window. A task fixes a target configuration of all five, and OGBench's
``SceneEnv._compute_successes()`` returns, in this order, whether each part is
at its target. These are the subgoals (see :data:`OGBENCH_SUBGOALS`):

- ``subgoal_0``, cube: the cube's centre is within 4 cm of its target position;
- ``subgoal_1``, button 0: button 0's lock state (it toggles on each press)
  equals the target one, i.e. the drawer is locked or unlocked as the task asks;
- ``subgoal_2``, button 1: the same for button 1, which locks the window;
- ``subgoal_3``, drawer: the drawer's slide position is within 4 cm of its target;
- ``subgoal_4``, window: the window's slide position is within 4 cm of its target.

The task is solved when all five hold at once.

This module imports only numpy and gymnasium at import time (torchrl, mujoco and
ogbench are imported by :func:`make_ogbench_env`), so that a scoring process
reading :data:`OGBENCH_EVENT_NAMES` starts fast.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from torchrl_vlm._checks import check_int

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torchrl.envs import TransformedEnv

__all__ = [
    "EPISODE_STEPS",
    "OGBENCH_ENVS",
    "OGBENCH_EVENT_NAMES",
    "OGBENCH_SUBGOALS",
    "OGBenchObservation",
    "make_ogbench_env",
]

#: The OGBench single-task envs the project supports (the ``scene`` tasks 3 to 5).
OGBENCH_ENVS = (
    "scene-singletask-task3-v0",
    "scene-singletask-task4-v0",
    "scene-singletask-task5-v0",
)

#: What each subgoal column ``subgoal_<i>`` stands for: the ``i``-th entry of
#: OGBench's ``SceneEnv._compute_successes()``, flattened (module docstring).
OGBENCH_SUBGOALS = ("cube", "button_0", "button_1", "drawer", "window")

#: Names of the columns of the ``events`` flag vector, in order:
#: ``subgoal_<i>`` fires when subgoal ``i`` goes from unsatisfied to satisfied
#: at this step; ``first_subgoal_<i>`` only the first time it does so in an
#: episode (a subgoal undone and redone is not new progress); ``goal`` when the
#: task is solved at this step (which ends the episode).
OGBENCH_EVENT_NAMES = (
    *(f"subgoal_{i}" for i in range(len(OGBENCH_SUBGOALS))),
    *(f"first_subgoal_{i}" for i in range(len(OGBENCH_SUBGOALS))),
    "goal",
)

#: Steps after which an episode is truncated: the ``max_episode_steps`` OGBench
#: registers for its ``scene`` single-task envs (gymnasium's ``TimeLimit``).
EPISODE_STEPS = 750

# Size of OGBench's state observation for the scene envs.
_OBSERVATION_SIZE = 40
_NUM_SUBGOALS = len(OGBENCH_SUBGOALS)


def _plain_scene(scene) -> None:
    """A ``scene_callback`` for OGBench's ``render``: no shadows, no reflections.

    In software rendering (EGL on CPU) they make a frame about 3x slower, and a
    VLM judging task progress does not need them.
    """
    import mujoco

    scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False


def _load_triton_before_egl() -> None:
    """Imports triton (if installed) before an OGBench env is built.

    Here, with ``MUJOCO_GL=egl`` (Mesa's software EGL), loading triton's compiled
    extension *after* an OGBench env has been built segfaults the process, even
    if nothing was rendered, and tensordict imports triton: building the gym env
    and then importing torchrl crashes. Loaded first, both work.
    """
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


class OGBenchObservation(gym.Wrapper):
    """Turns an OGBench ``scene`` env's step into what torchrl_vlm consumes.

    Observation entries:

    - ``observation`` (float32 ``[40]``): OGBench's state observation (arm
      proprioception, cube pose, buttons, drawer, window). The agent learns from it.
    - ``events`` (bool ``[len(OGBENCH_EVENT_NAMES)]``): what the action that led
      to this observation caused (see :data:`OGBENCH_EVENT_NAMES`).
    - ``success`` (bool ``[1]``): the task is solved after this step's action.
    - ``pixels`` (uint8 ``[frame_size, frame_size, 3]``), only with
      ``render=True``: the scene from OGBench's ``front`` camera, without
      shadows or reflections. This is what the VLM sees.
    - ``scripted_action`` (float32 ``[5]``), only with ``scripted=True``: what
      :class:`~torchrl_vlm.envs.ogbench_scripted.SceneScriptedPolicy` (OGBench's
      own oracles, working towards this task) would do in this state. The probe
      collects clips with it; nothing makes the env take it.

    The env must be made with ``success_timing='post'`` (as
    :func:`make_ogbench_env` does), so that OGBench's own ``success``, reward and
    termination describe the state *after* the action, like the events do.

    Args:
        env: an OGBench ``scene`` env (``ogbench.make_env_and_datasets(..., env_only=True)``).
        render: whether to render ``pixels``; without it nothing is rendered.
        frame_size: the side of the rendered frame, which must be the env's
            render width and height.
        scripted: whether to compute ``scripted_action``.
        frame_stride, clip_len: render ``pixels`` on every ``frame_stride``-th step of a
            ``clip_len``-step clip and at each episode's end only, zeros elsewhere, with a
            ``frame_rendered`` entry (:class:`~torchrl_vlm.frames.FrameSchedule`; ``1``: every step).
    """

    def __init__(self, env: gym.Env, *, render: bool = False, frame_size: int = 64, scripted: bool = False,
                 frame_stride: int = 1, clip_len: int = 32):
        super().__init__(env)
        base = env.unwrapped
        if getattr(base, "_success_timing", None) != "post":
            # With OGBench's singletask default ('pre'), success and termination
            # lag the action by one step: row t would report what action t-1 did.
            raise ValueError(
                "OGBenchObservation needs an env made with success_timing='post', got "
                f"{getattr(base, '_success_timing', None)!r}"
            )
        self.render_frames = render
        self.frame_size = frame_size
        spaces = {
            "observation": gym.spaces.Box(-np.inf, np.inf, (_OBSERVATION_SIZE,), dtype=np.float32),
            "events": gym.spaces.Box(0, 1, (len(OGBENCH_EVENT_NAMES),), dtype=np.bool_),
            "success": gym.spaces.Box(0, 1, (1,), dtype=np.bool_),
        }
        # Imported here, not at the top: torch must not load before _load_triton_before_egl has run.
        from torchrl_vlm.envs.clips import gym_frame_entries, gym_frame_spaces
        from torchrl_vlm.frames import FrameSchedule

        self._frame_entries = gym_frame_entries
        self.frame_schedule = FrameSchedule(clip_len, frame_stride) if render and frame_stride > 1 else None
        if render:
            spaces.update(gym_frame_spaces((frame_size, frame_size, 3), self.frame_schedule))
        self.scripted = None
        if scripted:
            from torchrl_vlm.envs.ogbench_scripted import SceneScriptedPolicy

            self.scripted = SceneScriptedPolicy(env)
            spaces["scripted_action"] = gym.spaces.Box(-1, 1, (5,), dtype=np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        # Subgoals satisfied after the last step (or reset), and those that have
        # become satisfied at least once this episode.
        self._satisfied = np.zeros(_NUM_SUBGOALS, dtype=np.bool_)
        self._achieved = np.zeros(_NUM_SUBGOALS, dtype=np.bool_)

    def subgoals(self) -> np.ndarray:
        """Which subgoals hold in the simulator's current state (bool ``[5]``, :data:`OGBENCH_SUBGOALS`)."""
        cube, buttons, drawer, window = self.env.unwrapped._compute_successes()
        flat = np.array([*cube, *buttons, drawer, window], dtype=np.bool_)
        if flat.shape != (_NUM_SUBGOALS,):
            raise RuntimeError(
                f"expected {_NUM_SUBGOALS} subgoals {OGBENCH_SUBGOALS} from OGBench's scene env, got {flat.size}"
            )
        return flat

    def _encode(self, obs, events, success, info, rendered: bool = True):
        if obs.shape != (_OBSERVATION_SIZE,):
            raise RuntimeError(f"expected OGBench's {_OBSERVATION_SIZE}-d state observation, got {obs.shape}")
        out = {
            "observation": obs.astype(np.float32),
            "events": events,
            "success": np.array([success], dtype=np.bool_),
        }
        if self.render_frames:
            out.update(self._frame_entries(lambda: self.env.unwrapped.render(scene_callback=_plain_scene),
                                         (self.frame_size, self.frame_size, 3), self.frame_schedule, rendered))
        if self.scripted is not None:
            out["scripted_action"] = self.scripted.act(info, self._satisfied)
        return out

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        # Subgoals that hold at reset have not been caused by any action: the
        # first step compares against them.
        self._satisfied = self.subgoals()
        self._achieved[:] = False
        if self.scripted is not None:
            self.scripted.reset(seed=kwargs.get("seed"))
        rendered = self.frame_schedule is None or self.frame_schedule.reset()
        return self._encode(obs, np.zeros(len(OGBENCH_EVENT_NAMES), dtype=np.bool_), False, info, rendered), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        # After OGBench's step (post_step has updated the button states), the
        # simulator holds the state that this action led to.
        now = self.subgoals()
        became = now & ~self._satisfied
        first = became & ~self._achieved
        self._achieved |= became
        self._satisfied = now
        # success_timing='post': OGBench's success is all(subgoals) of this state.
        success = bool(info["success"])
        events = np.concatenate([became, first, [success]])
        rendered = self.frame_schedule is None or self.frame_schedule.step(terminated or truncated)
        return self._encode(obs, events, success, info, rendered), reward, terminated, truncated, info


def _make_gym_env(env_name: str, render: bool, frame_size: int, scripted: bool = False, frame_stride: int = 1,
                  clip_len: int = 32) -> gym.Env:
    _load_triton_before_egl()
    import ogbench

    # make_env_and_datasets takes a *dataset* name and strips the dataset type
    # (the word before "singletask") to find the env; with env_only=True nothing
    # is downloaded, so which dataset type we name ("play") does not matter.
    dataset_name = env_name.replace("-singletask-", "-play-singletask-", 1)
    env = ogbench.make_env_and_datasets(
        dataset_name,
        env_only=True,
        # OGBench's singletask envs default to 'pre' (success, reward and
        # termination of the state before the action); 'post' makes them those
        # of the state the action led to, so row t's success, reward and done
        # describe what action t did, and the episode ends on the solving step.
        success_timing="post",
        # The offscreen buffer and the renderer take this size (unused if not rendering).
        width=frame_size,
        height=frame_size,
    )
    return OGBenchObservation(env, render=render, frame_size=frame_size, scripted=scripted, frame_stride=frame_stride,
                              clip_len=clip_len)


def make_ogbench_env(
    env_name: str = "scene-singletask-task3-v0",
    *,
    num_envs: int = 1,
    clip_len: int = 32,
    render: bool = False,
    frame_size: int = 64,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    worker_id: int | None = None,
    scripted: bool = False,
    frame_stride: int = 1,
) -> TransformedEnv:
    """Builds an OGBench ``scene`` TorchRL env that tags its steps with clip ids.

    The env is a :class:`~torchrl.envs.GymWrapper` over OGBench's env (built with
    ``ogbench.make_env_and_datasets(..., env_only=True)``, no dataset download),
    or over a gymnasium ``SyncVectorEnv`` of them with auto-reset off for
    ``num_envs > 1`` (TorchRL resets finished envs itself), under a
    :class:`~torchrl.envs.TransformedEnv` with :class:`RenderClips`,
    :class:`~torchrl.envs.StepCounter` and :class:`~torchrl.envs.RewardSum`.

    Entries of a step: ``observation`` (float32 ``[40]``), ``events`` (bool, see
    :data:`OGBENCH_EVENT_NAMES`), ``success`` (bool ``[1]``, the task solved by
    this step's action), ``pixels`` (uint8 ``[frame_size, frame_size, 3]``, only
    if ``render``), ``clip_id``, ``clip_step``, ``step_count``,
    ``episode_reward``, and ``terminated``/``truncated``/``done``. Actions are
    float32 ``[5]`` in ``[-1, 1]`` (end-effector displacement x/y/z, yaw, gripper).
    An episode terminates on the step that solves the task and is truncated
    after :data:`EPISODE_STEPS` (750) steps. The reward is OGBench's
    single-task reward (the number of unsatisfied subgoals, negated) of the
    state after the action.

    Args:
        env_name: one of :data:`OGBENCH_ENVS`.
        num_envs: number of envs in the batch; ``1`` gives an unbatched env.
        clip_len: VLM-RB's clip length L (paper: 32).
        render: render ``pixels`` with MuJoCo offscreen (set ``MUJOCO_GL=egl``
            before mujoco is imported); software rendering costs tens of ms a
            frame, so leave it off unless a VLM scores frames.
        frame_size: side of the rendered frame in pixels.
        seed: seeds the envs (each batched env gets ``seed + i``).
        device: device of the output tensors.
        worker_id: a fixed salt for clip ids (see :class:`RenderClips`); leave it
            ``None`` unless each worker gets its own.
        scripted: add ``scripted_action`` (float32 ``[5]``), the action of a
            scripted policy built from OGBench's oracles
            (:class:`~torchrl_vlm.envs.ogbench_scripted.SceneScriptedPolicy`), for
            collecting experience in which subgoals get done.
        frame_stride: with ``render``, render only every ``frame_stride``-th step of a clip and
            each episode's last state, as a scorer that reads a few frames of each clip needs
            (:class:`~torchrl_vlm.frames.FrameSchedule`); the other steps' ``pixels`` are zeros
            and a ``frame_rendered`` entry says which are real. ``1`` (default) renders every step.

    Examples:
        >>> env = make_ogbench_env("scene-singletask-task3-v0", num_envs=2, seed=0)
        >>> td = env.rollout(10)
        >>> td["next", "events"].shape, td["action"].shape
        (torch.Size([2, 10, 11]), torch.Size([2, 10, 5]))
    """
    if not isinstance(env_name, str) or env_name not in OGBENCH_ENVS:
        raise ValueError(f"env_name={env_name!r} is not supported; choose one of {', '.join(OGBENCH_ENVS)}")
    check_int("num_envs", num_envs)
    check_int("clip_len", clip_len)
    check_int("frame_stride", frame_stride)
    check_int("frame_size", frame_size)
    if not isinstance(render, (bool, np.bool_)):
        raise TypeError(f"render must be a bool, got {type(render).__name__} {render!r}")
    if seed is not None:
        check_int("seed", seed, 0)
    if not isinstance(scripted, (bool, np.bool_)):
        raise TypeError(f"scripted must be a bool, got {type(scripted).__name__} {scripted!r}")
    render, scripted = bool(render), bool(scripted)

    from torchrl.envs import GymWrapper

    from torchrl_vlm.envs.clips import with_clip_tags

    if num_envs == 1:
        base = GymWrapper(_make_gym_env(env_name, render, frame_size, scripted, frame_stride, clip_len), device=device)
    else:
        make_one = functools.partial(_make_gym_env, env_name, render, frame_size, scripted, frame_stride, clip_len)
        vector = gym.vector.SyncVectorEnv(
            [make_one] * num_envs, autoreset_mode=gym.vector.AutoresetMode.DISABLED
        )
        base = GymWrapper(vector, device=device)
    return with_clip_tags(base, clip_len=clip_len, frames=render, worker_id=worker_id, seed=seed)
