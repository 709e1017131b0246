"""VLMScoringHook: the one place that ties the replay buffer to the scoring service.

Per collector batch (VLM-RB steps 2–4):

1. drop the frames and extend the buffer, every row with ``vlm_priority = 0``
   (not known to be meaningful) and ``vlm_score = NaN`` (not scored);
2. regroup the frames by ``clip_id`` with their buffer indices and slot
   generations, carrying unfinished clips over to the next batch;
3. submit the complete clips to the :class:`ScoringService` without waiting.

:meth:`VLMScoringHook.poll` later writes the scores back: each slot's
generation is checked first (``rb.update_if_present``), so a score that comes
back after its slot was reused is rejected, never written onto new data.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import TensorDictReplayBuffer

from torchrl_vlm.envs.minigrid import decode_mission
from torchrl_vlm.replay.clips import ClipAssembler
from torchrl_vlm.replay.sampler import MixtureSampler
from torchrl_vlm.scoring.gallery import ClipGallery
from torchrl_vlm.scoring.service import ScoringService

__all__ = ["VLMScoringHook"]


class VLMScoringHook:
    """Feeds collected clips to a scoring service and their verdicts back into replay.

    Args:
        replay_buffer: a buffer from :func:`~torchrl_vlm.make_replay_buffer`
            (its writer must track generations). With a :class:`MixtureSampler`,
            verdicts reach the sampler through ``rb.update_priority``; with any
            other sampler only the ``vlm_score``/``vlm_priority`` columns are written.
        service: the :class:`ScoringService` that scores clips.
        clip_len: the clip length L the env tags with (paper: 32).
        frame_key: the frame entry of the collector batch; frames are sent to
            the scorer and never stored. A clip's last frame is the state its last
            action led to (``("next", frame_key)``), so the outcome is in view.
            Missing frames are fine for scorers that do not look at them
            (``MiniGridEventScorer``).
        threshold: P(yes) at or above which a clip is meaningful (paper: 0.5).
        events_key: per-step flags for ground-truth scorers. A row's events are
            ``("next", "events")``: those its own action caused.
        mission_key: the env's mission string, passed to the scorer.
        exclude_keys: further entries kept out of the buffer (the mission string
            is kept out by default: it is the same for every step).
        max_idle_batches: an unfinished clip that gets no step for this many
            batches is abandoned (its env went away).
        gallery: a :class:`ClipGallery` that keeps thumbnails of scored clips.
        postproc: applied to the batch (in its collector layout, frames
            removed) before it is written, e.g. TorchRL's ``MultiStep`` for
            n-step returns. Clip tags, episode ends and events are read from the
            batch *before* it, since ``MultiStep`` shifts every ``"next"`` entry.

    Call :meth:`extend` and :meth:`poll` from the training loop's thread.

    Examples:
        >>> hook = VLMScoringHook(rb, ScoringService(MiniGridEventScorer))  # doctest: +SKIP
        >>> for batch in collector:  # doctest: +SKIP
        ...     hook.extend(batch)
        ...     hook.poll()
        ...     sample = rb.sample()
    """

    def __init__(
        self,
        replay_buffer: TensorDictReplayBuffer,
        service: ScoringService,
        *,
        clip_len: int = 32,
        frame_key: NestedKey = "pixels",
        threshold: float = 0.5,
        events_key: NestedKey = ("next", "events"),
        mission_key: NestedKey = "mission",
        done_key: NestedKey = ("next", "done"),
        exclude_keys: tuple[NestedKey, ...] = (),
        max_idle_batches: int = 8,
        gallery: ClipGallery | None = None,
        postproc: Callable[[TensorDictBase], TensorDictBase] | None = None,
    ):
        if not isinstance(replay_buffer, TensorDictReplayBuffer):
            raise TypeError(
                f"replay_buffer must be a TensorDictReplayBuffer (see make_replay_buffer), "
                f"got {type(replay_buffer).__name__}"
            )
        if not getattr(replay_buffer.writer, "tracks_generations", False):
            raise ValueError(
                "replay_buffer's writer must track slot generations "
                "(TensorDictRoundRobinWriter(track_generations=True), as make_replay_buffer builds)"
            )
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a float in [0, 1], got {threshold!r}")
        self.rb = replay_buffer
        self.service = service
        self.clip_len = clip_len
        self.frame_key = frame_key
        self.threshold = float(threshold)
        self.events_key = events_key
        self.mission_key = mission_key
        self.done_key = done_key
        self._drop = (frame_key, ("next", frame_key), mission_key, ("next", mission_key), *exclude_keys)
        self.assembler = ClipAssembler(clip_len, max_idle=max_idle_batches)
        self.gallery = gallery
        self.postproc = postproc
        self._counts = dict.fromkeys(("positives", "stale_rejected", "slots_written", "slots_scored"), 0)

    # ---------------------------------------------------------------- extend
    def extend(self, batch: TensorDictBase) -> torch.Tensor:
        """Writes a collector batch (``[n_envs, T]`` or flat) to the buffer; submits complete clips.

        Returns the buffer indices of the rows, in the batch's flattened order.
        """
        if not isinstance(batch, TensorDictBase):
            raise TypeError(f"batch must be a TensorDict, got {type(batch).__name__}")
        for key in ("clip_id", "clip_step"):
            if key not in batch.keys():
                raise KeyError(
                    f"batch has no {key!r} entry: collect from an env with the RenderClips "
                    "transform (make_minigrid_env adds it)"
                )
        # Scores that are ready land before this extend can overwrite their slots.
        self.poll()
        n = batch.numel()
        flat = batch.reshape(-1)
        frames = self._frames(flat)
        mission = flat.get(self.mission_key, None)
        # Byte-encoded missions ride along as a tensor and are decoded once per
        # finished clip; other mission entries are turned into strings here.
        missions = None if mission is None or isinstance(mission, torch.Tensor) else _strings(mission)
        # Read before postproc, which may rewrite "next" entries in place.
        end = flat.get(self.done_key, torch.zeros(n, dtype=torch.bool)).reshape(n).clone()
        events = flat.get(self.events_key, None)
        events = None if events is None else events.clone()

        data = batch.exclude(*self._drop)
        if self.postproc is not None:
            data = self.postproc(data)
        data = data.reshape(-1)
        data.set("vlm_priority", torch.zeros(n, device=data.device))
        data.set("vlm_score", torch.full((n,), float("nan"), device=data.device))
        index = self.rb.extend(data)
        generation = self.rb.writer.generations_of(index)
        self._counts["slots_written"] += n

        steps = TensorDict(
            {
                "clip_id": flat["clip_id"].reshape(n),
                "clip_step": flat["clip_step"].reshape(n),
                "end": end,
                "index": index.reshape(n),
                "generation": generation.reshape(n),
            },
            batch_size=[n],
        )
        if frames is not None:
            steps.set("frames", frames)
        if events is not None:
            steps.set("events", events)
        if isinstance(mission, torch.Tensor):
            steps.set("mission_bytes", mission.reshape(n, -1))
        clips = self.assembler.add(steps, missions)
        if clips is not None:
            if "mission_bytes" in clips.keys():
                # The mission is fixed within an episode: the first step's tells.
                clips.set("mission", NonTensorStack(*decode_mission(clips.pop("mission_bytes")[:, 0])))
            meta = {
                "index": clips.pop("index"),
                "generation": clips.pop("generation"),
                "mask": clips["mask"],
            }
            if self.gallery is not None and "frames" in clips.keys():
                meta["thumbnails"] = self.gallery.thumbnails(clips["frames"], clips["mask"])
                meta["clip_id"] = clips["clip_id"]
            self.service.submit(clips, meta)
        return index

    def _frames(self, flat: TensorDictBase) -> torch.Tensor | None:
        """One frame per row: the row's own, except that a clip's last row shows where it led.

        A row is the transition (s_t, a_t, s_t+1). Without this, a clip of L rows
        would show s_t0 ... s_t0+L-1 and never the state its last action reached:
        an episode's goal (the agent on the goal tile) or the opened door would be
        missing from the frames the VLM judges.
        """
        frames = flat.get(self.frame_key, None)
        next_frames = flat.get(("next", self.frame_key), None)
        if frames is None or next_frames is None:
            return frames
        n = flat.batch_size[0]
        last = flat.get(self.done_key, torch.zeros(n, dtype=torch.bool)).reshape(n).clone()
        next_clip = flat.get(("next", "clip_id"), None)
        if next_clip is not None:
            last |= next_clip.reshape(n) != flat["clip_id"].reshape(n)
        last = last.reshape(n, *([1] * (frames.ndim - 1)))
        return torch.where(last, next_frames, frames)

    # ------------------------------------------------------------------ poll
    def poll(self) -> int:
        """Writes back every score that has arrived; returns the number of clips written.

        Slots whose generation changed since the clip was submitted are
        rejected (``stats["stale_rejected"]`` counts them); the others get
        ``vlm_score`` = P(yes) and ``vlm_priority`` = [P(yes) >= threshold].
        """
        results = self.service.poll()
        if not results:
            return 0
        index, generation, score = [], [], []
        for result in results:
            mask = result.meta["mask"]
            per_slot = result.scores.unsqueeze(-1).expand(mask.shape)[mask]
            index.append(result.meta["index"][mask])
            generation.append(result.meta["generation"][mask])
            score.append(per_slot)
            self._counts["positives"] += int((result.scores >= self.threshold).sum())
            if self.gallery is not None and "thumbnails" in result.meta:
                self.gallery.add(result.meta["thumbnails"], result.scores, result.meta["clip_id"])
        index, generation, score = torch.cat(index), torch.cat(generation), torch.cat(score)
        priority = (score >= self.threshold).float()

        mixture = isinstance(self.rb.sampler, MixtureSampler)
        patch = {"vlm_score": score}
        if not mixture:
            patch["vlm_priority"] = priority
        live = self.rb.update_if_present(index=index, generation=generation, patch=patch).updated
        n_live = int(live.sum())
        self._counts["stale_rejected"] += index.numel() - n_live
        self._counts["slots_scored"] += n_live
        if mixture and n_live:
            # TorchRL's priority path; the sampler mirrors it into "vlm_priority".
            self.rb.update_priority(index[live], priority[live])
        return len(results)

    def drain(self, timeout_s: float = 60.0) -> int:
        """Waits until every submitted clip is answered (or ``timeout_s``), writing the scores back.

        For synchronisation points such as a checkpoint, never the training loop: it
        blocks the learner. Clips still being assembled (fewer than ``clip_len`` steps
        so far) are not submitted. Returns the clips still unanswered at the timeout.
        """
        deadline = time.monotonic() + timeout_s
        self.poll()
        while self.service.queue_depth and time.monotonic() < deadline:
            time.sleep(0.005)
            self.poll()
        return self.service.queue_depth

    # ----------------------------------------------------------------- stats
    @property
    def stats(self) -> dict[str, float]:
        """Counters a trainer logs: the service's, plus positives, stale writes and coverage."""
        out = self.service.stats
        out.update({k: float(v) for k, v in self._counts.items()})
        written = self._counts["slots_written"]
        out["coverage"] = self._counts["slots_scored"] / written if written else 0.0
        out["clips_open"] = float(self.assembler.open_clips)
        out["clips_abandoned"] = float(self.assembler.abandoned)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The hook's counters, so that a resumed run's coverage and positives continue.

        The service's own counters (submitted, dropped, latency) describe one scoring
        process and start again with a new one.
        """
        return {"counts": dict(self._counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._counts.update(state["counts"])

    def close(self) -> None:
        self.service.close()

    def __enter__(self) -> "VLMScoringHook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _strings(value) -> list[str]:
    """A flat list of strings from a non-tensor mission entry."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    out = []

    def walk(v):
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        else:
            out.append(str(v))

    walk(value)
    return out
