"""Clip tagging at the source (VLM-RB step 3).

Consecutive steps of one env form non-overlapping clips of ``L`` steps (paper:
``L = 32``); a clip also ends where an episode ends. Every step carries the id
of the clip it belongs to, so that the collector hook can regroup frames into
clips after the collector has batched, flattened and shuffled envs together.
"""
from __future__ import annotations

import secrets
from typing import Callable, Sequence

import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase, Transform

__all__ = ["RenderClips", "render_gym_frames"]

# A clip id is (worker salt << _COUNTER_BITS) | counter: unique across the envs of
# one transform (the counter), and across processes (the salt).
_COUNTER_BITS = 40
_SALT_BITS = 22


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
    ``clip_id`` (int64) is unique across the envs of a batch, across episodes
    and across processes (each transform draws a random salt, or uses
    ``worker_id``). ``clip_step`` is the step's position in its clip.

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

    Args:
        clip_len: the clip length L (VLM-RB: 32).
        frame_key: where frames live, or ``None`` for no frames.
        render_fn: ``env -> uint8 [*batch, H, W, 3]``, used when the parent gives no frame.
        frame_shape: ``(H, W, 3)`` of rendered frames, required when rendering.
        worker_id: a salt (``0 <= worker_id < 2**22``) that keeps ids unique across
            processes; random when ``None``.

    Examples:
        >>> from torchrl.envs import GymEnv, TransformedEnv
        >>> env = TransformedEnv(
        ...     GymEnv("MiniGrid-DoorKey-5x5-v0", render_mode="rgb_array"),
        ...     RenderClips(clip_len=4, frame_shape=(160, 160, 3)),
        ... )  # doctest: +SKIP
        >>> td = env.rollout(10)  # doctest: +SKIP
        >>> td["clip_step"]  # doctest: +SKIP
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
        if isinstance(clip_len, bool) or not isinstance(clip_len, int) or clip_len < 1:
            raise ValueError(f"clip_len must be an int >= 1, got {clip_len!r}")
        if frame_key is not None and not isinstance(frame_key, str):
            raise TypeError(f"frame_key must be a str or None, got {type(frame_key).__name__}")
        if worker_id is None:
            worker_id = secrets.randbits(_SALT_BITS)
        elif not isinstance(worker_id, int) or not 0 <= worker_id < 2**_SALT_BITS:
            raise ValueError(f"worker_id must be an int in [0, 2**{_SALT_BITS}), got {worker_id!r}")
        super().__init__(in_keys=[], out_keys=["clip_id", "clip_step"])
        self.clip_len = clip_len
        self.frame_key = frame_key
        self.render_fn = render_fn
        self.frame_shape = None if frame_shape is None else tuple(frame_shape)
        self.worker_id = worker_id
        self._next_id = 0
        self._renders = None  # decided once the parent is known

    # -- ids ---------------------------------------------------------------
    def _new_ids(self, n: int, device) -> torch.Tensor:
        start = self._next_id
        self._next_id += n
        if self._next_id >= 2**_COUNTER_BITS:
            raise OverflowError("RenderClips ran out of clip ids for this worker")
        return (self.worker_id << _COUNTER_BITS) + torch.arange(
            start, start + n, dtype=torch.int64, device=device
        )

    def _batch_shape(self) -> torch.Size:
        return self.parent.batch_size if self.parent is not None else torch.Size([])

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

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return next_tensordict

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

    # The id counter travels with checkpoints, so a resumed run never reuses an id.
    def get_extra_state(self) -> dict:
        return {"next_id": self._next_id, "worker_id": self.worker_id}

    def set_extra_state(self, state: dict) -> None:
        self._next_id = int(state["next_id"])
        self.worker_id = int(state["worker_id"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clip_len={self.clip_len}, frame_key={self.frame_key!r})"
