"""COVR's LoRA fine-tune of the prior VLM on the agent's own filtered experience (Algorithm 1, step 6).

:class:`LoRAFineTuner` runs in a process of its own (behind a :class:`~torchrl_vlm.ScoringService`: on a
second GPU in real use), never in the learner's. One call is one fine-tune: the samples EDDF kept
(:func:`~torchrl_vlm.covr.eddf_mask`), their RALW weights (:func:`~torchrl_vlm.covr.ralw_weights`), the
version to write and the version to start from. It trains the adapter with eq. 6's weighted token NLL
(:func:`~torchrl_vlm.covr.ralw_token_nll`) over the answer text ``Action: [..]`` of each sample's own action,
writes the new version (:func:`~torchrl_vlm.covr.adapter.write_adapter`: weights only, checksummed, atomic)
and answers one row of numbers: the loss before and after on the same samples, the time, the samples, their
weight mass and the gradient steps (:data:`FINETUNE_FIELDS`).

The adapter carries over from one fine-tune to the next, as the paper's VLM does. A fine-tune that fails
half-way leaves no version behind, and the next one starts again from the last version written.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDictBase

from torchrl_vlm._checks import check_int
from torchrl_vlm.covr.adapter import adapter_path, verify_adapter, write_adapter
from torchrl_vlm.covr.equations import format_action, ralw_token_nll
from torchrl_vlm.covr.prior import ANSWER_PREFIX, DEFAULT_PROMPT, check_answer_prefix, check_prompt, prompt_text
from torchrl_vlm.hf_vlm import HFVisionLanguageModel, VLMBacked, resolve_image_size, to_pil_images, user_turn

__all__ = ["DEFAULT_TARGET_MODULES", "FINETUNE_FIELDS", "LoRAFineTuner", "check_finetune"]

logger = logging.getLogger(__name__)

#: What a fine-tune answers, in order.
FINETUNE_FIELDS = ("loss_before", "loss_after", "seconds", "samples", "weight_mass", "steps")

#: LoRA's default targets: the attention and MLP projections of a Llama/Qwen-style language model (peft matches
#: the names as suffixes, so a vision tower's modules of the same name are adapted too).
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_finetune(output: Any, n: int, name: str) -> torch.Tensor:
    """The service's check of a fine-tune's answer: finite float ``[n, len(FINETUNE_FIELDS)]``."""
    width = len(FINETUNE_FIELDS)
    if (
        not isinstance(output, torch.Tensor)
        or tuple(output.shape) != (n, width)
        or not bool(torch.isfinite(output).all())
    ):
        got = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"{name} must return finite [{n}, {width}] fine-tune results, got {got}")
    return output.float()


class LoRAFineTuner(VLMBacked):
    """Fine-tunes the prior's VLM with LoRA (peft) under COVR's RALW loss; one call is one fine-tune.

    Args:
        model: the prior's model (hub id or local folder), loaded as :class:`~torchrl_vlm.covr.ActionPrior` does.
        action_dim: the action size (the prompt states it).
        adapter_root: where adapter versions are written (the prior reads them from there).
        prompt: the prior's prompt (the fine-tune teaches the answer to the same question).
        answer_prefix: the prior's (:data:`~torchrl_vlm.covr.prior.ANSWER_PREFIX`): it is part of the prompt here,
            and the fine-tune teaches what follows it.
        rank, alpha, dropout: LoRA's r, α and dropout (defaults 16, 32, 0.05: the common setting for 3B VLMs;
            the paper gives none).
        target_modules: module names LoRA adapts (:data:`DEFAULT_TARGET_MODULES`).
        lr: AdamW learning rate of the adapter (1e-4).
        epochs: passes over the kept samples per fine-tune (the paper does not say; 1).
        batch_size: samples per gradient step.
        max_steps: a cap on gradient steps per fine-tune (``None``: no cap).
        label_smoothing: eq. 6's label smoothing (the paper gives no value; 0.1).
        eval_samples: the loss before and after is measured on at most this many of the samples.
        image_size, device, dtype, local_files_only, trust_remote_code, processor_kwargs: as the prior's.
        seed: with the version, seeds the adapter's initialisation and the sample order.

    A call takes a TensorDict ``[1]`` holding ``frames`` (uint8 ``[1, N, H, W, 3]``), ``action`` (``[1, N, A]``,
    the agent's own actions), ``weight`` (``[1, N]``, RALW), ``version`` and ``base_version`` (int64 ``[1]``:
    the version to write, and the one to start from, −1 for a fresh adapter) and optionally ``mission``.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        action_dim: int,
        adapter_root: str | os.PathLike,
        prompt: str = DEFAULT_PROMPT,
        answer_prefix: str = ANSWER_PREFIX,
        rank: int = 16,
        alpha: float = 32.0,
        dropout: float = 0.05,
        target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
        lr: float = 1e-4,
        epochs: int = 1,
        batch_size: int = 8,
        max_steps: int | None = None,
        label_smoothing: float = 0.1,
        eval_samples: int = 256,
        image_size: int | Sequence[int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.action_dim = check_int("action_dim", action_dim)
        self.prompt = check_prompt(prompt)
        self.answer_prefix = check_answer_prefix(answer_prefix)
        self.rank = check_int("rank", rank)
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if isinstance(target_modules, str) or not target_modules or not all(isinstance(m, str) for m in target_modules):
            raise TypeError(f"target_modules must be a non-empty list of module names, got {target_modules!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.epochs = check_int("epochs", epochs)
        self.batch_size = check_int("batch_size", batch_size)
        self.max_steps = check_int("max_steps", max_steps, none_means="no cap")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.eval_samples = check_int("eval_samples", eval_samples)
        self.lr, self.label_smoothing, self.seed = float(lr), float(label_smoothing), int(seed)
        self.image_size = resolve_image_size(image_size)
        self.adapter_root = str(adapter_root)
        self.vlm = HFVisionLanguageModel(
            model,
            dtype=dtype,
            device=device,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
            processor_kwargs=processor_kwargs,
            owner="LoRAFineTuner",
        )
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

        config = LoraConfig(
            r=self.rank,
            lora_alpha=float(alpha),
            lora_dropout=float(dropout),
            target_modules=list(target_modules),
            bias="none",
        )
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(self.seed)
            self.vlm.model = get_peft_model(self.vlm.model, config)
        finally:
            torch.random.set_rng_state(state)
        self._fresh = {k: v.clone() for k, v in get_peft_model_state_dict(self.vlm.model).items()}
        self.version = -1  # the version the adapter in memory holds; None while a fine-tune is under way

    # ------------------------------------------------------------------ one fine-tune
    def __call__(self, request: TensorDictBase) -> torch.Tensor:
        if request.batch_size[0] != 1:
            raise ValueError(f"one fine-tune per request, got {request.batch_size[0]}")
        frames, actions, weights = request["frames"][0], request["action"][0].float(), request["weight"][0].float()
        version, base = int(request["version"][0]), int(request["base_version"][0])
        mission = request.get("mission", None)
        mission = None if mission is None else str(mission.tolist()[0] if hasattr(mission, "tolist") else mission)
        # The caller's generators are left as they were: _finetune seeds torch's global one for LoRA dropout.
        device = torch.device(self.vlm.device)
        cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            return self._finetune(frames, actions, weights, version, base, mission)

    def _finetune(self, frames, actions, weights, version: int, base: int, mission: str | None) -> torch.Tensor:
        self._start_from(base)
        t0 = time.perf_counter()
        n = frames.shape[0]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + version)
        held_out = torch.randperm(n, generator=generator)[: self.eval_samples]
        loss_before = self.loss(frames[held_out], actions[held_out], weights[held_out], mission)
        self.version = None  # the adapter in memory is no longer any version on disk
        # LoRA dropout draws from torch's global generator, seeded here, just before training: a fine-tune is then a
        # function of its request, whatever the process drew before (a first call draws more, lazily, than later ones).
        torch.manual_seed(self.seed * 1_000_003 + version)
        steps = self._train(frames, actions, weights, mission, generator)
        loss_after = self.loss(frames[held_out], actions[held_out], weights[held_out], mission)
        write_adapter(
            self.vlm.model,
            self.adapter_root,
            version,
            {"base_version": base, "samples": n, "steps": steps, "model": self.model_name},
        )
        self.version = version
        seconds = time.perf_counter() - t0
        return torch.tensor([[loss_before, loss_after, seconds, n, float(weights.sum()), steps]])

    def _start_from(self, base: int) -> None:
        """Puts version ``base`` (−1: the fresh adapter) in memory unless it is there already."""
        if base == self.version:
            return
        from peft import set_peft_model_state_dict

        if base < 0:
            set_peft_model_state_dict(self.vlm.model, self._fresh)
        else:
            from safetensors.torch import load_file

            path = adapter_path(self.adapter_root, base)
            verify_adapter(path)
            set_peft_model_state_dict(self.vlm.model, load_file(str(path / "adapter_model.safetensors")))
        self.version = base

    def _train(self, frames, actions, weights, mission, generator) -> int:
        model = self.vlm.model
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr)
        model.train()
        steps = 0
        try:
            for _ in range(self.epochs):
                order = torch.randperm(frames.shape[0], generator=generator)
                for start in range(0, len(order), self.batch_size):
                    if self.max_steps is not None and steps >= self.max_steps:
                        return steps
                    rows = order[start : start + self.batch_size]
                    if not bool((weights[rows] > 0).any()):
                        continue  # RALW gave these samples no weight: no gradient to take
                    loss = self._batch_loss(frames[rows], actions[rows], weights[rows], mission)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    steps += 1
        finally:
            model.eval()
        return steps

    @torch.no_grad()
    def loss(self, frames, actions, weights, mission) -> float:
        """Eq. 6's loss on these samples, without training (batched as the training is)."""
        total, count = 0.0, 0
        for start in range(0, frames.shape[0], self.batch_size):
            sl = slice(start, start + self.batch_size)
            n = frames[sl].shape[0]
            total += float(self._batch_loss(frames[sl], actions[sl], weights[sl], mission)) * n
            count += n
        return total / max(count, 1)

    def _batch_loss(self, frames, actions, weights, mission) -> torch.Tensor:
        """Eq. 6 on one batch: the answer tokens of each sample after the prefix (`` [..]<eos>`` after
        ``Action:``), weighted by RALW."""
        vlm = self.vlm
        turns = [[user_turn(1, prompt_text(self.prompt, self.action_dim, mission))] for _ in range(frames.shape[0])]
        prompts = [p + self.answer_prefix for p in vlm.render(turns, [1] * len(turns))]
        eos = vlm.tokenizer.eos_token or ""
        skip = len(self.answer_prefix)  # the answer's start is the prompt's end
        full = [p + format_action(a)[skip:] + eos for p, a in zip(prompts, actions, strict=True)]
        # The answer's tokens: what the whole text has beyond its prompt (the same count once images expand).
        n_answer = [
            len(vlm.tokenizer.encode(f, add_special_tokens=False))
            - len(vlm.tokenizer.encode(p, add_special_tokens=False))
            for f, p in zip(full, prompts, strict=True)
        ]
        bos = vlm.tokenizer.bos_token
        inputs = vlm.processor(
            text=full,
            images=[[img] for img in to_pil_images(frames, self.image_size)],
            padding=True,
            return_tensors="pt",
            add_special_tokens=not (bos and all(t.startswith(bos) for t in full)),
            **vlm.processor_kwargs,
        )
        kwargs = vlm.to_model(inputs)
        ids = kwargs["input_ids"]
        labels = torch.full_like(ids, -100)
        for row, k in enumerate(n_answer):  # left padding: every answer ends its row
            labels[row, ids.shape[1] - k :] = ids[row, ids.shape[1] - k :]
        if vlm._pass_position_ids:
            kwargs["position_ids"] = (kwargs["attention_mask"].long().cumsum(-1) - 1).clamp_min(0)
        logits = vlm.model(**kwargs).logits
        return ralw_token_nll(
            logits[:, :-1], labels[:, 1:], weights.to(logits.device), label_smoothing=self.label_smoothing
        )

    def stats(self) -> dict[str, float]:
        return {"finetuner_version": float(-2 if self.version is None else self.version)}

    def __repr__(self) -> str:
        return f"LoRAFineTuner({self.model_name!r}, rank={self.rank}, adapter_root={self.adapter_root!r})"
