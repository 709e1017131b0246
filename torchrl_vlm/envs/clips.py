"""Clip tagging at the source (VLM-RB step 3).

Consecutive steps of one env form non-overlapping clips of ``L`` steps (paper:
``L = 32``); a clip also ends where an episode ends. Every step carries the id
of the clip it belongs to, so that the collector hook can regroup frames into
clips after the collector has batched, flattened and shuffled envs together.
"""
from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase, Transform

from torchrl_vlm._checks import check_int
from torchrl_vlm.frames import FRAME_RENDERED_KEY, FrameSchedule

__all__ = [
    "RenderClips",
    "render_gym_frames",
    "with_clip_tags",
]

# A clip id is (salt << _COUNTER_BITS) | counter: the counter keeps the ids of
# one transform apart (its envs, its episodes), the salt keeps transforms apart.
# 32 + 31 bits leave the sign bit clear.
_COUNTER_BITS = 32
_SALT_BITS = 31
# Salts users choose (worker_id) take the lower half of the salt range and drawn
# salts the upper half, so a drawn salt can never equal a chosen one.
_WORKER_IDS = 2 ** (_SALT_BITS - 1)

# Every salt drawn in (or loaded into) this process, so that no two transforms
# of a process ever share one, even after the first is gone: its ids may still
# sit in a replay buffer.
_taken_salts: set[int] = set()
_taken_salts_lock = threading.Lock()


def _draw_salt() -> int:
    # secrets reads the OS's entropy, so forked workers draw apart, which a
    # seeded or fork-copied `random` state would not guarantee.
    with _taken_salts_lock:
        while True:
            salt = _WORKER_IDS | secrets.randbits(_SALT_BITS - 1)
            if salt not in _taken_salts:
                _taken_salts.add(salt)
                return salt


def _take_salt(salt: int) -> None:
    with _taken_salts_lock:
        _taken_salts.add(salt)


_OUTSIDE_ENV = (
    "RenderClips must be used inside a TransformedEnv: it tags env steps with clip ids as the env "
    "resets and steps, so it cannot tag data that is already collected ({how}). Build the env with "
    "it instead, e.g. TransformedEnv(env, RenderClips(...)), or use make_minigrid_env."
)


def gym_frame_spaces(shape: Sequence[int], schedule: FrameSchedule | None) -> dict:
    """The frame entries of a gymnasium observation space: ``pixels``, and under a schedule ``frame_rendered``."""
    import gymnasium as gym

    spaces = {"pixels": gym.spaces.Box(0, 255, tuple(shape), dtype=np.uint8)}
    if schedule is not None:
        spaces[FRAME_RENDERED_KEY] = gym.spaces.Box(0, 1, (1,), dtype=np.bool_)
    return spaces


def gym_frame_entries(render: Callable[[], np.ndarray], shape: Sequence[int], schedule: FrameSchedule | None,
                      due: bool) -> dict:
    """The frame entries of one gymnasium observation: ``render()`` where ``due`` (always without a schedule),
    zeros elsewhere, and under a schedule whether it rendered."""
    if schedule is None:
        return {"pixels": render()}
    frame = render() if due else np.zeros(tuple(shape), dtype=np.uint8)
    return {"pixels": frame, FRAME_RENDERED_KEY: np.array([due], dtype=np.bool_)}


def render_gym_frames(env: EnvBase) -> torch.Tensor:
    """Renders the current frame of a :class:`~torchrl.envs.GymEnv`'s gymnasium env.

    Works for a single env (``render()``) and a gymnasium vector env
    (``call("render")``). The env must have been made with ``render_mode="rgb_array"``.
    Returns uint8 ``[*batch, H, W, 3]``.
    """
    base = getattr(env, "base_env", env)
    gym_env = getattr(base, "_env", None)
    if gym_env is None:
        raise TypeError(
            f"render_gym_frames needs a GymEnv-like base env, got {type(base).__name__}; "
            "pass RenderClips(render_fn=...) for other envs"
        )
    if hasattr(gym_env, "call") and hasattr(gym_env, "num_envs"):
        frames = torch.stack([torch.as_tensor(f) for f in gym_env.call("render")])
    else:
        frame = gym_env.render()
        if frame is None:
            raise RuntimeError(
                "the gymnasium env returned no frame: make it with render_mode='rgb_array'"
            )
        frames = torch.as_tensor(frame)
    return frames.to(torch.uint8)


class RenderClips(Transform):
    """Tags every step with ``clip_id`` and ``clip_step``, and renders a frame if needed.

    A clip is a run of at most ``clip_len`` consecutive steps of one env; it ends
    after ``clip_len`` steps or when the episode ends, whichever comes first.
    ``clip_id`` (int64) is unique across the envs of a batch, across episodes,
    and across the transforms of batched-env workers and processes (see *Clip
    ids* below). ``clip_step`` is the step's position in its clip.

    The tags are observations: the row a collector stores for the transition
    ``(s_t, a_t, s_t+1)`` carries the clip of ``s_t`` at its root, and its
    ``("next", "clip_id")`` names the clip that ``s_t+1`` starts or continues.

    Frames: when the parent env already writes ``frame_key`` (as
    :func:`~torchrl_vlm.make_minigrid_env` does), the transform only tags.
    Otherwise it renders one frame per step with ``render_fn(env)`` (default:
    :func:`render_gym_frames`), and ``frame_shape`` gives the frame's spec.
    ``frame_key=None`` turns frames off entirely.

    Partial resets in batched envs are honoured: only the envs named by the
    ``"_reset"`` mask start a new clip.

    **Which frame belongs to which row**: the collector's row for ``(s_t, a_t, s_t+1)`` holds
    the frame of ``s_t`` (``pixels``, before the action) and, under ``"next"``, that of
    ``s_t+1``. A scorer gets each step's own frame, and for a clip's last step the frame of the
    state its action reached (:class:`~torchrl_vlm.Scorer`).

    **Your own env** gives the scorer more than frames through two optional entries that
    :class:`~torchrl_vlm.VLMReplayBuffer` forwards:

    - ``events`` (bool ``[*batch, E]``): what the step's action *caused*, computed on the state it
      led to, i.e. written into ``next`` by the env or a transform's ``_step`` (a row's events are
      ``("next", "events")``), all ``False`` at reset. An event scorer reads them instead of pixels;
    - ``mission`` (a string, or UTF-8 bytes as :func:`~torchrl_vlm.missions.encode_mission` makes them):
      the task in words, passed to the scorer per clip (a VLM puts it in its prompt).

    **The clip length is set here, once**: the replay buffer reads it from the clip boundaries this
    transform writes (a buffer given another ``clip_len`` refuses to run).

    The transform only works inside a :class:`~torchrl.envs.TransformedEnv`:
    called on data (as a module, in a bare :class:`~torchrl.envs.Compose`, or
    as a replay-buffer transform) it raises a ``RuntimeError``. It has no
    inverse.

    Clip ids: ``clip_id = salt * 2**32 + n``, where ``n`` counts the clips the
    transform has started. The salt tells transforms apart:

    - By default (``worker_id=None``) the salt is drawn at random and belongs
      to this one transform: every copy draws its own, whether made by
      :meth:`clone` (which TorchRL uses to build parents and nested envs), by
      a deep copy or pickling (a new process), or by loading a state (each env
      an :class:`~torchrl.envs.EnvCreator` builds loads the same state). Drawn
      salts never repeat within a process; across processes they are 30
      random bits, so two processes share one with probability ``2**-30``.
    - ``worker_id=k`` fixes the salt to ``k``, for reproducible ids. A chosen
      salt travels with the transform (clones, copies, loaded states), so give
      each worker of a batched env or collector its own ``worker_id``: two
      transforms stepping with the same one hand out the same ids. Chosen and
      drawn salts never meet.

    :meth:`get_extra_state` (saved by ``env.state_dict()``) holds the salt and
    the counter. Loading it into a transform with the same salt (a run resumed
    with the same ``worker_id``, or rewound to an earlier checkpoint) moves the
    counter past every id that either handed out; a transform with another
    salt keeps its counter, since its ids cannot meet the checkpoint's.

    Args:
        clip_len: the clip length L (VLM-RB: 32).
        frame_key: where frames live, or ``None`` for no frames.
        render_fn: ``env -> uint8 [*batch, H, W, 3]``, used when the parent gives no frame.
        frame_shape: ``(H, W, 3)`` of rendered frames, required when rendering.
        worker_id: a salt the user chooses (``0 <= worker_id < 2**30``), or
            ``None`` to draw one per transform (see *Clip ids*).

    Examples:
        >>> from torchrl.envs import GymEnv, TransformedEnv
        >>> import torchrl_vlm.envs.minigrid  # registers a TorchRL spec for minigrid's MissionSpace
        >>> env = TransformedEnv(
        ...     GymEnv("MiniGrid-DoorKey-5x5-v0", render_mode="rgb_array"),
        ...     RenderClips(clip_len=4, frame_shape=(160, 160, 3)),
        ... )
        >>> td = env.rollout(10)
        >>> td["clip_step"]
        tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    """

    def __init__(
        self,
        clip_len: int = 32,
        frame_key: str | None = "pixels",
        *,
        render_fn: Callable[[EnvBase], torch.Tensor] | None = None,
        frame_shape: Sequence[int] | None = None,
        worker_id: int | None = None,
    ):
        """See the class docstring: ``clip_len`` steps a clip, frames under ``frame_key``."""
        check_int("clip_len", clip_len)
        if frame_key is not None and not isinstance(frame_key, str):
            raise TypeError(f"frame_key must be a str or None, got {type(frame_key).__name__}")
        if worker_id is None:
            salt = _draw_salt()
        elif isinstance(worker_id, bool) or not isinstance(worker_id, int) or not 0 <= worker_id < _WORKER_IDS:
            raise ValueError(
                f"worker_id must be None or an int in [0, 2**{_SALT_BITS - 1}), got {worker_id!r}"
            )
        else:
            salt = worker_id
        super().__init__(in_keys=[], out_keys=["clip_id", "clip_step"])
        self.clip_len = clip_len
        self.frame_key = frame_key
        self.render_fn = render_fn
        self.frame_shape = None if frame_shape is None else tuple(frame_shape)
        self.worker_id = worker_id
        self._salt = salt
        self._next_id = 0
        self._renders = None  # decided once the parent is known

    # -- ids ---------------------------------------------------------------
    @property
    def salt(self) -> int:
        """The salt of this transform's ids: ``worker_id`` if one was given, else drawn."""
        return self._salt

    def _new_stream(self) -> None:
        # A copy of a transform with a drawn salt is a new stream of ids: it
        # gets its own salt, and its counter starts over.
        if self.worker_id is None:
            self._salt = _draw_salt()
            self._next_id = 0

    def _new_ids(self, n: int, device) -> torch.Tensor:
        start = self._next_id
        self._next_id += n
        if self._next_id >= 2**_COUNTER_BITS:
            raise OverflowError(
                f"RenderClips ran out of clip ids: a transform hands out at most 2**{_COUNTER_BITS}"
            )
        return (self._salt << _COUNTER_BITS) + torch.arange(
            start, start + n, dtype=torch.int64, device=device
        )

    # -- frames ------------------------------------------------------------
    def _must_render(self) -> bool:
        if self._renders is None:
            spec = self.parent.full_observation_spec if self.parent is not None else {}
            self._renders = self.frame_key is not None and self.frame_key not in spec.keys()
        return self._renders

    def _render_into(self, td: TensorDictBase) -> None:
        if not self._must_render():
            return
        render = self.render_fn or render_gym_frames
        frames = render(self.parent)
        td.set(self.frame_key, frames.to(td.device).reshape(*td.batch_size, *frames.shape[-3:]))

    # -- Transform contract ----------------------------------------------
    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        shape = tensordict_reset.batch_size
        device = tensordict_reset.device
        reset = None
        if tensordict is not None:
            reset = tensordict.get("_reset", None)
        if reset is None:
            reset = torch.ones(shape, dtype=torch.bool, device=device)
        else:
            reset = reset.reshape(shape)
        clip_id = None if tensordict is None else tensordict.get("clip_id", None)
        clip_step = None if tensordict is None else tensordict.get("clip_step", None)
        if clip_id is None or clip_step is None:
            clip_id = torch.zeros(shape, dtype=torch.int64, device=device)
            clip_step = torch.zeros(shape, dtype=torch.int64, device=device)
        else:
            clip_id = clip_id.clone()
            clip_step = clip_step.clone()
        n_new = int(reset.sum())
        if n_new:
            clip_id[reset] = self._new_ids(n_new, device)
            clip_step[reset] = 0
        tensordict_reset.set("clip_id", clip_id)
        tensordict_reset.set("clip_step", clip_step)
        self._render_into(tensordict_reset)
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        clip_id = tensordict.get("clip_id")
        clip_step = tensordict.get("clip_step") + 1
        # A full clip hands over to a new one; an episode's end needs nothing
        # here, since the reset that follows starts a new clip.
        full = clip_step >= self.clip_len
        n_new = int(full.sum())
        if n_new:
            clip_id = clip_id.clone()
            clip_id[full] = self._new_ids(n_new, clip_id.device)
            clip_step = torch.where(full, torch.zeros_like(clip_step), clip_step)
        next_tensordict.set("clip_id", clip_id)
        next_tensordict.set("clip_step", clip_step)
        self._render_into(next_tensordict)
        return next_tensordict

    # Tagging happens in _reset and _step; the hooks below only meet data that
    # is not being stepped when no env is above, and then say so.
    def _outside_env(self, how: str) -> RuntimeError:
        return RuntimeError(_OUTSIDE_ENV.format(how=how))

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        # Reached off-env by a replay buffer transform appended with invert=True.
        if self.parent is None:
            raise self._outside_env("called on a tensordict by a replay buffer's extend")
        return next_tensordict

    # TransformedEnv never calls forward: only modules, a bare Compose and a
    # replay buffer's sample do, on data whose steps are long gone.
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        raise self._outside_env("called on a tensordict, as a module or by a replay buffer's sample")

    # An env passes the input of each step through here, unchanged (there is no
    # inverse); a replay buffer passes what it writes, with no env above.
    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.parent is None:
            raise self._outside_env("inverted on a tensordict, e.g. by a replay buffer's extend")
        return tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        shape = observation_spec.shape
        device = observation_spec.device
        observation_spec["clip_id"] = Unbounded(shape=shape, dtype=torch.int64, device=device)
        observation_spec["clip_step"] = Unbounded(shape=shape, dtype=torch.int64, device=device)
        if self.frame_key is not None and self.frame_key not in observation_spec.keys():
            if self.frame_shape is None:
                raise ValueError(
                    f"the parent env gives no {self.frame_key!r} entry, so RenderClips renders "
                    "frames itself: pass frame_shape=(H, W, 3), or frame_key=None for no frames"
                )
            observation_spec[self.frame_key] = Bounded(
                0, 255, shape=(*shape, *self.frame_shape), dtype=torch.uint8, device=device
            )
            self._renders = True
        return observation_spec

    # -- copies and checkpoints (see "Clip ids" in the class docstring) -----
    def clone(self) -> RenderClips:
        out = super().clone()
        out._new_stream()
        out._renders = None  # the clone's parent may differ
        return out

    def __setstate__(self, state: dict) -> None:
        # Unpickling (a new process), deep and shallow copies come through here.
        super().__setstate__(state)
        self._new_stream()

    def reset_parent(self) -> None:
        super().reset_parent()
        self._renders = None

    def get_extra_state(self) -> dict:
        return {"salt": self._salt, "next_id": self._next_id}

    def set_extra_state(self, state: dict) -> None:
        salt = int(state["salt"])
        next_id = int(state["next_id"])
        # The checkpoint's salt may still be in use elsewhere: never draw it here.
        _take_salt(salt)
        if salt == self._salt:
            # The same stream resumed or rewound: go on past every id either handed out.
            self._next_id = max(self._next_id, next_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clip_len={self.clip_len}, frame_key={self.frame_key!r})"


def with_clip_tags(base: EnvBase, *, clip_len: int, frames: bool, worker_id: int | None = None,
                   seed: int | None = None):
    """``base`` under :class:`RenderClips`, ``StepCounter`` and ``RewardSum``, seeded: the envs' common shape.

    ``frames`` says whether ``base`` writes ``pixels`` (the clips then carry them).
    """
    from torchrl.envs import Compose, RewardSum, StepCounter, TransformedEnv

    env = TransformedEnv(
        base,
        Compose(
            RenderClips(clip_len=clip_len, frame_key="pixels" if frames else None, worker_id=worker_id),
            StepCounter(),
            RewardSum(),
        ),
    )
    if seed is not None:
        env.set_seed(seed)
    return env
