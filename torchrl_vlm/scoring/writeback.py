"""AsyncWriteBackBuffer: replay rows that get a model's answer late, from another process, generation-checked.

VLM-RB's verdicts (:class:`~torchrl_vlm.VLMReplayBuffer`) and COVR's action priors
(:class:`~torchrl_vlm.covr.PriorReplayBuffer`) travel the same path; this class is that path, and each
subclass says what it asks and where the answer goes:

1. ``extend`` writes the rows (frames never enter replay) and hands what the model must see to a
   :class:`~torchrl_vlm.ScoringService`, with each row's storage index and slot generation, without waiting;
2. answers that have come back are written with ``rb.update_if_present``: a slot reused since its
   question was asked is skipped and counted in ``stale_rejected``, so a late answer never lands on new data;
3. when answers land is the wall clock's business by default, or exactly ``lag`` extends after they were
   asked (``score_lag`` / ``prior_lag``): late answers are waited for, early ones held back, and a run with a
   deterministic model and fixed seeds is then reproducible whatever the machine's load.

A subclass implements :meth:`_land` (write a list of :class:`~torchrl_vlm.scoring.service.ScoredBatch`) and
calls :meth:`_submit` from its ``extend``; the lag bookkeeping, frames, draining, counters, checkpoints and the
service's lifetime are here.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage

from torchrl_vlm.replay.buffer import DEFAULT_EXCLUDE_KEYS, CollectorReplayBuffer
from torchrl_vlm.scoring.base import as_scorer_factory
from torchrl_vlm.scoring.service import ScoredBatch, ScoringService, ScoringServiceError

__all__ = ["AsyncWriteBackBuffer", "frame_size_pair"]

logger = logging.getLogger(__name__)


def frame_size_pair(size) -> tuple[int, int] | None:
    """``frame_size`` as ``(H, W)``, or ``None``."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if not isinstance(pair, (str, bytes)) and hasattr(pair, "__len__") and hasattr(pair, "__getitem__"):
        pair = tuple(pair)  # a list, or Hydra's ListConfig
    if (not isinstance(pair, tuple) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in pair)):
        raise ValueError(f"frame_size must be None, an int >= 8 or a pair (H, W) of ints >= 8, got {size!r}")
    return int(pair[0]), int(pair[1])


class AsyncWriteBackBuffer(CollectorReplayBuffer):
    """A :class:`CollectorReplayBuffer` whose rows are answered later by a model in another process.

    Args:
        storage, sampler, batch_size, transform, postproc, exclude_keys: as :class:`CollectorReplayBuffer`
            (the frames and missions are always excluded).
        service: what answers, started in its own :class:`ScoringService` with ``service_options`` and closed
            with the buffer (a class, a ``functools.partial``, an object or a module-level function), or a
            ``ScoringService`` the caller started, owns and closes.
        lag: ``None``: an answer lands when it arrives; an int ``k >= 0``: exactly at the end of the ``k``-th
            extend after the one that asked. ``lag_name`` is the subclass's name for it, used in messages.
        frame_key: the frame entry of a collector batch.
        frame_size: ``None``, or ``(H, W)`` (an int for square frames) the frames are resized to once,
            before they are shipped.
        mission_key: the env's mission (never stored in replay).
        **service_options: passed to :class:`ScoringService` when ``service`` is a factory.
    """

    #: Counters every write-back buffer keeps; subclasses add theirs with :meth:`_add_counters`.
    _BASE_COUNTERS = ("stale_rejected", "slots_written", "extends")

    def __init__(
        self,
        *,
        storage: Storage,
        service: Callable[[], Any] | ScoringService,
        sampler: Sampler | None = None,
        batch_size: int | None = None,
        lag: int | None = None,
        lag_name: str = "lag",
        frame_key="pixels",
        frame_size=None,
        mission_key="mission",
        transform=None,
        postproc=None,
        exclude_keys: tuple = (),
        **service_options,
    ):
        if lag is not None and (isinstance(lag, bool) or not isinstance(lag, int) or lag < 0):
            raise ValueError(f"{lag_name} must be None (asynchronous) or an int >= 0, got {lag!r}")
        if isinstance(service, ScoringService):
            if service_options:
                raise TypeError(
                    f"service options {sorted(service_options)} apply only when the model is given as a factory; "
                    "the ScoringService passed in was configured by its caller"
                )
            self._owns_service = False
        else:
            service = as_scorer_factory(service)  # refused here, in the user's process, with the forms that work
            self._owns_service = True
        super().__init__(
            storage=storage,
            sampler=sampler,
            batch_size=batch_size,
            postproc=postproc,
            exclude_keys=(*DEFAULT_EXCLUDE_KEYS, frame_key, ("next", frame_key), mission_key, ("next", mission_key),
                          *exclude_keys),
            transform=transform,
        )
        self.frame_key = frame_key
        self.frame_size = frame_size_pair(frame_size)
        self.mission_key = mission_key
        self.lag = lag
        self.lag_name = lag_name
        self._counts = dict.fromkeys(self._BASE_COUNTERS, 0)
        self._wait_s = 0.0
        self._due: dict[int, int] = {}  # ticket -> the extend at whose end its answer lands (lag)
        self._held: dict[int, ScoredBatch] = {}  # answers that arrived before their extend
        # Started last: every argument above is known to be good.
        self.service = service if self._owns_service is False else ScoringService(service, **service_options)

    @property
    def wait_s(self) -> float:
        """Seconds the learner has waited for answers: the lag's late ones, and room in a full queue."""
        return self._wait_s

    def _add_counters(self, *names: str) -> None:
        for name in names:
            self._counts.setdefault(name, 0)

    # ---------------------------------------------------------------- what subclasses call
    def _begin_extend(self) -> None:
        """Asynchronous mode: answers that are ready land before this extend can overwrite their slots."""
        if self.lag is None:
            self.apply_answers()

    def _end_extend(self) -> None:
        """Lag mode: the answers due at this extend land (waiting for the late ones); then counts it."""
        if self.lag is not None:
            self._apply_due(self._counts["extends"])
        self._counts["extends"] += 1

    def _submit(self, items: TensorDictBase, meta: dict[str, Any]) -> int | None:
        """Hands ``items`` (batch ``[B]``) to the service; ``meta`` comes back with the answer."""
        if self.lag is not None:
            self._make_room(items.batch_size[0])
        ticket = self.service.submit(items, meta)
        if ticket is not None and self.lag is not None:
            self._due[ticket] = self._counts["extends"] + self.lag
        return ticket

    def _write_back(self, index: torch.Tensor, generation: torch.Tensor, patch: dict) -> torch.Tensor:
        """Generation-checked write of ``patch`` (columns ``[n, ...]``) at ``index``; returns the bool mask of
        the rows written (the others were reused since they were asked about, counted in ``stale_rejected``)."""
        live = self.update_if_present(index=index, generation=generation, patch=patch).updated
        self._counts["stale_rejected"] += index.numel() - int(live.sum())
        return live

    def _land(self, results: list[ScoredBatch]) -> None:
        """Writes arrived answers into replay (and counts them). Subclasses implement it."""
        raise NotImplementedError

    def _model_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``[n, ...]`` as the model takes them: uint8 ``[n, H, W, 3]``, resized to ``frame_size``."""
        if frames.is_floating_point() and frames.ndim == 4 and 3 in (frames.shape[1], frames.shape[-1]):
            if frames.shape[-1] != 3:  # channels first, as TorchRL's image transforms leave them
                frames = frames.permute(0, 2, 3, 1)
            if frames.numel() and float(frames.max()) > 1.0 + 1e-6:
                raise TypeError(f"batch[{self.frame_key!r}] holds float frames above 1: float frames must be in "
                                "[0, 1] (TorchRL's ToTensorImage); uint8 frames are taken as they are")
            frames = (frames * 255).round().clamp(0, 255).to(torch.uint8)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            # Refused here, at the first batch, rather than by the model after max_consecutive_errors.
            raise TypeError(
                f"batch[{self.frame_key!r}] must hold RGB frames, uint8 [*batch, H, W, 3] or float in [0, 1] "
                f"(channels first or last), got {frames.dtype} {list(frames.shape[1:])} per step"
            )
        if self.frame_size is None or tuple(frames.shape[1:3]) == self.frame_size:
            return frames
        small = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=self.frame_size,
                                                mode="bilinear", antialias=True, align_corners=False)
        return small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    # ---------------------------------------------------------------- lag bookkeeping
    def _make_room(self, n: int) -> None:
        """With a lag, waits until the service can queue ``n`` items without dropping any.

        Which items a full queue drops depends on timing, so dropping would break the
        reproducibility the lag promises; the wait counts in :attr:`wait_s`.
        """
        if n > self.service.max_pending:
            raise ValueError(
                f"{n} items to answer in one extend, more than the service's queue holds "
                f"(max_pending={self.service.max_pending}); raise max_pending"
            )
        t0 = time.perf_counter()
        while self.service.queue_depth + n > self.service.max_pending:
            self._hold(self.service.poll())
            time.sleep(0.0005)
        self._wait_s += time.perf_counter() - t0

    def apply_answers(self) -> int:
        """Writes every answer that has arrived (asynchronous mode); returns the submissions written.

        ``extend`` and ``sample`` call it; a loop never needs to. With a lag, arrivals are held until
        their extend instead.
        """
        results = self.service.poll()
        if self.lag is not None:
            self._hold(results)
            return 0
        if results:
            self._land(results)
        return len(results)

    def _hold(self, results: list[ScoredBatch]) -> None:
        for result in results:
            if result.ticket in self._due:  # anything else was submitted before a load replaced the buffer
                self._held[result.ticket] = result

    def _apply_due(self, extend: int) -> None:
        """Writes the answers due by ``extend``, waiting for the late ones (lag mode)."""
        due = sorted(t for t, at in self._due.items() if at <= extend)
        if not due:
            return
        t0 = time.perf_counter()
        self._hold(self.service.poll())
        while any(t not in self._held and self.service.is_pending(t) for t in due):
            time.sleep(0.0005)
            self._hold(self.service.poll())
        self._wait_s += time.perf_counter() - t0
        # Ticket order is submission order: the write order never depends on arrival times.
        results = [self._held.pop(t) for t in due if t in self._held]
        if results:
            self._land(results)
        for t in due:
            del self._due[t]

    def drain(self, timeout_s: float | None = None) -> int:
        """Waits until every submission is answered (or ``timeout_s``), writing or holding the answers.

        For synchronisation points such as a checkpoint, never the training loop: it blocks the
        learner. With a lag, answers not yet due stay held (they are part of the state). Returns the
        items still unanswered at the timeout.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.apply_answers()
        while self.service.queue_depth and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.002)
            self.apply_answers()
        return self.service.queue_depth

    # ---------------------------------------------------------------- sample
    def sample(self, batch_size: int | None = None, return_info: bool = False, include_info: bool | None = None):
        """Writes the answers that have arrived, then samples as TorchRL does."""
        if self.lag is None:
            self.apply_answers()
        return super().sample(batch_size, return_info=return_info, include_info=include_info)

    # ----------------------------------------------------------------- stats
    def stats(self) -> dict[str, float]:
        """TorchRL's snapshot, the service's counters and latency (:meth:`ScoringService.stats`) and this
        buffer's counters (subclasses add the lag's wait, :attr:`wait_s`, under their own name)."""
        out = super().stats()
        out.update(self.service.stats())
        out.update({key: float(value) for key, value in self._counts.items()})
        return out

    # --------------------------------------------------------- checkpointing
    def _writeback_state(self) -> dict[str, Any]:
        """Counters (the buffer's and its service's) and held answers: what TorchRL's own state leaves out.
        Waits for the submissions in flight first, unless the service has failed for good: the training
        state is still worth saving, and what it held stays unanswered."""
        try:
            self.drain()
        except ScoringServiceError as err:
            logger.warning("saving without the answers in flight: %s", err)
        return {
            "counts": dict(self._counts),
            "service": self.service.counters(),
            "wait_s": self._wait_s,
            # Held answers are replayed into the next service under new tickets, in their order.
            "held": [
                {"due": self._due[t], "scores": r.scores, "meta": dict(r.meta)}
                for t, r in sorted(self._held.items())
            ],
        }

    def _load_writeback_state(self, state: dict[str, Any]) -> None:
        self._counts.update(state["counts"])
        # The service's process is a new one; its totals continue the saved ones.
        self.service.continue_counters(state["service"])
        self._wait_s = float(state["wait_s"])
        self._held.clear()
        self._due.clear()
        for i, item in enumerate(state["held"]):
            ticket = i - len(state["held"])  # negative (never a service ticket), in the saved order
            self._held[ticket] = ScoredBatch(meta=item["meta"], scores=item["scores"], latency_s=0.0, ticket=ticket)
            self._due[ticket] = int(item["due"])

    def state_dict(self) -> dict[str, Any]:
        """TorchRL's buffer state plus :meth:`_writeback_state`; waits for the answers in flight first."""
        own = self._writeback_state()  # first: draining writes answers that TorchRL's state must include
        state = super().state_dict()
        state["_vlm"] = own
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        own = state_dict.pop("_vlm")
        self._settle()
        super().load_state_dict(state_dict)
        self._load_writeback_state(own)

    def _settle(self) -> None:
        """Before a load replaces the buffer: nothing of the old contents stays in flight."""
        self.drain()
        self._held.clear()
        self._due.clear()

    def dumps(self, path) -> None:
        """TorchRL's ``dumps`` plus ``vlm_state.pt`` (tensors and numbers only: loads with ``weights_only``)."""
        own = self._writeback_state()
        super().dumps(path)
        torch.save(own, Path(path) / "vlm_state.pt")

    def loads(self, path) -> None:
        own = torch.load(Path(path) / "vlm_state.pt", weights_only=True)
        self._settle()
        super().loads(path)
        self._load_writeback_state(own)

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Shuts down the service the buffer started (idempotent); a caller's service stays up."""
        if self._owns_service:
            self.service.close()

    def shutdown(self, timeout: float | None = None) -> None:
        """TorchRL's shutdown, which also closes the service."""
        self.close()
        super().shutdown(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
