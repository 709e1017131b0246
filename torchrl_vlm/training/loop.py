"""The training loop's parts: episode metrics, the stop request (Ctrl-C, SIGTERM), cadences, timed
collection, phase timings and teardown."""
from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from typing import Any

from tensordict import TensorDictBase
from torchrl._utils import timeit
from torchrl.envs import EnvBase

from torchrl_vlm._checks import check_int
from torchrl_vlm.training.checkpoints import restore_optimizer
from torchrl_vlm.training.seeding import set_rng_state


# --------------------------------------------------------------------------- the loop
class EpisodeMetrics:
    """Return, success and length of the episodes that end, from collector batches.

    Call it on each batch, or hand it to a collector as ``post_collect_hook``
    (``Collector(..., replay_buffer=rb, post_collect_hook=metrics)`` yields no
    batches, so this is how episode metrics reach the logger there). :meth:`pop`
    returns the means over the episodes ended since the last pop, as ``train/...``
    metrics, and forgets them; :attr:`last_success` keeps the latest for a progress bar.
    Reads ``("next", "done")``, ``episode_reward`` and ``step_count``, and ``success`` where the env has it
    (an env without it, such as CartPole or a DMControl task without a goal, logs no success).
    """

    def __init__(self):
        self._sums = {"episode_return": 0.0, "episode_length": 0.0}
        self._episodes = self._success_episodes = 0
        self.last_success = float("nan")

    def __call__(self, batch: TensorDictBase) -> None:
        done = batch["next", "done"].reshape(-1)
        n = int(done.sum())
        if not n:
            return
        nxt = batch["next"]
        if "success" in nxt.keys():
            success = float(nxt["success"].reshape(-1)[done].float().sum())
            self._sums["success"] = self._sums.get("success", 0.0) + success
            self._success_episodes += n
            self.last_success = success / n
        self._sums["episode_return"] += float(nxt["episode_reward"].reshape(-1)[done].sum())
        self._sums["episode_length"] += float(nxt["step_count"].reshape(-1)[done].float().sum())
        self._episodes += n

    def pop(self) -> dict[str, float]:
        if not self._episodes:
            return {}
        out = {f"train/{key}": value / self._episodes for key, value in self._sums.items() if key != "success"}
        if self._success_episodes:
            out["train/success"] = self._sums["success"] / self._success_episodes
        out["train/episodes"] = float(self._episodes)
        self._sums = {"episode_return": 0.0, "episode_length": 0.0}
        self._episodes = self._success_episodes = 0
        return out


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop after the current batch.

    Used as a context manager around the loop; the loop checks :attr:`requested` once per
    batch and leaves it, so the run ends the way a finished run does (final evaluation, and
    the final checkpoint when ``checkpoint.at_end`` allows one), with every structure whole.
    A second signal raises ``KeyboardInterrupt`` at once, for a run that must die now.
    Outside the main thread (where Python cannot take signals) it does nothing.
    """

    def __init__(self):
        self.requested: str | None = None  # the signal's name, once one came
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: stopping after this batch (again to stop at once)", flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class Every:
    """A cadence in frames: :meth:`due` is true once each time ``frames`` reaches the next multiple.

    ``interval=0`` never fires. A resumed run passes the frames it starts from, so
    the cadence continues where the checkpoint left it.
    """

    def __init__(self, interval: int, start: int = 0):
        check_int("interval", interval, 0, meaning="0 = never")
        self.interval = interval
        self.next = (start // interval + 1) * interval if interval else None

    def due(self, frames: int) -> bool:
        if self.next is None or frames < self.next:
            return False
        while self.next <= frames:
            self.next += self.interval
        return True


def timed_batches(collector, phase: str = "collect"):
    """The collector's batches, each wait for the next one timed as ``timeit(phase)``.

    ``for batch in collector`` would hide collection inside the loop's own timing; this
    keeps it in its own ``time/collect`` bucket.
    """
    done = object()  # not None: Collector(replay_buffer=rb) yields None for every batch
    with timeit(phase):
        batches = iter(collector)
    while True:
        with timeit(phase):
            batch = next(batches, done)
        if batch is done:
            return
        yield batch


def restore_training_state(state: Mapping[str, Any], *, loss_module, optimizer, env, lr: float) -> None:
    """Loads what every recipe's checkpoint holds: the loss module, the optimiser (keeping
    ``lr``), the env's state (clip-id counters) and the random state."""
    loss_module.load_state_dict(state["loss_module"])
    restore_optimizer(optimizer, state["optimizer"], lr)
    env.load_state_dict(state["env"])
    set_rng_state(state["rng"])


def phase_seconds() -> dict[str, float]:
    """Seconds spent per ``timeit`` phase so far, as ``time/<phase>`` metrics."""
    return {f"time/{key}": float(value) for key, value in timeit.todict(percall=False).items()}


def close_all(*things) -> None:
    """Tears a run down: ``shutdown()`` for what has one (collectors, replay buffers, loggers:
    a wandb run is finished), ``close()`` for the rest (envs, progress bars, teachers).

    Each thing is closed even if an earlier one failed; ``None`` entries are skipped.
    """
    errors = []
    for thing in things:
        if thing is None:
            continue
        try:
            # isinstance first: a closed SerialEnv's attribute lookup recurses
            if not isinstance(thing, EnvBase) and hasattr(thing, "shutdown"):
                thing.shutdown()
            elif isinstance(thing, EnvBase):
                thing.close(raise_if_closed=False)  # a collector's shutdown may have closed it
            else:
                thing.close()
        except Exception as err:  # noqa: BLE001 - the others must still be closed
            errors.append(err)
    if errors:
        raise errors[0]
