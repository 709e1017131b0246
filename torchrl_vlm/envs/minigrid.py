"""MiniGrid environments for VLM-guided RL, as TorchRL envs.

The agent learns from the symbolic egocentric view (as in the VLM-RB and LVLM2P
papers); the VLM sees a rendered frame of the *whole* grid. Ground-truth events
(key picked up, door opened, goal reached) are read from the simulator state,
never from pixels, so that :class:`~torchrl_vlm.MiniGridEventScorer` can stand
in for an ideal VLM.
"""
from __future__ import annotations

import functools
import multiprocessing
import re
import signal

import gymnasium as gym
import numpy as np
import torch
from minigrid.core.constants import COLOR_NAMES, COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from torchrl.data import NonTensor
from torchrl.envs import GymWrapper, TransformedEnv
from torchrl.envs.libs.gym import register_gym_spec_conversion

from torchrl_vlm._checks import check_int
from torchrl_vlm.envs.clips import gym_frame_entries, gym_frame_spaces, with_clip_tags
from torchrl_vlm.envs.minigrid_names import EVENT_NAMES, MINIGRID_ENVS
from torchrl_vlm.frames import FrameSchedule
from torchrl_vlm.missions import MISSION_BYTES, encode_mission

__all__ = [
    "MiniGridObservation",
    "episode_step_limit",
    "full_state",
    "make_minigrid_env",
    "mission_features",
    "register_doorkey_12x12",
    "render_full_grid",
]

#: Words of :func:`mission_features`: MiniGrid's colours, then the object kinds a
#: mission can name.
MISSION_WORDS = tuple(COLOR_NAMES) + ("key", "ball", "box", "door", "goal")

# Scale of each channel of the symbolic view, so the observation lies in [0, 1].
_CHANNEL_SCALE = np.array(
    [max(OBJECT_TO_IDX.values()), max(COLOR_TO_IDX.values()), max(STATE_TO_IDX.values())],
    dtype=np.float32,
)
_DOOR = OBJECT_TO_IDX["door"]
_OPEN = STATE_TO_IDX["open"]


@register_gym_spec_conversion(MissionSpace)
def _convert_mission_space(spec, device=None, **kwargs):
    """TorchRL spec for minigrid's free-text ``MissionSpace``: a non-tensor string."""
    return NonTensor((), device=device, example_data="a mission string")


@functools.lru_cache(maxsize=256)
def _mission_words(text: str) -> np.ndarray:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return np.array([word in words for word in MISSION_WORDS], dtype=np.float32)


def mission_features(text: str) -> np.ndarray:
    """A bag of words over :data:`MISSION_WORDS` (float32 ``[len(MISSION_WORDS)]``, 1 where the word occurs).

    Enough for an agent to tell MiniGrid missions that name one colour and one
    object kind apart ("go to the blue door", "fetch a red key"), which is what
    Fetch and GoToDoor need: without it the target is not in the observation.
    Missions naming two objects (PutNext) lose which is which.
    """
    # Called every env step with the episode's one mission: parse it once.
    return _mission_words(text).copy()


def full_state(env: gym.Env) -> dict[str, np.ndarray]:
    """The full MiniGrid state, for planners and oracles (not for the agent).

    - ``grid``: uint8 ``[W, H, 3]``, minigrid's ``(object, colour, state)``
      encoding of every cell (the agent is not drawn in it);
    - ``agent_pos``: int64 ``[2]``, ``(x, y)``; ``agent_dir``: int64 ``[1]``
      (0 right, 1 down, 2 left, 3 up);
    - ``carrying``: uint8 ``[3]``, the encoding of the carried object, zeros if none.
    """
    base = env.unwrapped
    carrying = np.zeros(3, dtype=np.uint8) if base.carrying is None else np.array(base.carrying.encode(), np.uint8)
    return {
        "grid": base.grid.encode(),
        "agent_pos": np.asarray(base.agent_pos, dtype=np.int64),
        "agent_dir": np.array([base.agent_dir], dtype=np.int64),
        "carrying": carrying,
    }


# Per tile size: (what a tile shows -> its row in the atlas, the atlas of tiles drawn so far [n, size, size, 3]).
# What a tile shows: (object kind, colour, open, locked, agent direction).
_ATLASES: dict[int, tuple[dict[tuple, int], np.ndarray]] = {}


def _tile_rows(cells: list, agent: int, agent_dir: int, tile_size: int) -> list[int]:
    """The atlas row of each cell's tile, drawing (once per tile size) the tiles not seen before."""
    index, atlas = _ATLASES.setdefault(tile_size, ({}, np.zeros((0, tile_size, tile_size, 3), np.uint8)))
    rows = []
    for idx, cell in enumerate(cells):
        direction = agent_dir if idx == agent else None
        if cell is None:
            key = (None, None, False, False, direction)
        else:
            key = (cell.type, cell.color, getattr(cell, "is_open", False), getattr(cell, "is_locked", False),
                   direction)
        row = index.get(key)
        if row is None:
            # minigrid's tiles are float after anti-aliasing; its frame buffer is uint8
            tile = Grid.render_tile(cell, agent_dir=direction, tile_size=tile_size).astype(np.uint8)
            atlas = np.concatenate([atlas, tile[None]])
            row = index[key] = len(atlas) - 1
            _ATLASES[tile_size] = (index, atlas)
        rows.append(row)
    return rows


def render_full_grid(env: gym.Env, tile_size: int = 8) -> np.ndarray:
    """The full MiniGrid scene as uint8 ``[H * tile_size, W * tile_size, 3]``.

    Pixel for pixel what ``env.get_frame(highlight=False, tile_size=tile_size)``
    draws, about twenty times faster: minigrid computes the agent's field of view
    even when it does not highlight it, and draws or looks up each tile by
    re-encoding its object, while this reads every tile from an atlas of the
    tiles drawn so far in one indexing step, and lays them out with one reshape.
    """
    base = env.unwrapped
    grid = base.grid
    width, height = grid.width, grid.height
    agent = int(base.agent_pos[1]) * width + int(base.agent_pos[0])
    rows = _tile_rows(grid.grid, agent, base.agent_dir, tile_size)
    frame = _ATLASES[tile_size][1][rows].reshape(height, width, tile_size, tile_size, 3)
    return frame.transpose(0, 2, 1, 3, 4).reshape(height * tile_size, width * tile_size, 3)


def register_doorkey_12x12() -> str:
    """Registers ``MiniGrid-DoorKey-12x12-v0``, the paper's middle size (minigrid ships 5/6/8/16)."""
    env_id = "MiniGrid-DoorKey-12x12-v0"
    if env_id not in gym.registry:
        gym.register(
            id=env_id,
            entry_point="minigrid.envs:DoorKeyEnv",
            kwargs={"size": 12},
        )
    return env_id


register_doorkey_12x12()


class MiniGridObservation(gym.Wrapper):
    """Turns a MiniGrid env's dict observation into what torchrl_vlm consumes.

    Observation entries:

    - ``observation`` (float32, ``7*7*3 + 4``): the agent's symbolic egocentric
      view, each channel divided by its largest index, followed by a one-hot
      direction, and with ``mission_features=True`` a bag of words of the
      mission (see :func:`mission_features`). This is what the agent learns from.
    - ``pixels`` (uint8, ``H x W x 3``), only with ``render=True``: the full grid
      rendered at ``tile_size`` pixels per cell. This is what the VLM sees.
      With ``frame_stride > 1`` only the steps a strided scorer reads are rendered (the others are zeros)
      and ``frame_rendered`` (bool ``[1]``) says which.
    - ``events`` (bool, ``len(EVENT_NAMES)``): what the action that led to this
      observation caused, read from the simulator state.
    - ``success`` (bool): the episode ended on the goal (positive reward).
    - ``mission`` (uint8 ``[MISSION_BYTES]``): the mission string as UTF-8
      bytes; :func:`decode_mission` turns it back into text.
    - ``state``, only with ``state=True``: the full simulator state for
      oracles and planners (see :func:`full_state`).

    Args:
        env: a MiniGrid gymnasium env.
        tile_size: pixels per grid cell of the rendered frame.
        render: whether to render ``pixels``.
        state: whether to expose the full ``state``.
        mission_features: whether to append the mission's bag of words to
            ``observation`` (for tasks whose goal only the mission names).
        frame_stride: render only every ``frame_stride``-th step of a ``clip_len``-step clip and each
            episode's last state (:class:`~torchrl_vlm.frames.FrameSchedule`); ``1`` renders every step.
        clip_len: the clip length the schedule counts in (:class:`~torchrl_vlm.RenderClips`'s).
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        tile_size: int = 8,
        render: bool = True,
        state: bool = False,
        mission_features: bool = False,
        frame_stride: int = 1,
        clip_len: int = 32,
    ):
        super().__init__(env)
        if not isinstance(tile_size, int) or tile_size < 1:
            raise ValueError(f"tile_size must be a positive int, got {tile_size!r}")
        self.tile_size = tile_size
        self.render_frames = render
        self.expose_state = state
        self.mission_features = mission_features
        base = env.unwrapped
        view = env.observation_space["image"].shape
        spaces = {
            "observation": gym.spaces.Box(
                0.0, 1.0, (int(np.prod(view)) + 4 + (len(MISSION_WORDS) if mission_features else 0),),
                dtype=np.float32,
            ),
            "events": gym.spaces.Box(0, 1, (len(EVENT_NAMES),), dtype=np.bool_),
            "success": gym.spaces.Box(0, 1, (1,), dtype=np.bool_),
            "mission": gym.spaces.Box(0, 255, (MISSION_BYTES,), dtype=np.uint8),
        }
        self.frame_schedule = FrameSchedule(clip_len, frame_stride) if render and frame_stride > 1 else None
        self._frame_shape = (base.height * tile_size, base.width * tile_size, 3)
        if render:
            spaces.update(gym_frame_spaces(self._frame_shape, self.frame_schedule))
        if state:
            spaces["state"] = gym.spaces.Dict(
                {
                    "grid": gym.spaces.Box(0, 255, (base.width, base.height, 3), dtype=np.uint8),
                    "agent_pos": gym.spaces.Box(0, max(base.width, base.height), (2,), dtype=np.int64),
                    "agent_dir": gym.spaces.Box(0, 3, (1,), dtype=np.int64),
                    "carrying": gym.spaces.Box(0, 255, (3,), dtype=np.uint8),
                }
            )
        self.observation_space = gym.spaces.Dict(spaces)
        self._had_key = False
        self._door_opened = False
        self._doors: list = []

    def _encode(self, obs, events, success, rendered: bool = True):
        view = (obs["image"].astype(np.float32) / _CHANNEL_SCALE).reshape(-1)
        direction = np.zeros(4, dtype=np.float32)
        direction[obs["direction"]] = 1.0
        parts = [view, direction]
        if self.mission_features:
            parts.append(mission_features(obs["mission"]))
        out = {
            "observation": np.concatenate(parts),
            "events": events,
            "success": np.array([success], dtype=np.bool_),
            "mission": encode_mission(obs["mission"]),
        }
        if self.render_frames:
            out.update(gym_frame_entries(lambda: render_full_grid(self.env, self.tile_size), self._frame_shape,
                                         self.frame_schedule, rendered))
        if self.expose_state:
            out["state"] = full_state(self.env)
        return out

    def _doors_open(self) -> bool:
        return any(door.is_open for door in self._doors)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        # Doors are placed at reset and never move: find them once per episode.
        self._doors = [c for c in self.env.unwrapped.grid.grid if c is not None and c.type == "door"]
        self._had_key = False
        self._door_opened = False
        events = np.zeros(len(EVENT_NAMES), dtype=np.bool_)
        rendered = self.frame_schedule is None or self.frame_schedule.reset()
        return self._encode(obs, events, False, rendered), info

    def step(self, action):
        base = self.env.unwrapped
        carried_before = base.carrying
        doors_before = self._doors_open()
        obs, reward, terminated, truncated, info = self.env.step(action)
        carried = base.carrying
        key_pickup = (
            carried is not None and carried.type == "key" and carried is not carried_before
        )
        door_open = self._doors_open() and not doors_before
        goal = bool(terminated and reward > 0)
        events = np.array(
            [
                key_pickup,
                door_open,
                goal,
                key_pickup and not self._had_key,
                door_open and not self._door_opened,
            ],
            dtype=np.bool_,
        )
        self._had_key |= key_pickup
        self._door_opened |= door_open
        rendered = self.frame_schedule is None or self.frame_schedule.step(terminated or truncated)
        return self._encode(obs, events, goal, rendered), reward, terminated, truncated, info


def _make_gym_env(env_name: str, max_steps: int | None, **wrapper_kwargs) -> gym.Env:
    if multiprocessing.parent_process() is not None:
        # An AsyncVectorEnv worker (parallel=True): Ctrl-C reaches the whole process group, and
        # gymnasium's worker would die of it; the trainer decides what Ctrl-C means.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    kwargs = {} if max_steps is None else {"max_steps": max_steps}
    return MiniGridObservation(gym.make(env_name, **kwargs), **wrapper_kwargs)


def _single_env(env_name, max_steps, device, **wrapper_kwargs) -> GymWrapper:
    return GymWrapper(
        _make_gym_env(env_name, max_steps, **wrapper_kwargs),
        device=device,
        categorical_action_encoding=True,
    )


def episode_step_limit(env_name: str, max_steps: int | None = None) -> int:
    """The number of steps after which an episode of ``env_name`` is truncated (``max_steps`` if set)."""
    if max_steps is not None:
        return int(max_steps)
    probe = gym.make(env_name)
    try:
        return int(probe.unwrapped.max_steps)
    finally:
        probe.close()


def make_minigrid_env(
    env_name: str = "MiniGrid-DoorKey-8x8-v0",
    *,
    num_envs: int = 1,
    clip_len: int = 32,
    tile_size: int = 8,
    render: bool = True,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    parallel: bool = False,
    max_steps: int | None = None,
    worker_id: int | None = None,
    state: bool = False,
    mission_features: bool = False,
    frame_stride: int = 1,
) -> TransformedEnv:
    """Builds a MiniGrid TorchRL env that tags its steps with clip ids.

    The env is a :class:`~torchrl.envs.GymWrapper` under a
    :class:`~torchrl.envs.TransformedEnv` with :class:`RenderClips`,
    :class:`~torchrl.envs.StepCounter` and :class:`~torchrl.envs.RewardSum`.
    With ``num_envs > 1`` it wraps a gymnasium vector env (``SyncVectorEnv``, or
    ``AsyncVectorEnv`` with ``parallel=True``) with auto-reset off, so TorchRL
    resets finished envs itself (partial resets) and one TorchRL step drives
    every env: about 2.4x the steps/s of a ``SerialEnv`` of single envs here.

    Entries of a step: ``observation`` (float, symbolic view + direction),
    ``pixels`` (uint8 full-grid frame, if ``render``), ``events`` (bool, see
    :data:`EVENT_NAMES`), ``success``, ``mission`` (UTF-8 bytes, see
    :func:`decode_mission`), ``clip_id``, ``clip_step``, ``step_count`` and
    ``episode_reward``. Actions are categorical (int64).

    Args:
        env_name: a gymnasium MiniGrid id; see :data:`MINIGRID_ENVS`.
        num_envs: number of envs in the batch; ``1`` gives an unbatched env.
        clip_len: VLM-RB's clip length L (paper: 32).
        tile_size: pixels per cell of the rendered frame (8 gives 64x64 on 8x8).
        render: render ``pixels``; turn off for runs that never score frames.
        seed: seeds the envs (each batched env gets ``seed + i``).
        device: device of the output tensors.
        parallel: step the batched envs in worker processes.
        max_steps: override the env's episode step limit.
        worker_id: a fixed salt for clip ids (see :class:`RenderClips`); leave it ``None``
            unless each worker gets its own: every env, clone and worker then draws its own.
        state: also expose the full simulator ``state`` (grid encoding, agent
            position and direction, carried object; see :func:`full_state`), for
            planners and oracles. The agent should not learn from it.
        mission_features: append a bag of words of the mission to
            ``observation`` (see :func:`mission_features`); Fetch and GoToDoor
            need it, since only the mission says which object or door is the goal.
        frame_stride: with ``render``, render only every ``frame_stride``-th step of a clip and
            each episode's last state, as a scorer that reads a few frames of each clip needs
            (:class:`~torchrl_vlm.frames.FrameSchedule`; ``TransformersScorer.frame_stride``);
            the other steps' ``pixels`` are zeros and a ``frame_rendered`` entry says which are real.
            ``1`` (default) renders every step.

    Examples:
        >>> env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, seed=0)
        >>> td = env.rollout(40)
        >>> td["pixels"].shape, td["clip_id"].dtype
        (torch.Size([2, 40, 40, 40, 3]), torch.int64)
    """
    if not isinstance(env_name, str) or env_name not in gym.registry:
        known = ", ".join(MINIGRID_ENVS)
        raise ValueError(
            f"env_name={env_name!r} is not a registered gymnasium env; known MiniGrid choices: {known}"
        )
    entry_point = gym.registry[env_name].entry_point
    if not (isinstance(entry_point, str) and entry_point.startswith("minigrid")):
        raise ValueError(
            f"env_name={env_name!r} is a gymnasium env but not a MiniGrid one (entry point {entry_point!r}); "
            f"known MiniGrid choices: {', '.join(MINIGRID_ENVS)}"
        )
    for name, value in (("num_envs", num_envs), ("clip_len", clip_len), ("tile_size", tile_size),
                        ("frame_stride", frame_stride)):
        check_int(name, value)
    check_int("max_steps", max_steps, none_means="the env's own limit")

    wrapper_kwargs = dict(tile_size=tile_size, render=render, state=state, mission_features=mission_features,
                          frame_stride=frame_stride, clip_len=clip_len)
    if num_envs == 1:
        base = _single_env(env_name, max_steps, device, **wrapper_kwargs)
    else:
        make_one = functools.partial(_make_gym_env, env_name, max_steps, **wrapper_kwargs)
        vector_cls = gym.vector.AsyncVectorEnv if parallel else gym.vector.SyncVectorEnv
        vector = vector_cls(
            [make_one] * num_envs, autoreset_mode=gym.vector.AutoresetMode.DISABLED
        )
        base = GymWrapper(vector, device=device, categorical_action_encoding=True)
    return with_clip_tags(base, clip_len=clip_len, frames=render, worker_id=worker_id, seed=seed)
