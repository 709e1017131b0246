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

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import TensorDictReplayBuffer

from torchrl_vlm.envs.minigrid import decode_mission
from torchrl_vlm.replay.clips import ClipAssembler
from torchrl_vlm.replay.sampler import MixtureSampler
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
            the scorer and never stored. Missing frames are fine for scorers that
            do not look at them (``MiniGridEventScorer``).
        threshold: P(yes) at or above which a clip is meaningful (paper: 0.5).
        events_key: per-step flags for ground-truth scorers. A row's events are
            ``("next", "events")``: those its own action caused.
        mission_key: the env's mission string, passed to the scorer.
        exclude_keys: further entries kept out of the buffer (the mission string
            is kept out by default: it is the same for every step).

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
        flat = batch.reshape(-1)
        n = flat.batch_size[0]
        frames = flat.get(self.frame_key, None)
        missions = _strings(flat.get(self.mission_key, None))

        data = flat.exclude(*self._drop)
        data.set("vlm_priority", torch.zeros(n, device=data.device))
        data.set("vlm_score", torch.full((n,), float("nan"), device=data.device))
        index = self.rb.extend(data)
        generation = self.rb.writer.generations_of(index)
        self._counts["slots_written"] += n

        steps = TensorDict(
            {
                "clip_id": flat["clip_id"].reshape(n),
                "clip_step": flat["clip_step"].reshape(n),
                "end": flat.get(self.done_key, torch.zeros(n, dtype=torch.bool)).reshape(n),
                "index": index.reshape(n),
                "generation": generation.reshape(n),
            },
            batch_size=[n],
        )
        if frames is not None:
            steps.set("frames", frames)
        events = flat.get(self.events_key, None)
        if events is not None:
            steps.set("events", events)
        clips = self.assembler.add(steps, missions)
        if clips is not None:
            meta = {
                "index": clips.pop("index"),
                "generation": clips.pop("generation"),
                "mask": clips["mask"],
            }
            self.service.submit(clips, meta)
        return index

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

    def close(self) -> None:
        self.service.close()

    def __enter__(self) -> "VLMScoringHook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _strings(value) -> list[str] | None:
    """A flat list of strings from a mission entry: UTF-8 bytes (``[N, MISSION_BYTES]``) or non-tensor."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return decode_mission(value.reshape(-1, value.shape[-1]))
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
