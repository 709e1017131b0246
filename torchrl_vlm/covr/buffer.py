"""PriorReplayBuffer: COVR's replay, each row's VLM action prior written back late (Algorithm 1, steps 1–4).

Per ``rb.extend(batch)``:

1. the rows are written with ``vlm_action = 0`` and ``vlm_action_valid = False`` (no prior yet); the frames
   never enter replay;
2. each row's frame (the observation its action was chosen from), resized to ``frame_size``, goes to the prior
   process (:class:`~torchrl_vlm.covr.ActionPrior`) with the adapter version to answer with, without waiting;
3. priors that have come back are written where their slot still holds the row they were asked about (the
   generation check verdicts get, :class:`~torchrl_vlm.scoring.writeback.AsyncWriteBackBuffer`): a row whose
   answer did not parse keeps ``vlm_action_valid = False``;
4. with a :class:`~torchrl_vlm.covr.FineTuning`, the frames, actions and rewards go to D_f, and a fine-tune
   starts when the progressive schedule says so; its adapter is used from the next request on.

``prior_lag=k`` lands each prior exactly k extends after it was asked, and with a lag the fine-tunes land a
fixed number of extends after they start (``FineTuning(lag=...)``): a run is then reproducible whatever the load.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase
from torchrl.data.replay_buffers.storages import Storage

from torchrl_vlm._checks import check_int
from torchrl_vlm.covr.finetuning import FineTuning
from torchrl_vlm.covr.prior import check_actions
from torchrl_vlm.missions import mission_strings
from torchrl_vlm.replay.buffer import CollectorReplayBuffer, own_signature
from torchrl_vlm.replay.sampler import MixtureSampler
from torchrl_vlm.scoring.service import ScoredBatch, ScoringService
from torchrl_vlm.scoring.writeback import AsyncWriteBackBuffer

__all__ = ["PriorReplayBuffer"]

logger = logging.getLogger(__name__)

_COUNTERS = ("prior_rows_answered", "prior_rows_valid", "prior_rows_written")

#: After this many answered rows with none parsed, the buffer warns once: the VLM answers garbage.
GARBAGE_WARN_ROWS = 2048


@own_signature
class PriorReplayBuffer(AsyncWriteBackBuffer):
    """COVR's replay buffer: collector batches in, the VLM's action prior written back per row.

    Args:
        storage: a 1-D TorchRL storage.
        prior: the prior, started in its own :class:`ScoringService` (``service_options``) and closed with the
            buffer: an :class:`~torchrl_vlm.covr.ActionPrior` factory (a ``functools.partial``), or any
            picklable callable with the same contract; or a ``ScoringService`` the caller owns.
        action_dim: the action size (the prior's answers are checked against it).
        sampler: any TorchRL sampler (default uniform).
        batch_size: default batch size of ``rb.sample()``.
        prior_lag: ``None`` (default): a prior lands when it arrives; ``k >= 0``: exactly k extends after it
            was asked (waiting for a late one), for reproducible runs.
        finetuning: a :class:`~torchrl_vlm.covr.FineTuning` (COVR), or ``None`` (a frozen prior: the paper's DPL).
        frame_key, frame_size, mission_key: where the frames and mission are, and the size frames are shipped at.
        done_key, reward_key, action_key: what D_f reads from a batch.
        transform, postproc, exclude_keys: as :class:`~torchrl_vlm.replay.buffer.CollectorReplayBuffer`.
        **service_options: for the prior's :class:`ScoringService` (``batch_clips`` counts rows here).

    Set :attr:`policy_entropy` from the loss each update: EDDF's threshold reads it (eq. 5).

    ``rb.stats()`` adds: the prior service's counters and latency, ``parse_failures`` and ``adapter_version``
    (from the prior), ``prior_rows_answered``/``prior_rows_valid`` (answers that parsed), ``prior_coverage`` (the
    share of written rows holding a valid prior), ``stale_rejected``, ``prior_wait_s``, and with fine-tuning the
    ``covr_*`` counters (fine-tunes done, skipped, failed, adapters rejected, D_f size, the last one's losses).
    """

    def __init__(
        self,
        *,
        storage: Storage,
        prior: Callable[[], Any] | ScoringService,
        action_dim: int,
        sampler=None,
        batch_size: int | None = None,
        prior_lag: int | None = None,
        finetuning: FineTuning | None = None,
        frame_key="pixels",
        frame_size=None,
        mission_key="mission",
        done_key=("next", "done"),
        reward_key=("next", "reward"),
        action_key="action",
        transform=None,
        postproc=None,
        exclude_keys: tuple = (),
        **service_options,
    ):
        self.action_dim = check_int("action_dim", action_dim)
        if finetuning is not None and not isinstance(finetuning, FineTuning):
            raise TypeError(f"finetuning must be a FineTuning or None, got {type(finetuning).__name__}")
        self.finetuning = finetuning
        self.done_key, self.reward_key, self.action_key = done_key, reward_key, action_key
        self.policy_entropy = 0.0
        self._mission: str | None = None
        self._agent_steps = 0
        self._warned_garbage = False
        if not isinstance(prior, ScoringService):
            service_options.setdefault("output_check", check_actions)
            service_options.setdefault("batch_clips", 64)
            service_options.setdefault("max_pending", 4096)
        super().__init__(
            storage=storage, service=prior, sampler=sampler, batch_size=batch_size, lag=prior_lag,
            lag_name="prior_lag", frame_key=frame_key, frame_size=frame_size, mission_key=mission_key,
            transform=transform, postproc=postproc, exclude_keys=exclude_keys, **service_options,
        )
        self._add_counters(*_COUNTERS)

    @property
    def prior_lag(self) -> int | None:
        return self.lag

    @property
    def adapter_version(self) -> int:
        """The adapter version the prior is asked to answer with now (−1: the base model)."""
        return -1 if self.finetuning is None else self.finetuning.version

    # ---------------------------------------------------------------- extend
    def extend(self, batch: TensorDictBase, *, update_priority: bool | None = None) -> torch.Tensor:
        """Writes a collector batch (``[*envs, T]`` or flat), asks the prior about its rows, lands answers,
        feeds D_f and the fine-tune schedule. Returns the rows' storage indices."""
        if not isinstance(batch, TensorDictBase):
            raise TypeError(f"batch must be a TensorDict, got {type(batch).__name__}")
        frames = batch.get(self.frame_key, None)
        if frames is None:
            keys = sorted(str(k) for k in batch.keys(include_nested=True, leaves_only=True))
            raise KeyError(f"the prior reads each row's frame, but the batch has no {self.frame_key!r} entry; its "
                           f"entries: {', '.join(keys)}. Render frames in the env (render=True)")
        self._begin_extend()
        n = batch.numel()
        capacity = getattr(self._storage, "max_size", None)
        if capacity is not None and n > capacity:
            raise ValueError(f"a batch of {n} rows does not fit the buffer's capacity of {capacity}")
        layout = frames.shape[: batch.ndim]
        small = self._model_frames(frames.reshape(n, *frames.shape[batch.ndim:]))
        mission = self._missions(batch, n)

        rows = self.rows(batch)
        rows.set("vlm_action", torch.zeros(n, self.action_dim, device=rows.device))
        rows.set("vlm_action_valid", torch.zeros(n, dtype=torch.bool, device=rows.device))
        if isinstance(self._sampler, MixtureSampler):  # every storage column is written at every extend
            rows.set(self.priority_key, torch.zeros(n, device=rows.device))
            update_priority = False
        index = super(CollectorReplayBuffer, self).extend(rows, update_priority=update_priority)
        generation = self._writer.generations_of(index).reshape(n)
        self._counts["slots_written"] += n
        items = TensorDict({"frames": small, "adapter": torch.full((n,), self.adapter_version)}, [n])
        if mission is not None:
            items.set("mission", NonTensorStack(*mission))
        self._submit(items, {"index": index.reshape(n), "generation": generation})

        self._agent_steps += n
        if self.finetuning is not None:
            self.finetuning.buffer.add(
                small.reshape(*layout, *small.shape[1:]), batch.get(self.action_key),
                batch.get(self.reward_key), batch.get(self.done_key),
            )
            self.finetuning.step(self._agent_steps, self._counts["extends"], self.policy_entropy, self._mission)
        self._end_extend()
        return index

    def _missions(self, batch: TensorDictBase, n: int) -> list[str] | None:
        value = batch.get(self.mission_key, None)
        if value is None:
            return None
        missions = mission_strings(value)
        if self._mission is None and missions:
            self._mission = missions[0]
        return missions if len(missions) == n else None

    # -------------------------------------------------------------- answers
    def _land(self, results: list[ScoredBatch]) -> None:
        """Generation-checked write of priors: ``vlm_action`` and ``vlm_action_valid`` (the answer parsed)."""
        index = torch.cat([r.meta["index"] for r in results])
        generation = torch.cat([r.meta["generation"] for r in results])
        actions = torch.cat([r.scores for r in results])
        valid = torch.isfinite(actions).all(-1)
        live = self._write_back(index, generation, {"vlm_action": torch.nan_to_num(actions, nan=0.0),
                                                    "vlm_action_valid": valid})
        self._counts["prior_rows_answered"] += index.numel()
        self._counts["prior_rows_valid"] += int(valid.sum())
        self._counts["prior_rows_written"] += int((live & valid).sum())
        if (not self._warned_garbage and self._counts["prior_rows_valid"] == 0
                and self._counts["prior_rows_answered"] >= GARBAGE_WARN_ROWS):
            self._warned_garbage = True
            logger.warning("the prior has answered %d rows and not one parsed as an action of size %d: the VLM "
                           "answers garbage (the prior term is 0 until it does); see stats()['parse_failures']",
                           self._counts["prior_rows_answered"], self.action_dim)

    # ---------------------------------------------------------------- stats
    def stats(self) -> dict[str, float]:
        out = super().stats()
        written = self._counts["slots_written"]
        out["prior_coverage"] = self._counts["prior_rows_written"] / written if written else 0.0
        out["prior_wait_s"] = self.wait_s
        if self.finetuning is not None:
            out.update(self.finetuning.stats())
        return out

    # --------------------------------------------------------- checkpointing
    def _writeback_state(self) -> dict[str, Any]:
        state = super()._writeback_state()
        state["covr"] = {"agent_steps": self._agent_steps, "mission": self._mission, "entropy": self.policy_entropy,
                         "finetuning": None if self.finetuning is None else self.finetuning.state_dict()}
        return state

    def _load_writeback_state(self, state: dict[str, Any]) -> None:
        super()._load_writeback_state(state)
        covr = state["covr"]
        self._agent_steps, self._mission = int(covr["agent_steps"]), covr["mission"]
        self.policy_entropy = float(covr["entropy"])
        if (covr["finetuning"] is None) != (self.finetuning is None):
            raise ValueError("the checkpoint was written with" + ("out" if covr["finetuning"] is None else "")
                             + " fine-tuning; this buffer is configured the other way")
        if self.finetuning is not None:
            self.finetuning.load_state_dict(covr["finetuning"])

    def close(self) -> None:
        super().close()
        if self.finetuning is not None:
            self.finetuning.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={len(self)}, sampler={self._sampler!r}, prior_lag={self.prior_lag}, "
                f"adapter_version={self.adapter_version})")
