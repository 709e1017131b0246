"""COVR's action prior: a Hugging Face VLM reads the frame and a task prompt and writes an action as text.

:class:`ActionPrior` is what runs in the prior's own process (behind a :class:`~torchrl_vlm.ScoringService`,
as a scorer does): frames in, ``[B, action_dim]`` actions out, a row of NaN where the answer could not be
parsed (:func:`~torchrl_vlm.covr.parse_action`). It loads its model through the same path as
:class:`~torchrl_vlm.TransformersScorer` (a hub id, a local folder, or :func:`~torchrl_vlm.testing.make_tiny_vlm`
offline), decodes greedily with a bounded number of new tokens, batches across envs, and switches to the
LoRA adapter version each request names (:mod:`torchrl_vlm.covr.adapter`), checking it first.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDictBase

from torchrl_vlm._checks import check_int
from torchrl_vlm.covr.adapter import AdapterError, adapter_path, verify_adapter
from torchrl_vlm.covr.equations import format_action, parse_action
from torchrl_vlm.hf_vlm import HFVisionLanguageModel, VLMBacked, resolve_image_size, to_pil_images, user_turn
from torchrl_vlm.missions import mission_strings

__all__ = ["DEFAULT_PROMPT", "ActionPrior", "check_actions", "check_prompt", "prompt_text"]

logger = logging.getLogger(__name__)

#: The task prompt: ``{action_dim}`` (required: the prompt must state the action's size) and ``{mission}``
#: (the env's description of the task, optional) are filled in.
DEFAULT_PROMPT = (
    "Task: {mission} Look at the image and choose the agent's next action: {action_dim} numbers, each between "
    "-1 and 1. Answer as Action: [x1, ..., x{action_dim}]."
)


#: What the prior's answer starts with, written for the model (prefilled): it goes on from ``Action:``. A small
#: or freshly fine-tuned model may learn ``Action: [0.4]`` and still open its answer with something else (the tiny
#: test VLM learns ``:`` → `` `` from the answers and writes a space first); a prefilled opening cannot miss.
ANSWER_PREFIX = "Action:"


def check_answer_prefix(answer_prefix: str) -> str:
    """Refuses a prefix that not every answer the fine-tune teaches (:func:`~torchrl_vlm.covr.format_action`)
    starts with."""
    if not isinstance(answer_prefix, str):
        raise TypeError(f"answer_prefix must be a str, got {type(answer_prefix).__name__}")
    common = os.path.commonprefix([format_action(torch.tensor([v])) for v in (-1.0, 0.0, 1.0)])  # "Action: ["
    if not common.startswith(answer_prefix):
        raise ValueError(f"answer_prefix={answer_prefix!r} is not how every answer starts ({common!r}); use a "
                         "start of that, e.g. 'Action:', or '' for none")
    return answer_prefix


def check_prompt(prompt: str) -> str:
    """Refuses a prompt that does not state the action's size (``{action_dim}``) or has other fields."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise TypeError(f"prompt must be a non-empty string, got {prompt!r}")
    if "{action_dim}" not in prompt:
        raise ValueError(
            f"prompt must state the action's size with the field {{action_dim}} (and its range, [-1, 1]); got "
            f"{prompt!r}"
        )
    try:
        prompt.format(action_dim=2, mission="")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"prompt may use only the fields {{action_dim}} and {{mission}}; {prompt!r} gives "
                         f"{type(err).__name__}: {err}") from None
    return prompt


def prompt_text(prompt: str, action_dim: int, mission: str | None) -> str:
    """The prompt for one frame."""
    return prompt.format(action_dim=action_dim, mission=(mission or "").strip()).strip()


def check_actions(output: Any, n: int, name: str) -> torch.Tensor:
    """The service's check of a prior's answer: float ``[n, action_dim]``, each row in [−1, 1] or all NaN."""
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != n:
        shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"{name} must return [{n}, action_dim] actions, got {shape}")
    output = output.float()
    finite = torch.isfinite(output)
    if not bool((finite.all(1) | torch.isnan(output).all(1)).all()):
        raise ValueError(f"{name} returned a row that is neither a finite action nor all NaN (no answer)")
    if bool((output[finite].abs() > 1).any()):
        raise ValueError(f"{name} returned actions outside [-1, 1]")
    return output


class ActionPrior(VLMBacked):
    """COVR's VLM action prior (Algorithm 1, step 1): one action per frame, parsed from generated text.

    Args:
        model: a hub id (the paper's ``Qwen/Qwen2.5-VL-3B-Instruct``) or a local folder.
        action_dim: the size of the action the prompt asks for.
        prompt: the task prompt; it must hold ``{action_dim}``, may hold ``{mission}`` (:data:`DEFAULT_PROMPT`).
        max_new_tokens: the bound on generated tokens; it must cover ``Action: [...]`` of ``action_dim``
            numbers in this model's tokenizer (checked at load time).
        batch_size: frames per ``generate`` call.
        image_size: ``(h, w)`` (or an int) the frames are resized to; ``None`` leaves it to the processor.
        adapter_root: where the fine-tuner writes LoRA adapter versions; ``None``: the base model only.
        answer_prefix: written after the assistant prompt, the answer going on from it (:data:`ANSWER_PREFIX`,
            ``"Action:"``; ``""``: none). The fine-tuner must use the same.
        device, dtype, local_files_only, trust_remote_code, processor_kwargs: as
            :class:`~torchrl_vlm.TransformersScorer`.

    A call takes a TensorDict ``[B]`` with ``frames`` (uint8 ``[B, H, W, 3]``), optionally ``mission``
    (strings) and ``adapter`` (int64 ``[B]``, the adapter version to answer with; −1 is the base model), and
    returns float32 ``[B, action_dim]``: the parsed action, or NaN where the text held none. A version that
    fails its checksum is not loaded: the prior answers with the adapter it has, and counts the failure.

    :meth:`stats`: ``prior_answers``, ``parse_failures``, ``adapter_version``, ``adapter_load_failures``
    (the service forwards them with every answer).
    """

    needs_frames = True

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        action_dim: int,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 32,
        batch_size: int = 16,
        image_size: int | Sequence[int] | None = None,
        adapter_root: str | os.PathLike | None = None,
        answer_prefix: str = ANSWER_PREFIX,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.action_dim = check_int("action_dim", action_dim)
        self.prompt = check_prompt(prompt)
        self.max_new_tokens = check_int("max_new_tokens", max_new_tokens)
        self.batch_size = check_int("batch_size", batch_size)
        self.image_size = resolve_image_size(image_size)
        self.adapter_root = None if adapter_root is None else str(adapter_root)
        self.answer_prefix = check_answer_prefix(answer_prefix)
        self.vlm = HFVisionLanguageModel(
            model,
            dtype=dtype,
            device=device,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
            processor_kwargs=processor_kwargs,
            owner="ActionPrior",
        )
        longest = format_action(-0.99 * torch.ones(self.action_dim))
        needed = len(self.tokenizer.encode(longest, add_special_tokens=False)) + 1
        if self.max_new_tokens < needed:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} cannot hold an answer such as {longest!r}: the tokenizer of "
                f"{self.model_name!r} needs {needed} tokens for it; raise max_new_tokens"
            )
        self._base = self.vlm.model
        self.version = -1
        self.counts = {"prior_answers": 0, "parse_failures": 0, "adapter_load_failures": 0}

    # ------------------------------------------------------------------ adapters
    def use_adapter(self, version: int) -> bool:
        """Switches to adapter ``version`` (−1: the base model), checked first; returns whether it did."""
        version = int(version)
        if version == self.version:
            return True
        if version < 0:
            self.version = -1
            return True
        if self.adapter_root is None:
            raise ValueError(f"adapter version {version} asked of an ActionPrior without adapter_root")
        path = adapter_path(self.adapter_root, version)
        try:
            verify_adapter(path)
            from peft import PeftModel, set_peft_model_state_dict
            from safetensors.torch import load_file

            if not hasattr(self.vlm.model, "peft_config"):
                self.vlm.model = PeftModel.from_pretrained(self._base, str(path), is_trainable=False).eval()
            else:
                set_peft_model_state_dict(self.vlm.model, load_file(str(path / "adapter_model.safetensors")))
        except (AdapterError, OSError, ValueError, RuntimeError) as err:
            self.counts["adapter_load_failures"] += 1
            logger.warning("the prior keeps adapter %d: version %d could not be loaded: %s", self.version, version, err)
            return False
        self.version = version
        return True

    # ------------------------------------------------------------------ answers
    def __call__(self, items: TensorDictBase) -> torch.Tensor:
        frames = items["frames"]
        n = frames.shape[0]
        missions = _strings(items.get("mission", None), n)
        versions = items.get("adapter", None)
        versions = [-1] * n if versions is None else [int(v) for v in versions.reshape(-1).tolist()]
        out = torch.full((n, self.action_dim), float("nan"))
        # A merged call may hold submissions asked of different versions: each is answered by its own.
        for version in sorted(set(versions)):
            rows = [i for i, v in enumerate(versions) if v == version]
            self.use_adapter(version)
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                texts = self.answer(frames[chunk], [missions[i] for i in chunk])
                for i, text in zip(chunk, texts, strict=True):
                    action = parse_action(text, self.action_dim)
                    if action is None:
                        self.counts["parse_failures"] += 1
                    else:
                        out[i] = action
        self.counts["prior_answers"] += n
        return out

    def answer(self, frames: torch.Tensor, missions: Sequence[str | None]) -> list[str]:
        """The answer for each frame (uint8 ``[B, H, W, 3]``): the prefix, and the model's greedy text after it."""
        images = to_pil_images(frames, self.image_size)
        conversations = [[user_turn(1, prompt_text(self.prompt, self.action_dim, m))] for m in missions]
        inputs = self.vlm.prepare(conversations, [[img] for img in images], item="frame",
                                  answer_prefix=self.answer_prefix)
        if self.version < 0 and hasattr(self.vlm.model, "disable_adapter"):
            with self.vlm.model.disable_adapter():
                texts = self.vlm.generate_text(inputs, self.max_new_tokens)
        else:
            texts = self.vlm.generate_text(inputs, self.max_new_tokens)
        return [self.answer_prefix + text for text in texts]

    def stats(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in self.counts.items()}, "adapter_version": float(self.version)}

    def __repr__(self) -> str:
        return f"ActionPrior({self.model_name!r}, action_dim={self.action_dim}, adapter_root={self.adapter_root!r})"


def _strings(value, n: int) -> list[str | None]:
    """``n`` mission strings (or ``None``s): one per frame, or the batch's one mission for every frame."""
    if value is None:
        return [None] * n
    values = mission_strings(value)
    return values if len(values) == n else [values[0] if values else None] * n
