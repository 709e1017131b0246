"""VLMReplayBuffer: the one place that ties replay to the scoring service (VLM-RB steps 2–4).

Per ``rb.extend(batch)``:

1. the frames are taken out of the batch (they never enter replay) and the rows are
   written with ``vlm_priority = 0`` (not known to be meaningful) and
   ``vlm_score = NaN`` (not scored);
2. the steps are regrouped into clips by ``clip_id`` with their storage indices and
   slot generations, unfinished clips carried over to the next extend; the frames a
   scorer can be shown (every step's, or only those a strided env rendered) wait in a
   :class:`~torchrl_vlm.replay.FrameStore`, copied there once, and the steps carry a
   reference to them;
3. the complete clips go to the :class:`ScoringService`, without waiting, as one
   shared-memory block into which their frames are copied straight from the store (the
   unrendered steps' zeros never travel; :func:`~torchrl_vlm.scoring.base.unpack_frames`);
4. verdicts that have come back are written: each slot's generation is checked
   first (``rb.update_if_present``), so a verdict that arrives after its slot was
   reused is counted as stale and never lands on new data.

``rb.sample()`` writes the verdicts that have arrived before it draws. When a verdict
lands is the wall clock's business by default (the paper's asynchronous worker), or
exactly ``score_lag`` extends after its clip completed, which makes a run reproducible
whatever the machine's load.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data.replay_buffers.samplers import PrioritizedSampler, Sampler
from torchrl.data.replay_buffers.storages import Storage

from torchrl_vlm.frames import FRAME_RENDERED_KEY
from torchrl_vlm.missions import decode_mission, mission_strings
from torchrl_vlm.replay.buffer import CollectorReplayBuffer, own_signature
from torchrl_vlm.replay.clips import ClipAssembler
from torchrl_vlm.replay.frame_store import FrameStore, packed_layout
from torchrl_vlm.replay.sampler import MixtureSampler
from torchrl_vlm.scoring.base import FRAME_STEPS_KEY, PACKED_FRAMES_KEY, factory_needs_frames
from torchrl_vlm.scoring.gallery import ClipGallery
from torchrl_vlm.scoring.service import ScoredBatch, ScoringService
from torchrl_vlm.scoring.writeback import AsyncWriteBackBuffer

__all__ = ["VLMReplayBuffer"]

logger = logging.getLogger(__name__)

_COUNTERS = ("positive_clips", "slots_scored")


@own_signature
class VLMReplayBuffer(AsyncWriteBackBuffer):
    """VLM-RB's replay buffer: collector batches in, VLM verdicts written back as priorities.

    Args:
        storage: a 1-D TorchRL storage, e.g. ``LazyTensorStorage(200_000)``.
        scorer: the scorer, started in its own :class:`ScoringService` with ``service_options``
            and closed with the buffer: a scorer class or a ``functools.partial`` of one (built in
            the scoring process), a scorer object, or a module-level function of the clips (see
            :class:`~torchrl_vlm.Scorer` for what it receives); or a ``ScoringService`` the caller
            started, owns and closes (one buffer uses it at a time).
        sampler: default :class:`~torchrl_vlm.MixtureSampler` ``()``. Verdicts reach a
            ``MixtureSampler`` through ``rb.update_priority``; with any other
            sampler only the ``vlm_score``/priority columns are written.
        batch_size: default batch size of ``rb.sample()``.
        clip_len: ``None`` (default): the clip length L is the env's, read from its clip boundaries
            (``RenderClips(clip_len=...)`` sets it, the one place to). An int checks the env's clips against
            it: a disagreement raises ``ValueError`` naming both, at the first clip that shows it, before that
            batch is written. The boundaries are read from ``("next", "clip_id")`` as the env wrote it: an
            n-step transform belongs in ``postproc`` (which runs after they are read), not in the collector's
            own ``postproc``, which would shift ``"next"`` by n steps first.
        frame_key: the frame entry of a collector batch. A clip's frames are its
            rows' own, except the last, which is ``("next", frame_key)``: the state
            its last action reached (the goal, the opened door), so the outcome is
            in view. A batch without frames is fine for scorers that do not look
            at them (``MiniGridEventScorer``).
        frame_size: ``None`` (default): frames go to the scorer as the env renders them. ``(H, W)``
            (or an int for square frames): resized once here, before they are shipped (a VLM
            sees a few hundred pixels a side; a 400×600 frame costs 0.7 MB a step in flight).
            Frames are uint8 ``[..., H, W, 3]``; float frames in [0, 1] (TorchRL's
            ``ToTensorImage``, channels first or last) are turned into those.
        threshold: P(yes) at or above which a clip is meaningful (paper: 0.5).
        score_lag: ``None`` (default): fully asynchronous, a verdict lands when it
            arrives. An int ``k >= 0``: the verdict of a clip completed during extend
            ``t`` lands at the end of extend ``t + k``, after that extend's rows are
            written; a late verdict is waited for (``stats()["score_wait_s"]``), an
            early one held back. With a deterministic scorer and fixed seeds, runs
            then give identical priorities, samples and losses. Nothing is dropped: when
            the scoring queue is full (``max_pending``), ``extend`` waits for room.
        transform: TorchRL replay-buffer transforms.
        postproc: applied to each batch, frames removed, in its collector layout
            before writing (e.g. :class:`~torchrl_vlm.NStepReturns`). Clip tags,
            episode ends and events are read before it, since n-step returns shift
            every ``"next"`` entry.
        events_key: per-step ground-truth flags passed to the scorer. A row's events
            are ``("next", "events")``: those its own action caused.
        mission_key: the env's mission (UTF-8 bytes or strings), passed to the scorer.
        done_key: where a batch says an episode ended (a clip ends there).
        exclude_keys: further entries kept out of replay (frames and missions always are).
        max_idle_extends: an unfinished clip that gets no step for this many extends
            is abandoned (its env went away).
        gallery: a :class:`ClipGallery` that keeps thumbnails of scored clips.
        **service_options: passed to :class:`ScoringService` when ``scorer`` is a factory.

    ``rb.stats()`` adds to TorchRL's snapshot what a researcher watches: the service's
    counters (clips submitted, scored, dropped, lost; latency), positive clips, stale
    writes, coverage (share of written slots that got a verdict), the wait of
    ``score_lag``, and λ and the prioritised share of the last batch.

    Examples:
        >>> from torchrl.collectors import Collector
        >>> from torchrl.data import LazyTensorStorage
        >>> from torchrl_vlm import MiniGridEventScorer, VLMReplayBuffer, make_minigrid_env
        >>> env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, render=False)  # doctest: +SKIP
        >>> with VLMReplayBuffer(storage=LazyTensorStorage(10_000), scorer=MiniGridEventScorer,
        ...                      batch_size=32) as rb:  # doctest: +SKIP
        ...     collector = Collector(env, None, frames_per_batch=64, total_frames=640, replay_buffer=rb)
        ...     for _ in collector:
        ...         sample = rb.sample()
    """

    def __init__(
        self,
        *,
        storage: Storage,
        scorer: Callable[[], Any] | ScoringService,
        sampler: Sampler | None = None,
        batch_size: int | None = None,
        clip_len: int | None = None,
        frame_key: NestedKey = "pixels",
        frame_size: int | tuple[int, int] | None = None,
        threshold: float = 0.5,
        score_lag: int | None = None,
        transform=None,
        postproc: Callable[[TensorDictBase], TensorDictBase] | None = None,
        events_key: NestedKey = ("next", "events"),
        mission_key: NestedKey = "mission",
        done_key: NestedKey = ("next", "done"),
        exclude_keys: tuple[NestedKey, ...] = (),
        max_idle_extends: int = 8,
        gallery: ClipGallery | None = None,
        **service_options,
    ):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a float in [0, 1], got {threshold!r}")
        # The assembler checks clip_len and max_idle_extends before any process starts.
        self.assembler = ClipAssembler(clip_len, max_idle=max_idle_extends)
        self._frames = FrameStore()  # the rendered frames of clips not shipped yet
        sampler = MixtureSampler() if sampler is None else sampler
        if not isinstance(sampler, MixtureSampler) and isinstance(sampler, PrioritizedSampler):
            warnings.warn(
                f"VLMReplayBuffer with {type(sampler).__name__}: the VLM's verdicts go to the "
                "'vlm_priority' column only and never change what is sampled (TorchRL's PrioritizedSampler draws "
                "by the priorities update_tensordict_priority gives it). Use MixtureSampler (td_boost=True for "
                "verdicts times TD errors) for VLM-RB",
                UserWarning,
                stacklevel=2,
            )
        self.threshold = float(threshold)
        self.events_key = events_key
        self.done_key = done_key
        self.gallery = gallery
        super().__init__(
            storage=storage, service=scorer, sampler=sampler, batch_size=batch_size, lag=score_lag,
            lag_name="score_lag", frame_key=frame_key, frame_size=frame_size, mission_key=mission_key,
            transform=transform, postproc=postproc, exclude_keys=exclude_keys, **service_options,
        )
        self._add_counters(*_COUNTERS)
        # The column the verdicts go to: the mixture sampler's, or VLM-RB's name for it.
        self.vlm_priority_key = self.priority_key if isinstance(self._sampler, MixtureSampler) else "vlm_priority"

    @property
    def score_lag(self) -> int | None:
        """``None`` (asynchronous) or the extends after which each verdict lands."""
        return self.lag

    @property
    def clip_len(self) -> int | None:
        """The clip length L: the one given, or the env's once a clip boundary showed it (``None`` until then)."""
        return self.assembler.clip_len

    # ---------------------------------------------------------------- extend
    def extend(self, batch: TensorDictBase, *, update_priority: bool | None = None) -> torch.Tensor:
        """Writes a collector batch (``[*envs, T]`` or flat), submits complete clips, applies verdicts.

        Returns the storage indices of the rows, in the batch's flattened order.
        """
        if not isinstance(batch, TensorDictBase):
            raise TypeError(f"batch must be a TensorDict, got {type(batch).__name__}")
        for key in ("clip_id", "clip_step"):
            if key not in batch.keys():
                raise KeyError(
                    f"batch has no {key!r} entry: collect from an env with the RenderClips "
                    "transform (make_minigrid_env adds it)"
                )
        self._begin_extend()
        n = batch.numel()
        capacity = getattr(self._storage, "max_size", None)
        if capacity is not None and n > capacity:
            # Slots would be written twice in one extend, and a verdict could not tell the two rows apart.
            raise ValueError(f"a batch of {n} rows does not fit the buffer's capacity of {capacity}")
        if self._counts["extends"] == 0 and self.frame_key not in batch.keys(include_nested=True):
            self._check_frames_not_needed(batch)
        steps, missions = self._clip_steps(batch, n)  # read before postproc rewrites "next" entries
        if "clip_end" not in steps.keys() and self.clip_len is None:
            raise KeyError(
                "batch has no ('next', 'clip_id') entry, from which the buffer reads where the env's clips end: "
                "collect with a TorchRL collector or env.rollout (they keep 'next'), or give the buffer clip_len"
            )
        self.assembler.check(steps)  # a clip length that disagrees is refused before anything is written

        rows = self.rows(batch)
        rows.set(self.vlm_priority_key, torch.zeros(n, device=rows.device))
        rows.set("vlm_score", torch.full((n,), float("nan"), device=rows.device))
        # Fresh slots already hold priority 0 in the sampler: no need for TorchRL to send it again.
        index = super(CollectorReplayBuffer, self).extend(rows, update_priority=False)
        steps.set("index", index.reshape(n))
        steps.set("generation", self._writer.generations_of(index).reshape(n))
        self._counts["slots_written"] += n

        clips = self.assembler.add(steps, missions)
        if clips is not None:
            self._submit_clips(clips)
        self._frames.release(self.assembler.carried("frame_ref"))
        self._end_extend()
        return index

    def _clip_steps(self, batch: TensorDictBase, n: int) -> tuple[TensorDict, list[str] | None]:
        """The per-step entries a clip needs, flat ``[n]``: tags, episode end, events, frames; the missions.

        Byte-encoded missions (MiniGrid's) ride along as a tensor and are decoded once
        per clip; string missions come back as a list.
        """

        def column(key, default=None):
            value = batch.get(key, None)
            return default if value is None else value.reshape(n, *value.shape[batch.ndim:])

        end = column(self.done_key, torch.zeros(n, 1, dtype=torch.bool)).reshape(n)
        steps = TensorDict(
            {"clip_id": column("clip_id").reshape(n), "clip_step": column("clip_step").reshape(n), "end": end.clone()},
            batch_size=[n],
        )
        next_clip = column(("next", "clip_id"))
        if next_clip is not None:
            # The env closed the clip: its next step carries another clip id (RenderClips' boundary).
            steps.set("clip_end", next_clip.reshape(n) != steps["clip_id"])
        events = column(self.events_key)
        if events is not None:
            steps.set("events", events.clone())
        missions = None
        mission = batch.get(self.mission_key, None)
        if isinstance(mission, torch.Tensor):
            steps.set("mission_bytes", mission.reshape(n, -1))
        elif mission is not None:
            missions = mission_strings(mission)
        frames = column(self.frame_key)
        if frames is not None:
            # Which steps have a frame: all, or those an env rendering for a strided scorer marks
            # (FrameSchedule). A clip's last step shows where its action led (the episode ended, or the
            # next row starts another clip): the next state's frame, and whether that one was rendered.
            rendered = column(FRAME_RENDERED_KEY)
            rendered = None if rendered is None else rendered.reshape(n).clone()
            last = torch.zeros(n, dtype=torch.bool)
            next_frames = column(("next", self.frame_key))
            if next_frames is not None:
                last = end.clone() if next_clip is None else end | steps["clip_end"]
                next_rendered = column(("next", FRAME_RENDERED_KEY))
                if rendered is not None and next_rendered is not None:
                    rendered[last] = next_rendered.reshape(n)[last]
            has = torch.ones(n, dtype=torch.bool) if rendered is None else rendered
            # Only the frames a scorer can be shown are kept, once each: the store holds them until
            # their clips are shipped, and the steps carry a reference (0: none) through the assembler.
            ref = torch.zeros(n, dtype=torch.int64)
            own, outcome = has & ~last, has & last
            ref[own] = self._frames.add(self._model_frames(frames[own]))
            if bool(outcome.any()):
                ref[outcome] = self._frames.add(self._model_frames(next_frames[outcome]))
            steps.set("frame_ref", ref)
            if rendered is not None:
                steps.set("frame_mask", rendered)
        return steps, missions

    def _check_frames_not_needed(self, batch: TensorDictBase) -> None:
        """Refuses a first batch without frames when the scorer is known to look at them (a ``frame_key``
        typo, an env that renders nothing), rather than letting every clip fail in the scorer."""
        if factory_needs_frames(self.service.scorer_factory):
            keys = sorted(str(k) for k in batch.keys(include_nested=True, leaves_only=True))
            raise ValueError(
                f"the scorer looks at frames (needs_frames), but the batch has no {self.frame_key!r} entry; its "
                f"entries: {', '.join(keys)}. Render frames in the env (from_pixels=True, render=True), or set "
                "frame_key to where they are (a scorer that reads no frames says so with needs_frames = False)"
            )

    def _submit_clips(self, clips: TensorDictBase) -> None:
        if "mission_bytes" in clips.keys():
            # The mission is fixed within an episode: the first step's tells.
            clips.set("mission", NonTensorStack(*decode_mission(clips.pop("mission_bytes")[:, 0])))
        meta = {"index": clips.pop("index"), "generation": clips.pop("generation"), "mask": clips["mask"]}
        # When in the run the clip was judged, for audits (CachedScorer records it).
        clips.set("step", torch.full(clips.batch_size, self._counts["slots_written"], dtype=torch.int64))
        refs = clips.pop("frame_ref", None)
        if refs is not None:
            clips = self._pack_frames(clips, refs)
            if self.gallery is not None:
                meta["thumbnails"] = self.gallery.thumbnails(clips[PACKED_FRAMES_KEY], clips[FRAME_STEPS_KEY] >= 0)
                meta["clip_id"] = clips["clip_id"]
        self._submit(clips, meta)

    def _pack_frames(self, clips: TensorDictBase, refs: torch.Tensor) -> TensorDictBase:
        """``clips`` as they travel to the scoring process: one shared-memory block (consolidated), with only
        the frames a scorer can be shown, copied into it straight from the store (laid out by
        :func:`~torchrl_vlm.replay.frame_store.packed_layout`; the scoring process turns them back into the
        protocol's ``frames`` with :func:`~torchrl_vlm.scoring.base.unpack_frames`)."""
        frame_steps, packed_refs = packed_layout(refs)
        shape = self._frames.frame_shape or (0, 0, 3)
        clips.set(FRAME_STEPS_KEY, frame_steps)
        # A zero of zero strides: consolidating fills the block's frames with zeros (the padding) without
        # copying any frame, and the frames are then gathered straight into it.
        clips.set(PACKED_FRAMES_KEY, torch.zeros((), dtype=torch.uint8).expand(*packed_refs.shape, *shape))
        clips = clips.consolidate(share_memory=True)
        self._frames.gather(packed_refs, clips.get(PACKED_FRAMES_KEY))
        return clips

    def apply_verdicts(self) -> int:
        """Writes every verdict that has arrived (asynchronous mode); returns the submissions written.

        ``extend`` and ``sample`` call it; a loop never needs to. With ``score_lag``, arrivals are held
        until their extend instead.
        """
        return self.apply_answers()

    def _land(self, results: list[ScoredBatch]) -> None:
        """Generation-checked write of verdicts: ``vlm_score`` = P(yes), priority = [P(yes) >= threshold]."""
        index, generation, score = [], [], []
        for result in results:
            mask = result.meta["mask"]
            index.append(result.meta["index"][mask])
            generation.append(result.meta["generation"][mask])
            score.append(result.scores.unsqueeze(-1).expand(mask.shape)[mask])
            self._counts["positive_clips"] += int((result.scores >= self.threshold).sum())
            if self.gallery is not None and "thumbnails" in result.meta:
                self.gallery.add(result.meta["thumbnails"], result.scores, result.meta["clip_id"])
        index, generation, score = torch.cat(index), torch.cat(generation), torch.cat(score)
        priority = (score >= self.threshold).float()
        mixture = isinstance(self._sampler, MixtureSampler)
        patch = {"vlm_score": score} if mixture else {"vlm_score": score, self.vlm_priority_key: priority}
        live = self._write_back(index, generation, patch)
        n_live = int(live.sum())
        self._counts["slots_scored"] += n_live
        if mixture and n_live:
            self.update_priority(index[live], priority[live])  # the sampler and its column, together

    # ----------------------------------------------------------------- stats
    def stats(self) -> dict[str, float]:
        """TorchRL's snapshot, plus what a researcher watches, as floats:

        - the scoring service's ``clips_submitted``/``clips_scored``/``clips_dropped``/``clips_lost``,
          ``worker_restarts``, ``scorer_errors``, ``queue_depth``, ``latency_mean_s``/``latency_p95_s``
          (:meth:`ScoringService.stats`);
        - ``positive_clips``: clips the scorer said yes to (P(yes) ≥ ``threshold``), over the run;
        - ``positive_slots`` (with a :class:`~torchrl_vlm.MixtureSampler`): storage slots holding a
          positive priority now, the rows q_P draws from;
        - ``slots_written``, ``slots_scored``, ``coverage`` (the share of written slots that got a
          verdict), ``stale_rejected`` (verdicts whose slot was reused before they arrived), ``extends``,
          ``clips_open``/``clips_abandoned``, ``score_wait_s`` (``score_lag``'s wait);
        - ``lambda`` and ``priority_fraction`` (the sampler's λ and the share of the last batch drawn from q_P).
        """
        out = super().stats()
        written = self._counts["slots_written"]
        out["coverage"] = self._counts["slots_scored"] / written if written else 0.0
        out["clips_open"] = float(self.assembler.open_clips)
        out["clips_abandoned"] = float(self.assembler.abandoned)
        out["score_wait_s"] = self.wait_s
        return out

    # --------------------------------------------------------- checkpointing
    def _writeback_state(self) -> dict[str, Any]:
        """The write-back state (counters, held verdicts) plus the partial clips."""
        state = super()._writeback_state()
        state["assembler"] = self.assembler.state_dict()
        state["frames"] = self._frames.state_dict()
        return state

    def _load_writeback_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        counts = dict(state["counts"])
        if "positives" in counts:  # a checkpoint from before the counter was named for what it counts
            counts["positive_clips"] = counts.pop("positives")
        state["counts"] = counts
        super()._load_writeback_state(state)
        assembler = dict(state["assembler"])
        self._frames = FrameStore()
        if "frames" in state:
            self._frames.load_state_dict(state["frames"])
        elif assembler["carry"] is not None and "frames" in assembler["carry"]:
            # A checkpoint from before the frame store: its unfinished clips carry every step's frame.
            carry = dict(assembler["carry"])
            frames = carry.pop("frames")
            has = carry.get("frame_mask", torch.ones(frames.shape[0], dtype=torch.bool))
            ref = torch.zeros(frames.shape[0], dtype=torch.int64)
            ref[has] = self._frames.add(frames[has])
            carry["frame_ref"] = ref
            assembler["carry"] = carry
        self.assembler.load_state_dict(assembler)

    def __enter__(self) -> VLMReplayBuffer:
        return self

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={len(self)}, sampler={self._sampler!r}, clip_len={self.clip_len}, "
                f"score_lag={self.score_lag})")
