"""Clip assembly: regroups collected steps into whole clips (VLM-RB step 3).

A collector hands over batches of steps from several envs; a clip can start in
one batch and end in the next. :class:`ClipAssembler` keeps the unfinished
clips' steps between batches and returns the clips that are complete. Steps are
regrouped by ``clip_id`` and put in order by ``clip_step``, so any batch layout
works (``[n_envs, T]`` flattened, or steps in any order).

The env's :class:`~torchrl_vlm.RenderClips` is the one place the clip length is
set. A clip is complete when its env says so: the episode ended, or the next step
carries another ``clip_id`` (``clip_end``). The assembler learns the length from
those boundaries, and a length given to it must agree with the env's, or it
refuses with an error naming both.
"""
from __future__ import annotations

import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase

from torchrl_vlm._checks import check_int

__all__ = ["ClipAssembler"]


class ClipAssembler:
    """Collects steps tagged with ``clip_id``/``clip_step`` and emits complete clips.

    ``add(steps)`` takes a flat TensorDict ``[N]`` that holds at least
    ``clip_id`` (int64), ``clip_step`` (int64) and ``end`` (bool: the episode
    ended at this step), and, from an env, ``clip_end`` (bool: the next step
    starts another clip, read from ``("next", "clip_id")``), plus any per-step
    entries to carry along (frames, events, buffer indices, ...). It returns a
    TensorDict ``[B]`` of the clips completed by these steps, or ``None``:

    - each per-step entry becomes ``[B, clip_len, ...]``, zero-padded;
    - ``mask`` (bool ``[B, clip_len]``) marks the real steps;
    - ``clip_id`` is ``[B]``;
    - ``mission`` (one string per clip) when ``missions`` were given.

    Args:
        clip_len: the env's clip length, to check the env against; ``None`` (default)
            learns it from the first clip boundary that is not an episode's end (clips
            ended by their episode are padded to the longest seen until then). A step
            past it, or a clip the env closes at another length, raises ``ValueError``
            naming both lengths. Steps without ``clip_end`` complete at ``clip_len``
            steps, which must then be given.
        max_idle: calls without news after which an unfinished clip is abandoned.

    A clip whose steps stop arriving (its env was dropped, say) is abandoned
    after ``max_idle`` calls without news, so memory stays bounded;
    :attr:`abandoned` counts them.
    """

    def __init__(self, clip_len: int | None = None, max_idle: int = 8):
        check_int("clip_len", clip_len, none_means="read from the env's clip boundaries")
        check_int("max_idle", max_idle)
        self.clip_len = clip_len
        self.max_idle = max_idle
        self._carry: TensorDictBase | None = None  # steps of unfinished clips
        self._carry_missions: list[str] | None = None
        self._last_seen: dict[int, int] = {}
        self._calls = 0
        self.abandoned = 0

    @property
    def open_clips(self) -> int:
        """Clips with some steps seen and not yet complete."""
        return len(self._last_seen)

    def carried(self, key: str) -> torch.Tensor | None:
        """The ``key`` entry of the steps of unfinished clips (``[N, ...]``), ``None`` where none is carried."""
        if self._carry is None or key not in self._carry.keys():
            return None
        return self._carry.get(key)

    def _check_length(self, env_len: torch.Tensor, closed_by_env: torch.Tensor) -> None:
        """Learns the env's clip length, or checks it against the one given.

        ``env_len``: per clip, its last step's ``clip_step + 1``; ``closed_by_env``: the env
        started a new clip after that step (not an episode's end).
        """
        if self.clip_len is None and bool(closed_by_env.any()):
            self.clip_len = int(env_len[closed_by_env][0])
        if self.clip_len is None:
            return
        other = closed_by_env & (env_len != self.clip_len)
        longer = env_len > self.clip_len
        if bool(other.any()):  # a boundary shows the env's length itself
            seen = f"{int(env_len[other][0])} steps"
        elif bool(longer.any()):  # a step past the length, its clip's end not seen yet
            seen = f"at least {int(env_len[longer].max())} steps"
        else:
            return
        raise ValueError(
            f"the env's clips have {seen}, the replay buffer's clip_len is {self.clip_len}: the env's "
            "RenderClips sets the clip length; leave the buffer's clip_len at None (it reads the env's) "
            "or give both the same value"
        )

    def _check_entries(self, steps: TensorDictBase) -> bool:
        """Whether ``steps`` carry ``clip_end``; raises where the boundaries cannot be told."""
        has_clip_end = "clip_end" in steps.keys()
        if not has_clip_end and self.clip_len is None:
            raise KeyError("steps without a 'clip_end' entry complete at clip_len steps: give the assembler clip_len")
        if not has_clip_end and self._carry is not None and "clip_end" in self._carry.keys():
            raise KeyError("steps lack the 'clip_end' entry that earlier steps had")
        return has_clip_end

    def check(self, steps: TensorDictBase) -> None:
        """Raises what :meth:`add` would raise about ``steps``' clip boundaries, changing nothing: a caller
        that writes the steps elsewhere first (a replay buffer) checks before it writes."""
        if self._check_entries(steps):
            env_len = steps["clip_step"].reshape(-1) + 1
            closed = steps["clip_end"].reshape(-1) & ~steps["end"].reshape(-1)
            known = self.clip_len
            try:
                self._check_length(env_len, closed)
            finally:
                self.clip_len = known  # learning happens in add(), with the rest of the state

    def add(self, steps: TensorDictBase, missions: list[str] | None = None) -> TensorDictBase | None:
        for key in ("clip_id", "clip_step", "end"):
            if key not in steps.keys():
                raise KeyError(f"ClipAssembler.add needs a {key!r} entry per step")
        if steps.batch_dims != 1:
            raise ValueError(f"steps must be flat ([N]), got batch_size {list(steps.batch_size)}")
        has_clip_end = self._check_entries(steps)
        self._calls += 1
        fresh_ids = set(steps["clip_id"].tolist())  # clips that got news in this call
        if self._carry is not None:
            if has_clip_end and "clip_end" not in self._carry.keys():
                # Carried from steps without the entry (a checkpoint from before it existed): a carried
                # step never closed its clip, or the clip would have been complete.
                self._carry.set("clip_end", torch.zeros(self._carry.batch_size[0], dtype=torch.bool))
            steps = torch.cat([self._carry, steps])
            if missions is not None and self._carry_missions is not None:
                missions = self._carry_missions + list(missions)
        if steps.batch_size[0] == 0:
            return None

        # Lexicographic (clip_id, clip_step) order with two stable sorts.
        order = torch.sort(steps["clip_step"], stable=True).indices
        order = order[torch.sort(steps["clip_id"][order], stable=True).indices]
        clip_ids, counts = torch.unique_consecutive(steps["clip_id"][order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        last_row = order[starts + counts - 1]
        episode_end = steps["end"][last_row].reshape(-1)
        if has_clip_end:
            closed_by_env = steps["clip_end"][last_row].reshape(-1) & ~episode_end
            self._check_length(steps["clip_step"][last_row].reshape(-1) + 1, closed_by_env)
            complete = closed_by_env | episode_end
        else:
            complete = (counts >= self.clip_len) | episode_end
        out = None
        if bool(complete.any()):
            out = self._gather(steps, order, starts[complete], counts[complete], missions)

        # Unfinished clips wait for their next steps, unless they went quiet.
        keep = ~complete
        last_seen = {}
        for i in torch.nonzero(keep).squeeze(-1).tolist():
            cid = int(clip_ids[i])
            seen = self._calls if cid in fresh_ids else self._last_seen.get(cid, self._calls)
            if self._calls - seen >= self.max_idle:
                keep[i] = False
                self.abandoned += 1
            else:
                last_seen[cid] = seen
        self._last_seen = last_seen
        if bool(keep.any()):
            spans = zip(starts[keep].tolist(), counts[keep].tolist(), strict=True)
            rows = torch.cat([order[s : s + c] for s, c in spans])
            self._carry = steps[rows]
            self._carry_missions = None if missions is None else [missions[i] for i in rows.tolist()]
        else:
            self._carry, self._carry_missions = None, None
        return out

    def _gather(self, steps, order, starts, counts, missions) -> TensorDictBase:
        n_clips = starts.numel()
        # Until the env's length is known, only episode-ended clips complete: pad to the longest.
        length = self.clip_len if self.clip_len is not None else int(counts.max())
        counts = counts.clamp(max=length)  # a clip never holds more than clip_len steps
        offset = torch.arange(length)
        mask = offset < counts.unsqueeze(-1)
        pos = (starts.unsqueeze(-1) + offset).clamp(max=order.numel() - 1)
        rows = torch.where(mask, order[pos], torch.zeros_like(pos))
        clips = steps.exclude("end", "clip_end")[rows.reshape(-1)].reshape(n_clips, length)
        padding = ~mask
        if bool(padding.any()):
            # Zero the padding, so that no step of another clip leaks in.
            clips = clips.apply(lambda x: x.index_put_((padding,), x.new_zeros(())))
        out = TensorDict(
            {key: value for key, value in clips.items() if key not in ("clip_id", "clip_step")},
            batch_size=[n_clips],
        )
        out.set("clip_id", steps["clip_id"][order[starts]])
        out.set("mask", mask)
        if missions is not None:
            out.set("mission", NonTensorStack(*[missions[i] for i in order[starts].tolist()]))
        return out

    def state_dict(self) -> dict:
        """The unfinished clips' steps and the idle bookkeeping, as plain tensors and numbers."""
        return {
            "carry": None if self._carry is None else self._carry.to_dict(),
            "carry_missions": self._carry_missions,
            "last_seen": dict(self._last_seen),
            "calls": self._calls,
            "abandoned": self.abandoned,
            "clip_len": self.clip_len,
        }

    def load_state_dict(self, state: dict) -> None:
        carry = state["carry"]
        self._carry = None if carry is None else TensorDict(carry, batch_size=[next(iter(_leaves(carry))).shape[0]])
        self._carry_missions = state["carry_missions"]
        self._last_seen = {int(k): int(v) for k, v in state["last_seen"].items()}
        self._calls = int(state["calls"])
        self.abandoned = int(state["abandoned"])
        saved = state.get("clip_len")
        if saved is not None and self.clip_len is not None and saved != self.clip_len:
            raise ValueError(f"the saved clips have clip_len={saved}, this assembler's is {self.clip_len}")
        self.clip_len = saved if saved is not None else self.clip_len

    def reset(self) -> None:
        """Forgets unfinished clips (e.g. after the envs were reset by hand)."""
        self._carry, self._carry_missions = None, None
        self._last_seen.clear()


def _leaves(tree: dict):
    for value in tree.values():
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield value
