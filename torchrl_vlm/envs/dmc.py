"""DeepMind Control Suite tasks for VLM-guided RL, as TorchRL envs built on :class:`~torchrl.envs.DMControlEnv`.

The agent learns from the task's state (dm_control's observation dict, flattened
into one float32 ``observation``); the VLM sees a frame rendered by the physics'
own renderer (offscreen, ``MUJOCO_GL=egl``), only when something looks at it.
Events are read from the physics after each action (:mod:`torchrl_vlm.envs.dmc_goals`
says what each task's goal is), never from pixels, so that
:class:`~torchrl_vlm.DMCEventScorer` can stand in for an ideal VLM.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torchrl.data import Binary, Bounded
from torchrl.envs import CatTensors, Compose, DMControlEnv, DoubleToFloat, SerialEnv, Transform, TransformedEnv

from torchrl_vlm._checks import check_int
from torchrl_vlm.envs.clips import with_clip_tags
from torchrl_vlm.envs.dmc_goals import DMC_EVENT_NAMES, default_action_repeat, dmc_goal, dmc_mission
from torchrl_vlm.frames import FRAME_RENDERED_KEY, FrameSchedule
from torchrl_vlm.missions import MISSION_BYTES, encode_mission

__all__ = ["DMCTaskState", "dmc_tasks", "make_dmc_env"]

#: ``render_quality`` values: ``"fast"`` sizes MuJoCo's shadow map to the frame and turns multisampling off,
#: ``"full"`` keeps each model's own settings (dm_control's frames, pixel for pixel).
_RENDER_QUALITIES = ("fast", "full")


def _check_render_quality(render_quality) -> str:
    if render_quality not in _RENDER_QUALITIES:
        raise ValueError(f"render_quality must be one of {', '.join(map(repr, _RENDER_QUALITIES))}, "
                         f"got {render_quality!r}")
    return render_quality


def _fast_render_settings(physics, frame_size: int) -> None:
    """Sizes ``physics``' offscreen rendering to ``frame_size``-pixel frames: a shadow map of ``max(256, 8·side)``
    texels and no multisampling.

    dm_control's models draw their shadow maps at 2048 (or 4096) texels a side with 4× multisampling, sized
    for large frames; in software rendering (``MUJOCO_GL=egl`` on a CPU) that is most of a small frame's cost.
    At 8 texels a frame pixel the shadows are as sharp as the frame can show. Measured on this project's 2-core
    machine (llvmpipe), 32–84 px frames of reacher, cartpole and ball_in_cup: 3–5× faster (26 → 6 ms a reacher
    frame), 0.6–2.4 of 255 mean absolute difference, edges no longer antialiased. Takes effect at the next render
    (the rendering context is rebuilt if one exists); idempotent.
    """
    quality = physics.model.vis.quality
    shadow = max(256, 8 * frame_size)
    if quality.offsamples == 0 and quality.shadowsize <= shadow:
        return
    quality.shadowsize = min(int(quality.shadowsize), shadow)
    quality.offsamples = 0
    # MuJoCo reads both when it makes the rendering context, so one made before must be made again.
    with physics._contexts_lock:
        if physics._contexts:
            physics._free_rendering_contexts()


@functools.lru_cache(maxsize=1)
def dmc_tasks() -> dict[str, tuple[str, ...]]:
    """dm_control suite's tasks, ``{domain: (task, ...)}`` (the benchmarking set and the extra tasks)."""
    from dm_control import suite

    tasks: dict[str, list[str]] = {}
    for domain, task in suite.ALL_TASKS:
        tasks.setdefault(domain, []).append(task)
    return {domain: tuple(names) for domain, names in tasks.items()}


class DMCTaskState(Transform):
    """Writes what a DMControl step means for VLM-RB: ``events``, ``success``, ``mission`` and, on request, frames.

    It reads the physics of the :class:`~torchrl.envs.DMControlEnv` it sits on, after the
    action (with an action repeat, after its last physics step), so a row's ``("next",
    "events")`` are those its own action caused, and its ``("next", "pixels")`` frame shows
    the state that action led to. A goal held only in the middle of an action repeat (the
    ball passing through the cup) earns reward for the row but no event: the events, the
    success and the frame all describe the state the row ends in.

    Entries it adds (to the reset and to each step's ``next``):

    - ``events`` (bool ``[3]``, :data:`~torchrl_vlm.envs.dmc_goals.DMC_EVENT_NAMES`) and
      ``success`` (bool ``[1]``: the task's goal holds after this action), for a task with a
      visible goal (:data:`~torchrl_vlm.envs.dmc_goals.DMC_GOALS`) only; all False at reset;
    - ``mission`` (uint8 ``[MISSION_BYTES]``): the task in one sentence, UTF-8 bytes
      (:func:`~torchrl_vlm.decode_mission`);
    - ``pixels`` (uint8 ``[frame_size, frame_size, 3]``) with ``render=True``: the frame a VLM
      scores (replay buffers drop it); with ``frame_stride > 1`` only on the steps a strided scorer
      reads (:class:`~torchrl_vlm.frames.FrameSchedule`), zeros elsewhere, and
      ``frame_rendered`` (bool ``[1]``) says which;
    - ``pixels_observation`` (the same frame) with ``from_pixels=True``: the agent's own view,
      which replay keeps.

    Args:
        domain, task: the dm_control suite task.
        render: render ``pixels``.
        from_pixels: render ``pixels_observation``.
        frame_size: side of the rendered frames.
        camera_id: the MuJoCo camera to render from (0: each domain's default view).
        frame_stride, clip_len: render ``pixels`` on every ``frame_stride``-th step of a
            ``clip_len``-step clip and at each episode's end only (``1``: every step).
        render_quality: ``"fast"`` (see :func:`make_dmc_env`) or ``"full"`` (the model's own settings).
    """

    def __init__(self, domain: str, task: str, *, render: bool = False, from_pixels: bool = False,
                 frame_size: int = 64, camera_id: int = 0, frame_stride: int = 1, clip_len: int = 32,
                 render_quality: str = "fast"):
        super().__init__(in_keys=[], out_keys=[])
        self.domain, self.task = domain, task
        self.goal = dmc_goal(domain, task)
        self.render, self.from_pixels = bool(render), bool(from_pixels)
        self.frame_size, self.camera_id = frame_size, camera_id
        self.render_quality = _check_render_quality(render_quality)
        self.frame_schedule = FrameSchedule(clip_len, frame_stride) if render and frame_stride > 1 else None
        self._mission = torch.from_numpy(encode_mission(dmc_mission(domain, task)))
        self._in_goal = False  # the goal held after the last step (or at reset)
        self._reached = False  # it has been entered this episode

    def _dm_env(self):
        parent = self.parent
        if parent is None:
            raise RuntimeError(f"{type(self).__name__} reads a DMControlEnv's physics: put it in a TransformedEnv")
        return parent.base_env._env

    def _write(self, out, events: list[bool], due: bool = True):
        env = self._dm_env()
        if self.goal is not None:
            out.set("events", torch.tensor(events, dtype=torch.bool))
            out.set("success", torch.tensor([events[0]], dtype=torch.bool))
        out.set("mission", self._mission.clone())
        render = self.render and due
        if render or self.from_pixels:
            if self.render_quality == "fast":
                _fast_render_settings(env.physics, self.frame_size)
            frame = torch.from_numpy(np.ascontiguousarray(
                env.physics.render(height=self.frame_size, width=self.frame_size, camera_id=self.camera_id)))
            if self.from_pixels:
                out.set("pixels_observation", frame.clone() if self.render else frame)
        if self.render:
            out.set("pixels", frame if render or self.from_pixels else self._blank)
        if self.frame_schedule is not None:
            out.set(FRAME_RENDERED_KEY, torch.tensor([bool(render or self.from_pixels)]))
        return out

    @property
    def _blank(self) -> torch.Tensor:
        return torch.zeros(self.frame_size, self.frame_size, 3, dtype=torch.uint8)

    def _reset(self, tensordict, tensordict_reset):
        env = self._dm_env()
        # A goal that holds at reset was caused by no action: the first step compares against it.
        self._in_goal = self.goal is not None and self.goal.holds(env.physics, env.task)
        self._reached = False
        due = self.frame_schedule is None or self.frame_schedule.reset()
        return self._write(tensordict_reset, [False] * len(DMC_EVENT_NAMES), due)

    def _step(self, tensordict, next_tensordict):
        due = self.frame_schedule is None or self.frame_schedule.step(bool(next_tensordict.get("done").any()))
        if self.goal is None:
            return self._write(next_tensordict, [], due)
        env = self._dm_env()
        now = self.goal.holds(env.physics, env.task)
        entered = now and not self._in_goal
        first = entered and not self._reached
        self._in_goal, self._reached = now, self._reached or entered
        return self._write(next_tensordict, [now, entered, first], due)

    def transform_observation_spec(self, observation_spec):
        device = observation_spec.device
        if self.goal is not None:
            observation_spec["events"] = Binary(n=len(DMC_EVENT_NAMES), dtype=torch.bool, device=device)
            observation_spec["success"] = Binary(n=1, dtype=torch.bool, device=device)
        observation_spec["mission"] = Bounded(0, 255, (MISSION_BYTES,), dtype=torch.uint8, device=device)
        frame = Bounded(0, 255, (self.frame_size, self.frame_size, 3), dtype=torch.uint8, device=device)
        if self.render:
            observation_spec["pixels"] = frame
        if self.frame_schedule is not None:
            observation_spec[FRAME_RENDERED_KEY] = Binary(n=1, dtype=torch.bool, device=device)
        if self.from_pixels:
            observation_spec["pixels_observation"] = frame.clone()
        return observation_spec

    def forward(self, tensordict):
        raise RuntimeError(f"{type(self).__name__} reads an env's physics: it only runs inside a TransformedEnv")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.domain}-{self.task}, goal={self.goal is not None}, "
                f"render={self.render}, from_pixels={self.from_pixels}, frame_size={self.frame_size})")


def _make_single(domain: str, task: str, action_repeat: int, render: bool, from_pixels: bool, frame_size: int,
                 camera_id: int, device, frame_stride: int = 1, clip_len: int = 32,
                 render_quality: str = "fast") -> TransformedEnv:
    """One DMControlEnv: its observation dict flattened to float32 ``observation``, and :class:`DMCTaskState`."""
    base = DMControlEnv(domain, task, frame_skip=action_repeat, device=device)
    state_keys = sorted(key for key in base.observation_spec.keys())
    return TransformedEnv(
        base,
        Compose(
            # Sorted, so the layout of ``observation`` is fixed whatever order dm_control lists them in.
            CatTensors(in_keys=state_keys, out_key="observation", del_keys=True, sort=False),
            DoubleToFloat(),
            DMCTaskState(domain, task, render=render, from_pixels=from_pixels, frame_size=frame_size,
                         camera_id=camera_id, frame_stride=frame_stride, clip_len=clip_len,
                         render_quality=render_quality),
        ),
    )


def make_dmc_env(
    domain: str,
    task: str,
    *,
    num_envs: int = 1,
    clip_len: int = 32,
    render: bool = False,
    frame_size: int = 64,
    seed: int | None = None,
    action_repeat: int | None = None,
    from_pixels: bool = False,
    camera_id: int = 0,
    device: str | torch.device = "cpu",
    worker_id: int | None = None,
    frame_stride: int = 1,
    render_quality: str = "fast",
):
    """Builds a DeepMind Control task as a TorchRL env that tags its steps with clip ids.

    Each env is TorchRL's :class:`~torchrl.envs.DMControlEnv` with ``frame_skip=action_repeat``
    under :class:`DMCTaskState`; ``num_envs > 1`` puts them in a
    :class:`~torchrl.envs.SerialEnv` (each resets on its own); the whole sits under
    :class:`~torchrl_vlm.RenderClips`, ``StepCounter`` and ``RewardSum``, as the MiniGrid and
    OGBench factories do.

    Entries of a step: ``observation`` (float32: dm_control's observation dict, its entries
    sorted by name and concatenated), ``mission``, ``clip_id``, ``clip_step``, ``step_count``
    (agent steps), ``episode_reward``, ``terminated``/``truncated``/``done``; for a task with a
    visible goal (:data:`~torchrl_vlm.envs.dmc_goals.DMC_GOALS`: ball_in_cup-catch, the cartpole,
    reacher and finger tasks) also ``events`` (:data:`~torchrl_vlm.envs.dmc_goals.DMC_EVENT_NAMES`)
    and ``success`` (the goal holds after this action); with ``render=True`` the VLM's
    ``pixels``; with ``from_pixels=True`` the agent's ``pixels_observation``. Actions are
    float32 in ``[-1, 1]``. The reward is the task's, summed over the action repeat; an
    episode is truncated at dm_control's time limit (1000 physics steps, so
    ``1000 / action_repeat`` agent steps, for the tasks here).

    Args:
        domain: a dm_control suite domain (``"ball_in_cup"``, ``"cartpole"``, ...; :func:`dmc_tasks`).
        task: one of the domain's tasks (``"catch"``, ``"swingup_sparse"``, ...).
        num_envs: number of envs in the batch; ``1`` gives an unbatched env.
        clip_len: VLM-RB's clip length L (paper: 32), in agent steps.
        render: render ``pixels`` for a VLM (set ``MUJOCO_GL=egl`` before mujoco is imported).
            Off, nothing is rendered.
        frame_size: side of the rendered frames (64 or 84 in the literature).
        seed: seeds the envs (a batch's envs each get their own seed, derived from it by TorchRL's
            ``SerialEnv.set_seed``).
        action_repeat: physics steps per agent step; ``None`` takes the pixel-based DMControl
            literature's value for the domain (cartpole 8, finger and walker 2, others 4:
            :data:`~torchrl_vlm.envs.dmc_goals.DMC_ACTION_REPEAT`). Report env steps = agent
            steps × action repeat, as that literature does.
        from_pixels: render ``pixels_observation``, the agent's own view (kept in replay).
        camera_id: the camera frames come from (0: the domain's default view).
        device: device of the output tensors.
        worker_id: a fixed salt for clip ids (see :class:`~torchrl_vlm.RenderClips`).
        frame_stride: with ``render``, render only every ``frame_stride``-th step of a clip and
            each episode's last state, as a scorer that reads a few frames of each clip needs
            (:class:`~torchrl_vlm.frames.FrameSchedule`); the other steps' ``pixels`` are zeros
            and a ``frame_rendered`` entry says which are real. ``1`` (default) renders every step.
        render_quality: ``"fast"`` (default) sizes the shadow map to the frame and turns multisampling
            off, 3–5× cheaper in software rendering for frames within about 1 of 255 of dm_control's
            (a shadow map of ``max(256, 8·frame_size)`` texels); ``"full"`` renders with each model's own settings.

    Examples:
        >>> env = make_dmc_env("ball_in_cup", "catch", num_envs=2, seed=0)
        >>> td = env.rollout(3)
        >>> td["next", "events"].shape, td["action"].shape, td["observation"].shape
        (torch.Size([2, 3, 3]), torch.Size([2, 3, 2]), torch.Size([2, 3, 8]))
    """
    tasks = dmc_tasks()
    if not isinstance(domain, str) or domain not in tasks:
        raise ValueError(
            f"domain={domain!r} is not a dm_control suite domain; choose one of {', '.join(sorted(tasks))}")
    if not isinstance(task, str) or task not in tasks[domain]:
        raise ValueError(
            f"task={task!r} is not a task of the {domain!r} domain; choose one of {', '.join(tasks[domain])}"
        )
    check_int("num_envs", num_envs)
    check_int("clip_len", clip_len)
    check_int("frame_stride", frame_stride)
    check_int("frame_size", frame_size, 8)
    check_int("camera_id", camera_id, -1)
    action_repeat = check_int("action_repeat", action_repeat, none_means="the literature's value for the domain")
    if action_repeat is None:
        action_repeat = default_action_repeat(domain)
    for name, value in (("render", render), ("from_pixels", from_pixels)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    if seed is not None:
        check_int("seed", seed, 0)
    _check_render_quality(render_quality)

    make_one = functools.partial(
        _make_single, domain, task, action_repeat, bool(render), bool(from_pixels), frame_size, camera_id, device,
        frame_stride, clip_len, render_quality,
    )
    base = make_one() if num_envs == 1 else SerialEnv(num_envs, make_one, device=device)
    env = with_clip_tags(base, clip_len=clip_len, frames=bool(render), worker_id=worker_id, seed=seed)
    env.action_repeat = action_repeat  # what turns agent steps into the env steps the literature reports
    return env
