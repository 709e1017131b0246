"""When and on what COVR's VLM is fine-tuned: D_f, the progressive schedule, EDDF, RALW, and the new adapter.

:class:`FineTuning` lives in the learner's process and never trains anything there: at each of
:func:`~torchrl_vlm.covr.progressive_schedule`'s steps it takes D_f's samples, keeps those EDDF keeps (eq. 5; at
least the ``min_keep_fraction`` of highest return, see :func:`select_samples`), weights them with RALW (eq. 6),
hands them to the fine-tuning process (:class:`~torchrl_vlm.covr.LoRAFineTuner` behind a
:class:`~torchrl_vlm.ScoringService`) and clears D_f. When the new adapter comes back, its files are
checked (:func:`~torchrl_vlm.covr.adapter.verify_adapter`) and :attr:`version` moves to it: the prior answers
with it from the next request on, and with the old one until then.

When it lands is the wall clock's business by default, or exactly ``lag`` extends after the fine-tune started
(waiting for it if it is late), which makes a run reproducible whatever the load.

Failures: a fine-tune that crashes, runs out of memory or writes a damaged adapter is counted
(``finetunes_failed``, ``adapters_rejected``) and logged, and training goes on with the adapter it had.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict

from torchrl_vlm._checks import check_int
from torchrl_vlm.covr.adapter import AdapterError, adapter_path, verify_adapter
from torchrl_vlm.covr.equations import eddf_mask, progressive_schedule, ralw_weights
from torchrl_vlm.covr.finetune import FINETUNE_FIELDS, check_finetune
from torchrl_vlm.covr.finetune_buffer import FinetuneBuffer
from torchrl_vlm.scoring.service import ScoringService

__all__ = ["FILTERS", "FineTuning", "WEIGHTINGS", "select_samples"]

logger = logging.getLogger(__name__)

#: Which D_f samples a fine-tune keeps: EDDF (eq. 5), or as many chosen at random (the paper's M1 ablation).
FILTERS = ("eddf", "random")
#: How the kept samples are weighted: RALW (eq. 6), or all alike (the paper's M8 ablation, "no RALW").
WEIGHTINGS = ("ralw", "uniform")


def _check_fraction(min_keep_fraction) -> float:
    if isinstance(min_keep_fraction, bool) or not isinstance(min_keep_fraction, int | float) \
            or not 0.0 <= min_keep_fraction <= 1.0:
        raise ValueError(f"min_keep_fraction must be a number in [0, 1], got {min_keep_fraction!r}")
    return float(min_keep_fraction)


def select_samples(returns: torch.Tensor, entropy: float, *, filter: str = "eddf", entropy_sign: float = 1.0,
                   min_keep_fraction: float = 0.0, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, bool]:
    """Which D_f samples a fine-tune trains on: EDDF's (eq. 5, :func:`~torchrl_vlm.covr.eddf_mask`), with a floor.

    The floor is ours, not the paper's. τ = median + σ(·)·IQR lies above every return once returns pile up at the
    task's maximum (reacher: quartiles 2 / 66 / 98.5 of at most 100 put τ above 100 whenever σ(·) > 0.35), and eq. 5
    then keeps nothing, fine-tune after fine-tune. When EDDF keeps fewer than ``min_keep_fraction`` of the samples
    with a finite return, the samples of highest return (earliest first among ties) are kept instead, that many;
    ``0`` is eq. 5 alone.

    ``filter="random"`` (the paper's M1 ablation) keeps as many samples as the above, chosen at random by ``rng``.

    Returns:
        the bool ``[N]`` mask, and whether the floor replaced EDDF's choice.
    """
    if filter not in FILTERS:
        raise ValueError(f"filter={filter!r}; choose one of {FILTERS}")
    min_keep_fraction = _check_fraction(min_keep_fraction)
    returns = torch.as_tensor(returns, dtype=torch.float64).reshape(-1)
    keep = eddf_mask(returns, entropy, entropy_sign=entropy_sign)
    finite = torch.isfinite(returns)
    floor = math.ceil(min_keep_fraction * int(finite.sum()))
    floored = int(keep.sum()) < floor
    if floored:
        order = torch.sort(torch.where(finite, returns, -math.inf), descending=True, stable=True).indices
        keep = torch.zeros_like(keep)
        keep[order[:floor]] = True
    if filter == "random":
        if rng is None:
            raise ValueError("filter='random' needs an rng")
        chosen = rng.choice(returns.numel(), size=int(keep.sum()), replace=False)
        keep = torch.zeros_like(keep)
        keep[torch.as_tensor(chosen, dtype=torch.long)] = True
    return keep, floored


class FineTuning:
    """COVR's fine-tuning loop, seen from the learner (Algorithm 1, steps 4 and 6).

    Args:
        finetuner: what fine-tunes, started in its own process: a factory of a
            :class:`~torchrl_vlm.covr.LoRAFineTuner` (e.g. a ``functools.partial``), or a ``ScoringService``
            running one (the caller owns it).
        adapter_root: the folder the fine-tuner writes adapter versions to.
        buffer: D_f (:class:`FinetuneBuffer`).
        psi0: the schedule's first interval, in agent steps (paper: 5000).
        entropy_sign: EDDF's sign (:func:`~torchrl_vlm.covr.eddf_mask`).
        filter: ``"eddf"`` or ``"random"`` (:data:`FILTERS`).
        weighting: ``"ralw"`` or ``"uniform"`` (:data:`WEIGHTINGS`).
        min_keep_fraction: the least share of D_f a fine-tune keeps, the samples of highest return, when EDDF
            keeps fewer (:func:`select_samples`; 0 = eq. 5 alone, which keeps nothing once returns saturate).
        min_samples: a fine-tune with fewer kept samples (or none of positive weight) is skipped; D_f keeps
            its samples for the next one.
        lag: ``None``, or the extends after which a fine-tune's adapter is switched to (see the module).
        seed: seeds the random filter.
        **service_options: for the fine-tuner's :class:`ScoringService` (``hang_timeout_s``, ``env``, ...).
    """

    def __init__(self, finetuner: Callable[[], Any] | ScoringService, *, adapter_root, buffer: FinetuneBuffer,
                 psi0: int = 5000, entropy_sign: float = 1.0, filter: str = "eddf", weighting: str = "ralw",
                 min_keep_fraction: float = 0.0, min_samples: int = 8, lag: int | None = None, seed: int = 0,
                 **service_options) -> None:
        if filter not in FILTERS:
            raise ValueError(f"filter={filter!r}; choose one of {FILTERS}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={weighting!r}; choose one of {WEIGHTINGS}")
        if entropy_sign not in (1.0, -1.0):
            raise ValueError(f"entropy_sign must be 1.0 or -1.0, got {entropy_sign!r}")
        if not isinstance(buffer, FinetuneBuffer):
            raise TypeError(f"buffer must be a FinetuneBuffer, got {type(buffer).__name__}")
        self.psi0 = check_int("psi0", psi0)
        self.min_samples = check_int("min_samples", min_samples)
        self.min_keep_fraction = _check_fraction(min_keep_fraction)
        self.lag = check_int("lag", lag, 0, none_means="asynchronous")
        self.adapter_root = str(adapter_root)
        self.buffer, self.entropy_sign, self.filter, self.weighting = buffer, float(entropy_sign), filter, weighting
        self.rng = np.random.default_rng(seed)
        self.version = -1  # the adapter the prior answers with (−1: the base model)
        self.fired = 0  # schedule points passed
        self.counts = dict.fromkeys(
            ("finetunes", "finetunes_skipped", "finetunes_floored", "finetunes_failed", "adapters_rejected"), 0)
        self.last: dict[str, float] = {}  # the last fine-tune's numbers, for logs
        self._in_flight: dict[str, Any] | None = None  # {"ticket", "version", "due", "kept", "started"}
        self._result: torch.Tensor | None = None  # a lag-mode result that came before its extend
        if isinstance(finetuner, ScoringService):
            self.service, self._owns = finetuner, False
        else:
            options = {"batch_clips": 1, "max_pending": 1, "hang_timeout_s": 3600.0, "max_restarts": 3,
                       **service_options, "output_check": check_finetune}
            self.service, self._owns = ScoringService(finetuner, **options), True

    # ------------------------------------------------------------------ schedule
    def next_step(self) -> int:
        """The agent step at which the next fine-tune is due."""
        schedule = progressive_schedule(self.psi0)
        for _ in range(self.fired):
            next(schedule)
        return next(schedule)

    def step(self, agent_steps: int, extend: int, entropy: float, mission: str | None = None) -> None:
        """Called once per extend: lands a finished fine-tune, then starts one if the schedule says so."""
        self._land(extend)
        if self._in_flight is None and agent_steps >= self.next_step():
            self.fired += 1
            self._start(extend, entropy, mission)

    def _start(self, extend: int, entropy: float, mission: str | None) -> None:
        data = self.buffer.data()
        n = data.batch_size[0]
        kept, weights = None, None
        if n:  # no episode has finished since the last fine-tune: nothing to learn from
            keep, floored = select_samples(data["return"], entropy, filter=self.filter,
                                           entropy_sign=self.entropy_sign, min_keep_fraction=self.min_keep_fraction,
                                           rng=self.rng)
            if floored:
                self.counts["finetunes_floored"] += 1
                logger.info("COVR fine-tune at schedule point %d: EDDF kept fewer than %.0f%% of %d D_f samples; "
                            "the floor keeps %d", self.fired, 100 * self.min_keep_fraction, n,
                            int(keep.sum()))
            kept = data[keep]
            weights = ralw_weights(kept["return"]) if self.weighting == "ralw" else torch.ones(kept.batch_size[0])
        if kept is None or kept.batch_size[0] < self.min_samples or not bool((weights > 0).any()):
            self.counts["finetunes_skipped"] += 1
            logger.info("COVR fine-tune skipped at schedule point %d: %d of %d D_f samples kept (min_samples=%d)",
                        self.fired, 0 if kept is None else kept.batch_size[0], n, self.min_samples)
            return
        version = self.version + 1  # a failed fine-tune's number is used again: it left no version behind
        request = TensorDict({
            "frames": kept["frames"][None], "action": kept["action"][None], "weight": weights[None],
            "version": torch.tensor([version]), "base_version": torch.tensor([self.version]),
        }, [1])
        if mission is not None:
            request.set("mission", NonTensorStack(mission))
        ticket = self.service.submit(request, meta=version)
        self.buffer.clear()
        if ticket is None:
            self.counts["finetunes_failed"] += 1
            return
        self._in_flight = {"ticket": ticket, "version": version, "due": None if self.lag is None else extend + self.lag,
                           "kept": kept.batch_size[0], "offered": n, "started": time.monotonic()}

    def _land(self, extend: int) -> None:
        flight = self._in_flight
        if flight is None:
            return
        for result in self.service.poll():
            if result.meta == flight["version"]:
                self._result = result.scores
        if self.lag is not None:
            if extend < flight["due"]:
                return
            while self._result is None and self.service.is_pending(flight["ticket"]):
                time.sleep(0.005)
                for result in self.service.poll():
                    if result.meta == flight["version"]:
                        self._result = result.scores
        if self._result is None:
            if not self.service.is_pending(flight["ticket"]):  # lost: the fine-tune crashed or raised
                self.counts["finetunes_failed"] += 1
                logger.warning("COVR fine-tune %d failed (see the fine-tuning process's error above); the prior "
                               "keeps adapter %d", flight["version"], self.version)
                self._in_flight = None
            return
        numbers, self._result, self._in_flight = self._result.reshape(-1), None, None
        try:
            verify_adapter(adapter_path(self.adapter_root, flight["version"]))
        except AdapterError as err:
            self.counts["adapters_rejected"] += 1
            logger.warning(
                "COVR adapter %d rejected, the prior keeps adapter %d: %s", flight["version"], self.version, err
            )
            return
        self.version = flight["version"]
        self.counts["finetunes"] += 1
        self.last = {
            **dict(zip(FINETUNE_FIELDS, numbers.tolist(), strict=True)),
            "kept": float(flight["kept"]),
            "offered": float(flight["offered"]),
            "version": float(self.version),
            "wall_s": time.monotonic() - flight["started"],
        }
        logger.info(
            "COVR fine-tune %d: loss %.3f -> %.3f on %d of %d samples (weight mass %.1f), %.1f s",
            self.version,
            self.last["loss_before"],
            self.last["loss_after"],
            flight["kept"],
            flight["offered"],
            self.last["weight_mass"],
            self.last["seconds"],
        )

    def drain(self, timeout_s: float | None = None) -> None:
        """Waits for a fine-tune in flight to finish (checkpoints); with a lag, its result is held, not applied."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (
            self._in_flight is not None and self._result is None and self.service.is_pending(self._in_flight["ticket"])
        ):
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(0.01)
            for result in self.service.poll():
                if result.meta == self._in_flight["version"]:
                    self._result = result.scores
        if self.lag is None:
            self._land(extend=0)

    def stats(self) -> dict[str, float]:
        out = {f"covr_{k}": float(v) for k, v in self.counts.items()}
        out["covr_adapter_version"] = float(self.version)
        out["covr_df_samples"] = float(len(self.buffer))
        out["covr_next_finetune"] = float(self.next_step())
        out.update({f"covr_last_{k}": v for k, v in self.last.items()})
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Counters, schedule position, D_f, the adapter in use (its files, checked on load) and a fine-tune
        in flight (waited for first)."""
        self.drain()
        files = {}
        if self.version >= 0:
            path = adapter_path(self.adapter_root, self.version)
            for f in sorted(path.iterdir()):
                files[f.name] = torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8)
        flight = None
        if self._in_flight is not None and self._result is not None:  # lag mode: done, not yet due
            flight = {
                "version": self._in_flight["version"],
                "due": self._in_flight["due"],
                "kept": self._in_flight["kept"],
                "offered": self._in_flight["offered"],
                "result": self._result,
            }
            vpath = adapter_path(self.adapter_root, flight["version"])
            flight["files"] = {
                f.name: torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in sorted(vpath.iterdir())
            }
        return {
            "version": self.version,
            "fired": self.fired,
            "counts": dict(self.counts),
            "last": dict(self.last),
            "buffer": self.buffer.state_dict(),
            "adapter": files,
            "in_flight": flight,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drain()
        self._in_flight, self._result = None, None
        self.version, self.fired = int(state["version"]), int(state["fired"])
        self.counts.update(state["counts"])
        self.last = dict(state["last"])
        self.rng.bit_generator.state = state["rng"]
        self.buffer.load_state_dict(state["buffer"])
        if self.version >= 0:
            self._restore_files(self.version, state["adapter"])
        flight = state["in_flight"]
        if flight is not None:
            self._restore_files(flight["version"], flight["files"])
            self._in_flight = {
                "ticket": -1,
                "version": flight["version"],
                "due": flight["due"],
                "kept": flight["kept"],
                "offered": flight["offered"],
                "started": time.monotonic(),
            }
            self._result = flight["result"]

    def _restore_files(self, version: int, files: dict[str, torch.Tensor]) -> None:
        """Writes a saved adapter version back under ``adapter_root`` and checks it."""
        import os
        import shutil
        import tempfile
        from pathlib import Path

        root = Path(self.adapter_root)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".restore-", dir=root))
        for name, data in files.items():
            if "/" in name or name.startswith("."):
                raise AdapterError(f"a checkpoint's adapter holds an unexpected file name {name!r}")
            (tmp / name).write_bytes(data.numpy().tobytes())
        verify_adapter(tmp)
        final = adapter_path(root, version)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)

    def close(self) -> None:
        if self._owns:
            self.service.close()
