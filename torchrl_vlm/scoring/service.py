"""ScoringService: a scorer in its own process, fed through bounded queues (VLM-RB step 4).

The paper's asynchronous worker: clips go in through Q_in, scores come back
through Q_out, and the learner never waits. Here that is a process started
with ``torch.multiprocessing``'s *spawn* context. The scorer is built inside
the child from a picklable zero-argument factory, so the parent never loads
the model, and the child has its own thread budget and device.

Failure policy (every case is counted in :meth:`ScoringService.stats`):

- the scorer cannot be built → the constructor raises, naming the factory and
  repeating the child's error;
- more than ``max_pending`` clips wait → the *oldest* waiting submissions are
  dropped (fresh clips are worth more: old slots are the first to be
  overwritten in the buffer);
- the worker dies (e.g. SIGKILL), at any moment, even while its answer is being
  received → it is restarted, at most ``max_restarts`` times; the clips it held are
  counted as lost, the waiting ones go to the new worker;
- the worker hangs → after ``hang_timeout_s`` on one batch, or ``start_timeout_s``
  building its scorer after a restart, it is killed and restarted the same way;
- the trainer dies (SIGKILL, OOM) → the worker notices and exits: the kernel kills it
  on Linux (``PR_SET_PDEATHSIG``), and it watches its parent's pid everywhere;
- the scorer raises on a batch → the batch's clips are lost and counted, and
  after ``max_consecutive_errors`` such batches the service raises.

Submissions wait in a bounded queue in the parent (Q_in), and only a small
window of them (``2 * batch_clips`` clips) is handed to the worker at a time,
so dropping the oldest is exact and a crash loses only what the worker held.
No call of the parent blocks on the worker, except the start-up handshake.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.multiprocessing as mp
from tensordict import TensorDictBase

from torchrl_vlm._checks import check_int
from torchrl_vlm.scoring.base import as_scorer_factory, check_scores

__all__ = ["ScoredBatch", "ScoringService", "ScoringServiceError"]

logger = logging.getLogger(__name__)

_STOP = None  # sentinel on the input queue


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


def _die_with_parent(parent_pid: int, from_main_thread: bool) -> None:
    """Makes this process exit when ``parent_pid`` (the trainer) dies, however it dies.

    A daemon thread watches the parent pid (every half second, on every system). On Linux,
    when the worker was started from the trainer's main thread, the kernel also sends
    SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``). That signal follows the
    *thread* that started the worker, so a worker started from another thread relies on the
    watch alone: that thread's end must not kill a healthy worker.
    """
    if from_main_thread:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # not Linux: the watch below does it
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:  # re-parented: the trainer is gone
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="torchrl_vlm-parent-watch").start()


def _worker_main(
    factory, q_in, q_out, num_threads: int, batch_clips: int, output_check=check_scores,
    parent_pid: int | None = None, from_main_thread: bool = True,
) -> None:
    """The child: build the scorer, report, then score submissions until told to stop."""
    if parent_pid is not None:
        _die_with_parent(parent_pid, from_main_thread)
    # Ctrl-C reaches the whole process group, and a cluster's SIGTERM often every process of the
    # job: the trainer decides what they mean (a final checkpoint, which still needs this worker
    # to answer the clips in flight). The trainer stops the worker itself; if it dies, so does this.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(num_threads)
    try:
        scorer = factory()
    except BaseException as err:  # noqa: BLE001 - everything must reach the parent
        q_out.put(("failed", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
        return
    q_out.put(("ready", os.getpid()))
    stop = False
    while not stop:
        item = q_in.get()
        if item is _STOP:
            break
        items = [item]
        n_clips = item[1].batch_size[0]
        # Score several submissions in one call when they are waiting: a VLM is far
        # more efficient on a batch than clip by clip.
        while n_clips < batch_clips:
            try:
                nxt = q_in.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                stop = True
                break
            items.append(nxt)
            n_clips += nxt[1].batch_size[0]
        tickets = [t for t, _ in items]
        q_out.put(("busy", tickets, time.time()))
        try:
            clips = _concat([td for _, td in items])
            scores = output_check(scorer(clips), clips.batch_size[0], type(scorer).__name__)
        except Exception as err:  # noqa: BLE001
            q_out.put(("error", tickets, f"{type(err).__name__}: {err}"))
            continue
        sizes = [td.batch_size[0] for _, td in items]
        # A scorer's own counters (e.g. CachedScorer's hit rate) ride along with its answers.
        own = scorer.stats() if callable(getattr(scorer, "stats", None)) else None
        q_out.put(("scores", tickets, list(scores.split(sizes)), own))


def _concat(tds: list[TensorDictBase]) -> TensorDictBase:
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

#: Where a ScoringService runs its scorer.
BACKENDS = ("process", "ray")


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
        if cls is ScoringService and backend == "ray":
            from torchrl_vlm.scoring.ray_service import RayScoringService

            return super().__new__(RayScoringService)
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
            raise ValueError(f"backend={backend!r}; choose one of {BACKENDS}")
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

        self._ctx = mp.get_context("spawn")
        self._tickets = itertools.count()
        # ticket -> (meta, n_clips, submit time) for every unanswered submission
        self._pending: dict[int, tuple[Any, int, float]] = {}
        self._waiting: deque[tuple[int, TensorDictBase]] = deque()  # Q_in: not yet handed over
        self._waiting_clips = 0
        self._in_flight: dict[int, int] = {}  # handed to the worker: ticket -> n_clips
        self._busy: tuple[list[int], float] | None = None
        self._errors_in_a_row = 0
        self._latencies: deque[float] = deque(maxlen=2048)
        self._scorer_stats: dict[str, float] = {}  # the scorer's own stats(), as of its last answer
        self._counters = dict.fromkeys(
            ("clips_submitted", "clips_scored", "clips_dropped", "clips_lost", "worker_restarts", "scorer_errors"),
            0,
        )
        self._closed = False
        self._process = None
        self._starting_since: float | None = None  # a restarted worker that has not said "ready" yet
        self._restarts = 0  # this service's, against max_restarts (the counter may continue an earlier run's)
        self._earlier = dict.fromkeys(self._counters, 0)  # counters of the services before a resume
        self._start_worker()

    # ------------------------------------------------------------ lifecycle
    def _start_worker(self, wait: bool = True) -> None:
        """Starts a worker on fresh queues; waits for its scorer unless ``wait=False``.

        A restart does not wait: loading a VLM can take a minute, and training
        goes on meanwhile. Its "ready" (or "failed") message arrives in :meth:`poll`.
        """
        self._close_queues()
        self._q_in = self._ctx.Queue()
        self._q_out = self._ctx.Queue()
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)  # spawn copies the parent's environment at start
        try:
            self._process = self._ctx.Process(
                target=_worker_main,
                args=(
                    self.scorer_factory, self._q_in, self._q_out, self.num_threads, self.batch_clips,
                    self.output_check, os.getpid(), threading.current_thread() is threading.main_thread(),
                ),
                daemon=True,
                name="torchrl_vlm-scorer",
            )
            self._process.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if wait:
            self._wait_ready()
        else:
            self._starting_since = time.monotonic()

    def _close_queues(self) -> None:
        for name in ("_q_in", "_q_out"):
            q = getattr(self, name, None)
            if q is not None:
                q.cancel_join_thread()  # never block on data nobody will read
                q.close()
                setattr(self, name, None)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                message = self._q_out.get(timeout=0.1)
            except queue.Empty:
                if not self._process.is_alive():
                    code = self._process.exitcode
                    self._process = None
                    raise ScoringServiceError(
                        f"the scoring process for {_describe(self.scorer_factory)} died while "
                        f"building the scorer (exit code {code})"
                    ) from None
                if time.monotonic() > deadline:
                    self._kill()
                    raise ScoringServiceError(
                        f"the scorer {_describe(self.scorer_factory)} did not load within "
                        f"{self.start_timeout_s:.0f}s (raise start_timeout_s for large models)"
                    ) from None
                continue
            if message[0] == "ready":
                return
            if message[0] == "failed":
                self._on_failed(message[1])

    def _on_failed(self, text: str) -> None:
        self._process.join(timeout=5)
        self._process = None
        self.close()
        raise ScoringServiceError(
            f"could not build the scorer {_describe(self.scorer_factory)} in the scoring process:\n{text}"
        )

    @property
    def worker_pid(self) -> int | None:
        """Process id of the scoring worker (``None`` once closed)."""
        return None if self._process is None else self._process.pid

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)

    def _restart(self, reason: str) -> None:
        lost = self._lose(list(self._in_flight))
        self._busy = None
        self._starting_since = None
        self._kill()
        if self._restarts >= self.max_restarts:
            self._process = None
            self._closed = True
            raise ScoringServiceError(
                f"the scoring worker for {_describe(self.scorer_factory)} {reason}, and it was "
                f"already restarted {self.max_restarts} times (max_restarts); giving up"
            )
        self._restarts += 1
        self._counters["worker_restarts"] += 1
        logger.warning("scoring worker %s; restarting it (%d of %d), %d clips lost", reason, self._restarts,
                       self.max_restarts, lost)
        self._start_worker(wait=False)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the worker (politely, then by force) and releases the queues."""
        if self._closed and self._process is None:
            self._close_queues()
            return
        self._closed = True
        if self._process is not None:
            if self._process.is_alive():
                try:
                    self._q_in.put(_STOP)
                except (ValueError, OSError):
                    pass
                self._process.join(timeout=timeout_s)
            self._kill()
            self._process = None
        self._close_queues()

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

    def _pump(self) -> None:
        """Hands waiting submissions to the worker while it holds fewer than 2 batches."""
        window = 2 * self.batch_clips
        while self._waiting and sum(self._in_flight.values()) < window:
            ticket, clips = self._waiting.popleft()
            n = clips.batch_size[0]
            self._waiting_clips -= n
            self._in_flight[ticket] = n
            # Consolidated: one shared-memory block per submission instead of one per tensor.
            self._q_in.put((ticket, clips.consolidate()))

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

    def _poll_queue(self) -> list[ScoredBatch]:
        self._check_open()
        out: list[ScoredBatch] = []
        # empty() is one poll of the pipe; get_nowait() also takes the queue's lock, ten times
        # the cost, and the replay buffer polls before every sample.
        while not self._q_out.empty():
            try:
                message = self._q_out.get_nowait()
            except queue.Empty:
                break
            except (ConnectionError, EOFError, OSError) as err:
                # A result's tensors live in the worker's shared memory and are fetched from it
                # (torch's rebuild_storage_fd): a worker killed after sending, before they were
                # fetched, fails the fetch. The worker is dead; its batch is lost like any other.
                self._restart(f"died while its answer was being received ({type(err).__name__})")
                break
            kind = message[0]
            if kind == "ready":  # a restarted worker finished loading
                self._starting_since = None
                continue
            if kind == "failed":  # a restarted worker could not rebuild its scorer (e.g. a passing OOM)
                self._restart("could not rebuild its scorer: " + message[1].strip().splitlines()[-1][:300])
                break
            if kind == "busy":
                self._busy = (message[1], time.monotonic())
            elif kind == "scores":
                self._busy = None
                if message[3]:
                    self._scorer_stats = {k: float(v) for k, v in message[3].items()}
                self._errors_in_a_row = 0
                now = time.monotonic()
                for ticket, scores in zip(message[1], message[2], strict=True):
                    self._in_flight.pop(ticket, None)
                    entry = self._pending.pop(ticket, None)
                    if entry is None:  # answered after being counted lost
                        continue
                    meta, n, t0 = entry
                    self._counters["clips_scored"] += n
                    self._latencies.append(now - t0)
                    out.append(ScoredBatch(meta=meta, scores=scores.clone(), latency_s=now - t0, ticket=ticket))
            elif kind == "error":
                self._busy = None
                self._on_scorer_error(message[1], message[2])
        self._watchdog()
        self._pump()
        return out

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

    def _watchdog(self) -> None:
        """Restarts a dead worker, or one stuck on a batch for longer than hang_timeout_s."""
        if self._process is None:
            return
        now = time.monotonic()
        if not self._process.is_alive():
            self._restart(f"died (exit code {self._process.exitcode})")
        elif self._starting_since is not None and now - self._starting_since > self.start_timeout_s:
            self._restart(f"did not finish building its scorer within {self.start_timeout_s:.0f}s (start_timeout_s)")
        elif self._busy is not None and now - self._busy[1] > self.hang_timeout_s:
            self._restart(f"hung for more than {self.hang_timeout_s:.0f}s on one batch")

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
