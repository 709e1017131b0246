"""ScoringService: a scorer outside the learner's process, fed without waiting (VLM-RB step 4).

This module is the backend-neutral interface: what a learner calls (``submit``, ``poll``, ``request``,
``stats``, ``close``), the bookkeeping behind it (tickets, the bounded waiting queue, counters, latency) and the
failure policy every backend shares. The backends subclass :class:`ScoringService` in modules of their own and
import this one, never each other: ``"process"`` (:mod:`torchrl_vlm.scoring.process_service`, one spawned worker)
and ``"ray"`` (:mod:`torchrl_vlm.scoring.ray_service`, Ray actor replicas). ``ScoringService(factory,
backend=...)`` builds the backend named (:data:`BACKENDS`).

Failure policy (every case is counted in :meth:`ScoringService.stats`):

- the scorer cannot be built → the constructor raises, naming the factory and repeating its error;
- more than ``max_pending`` clips wait → the *oldest* waiting submissions are dropped (fresh clips are worth
  more: old slots are the first to be overwritten in the buffer);
- a worker dies or hangs → it is restarted, at most ``max_restarts`` times, its clips counted as lost
  (each backend says how it notices);
- the scorer raises on a batch → the batch's clips are lost and counted, and after ``max_consecutive_errors``
  such batches the service raises.
"""
from __future__ import annotations

import importlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase

from torchrl_vlm._checks import check_int
from torchrl_vlm.scoring.base import as_scorer_factory, check_scores, unpack_frames

__all__ = ["ScoredBatch", "ScoringService", "ScoringServiceError"]

logger = logging.getLogger(__name__)



class ScoringServiceError(RuntimeError):
    """The scoring process could not start, or failed beyond the restart budget."""


@dataclass
class ScoredBatch:
    """Scores of one submission, as :meth:`ScoringService.poll` returns them."""

    meta: Any
    """Whatever was passed to :meth:`ScoringService.submit` with the clips (the replay buffer
    passes the clips' buffer indices and generations)."""
    scores: torch.Tensor
    """P(yes) per clip, float32 [B]."""
    latency_s: float
    """Seconds from submission to the result's arrival in the parent."""
    ticket: int = -1
    """What :meth:`ScoringService.submit` returned for these clips."""


def _concat(tds: list[TensorDictBase]) -> TensorDictBase:
    """The submissions a worker scores in one call, as one batch: frames unpacked (:func:`unpack_frames`),
    clips padded to the longest."""
    tds = [unpack_frames(td) for td in tds]
    if len(tds) == 1:
        return tds[0]
    if "mask" not in tds[0].keys():  # not clips (e.g. states for a teacher): nothing to pad
        return torch.cat(tds)
    length = max(td["mask"].shape[1] for td in tds)
    return torch.cat([_pad_steps(td, length) for td in tds])


def _pad_steps(td: TensorDictBase, length: int) -> TensorDictBase:
    """Pads every per-step entry ([B, L, ...]) of a clip batch with zeros to ``length`` steps."""
    steps = td["mask"].shape[1]
    if steps == length:
        return td
    out = td.empty()
    for key, value in td.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[1] == steps:
            pad = value.new_zeros((value.shape[0], length - steps, *value.shape[2:]))
            value = torch.cat([value, pad], 1)
        out.set(key, value)
    return out


def _describe(factory) -> str:
    """A readable name for a scorer factory (a partial shows its model id)."""
    text = repr(factory)
    return text if len(text) < 300 else text[:297] + "..."


#: A scorer that fails on each of its first this many batches, having answered none, stops the run at once.
FIRST_BATCHES_TO_FAIL = 3

#: Where a ScoringService runs its scorer: each backend's class, named by module so that this interface imports
#: none of them (each imports it).
BACKENDS = {
    "process": "torchrl_vlm.scoring.process_service:ProcessScoringService",
    "ray": "torchrl_vlm.scoring.ray_service:RayScoringService",
}


class ScoringService:
    """Runs a :class:`~torchrl_vlm.scoring.base.Scorer` in a separate process.

    Args:
        scorer_factory: the scorer, or what builds it in the child: a class, a ``functools.partial``,
            a scorer object or a module-level function of the clips (:func:`~torchrl_vlm.scoring.base.as_scorer_factory`
            says which forms work; anything else is refused here, in the caller's process).
        max_pending: most clips waiting to be handed to the worker; beyond it the
            oldest submissions are dropped. This bounds the memory the frames take.
        batch_clips: the worker merges waiting submissions up to this many clips
            into one scorer call.
        num_threads: torch threads of the worker (its CPU budget).
        env: extra environment variables for the worker, e.g.
            ``{"CUDA_VISIBLE_DEVICES": "1"}`` to give the scorer its own GPU.
        start_timeout_s: how long the constructor waits for the scorer to load.
        max_restarts: how often a dead or hung worker is restarted before the
            service gives up with :class:`ScoringServiceError`.
        hang_timeout_s: a batch taking longer than this is treated as a hang.
        max_consecutive_errors: scorer exceptions in a row before giving up. A scorer that has never
            answered gives up sooner, after its first 3 batches fail (``FIRST_BATCHES_TO_FAIL``), with
            its own error: it is broken, not unlucky.
        output_check: a picklable ``(output, n, name) -> tensor`` run in the worker on
            every answer; the default checks for ``n`` probabilities in [0, 1]
            (a teacher's check accepts ``[n, n_actions]`` distributions).
        backend: ``"process"`` (one spawned worker process) or ``"ray"`` (``num_replicas``
            Ray actors; see :class:`~torchrl_vlm.scoring.ray_service.RayScoringService`).
        num_replicas: scorer replicas (``backend="ray"`` only).
        replica_options: options of each Ray actor, e.g. ``{"num_gpus": 1}`` (``backend="ray"``).
        ray_address: a Ray cluster to join (``ray.init(address=...)``); ``None``: the running
            Ray, or a local one started for this service (``backend="ray"``).

    Examples:
        >>> import time, torch
        >>> from tensordict import TensorDict
        >>> from torchrl_vlm import ScoringService, MiniGridEventScorer
        >>> clips = TensorDict({"mask": torch.ones(2, 4, dtype=torch.bool),
        ...                     "events": torch.zeros(2, 4, 5, dtype=torch.bool)}, [2])
        >>> clips["events"][0, 3, 2] = True          # clip 0 reaches the goal
        >>> with ScoringService(MiniGridEventScorer) as service:  # doctest: +SKIP
        ...     ticket = service.submit(clips, meta="batch-0")   # returns at once
        ...     results = []
        ...     while not results:                               # poll() never blocks
        ...         results = service.poll()
        ...         time.sleep(0.05)
        >>> results[0].meta, results[0].scores.tolist()  # doctest: +SKIP
        ('batch-0', [1.0, 0.0])
    """

    def __new__(cls, *args, backend: str = "process", **kwargs):
        if cls is ScoringService:  # the interface builds the backend named
            if backend not in BACKENDS:
                raise ValueError(f"backend={backend!r}; choose one of {tuple(BACKENDS)}")
            module, _, name = BACKENDS[backend].partition(":")
            cls = getattr(importlib.import_module(module), name)
        return super().__new__(cls)

    def __init__(
        self,
        scorer_factory: Callable[[], Any],
        *,
        max_pending: int = 256,
        batch_clips: int = 16,
        num_threads: int = 1,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 300.0,
        max_restarts: int = 3,
        hang_timeout_s: float = 600.0,
        max_consecutive_errors: int = 10,
        output_check: Callable[[torch.Tensor, int, str], torch.Tensor] = check_scores,
        backend: str = "process",
        num_replicas: int = 1,
        replica_options: dict[str, Any] | None = None,
        ray_address: str | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}; choose one of {tuple(BACKENDS)}")
        check_int("num_replicas", num_replicas)
        if replica_options is not None and not isinstance(replica_options, dict):
            raise TypeError(f"replica_options must be a dict of Ray actor options, got {replica_options!r}")
        if backend == "process" and (num_replicas != 1 or replica_options or ray_address is not None):
            raise ValueError(
                f'num_replicas={num_replicas}, replica_options and ray_address need backend="ray"; the process '
                "backend runs one worker"
            )
        for name, value, low in (
            ("max_pending", max_pending, 1),
            ("batch_clips", batch_clips, 1),
            ("num_threads", num_threads, 1),
            ("max_restarts", max_restarts, 0),
            ("max_consecutive_errors", max_consecutive_errors, 1),
        ):
            check_int(name, value, low)
        for name, value in (("start_timeout_s", start_timeout_s), ("hang_timeout_s", hang_timeout_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number of seconds, got {value!r}")
        if not start_timeout_s > 0 or not hang_timeout_s > 0:
            raise ValueError("start_timeout_s and hang_timeout_s must be > 0")
        scorer_factory = as_scorer_factory(scorer_factory, "scorer_factory")
        self.scorer_factory = scorer_factory
        self.max_pending = max_pending
        self.batch_clips = batch_clips
        self.num_threads = num_threads
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.max_restarts = max_restarts
        self.hang_timeout_s = hang_timeout_s
        self.max_consecutive_errors = max_consecutive_errors
        self.output_check = output_check
        self.backend = backend
        self.num_replicas = num_replicas
        self.replica_options = dict(replica_options or {})
        self.ray_address = ray_address
        self._unclaimed: list[ScoredBatch] = []  # answers poll() met while request() waited

        self._tickets = itertools.count()
        # ticket -> (meta, n_clips, submit time) for every unanswered submission
        self._pending: dict[int, tuple[Any, int, float]] = {}
        self._waiting: deque[tuple[int, TensorDictBase]] = deque()  # Q_in: not yet handed over
        self._waiting_clips = 0
        self._in_flight: dict[int, int] = {}  # handed to the worker: ticket -> n_clips
        self._errors_in_a_row = 0
        self._latencies: deque[float] = deque(maxlen=2048)
        self._scorer_stats: dict[str, float] = {}  # the scorer's own stats(), as of its last answer
        self._counters = dict.fromkeys(
            ("clips_submitted", "clips_scored", "clips_dropped", "clips_lost", "worker_restarts", "scorer_errors"),
            0,
        )
        self._closed = False
        self._earlier = dict.fromkeys(self._counters, 0)  # counters of the services before a resume
        self._start_worker()

    # ------------------------------------------------------------ what a backend implements
    def _start_worker(self, wait: bool = True) -> None:
        """Starts the worker(s); waits for the scorer to load unless ``wait=False`` (a restart)."""
        raise NotImplementedError

    def _pump(self) -> None:
        """Hands waiting submissions to the worker(s) (``self._waiting`` → ``self._in_flight``)."""
        raise NotImplementedError

    def _poll_queue(self) -> list[ScoredBatch]:
        """The answers that have arrived, never waiting; also notices dead or hung workers."""
        raise NotImplementedError

    @property
    def worker_pid(self) -> int | None:
        """Process id of the (first) scoring worker (``None`` once closed)."""
        raise NotImplementedError

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the worker(s) and releases what the service holds (idempotent)."""
        raise NotImplementedError

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> ScoringService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close(timeout_s=1.0)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # --------------------------------------------------------------- traffic
    def _check_open(self) -> None:
        if self._closed:
            raise ScoringServiceError("the scoring service is closed")

    def submit(self, clips: TensorDictBase, meta: Any = None) -> int | None:
        """Queues a batch of clips for scoring without waiting; returns a ticket.

        When more than ``max_pending`` clips would be waiting, the oldest waiting
        submissions are dropped (and counted in ``clips_dropped``) to make room.
        Returns ``None`` if the submission is larger than ``max_pending`` by itself.
        """
        self._check_open()
        if not isinstance(clips, TensorDictBase) or clips.batch_dims != 1:
            raise TypeError("clips must be a TensorDict with batch_size [B]")
        n = clips.batch_size[0]
        if n == 0:
            return None
        # Read what has arrived first (kept for the next poll): after a long pause, a worker whose
        # answer or "ready" is already waiting must not be judged hung.
        self._unclaimed.extend(self._poll_queue())
        self._counters["clips_submitted"] += n
        if n > self.max_pending:
            self._counters["clips_dropped"] += n
            return None
        while self._waiting and self._waiting_clips + n > self.max_pending:
            ticket, old = self._waiting.popleft()
            self._waiting_clips -= old.batch_size[0]
            self._pending.pop(ticket)
            self._counters["clips_dropped"] += old.batch_size[0]
        ticket = next(self._tickets)
        self._pending[ticket] = (meta, n, time.monotonic())
        self._waiting.append((ticket, clips))
        self._waiting_clips += n
        self._pump()
        return ticket

    def request(self, clips: TensorDictBase, timeout_s: float = 600.0) -> torch.Tensor:
        """Scores ``clips`` and waits for the answer: the synchronous call a teacher needs.

        Answers to earlier :meth:`submit` calls that arrive meanwhile are kept
        for the next :meth:`poll`. Raises :class:`ScoringServiceError` if the
        answer does not come within ``timeout_s`` or the clips were lost.
        """
        marker = object()
        ticket = self.submit(clips, meta=marker)
        if ticket is None:
            raise ScoringServiceError(
                f"the request of {clips.batch_size[0]} items is larger than max_pending={self.max_pending}"
            )
        deadline = time.monotonic() + timeout_s
        while True:
            for result in self._poll_queue():
                if result.meta is marker:
                    return result.scores
                self._unclaimed.append(result)
            if ticket not in self._pending:
                raise ScoringServiceError("the request was lost (the worker died or the scorer failed on it)")
            if time.monotonic() > deadline:
                raise ScoringServiceError(f"no answer within {timeout_s:.0f}s")
            time.sleep(0.001)

    def poll(self) -> list[ScoredBatch]:
        """Returns the scores that have arrived since the last call; never waits."""
        out, self._unclaimed = self._unclaimed, []
        return out + self._poll_queue()

    def _lose(self, tickets: list[int]) -> int:
        """Forgets unanswered ``tickets`` (they will never be answered); counts and returns their clips."""
        lost = 0
        for t in tickets:
            self._in_flight.pop(t, None)
            entry = self._pending.pop(t, None)
            if entry is not None:
                lost += entry[1]
        self._counters["clips_lost"] += lost
        return lost

    def _on_scorer_error(self, tickets: list[int], text: str) -> None:
        lost = self._lose(tickets)
        self._counters["scorer_errors"] += 1
        self._errors_in_a_row += 1
        logger.warning("the scorer failed on a batch (%d clips lost): %s", lost, text)
        never_answered = self._counters["clips_scored"] == 0  # this service's: a resumed run's totals do not count
        if never_answered and self._errors_in_a_row >= min(FIRST_BATCHES_TO_FAIL, self.max_consecutive_errors):
            # A scorer that has never answered is broken (a typo, a missing entry), not unlucky: say so now.
            self.close()
            raise ScoringServiceError(
                f"the scorer {_describe(self.scorer_factory)} failed on each of its first {self._errors_in_a_row} "
                f"batches and has answered none; its error: {text}"
            )
        if self._errors_in_a_row >= self.max_consecutive_errors:
            self.close()
            raise ScoringServiceError(
                f"the scorer {_describe(self.scorer_factory)} failed on {self._errors_in_a_row} "
                f"batches in a row; last error: {text}"
            )

    def counters(self) -> dict[str, int]:
        """The run's cumulative counters (clips submitted, scored, dropped, lost; restarts, scorer
        errors), the earlier services' of a resumed run included."""
        return {key: value + self._earlier[key] for key, value in self._counters.items()}

    def continue_counters(self, earlier: dict[str, int]) -> None:
        """Makes :meth:`counters` and :attr:`stats` continue the totals of an earlier run's service.

        Sets (does not add), so loading a checkpoint twice counts once; this service's own
        restart budget (``max_restarts``) is not affected.
        """
        self._earlier = {key: int(earlier.get(key, 0)) for key in self._counters}

    def is_pending(self, ticket: int) -> bool:
        """Whether the clips of ``ticket`` may still be answered (not yet answered, dropped or lost)."""
        return ticket in self._pending

    @property
    def queue_depth(self) -> int:
        """Clips submitted and not yet answered, dropped or lost (waiting plus in the worker)."""
        return sum(n for _, n, _ in self._pending.values())

    def stats(self) -> dict[str, float]:
        """The run's counters (clips submitted, scored, dropped, lost; worker restarts, scorer errors), the
        queue depth, latency (mean, p95) and the scorer's own ``stats()``; a method, as ``rb.stats()`` is."""
        lat = sorted(self._latencies)
        return {
            **{k: float(v) for k, v in self.counters().items()},
            "queue_depth": float(self.queue_depth),
            "latency_mean_s": sum(lat) / len(lat) if lat else float("nan"),
            "latency_p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan"),
            **self._scorer_stats,
        }
