"""The process backend of :class:`~torchrl_vlm.ScoringService`: the scorer in one spawned process, fed through
bounded queues (VLM-RB step 4, the paper's asynchronous worker).

Clips go in through Q_in, scores come back through Q_out, and the learner never waits. The process is started
with ``torch.multiprocessing``'s *spawn* context; the scorer is built inside it from a picklable zero-argument
factory, so the parent never loads the model, and the child has its own thread budget and device.

What this backend adds to the failure policy of :mod:`torchrl_vlm.scoring.service`:

- the worker dies (e.g. SIGKILL), at any moment, even while its answer is being received → it is restarted, at
  most ``max_restarts`` times; the clips it held are counted as lost, the waiting ones go to the new worker;
- the worker hangs → after ``hang_timeout_s`` on one batch, or ``start_timeout_s`` building its scorer after a
  restart, it is killed and restarted the same way;
- the trainer dies (SIGKILL, OOM) → the worker notices and exits: the kernel kills it on Linux
  (``PR_SET_PDEATHSIG``), and it watches its parent's pid everywhere.

Only a small window of submissions (``2 * batch_clips`` clips) is handed to the worker at a time, so dropping the
oldest is exact and a crash loses only what the worker held. No call of the parent blocks on the worker, except
the start-up handshake.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import traceback

import torch
import torch.multiprocessing as mp

from torchrl_vlm.scoring.base import check_scores
from torchrl_vlm.scoring.service import ScoredBatch, ScoringService, ScoringServiceError, _concat, _describe

__all__ = ["ProcessScoringService"]

logger = logging.getLogger(__name__)

_STOP = None  # sentinel on the input queue


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




class ProcessScoringService(ScoringService):
    """The process backend of :class:`~torchrl_vlm.ScoringService` (``backend="process"``, the default): one
    spawned worker process; see the module for its failure policy."""

    def __init__(self, *args, **kwargs):
        self._ctx = mp.get_context("spawn")
        self._process = None
        self._busy: tuple[list[int], float] | None = None  # (tickets, since) of the batch the worker holds
        self._starting_since: float | None = None  # a restarted worker that has not said "ready" yet
        self._restarts = 0  # this service's, against max_restarts (the counter may continue an earlier run's)
        super().__init__(*args, **kwargs)

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


    def _pump(self) -> None:
        """Hands waiting submissions to the worker while it holds fewer than 2 batches."""
        window = 2 * self.batch_clips
        while self._waiting and sum(self._in_flight.values()) < window:
            ticket, clips = self._waiting.popleft()
            n = clips.batch_size[0]
            self._waiting_clips -= n
            self._in_flight[ticket] = n
            # One shared-memory block per submission instead of one per tensor, made there at once (a
            # consolidated block in private memory is copied into shared memory when it is sent); a
            # VLMReplayBuffer's clips come consolidated already, their frames packed into the block.
            self._q_in.put((ticket, clips.consolidate(share_memory=True)))


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
