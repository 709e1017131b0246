"""A labelled clip set: clips of an env's experience, collected with a mix of policies, kept on disk.

The probe scores every VLM and prompt on the same clips, so they are collected once
(:func:`collect_clips`) and saved (:meth:`ClipSet.save`). A clip is cut the way the
replay buffer cuts them while training: ``clip_len`` consecutive steps of one env
within one episode, starting at the episode's first step and every ``stride`` steps
after (``stride = clip_len``: the non-overlapping clips of training; smaller: sliding
windows, which hold the non-overlapping ones as the clips whose ``start`` is a multiple
of ``clip_len``); the last clip of an episode ends where it ends. A clip's frames are
its rows' own, except the last row's, which shows the state its action reached (as in
:class:`~torchrl_vlm.VLMReplayBuffer`), and its events are those each row's action caused.

Labels are not stored: they are read from the events under a definition
(:meth:`ClipSet.labels`), so one clip set serves ``any``, ``first_progress`` and
``goal_only``.

**The format** (a folder; nothing in it runs code when loaded):

- ``clipset.json``: ``format`` (``"torchrl_vlm.clipset"``), ``version``, ``env_name``,
  ``domain`` (``"minigrid"`` or ``"ogbench"``), ``clip_len``, ``stride``, ``seed``,
  ``policies`` (names, indexed by ``policy``), ``event_names``, ``missions`` (one per clip,
  or null), ``clips``, and ``sha256`` of ``clips.pt``;
- ``clips.pt``: a dict of tensors read with ``torch.load(weights_only=True)`` after its
  checksum is verified: ``frames`` uint8 ``[N, L, H, W, 3]``, ``mask`` bool ``[N, L]``,
  ``events`` bool ``[N, L, E]``, ``policy`` int64 ``[N]``, ``episode`` int64 ``[N]`` (numbered
  over the whole collection), ``start`` int64 ``[N]`` (the clip's first step in its episode).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict

from torchrl_vlm._checks import check_int
from torchrl_vlm.training import file_sha256

__all__ = ["ClipSet", "ClipSetError", "POLICIES", "collect_clips", "domain_of"]

FORMAT = "torchrl_vlm.clipset"
VERSION = 1

#: Behaviour policies by domain: ``random`` (uniform actions) everywhere; ``planner`` on MiniGrid
#: (:class:`~torchrl_vlm.PlannerTeacher`'s optimal actions) and ``scripted`` on OGBench
#: (:class:`~torchrl_vlm.envs.ogbench_scripted.SceneScriptedPolicy`, OGBench's own oracles working
#: towards the task), each taking a uniformly random action with probability ``epsilon``, so that
#: clips showing progress are not rare (random arm motions almost never complete a subgoal).
POLICIES = {"minigrid": ("random", "planner"), "ogbench": ("random", "scripted")}


class ClipSetError(ValueError):
    """A clip-set folder that cannot be read: missing files, another format, or a failed checksum."""


def domain_of(env_name: str) -> str:
    """``"minigrid"`` or ``"ogbench"``: the domains whose simulators give the events clips are labelled from."""
    from torchrl_vlm.envs.minigrid_names import MINIGRID_ENVS
    from torchrl_vlm.envs.ogbench import OGBENCH_ENVS

    if env_name in MINIGRID_ENVS:
        return "minigrid"
    if env_name in OGBENCH_ENVS:
        return "ogbench"
    raise ValueError(
        f"env={env_name!r} has no simulator events to label clips from; the probe knows the MiniGrid envs "
        f"({', '.join(MINIGRID_ENVS)}) and OGBench's scene tasks ({', '.join(OGBENCH_ENVS)})"
    )


def _event_scorer(domain: str, definition: str):
    from torchrl_vlm.scoring.oracle import (
        EVENT_DEFINITIONS,
        OGBENCH_EVENT_DEFINITIONS,
        MiniGridEventScorer,
        OGBenchEventScorer,
    )

    known, cls = ((EVENT_DEFINITIONS, MiniGridEventScorer) if domain == "minigrid"
                  else (OGBENCH_EVENT_DEFINITIONS, OGBenchEventScorer))
    if definition not in known:
        raise ValueError(f"definition={definition!r} is not defined for {domain}; choose one of {sorted(known)}")
    return cls(definition)


@dataclass
class ClipSet:
    """Clips with their frames, masks, events and missions; see the module docstring for the fields."""

    env_name: str
    domain: str
    clip_len: int
    stride: int
    seed: int
    policies: tuple[str, ...]
    event_names: tuple[str, ...]
    frames: torch.Tensor
    mask: torch.Tensor
    events: torch.Tensor
    policy: torch.Tensor
    episode: torch.Tensor
    start: torch.Tensor
    missions: list[str] | None = None

    def __len__(self) -> int:
        return self.mask.shape[0]

    def non_overlapping(self) -> torch.Tensor:
        """Bool ``[N]``: the clips training would cut (``start`` a multiple of ``clip_len``)."""
        return self.start % self.clip_len == 0

    def subset(self, keep: torch.Tensor) -> ClipSet:
        """The clips where ``keep`` (bool ``[N]``) holds."""
        idx = torch.nonzero(keep).flatten()
        fields = {k: getattr(self, k)[idx] for k in ("frames", "mask", "events", "policy", "episode", "start")}
        missions = None if self.missions is None else [self.missions[i] for i in idx.tolist()]
        return ClipSet(self.env_name, self.domain, self.clip_len, self.stride, self.seed, self.policies,
                       self.event_names, missions=missions, **fields)

    def labels(self, definition: str) -> torch.Tensor:
        """Ground truth ``[N]`` (float 0/1): the domain's event scorer under ``definition``."""
        return _event_scorer(self.domain, definition)(self.clips())

    def clips(self, index: slice | torch.Tensor | None = None) -> TensorDict:
        """The clips as a scorer takes them (``frames``, ``mask``, ``events``, ``mission``, ``clip_id``)."""
        index = slice(None) if index is None else index
        ids = torch.arange(len(self))[index]
        td = TensorDict({"frames": self.frames[index], "mask": self.mask[index], "events": self.events[index],
                         "clip_id": ids}, batch_size=[ids.numel()])
        if self.missions is not None:
            td.set("mission", NonTensorStack(*[self.missions[i] for i in ids.tolist()]))
        return td

    # ------------------------------------------------------------------ disk
    def save(self, path: str | os.PathLike) -> Path:
        """Writes the folder ``path`` (``clipset.json`` + ``clips.pt``); returns it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).contiguous() for k in ("frames", "mask", "events", "policy", "episode", "start")}
        torch.save(tensors, path / "clips.pt")
        meta = {
            "format": FORMAT, "version": VERSION, "env_name": self.env_name, "domain": self.domain,
            "clip_len": self.clip_len, "stride": self.stride, "seed": self.seed, "policies": list(self.policies),
            "event_names": list(self.event_names), "missions": self.missions, "clips": len(self),
            "sha256": file_sha256(path / "clips.pt"),
        }
        (path / "clipset.json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClipSet:
        """Reads a folder written by :meth:`save`; raises :class:`ClipSetError` naming what is wrong."""
        path = Path(path)
        meta_path, data_path = path / "clipset.json", path / "clips.pt"
        if not meta_path.is_file() or not data_path.is_file():
            raise ClipSetError(f"{path} is not a clip set: it needs clipset.json and clips.pt (ClipSet.save)")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as err:
            raise ClipSetError(f"{meta_path} is not valid JSON ({err})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ClipSetError(f"{meta_path} is not a {FORMAT} file")
        if meta.get("version") != VERSION:
            raise ClipSetError(f"{meta_path} has clip-set version {meta.get('version')}, this version reads {VERSION}")
        if file_sha256(data_path) != meta.get("sha256"):
            raise ClipSetError(f"{data_path} does not match the checksum in {meta_path}: altered or truncated")
        tensors = torch.load(data_path, map_location="cpu", weights_only=True)
        n = meta["clips"]
        expected = {"frames": torch.uint8, "mask": torch.bool, "events": torch.bool, "policy": torch.int64,
                    "episode": torch.int64, "start": torch.int64}
        for key, dtype in expected.items():
            value = tensors.get(key)
            if not isinstance(value, torch.Tensor) or value.dtype != dtype or value.shape[0] != n:
                raise ClipSetError(f"{data_path}: {key!r} must be a {dtype} tensor with {n} clips")
        return cls(meta["env_name"], meta["domain"], int(meta["clip_len"]), int(meta["stride"]), int(meta["seed"]),
                   tuple(meta["policies"]), tuple(meta["event_names"]), missions=meta["missions"],
                   **{k: tensors[k] for k in expected})


# ---------------------------------------------------------------------- collection
class _Episode:
    """One env's current episode: its frames, the frame after each step, events and mission.

    Clips are cut as soon as they are whole: a window of ``clip_len`` steps when its last step
    arrives, and at the episode's end the one window that reaches it (later ones would be its suffixes).
    """

    def __init__(self, clip_len: int, stride: int):
        self.clip_len, self.stride = clip_len, stride
        self.frames, self.next_frames, self.events, self.mission = [], [], [], None
        self.next_start, self.reached_end = 0, False

    def add(self, frame, next_frame, events) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
        self.frames.append(frame)
        self.next_frames.append(next_frame)
        self.events.append(events)
        whole = []
        while self.next_start + self.clip_len <= len(self.frames):
            whole.append(self._clip(self.next_start, self.clip_len))
            self.next_start += self.stride
        return whole

    def end(self) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
        n = len(self.frames)
        last_end = self.next_start - self.stride + self.clip_len  # where the last whole window ended
        if self.next_start < n and not (self.next_start > 0 and last_end >= n):
            return [self._clip(self.next_start, n - self.next_start)]
        return []

    def _clip(self, start: int, length: int):
        frames = self.frames[start : start + length - 1] + [self.next_frames[start + length - 1]]  # the outcome
        return start, length, torch.stack(frames), torch.stack(self.events[start : start + length])


def collect_clips(
    env_name: str,
    n_clips: int,
    *,
    clip_len: int = 32,
    stride: int | None = None,
    policies: Sequence[str] | None = None,
    epsilon: float = 0.3,
    num_envs: int = 8,
    seed: int = 0,
    frame_size: int = 64,
    progress: bool = False,
) -> ClipSet:
    """Runs ``num_envs`` envs of ``env_name`` until ``n_clips`` clips are cut, and returns them.

    Env ``i`` acts with ``policies[i % len(policies)]`` (default: every policy of the domain,
    :data:`POLICIES`) for the whole collection. Frames are rendered at every step (a VLM needs
    them): MiniGrid's full grid at 8 px a cell, OGBench's camera at ``frame_size``. Each policy
    gives ``ceil(n_clips / len(policies))`` clips (its later clips are left out), so the set
    holds every policy alike.
    """
    from torchrl_vlm.missions import decode_mission

    domain = domain_of(env_name)
    for name, value in (("n_clips", n_clips), ("clip_len", clip_len), ("num_envs", num_envs)):
        check_int(name, value)
    stride = clip_len if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= clip_len:
        raise ValueError(f"stride must be an int in [1, clip_len={clip_len}], got {stride!r}")
    policies = tuple(POLICIES[domain] if policies is None else policies)
    unknown = [p for p in policies if p not in POLICIES[domain]]
    if unknown or not policies:
        raise ValueError(f"policies={list(policies)!r}: on {domain} choose from {list(POLICIES[domain])}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")

    if domain == "minigrid":
        from torchrl_vlm.envs.minigrid import make_minigrid_env
        from torchrl_vlm.envs.minigrid_names import EVENT_NAMES
        from torchrl_vlm.teacher.planner import PlannerTeacher

        env = make_minigrid_env(env_name, num_envs=num_envs, clip_len=clip_len, render=True, seed=seed,
                                state="planner" in policies)
        planner = PlannerTeacher(epsilon=epsilon) if "planner" in policies else None
        event_names = EVENT_NAMES
    else:
        from torchrl_vlm.envs.ogbench import OGBENCH_EVENT_NAMES, make_ogbench_env

        env = make_ogbench_env(env_name, num_envs=num_envs, clip_len=clip_len, render=True, frame_size=frame_size,
                               seed=seed, scripted="scripted" in policies)
        planner = None
        event_names = OGBENCH_EVENT_NAMES
    assignment = torch.arange(num_envs) % len(policies)
    quota = -(-n_clips // len(policies))  # each policy gives its share, so that none is rare
    taken = [0] * len(policies)
    generator = torch.Generator().manual_seed(seed)
    out = {k: [] for k in ("frames", "mask", "events", "policy", "episode", "start")}
    missions: list[str | None] = []
    episodes = [_Episode(clip_len, stride) for _ in range(num_envs)]
    episode_ids = list(range(num_envs))
    next_episode = num_envs
    bar = _progress(quota * len(policies), env_name) if progress else None

    def keep(i: int, clips) -> None:
        p = int(assignment[i])
        for start, length, frames, events in clips:
            if taken[p] == quota:
                return
            taken[p] += 1
            pad = clip_len - length
            out["frames"].append(torch.cat([frames, frames.new_zeros(pad, *frames.shape[1:])]))
            out["events"].append(torch.cat([events, events.new_zeros(pad, *events.shape[1:])]))
            out["mask"].append(torch.arange(clip_len) < length)
            out["policy"].append(torch.tensor(p))
            out["episode"].append(torch.tensor(episode_ids[i]))
            out["start"].append(torch.tensor(start))
            missions.append(episodes[i].mission)
            if bar is not None:
                bar.update(1)

    try:
        torch.manual_seed(seed)
        np.random.seed(seed)  # OGBench's oracles draw their resting poses from numpy's global generator
        td = env.reset()
        while min(taken) < quota:
            if domain == "minigrid":
                action = torch.randint(0, 7, (num_envs,), generator=generator)
                if planner is not None:
                    planned = torch.multinomial(planner(td), 1, generator=generator).squeeze(-1)
                    action = torch.where(assignment == policies.index("planner"), planned, action)
            else:
                action = torch.rand(num_envs, 5, generator=generator) * 2 - 1
                if "scripted" in policies:
                    scripted = td["scripted_action"].reshape(num_envs, 5)
                    own = torch.rand(num_envs, generator=generator) >= epsilon
                    use = (assignment == policies.index("scripted")) & own
                    action = torch.where(use[:, None], scripted, action)
            td.set("action", action)
            stepped, td = env.step_and_maybe_reset(td)
            done = stepped["next", "done"].reshape(num_envs)
            for i in range(num_envs):
                ep = episodes[i]
                if ep.mission is None and domain == "minigrid":
                    ep.mission = decode_mission(stepped["mission"][i : i + 1])[0]
                keep(i, ep.add(stepped["pixels"][i].clone(), stepped["next", "pixels"][i].clone(),
                               stepped["next", "events"][i].clone()))
                if bool(done[i]):
                    keep(i, ep.end())
                    episodes[i] = _Episode(clip_len, stride)
                    episode_ids[i], next_episode = next_episode, next_episode + 1
    finally:
        env.close()
        if bar is not None:
            bar.close()
    stacked = {k: torch.stack(v) for k, v in out.items()}
    return ClipSet(env_name, domain, clip_len, stride, seed, policies, tuple(event_names),
                   missions=missions if domain == "minigrid" else None, **stacked)


def _progress(total: int, env_name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"collecting clips on {env_name}", unit="clip")
