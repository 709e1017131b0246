"""``ScoringService(backend="ray")``: scorer replicas as Ray actors behind the service's interface.

One process scores as fast as one VLM can; a 3B–8B judge on a collector's stream
needs several GPUs. With ``backend="ray"`` the service keeps its interface
(``submit``/``poll``/``request``/``stats``/``close``, the same counters, the same
dropping of the oldest waiting clips beyond ``max_pending``), and the clips go to
``num_replicas`` Ray actors, each holding one scorer:

- a batch goes to the least-loaded replica that is up (fewest clips in flight);
- a replica whose process dies is restarted by Ray (the actor's ``max_restarts``);
  the clips it held are counted lost (never positive), and it gets no new work
  until it answers again, so the others carry on;
- a batch that takes longer than ``hang_timeout_s`` gets its replica killed (and
  restarted by Ray), as the process backend restarts a hung worker;
- when every replica is out of restarts, the service stops with
  :class:`~torchrl_vlm.ScoringServiceError`.

``ray_address`` joins an existing cluster (``ray.init(address=...)``); without it
a running Ray (``ray.is_initialized()``) is used, or a local one is started (and
shut down by :meth:`close`). ``replica_options`` go to each actor's
``.options(...)``, e.g. ``{"num_gpus": 1}``.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDictBase

from torchrl_vlm.scoring.service import ScoredBatch, ScoringService, ScoringServiceError, _concat, _describe

__all__ = ["RayScoringService"]

logger = logging.getLogger(__name__)


def _compact(clips: TensorDictBase) -> TensorDictBase:
    """``clips`` with every tensor in storage of its own size (a clone where some tensor is a view of more)."""
    leaves = clips.values(include_nested=True, leaves_only=True)
    if all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in leaves
           if isinstance(t, torch.Tensor)):
        return clips
    return clips.clone()


class _Replica:
    """One scorer in a Ray actor process."""

    def __init__(self, factory: Callable[[], Any], num_threads: int, output_check):
        torch.set_num_threads(num_threads)
        self.scorer = factory()
        self.output_check = output_check

    def pid(self) -> int:
        return os.getpid()

    def score(self, batches: list[TensorDictBase]) -> tuple[list[torch.Tensor], dict | None]:
        clips = _concat(batches)
        scores = self.output_check(self.scorer(clips), clips.batch_size[0], type(self.scorer).__name__)
        own = self.scorer.stats() if callable(getattr(self.scorer, "stats", None)) else None
        return list(scores.split([b.batch_size[0] for b in batches])), own


class RayScoringService(ScoringService):
    """The Ray backend of :class:`~torchrl_vlm.ScoringService`; build it as
    ``ScoringService(factory, backend="ray", num_replicas=N, replica_options=..., ray_address=...)``.

    ``max_restarts`` is per replica (Ray's actor restarts); ``num_threads`` is each replica's
    torch threads, and by default each replica reserves one CPU (``replica_options={"num_cpus": 1}``).
    ``env`` goes to the replicas as Ray's ``runtime_env={"env_vars": ...}``.
    """

    def _start_worker(self, wait: bool = True) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError('backend="ray" needs Ray: pip install "torchrl-vlm[ray]"') from None
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False}
            if self.ray_address is not None:
                kwargs["address"] = self.ray_address
            ray.init(**kwargs)
            self._owns_ray = True
        options = {"num_cpus": 1, **self.replica_options, "max_restarts": self.max_restarts, "max_task_retries": 0}
        if self.env:
            options["runtime_env"] = {**options.get("runtime_env", {}), "env_vars": dict(self.env)}
        actor_class = ray.remote(_Replica).options(**options)
        self._replicas = [actor_class.remote(self.scorer_factory, self.num_threads, self.output_check)
                          for _ in range(self.num_replicas)]
        self._load = [0] * self.num_replicas  # clips in flight per replica
        self._down: dict[int, Any] = {}  # replica -> the pid() call that says it is up again
        self._calls: dict[Any, tuple[int, list[int], float]] = {}  # ref -> (replica, tickets, start)
        self._dead: set[int] = set()
        try:
            ray.get([r.pid.remote() for r in self._replicas], timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ScoringServiceError(
                f"the {self.num_replicas} Ray replicas of {_describe(self.scorer_factory)} did not load within "
                f"{self.start_timeout_s:.0f}s (raise start_timeout_s for large models, or check that the cluster "
                f"has the resources of replica_options={self.replica_options})"
            ) from None
        except ray.exceptions.RayError as err:
            self.close()
            raise ScoringServiceError(
                f"could not build the scorer {_describe(self.scorer_factory)} in a Ray replica:\n{err}"
            ) from None

    @property
    def worker_pid(self) -> int | None:
        pids = self.replica_pids()
        return pids[0] if pids else None

    def replica_pids(self, timeout_s: float = 30.0) -> list[int]:
        """The process id of each replica that is up and answers (for tests and monitoring)."""
        if self._closed:
            return []
        pids = []
        for i, replica in enumerate(self._replicas):
            if i in self._down or i in self._dead:
                continue
            try:
                pids.append(self._ray.get(replica.pid.remote(), timeout=timeout_s))
            except self._ray.exceptions.RayActorError:  # it died since the last poll: the next poll sees it
                pass
        return pids

    # --------------------------------------------------------------- traffic
    def _pump(self) -> None:
        """Hands waiting submissions, merged up to ``batch_clips``, to the least-loaded replica that is up."""
        window = 2 * self.batch_clips
        while self._waiting:
            up = [i for i in range(self.num_replicas) if i not in self._down and i not in self._dead]
            if not up:
                return
            target = min(up, key=lambda i: self._load[i])
            if self._load[target] >= window:
                return
            tickets, batches, n = [], [], 0
            while self._waiting and (n == 0 or n + self._waiting[0][1].batch_size[0] <= self.batch_clips):
                ticket, clips = self._waiting.popleft()
                self._waiting_clips -= clips.batch_size[0]
                n += clips.batch_size[0]
                self._in_flight[ticket] = clips.batch_size[0]
                tickets.append(ticket)
                batches.append(clips)
            # Ray pickles a tensor with its whole storage: clips sliced out of a larger batch would ship
            # all of it (100 MB for 8 clips of a 256-clip batch). A clone holds only the clips.
            ref = self._replicas[target].score.remote([_compact(b) for b in batches])
            self._calls[ref] = (target, tickets, time.monotonic())
            self._load[target] += n

    def _poll_queue(self) -> list[ScoredBatch]:
        self._check_open()
        ray = self._ray
        out: list[ScoredBatch] = []
        self._check_down()
        if self._calls:
            ready, _ = ray.wait(list(self._calls), num_returns=len(self._calls), timeout=0)
            for ref in ready:
                replica, tickets, _ = self._calls.pop(ref)
                self._load[replica] -= sum(self._in_flight.get(t, 0) for t in tickets)
                try:
                    scores, own = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    self._replica_failed(replica, tickets, f"died ({type(err).__name__})")
                    continue
                except ray.exceptions.RayTaskError as err:
                    self._on_scorer_error(tickets, str(err.cause if err.cause is not None else err)[:2000])
                    continue
                self._errors_in_a_row = 0
                if own:
                    self._scorer_stats = {k: float(v) for k, v in own.items()}
                now = time.monotonic()
                for ticket, s in zip(tickets, scores, strict=True):
                    self._in_flight.pop(ticket, None)
                    entry = self._pending.pop(ticket, None)
                    if entry is None:
                        continue
                    meta, n, t0 = entry
                    self._counters["clips_scored"] += n
                    self._latencies.append(now - t0)
                    out.append(ScoredBatch(meta=meta, scores=s.clone(), latency_s=now - t0, ticket=ticket))
        self._watchdog()
        self._pump()
        return out

    def _replica_failed(self, replica: int, tickets: list[int], reason: str) -> None:
        """A replica's process died under a batch: its clips are lost (never positive)."""
        lost = self._lose(tickets)
        self._mark_down(replica, f"{reason}, {lost} clips lost")

    def _mark_down(self, replica: int, reason: str) -> None:
        """No new work for ``replica`` until it answers again (Ray restarts it), or for good if it cannot."""
        if replica in self._down or replica in self._dead:
            return
        self._counters["worker_restarts"] += 1
        logger.warning("Ray scorer replica %d %s; Ray restarts it", replica, reason)
        self._down[replica] = self._replicas[replica].pid.remote()

    def _check_down(self) -> None:
        """Replicas that failed come back when they answer; one out of restarts is dead."""
        ray = self._ray
        for replica, ref in list(self._down.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                continue
            try:
                ray.get(ref)
            except ray.exceptions.ActorUnavailableError:  # still restarting: ask again at the next poll
                self._down[replica] = self._replicas[replica].pid.remote()
                continue
            except ray.exceptions.RayError:
                self._dead.add(replica)
                logger.warning("Ray scorer replica %d is out of restarts (max_restarts=%d)", replica,
                               self.max_restarts)
            del self._down[replica]
        if len(self._dead) == self.num_replicas:
            self.close()
            raise ScoringServiceError(
                f"every Ray replica of {_describe(self.scorer_factory)} died and was already restarted "
                f"{self.max_restarts} times (max_restarts); giving up"
            )

    def _watchdog(self) -> None:
        """Kills a replica stuck on a batch for longer than ``hang_timeout_s``; Ray restarts it."""
        now = time.monotonic()
        for replica, _, t0 in list(self._calls.values()):
            if now - t0 > self.hang_timeout_s and replica not in self._down and replica not in self._dead:
                self._ray.kill(self._replicas[replica], no_restart=False)
                self._mark_down(replica, f"hung for more than {self.hang_timeout_s:.0f}s on one batch (killed)")

    def close(self, timeout_s: float = 10.0) -> None:
        if getattr(self, "_closed", True) and not getattr(self, "_replicas", None):
            return
        self._closed = True
        ray = getattr(self, "_ray", None)
        for replica in getattr(self, "_replicas", []):
            try:
                ray.kill(replica, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._replicas = []
        if ray is not None and self._owns_ray and ray.is_initialized():
            ray.shutdown()
