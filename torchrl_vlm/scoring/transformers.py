"""A frozen Hugging Face VLM as a clip scorer: P(yes) from next-token logits (VLM-RB step 4).

:class:`TransformersScorer` shows a clip's frames to an image-text-to-text model
as one multi-image user turn, asks a Yes/No question, and reads the answer off
the logits of the first answer token. There is no text generation and no
parsing of free text: one forward pass per batch of clips gives

    P(yes) = sum_{t in Yes variants} p(t) / (sum_{t in Yes variants} p(t) + sum_{t in No variants} p(t)),

where ``p`` is the model's next-token distribution after the assistant prompt.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDictBase

from torchrl_vlm._checks import check_int
from torchrl_vlm.hf_vlm import (
    HFVisionLanguageModel,
    VLMBacked,
    resolve_image_size,
    to_pil_images,
    user_turn,
)
from torchrl_vlm.scoring.base import check_scores, clip_frame_mask, clip_missions, frame_indices, validate_clips

__all__ = [
    "DEFAULT_PROMPT",
    "MISSION_TEMPLATE",
    "DEFAULT_YES_TOKENS",
    "DEFAULT_NO_TOKENS",
    "TransformersScorer",
]

#: The paper's task-agnostic question.
DEFAULT_PROMPT = "Does this clip contain a clear instance of goal satisfaction anywhere in it? Answer Yes or No."
#: Prefix put before the question when ``mission_in_prompt=True`` (a goal-conditioned prompt).
MISSION_TEMPLATE = "The agent's mission: {mission}. "
DEFAULT_YES_TOKENS = ("Yes", " Yes", "yes", " yes", "YES")
DEFAULT_NO_TOKENS = ("No", " No", "no", " no", "NO")


class PromptedClipScorer:
    """What the VLM scorers share: the prompt (goal-conditioned with ``mission_in_prompt``), the missions
    of a batch of clips, and the view the verdict cache keys on. Needs ``prompt``, ``mission_in_prompt``
    and ``num_frames``."""

    prompt: str
    mission_in_prompt: bool
    num_frames: int

    def build_prompt(self, mission: str | None = None) -> str:
        """The text of the user turn: the question, preceded by the mission when ``mission_in_prompt``."""
        if not self.mission_in_prompt:
            return self.prompt
        if mission is None:
            raise ValueError("mission_in_prompt=True needs a mission string for every clip (clips['mission'])")
        return MISSION_TEMPLATE.format(mission=str(mission).strip().rstrip(".")) + self.prompt

    def _missions(self, clips: TensorDictBase) -> list[str | None]:
        if not self.mission_in_prompt:
            return [None] * clips.batch_size[0]
        if "mission" not in clips.keys():
            raise ValueError("mission_in_prompt=True but clips has no 'mission' entry")
        return clip_missions(clips)

    def cache_view(self, clips: TensorDictBase) -> list[tuple[str, list[torch.Tensor]]]:
        """What the model is shown, per clip: the prompt (with the mission if injected) and the selected frames."""
        frames, mask = clips.get("frames"), clip_frame_mask(clips)
        return [(self.build_prompt(m), [frames[b][frame_indices(mask[b], self.num_frames)]])
                for b, m in enumerate(self._missions(clips))]


class TransformersScorer(PromptedClipScorer, VLMBacked):
    """Scores clips with any Hugging Face image-text-to-text VLM by its next-token Yes/No logits.

    This is VLM-RB step 4: each clip's frames go to a frozen VLM with a Yes/No
    question, and P(yes) comes from one forward pass: the softmax mass on the
    Yes variants over the mass on the Yes and No variants, at the first answer
    token. No text is generated or parsed.

    Args:
        model: a Hugging Face hub id or a local folder, loaded with
            ``AutoProcessor.from_pretrained`` and
            ``AutoModelForImageTextToText.from_pretrained`` (frozen, eval mode).
        prompt: the question. The default is the paper's task-agnostic
            question (:data:`DEFAULT_PROMPT`).
        num_frames: frames shown per clip, evenly spaced over the clip's real
            (masked) steps; a shorter clip shows all its steps.
        image_size: ``None`` (frames as rendered), an int (square side) or
            ``(height, width)``; frames are resized before the processor sees
            them (nearest-neighbour when enlarging, which keeps pixel-art grids
            sharp; bilinear when shrinking).
        dtype: ``None`` (bfloat16/float16 on CUDA, float32 on CPU), ``"auto"``
            (the checkpoint's dtype), a floating ``torch.dtype`` or its name.
        device: ``None``/``"auto"`` (CUDA if available, else CPU) or any torch device.
        batch_size: clips per forward pass; larger inputs are chunked.
        mission_in_prompt: put the clip's ``mission`` string before the question
            (:data:`MISSION_TEMPLATE`), which makes the prompt goal-conditioned.
            The clips must then carry ``mission``.
        yes_tokens, no_tokens: answer spellings whose probabilities are summed.
            Only the spellings that the tokenizer encodes as exactly one token
            are kept (duplicates count once); at least one of each must remain.
        local_files_only: ``None`` follows ``HF_HUB_OFFLINE``; ``True`` never
            reaches the hub.
        trust_remote_code: passed to ``from_pretrained``.
        processor_kwargs: extra keyword arguments for the processor call (e.g.
            ``{"vision_input_type": "vanilla"}`` for Perception-LM, or
            ``{"max_pixels": 224 * 224}`` for Qwen2.5-VL). They override the
            family defaults below (Idefics3/SmolVLM: ``do_image_splitting=False``).

    The constructor loads the model, so in a scoring process pass a factory
    such as ``functools.partial(TransformersScorer, "HuggingFaceTB/SmolVLM-256M-Instruct")``.

    Model families. The path is intended for, and was checked against the
    transformers 5.23 sources of:

    - ``HuggingFaceTB/SmolVLM-256M-Instruct`` (Idefics3): multi-image turns are
      native. Its processor rescales every image's longest edge *up* to 2048 px
      and splits it into 512-px tiles plus a global view, 1088 tokens per frame,
      so 8 frames would overflow its 8192-token context. The scorer therefore
      passes ``do_image_splitting=False`` for this family: one 512-px view, 64
      tokens, per frame (how SmolVLM reads video frames).
    - ``facebook/Perception-LM-1B`` (the paper's model): each frame is sent as
      an *image* (``<|image|>`` placeholder), not as a video; the model accepts
      several images in one turn. Its default ``thumb+tile`` mode makes at
      least two 448-px tiles (a thumbnail plus tiles) per frame, 256 tokens
      each; ``processor_kwargs={"vision_input_type": "vanilla"}`` keeps one
      tile per frame, as its video path does. Its
      vision tower is a ``timm`` model, so the ``timm`` package must be
      installed. Its chat template starts with the BOS token, so the prompt is
      tokenized without adding a second one (as ``apply_chat_template(tokenize=True)`` does).
    - ``Qwen/Qwen2.5-VL-3B-Instruct``: multi-image turns are native; the
      processor returns ``mm_token_type_ids`` and ``image_grid_thw``, from which
      the model builds its 3-D (M-RoPE) positions itself, so no 1-D
      ``position_ids`` are passed. Frames are resized to multiples of 28 px
      with a floor of 56 x 56, so tiny frames give only 4 tokens each: set
      ``image_size`` (e.g. 224) for a useful resolution.

    Other families are tried, with guards that fail loudly rather than return
    a wrong answer: the processor must expand an image placeholder token, the
    rendered prompt must hold exactly one placeholder per frame, the prompt
    must fit the model's context, and after left padding the last position of
    every row must be a real token.

    For 1-D RoPE models (Idefics3, Perception-LM) ``position_ids`` are built
    from the attention mask, as ``generate`` does, so a left-padded clip gets
    the same positions as the same clip alone.
    """

    needs_frames = True

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        prompt: str = DEFAULT_PROMPT,
        num_frames: int = 8,
        image_size: int | tuple[int, int] | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        batch_size: int = 8,
        mission_in_prompt: bool = False,
        yes_tokens: Sequence[str] = DEFAULT_YES_TOKENS,
        no_tokens: Sequence[str] = DEFAULT_NO_TOKENS,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(model):
            raise TypeError(f"model must be a hub id or a local folder path, got {model!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        if isinstance(yes_tokens, str) or isinstance(no_tokens, str):
            raise TypeError("yes_tokens and no_tokens must be sequences of strings, not a single string")
        self.prompt = prompt
        self.num_frames = check_int("num_frames", num_frames)
        self.batch_size = check_int("batch_size", batch_size)
        self.image_size = resolve_image_size(image_size)
        self.mission_in_prompt = bool(mission_in_prompt)
        # Loading, padding side, image placeholder and the logits readout are
        # shared with the other VLM components (torchrl_vlm.hf_vlm).
        self.vlm = HFVisionLanguageModel(
            model,
            dtype=dtype,
            device=device,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
            processor_kwargs=processor_kwargs,
            owner="TransformersScorer",
            load_hint="use the ground-truth 'events' scorer (MiniGridEventScorer) instead",
        )
        self.yes_token_ids, self.yes_tokens = self.vlm.single_token_ids(yes_tokens, "yes_tokens")
        self.no_token_ids, self.no_tokens = self.vlm.single_token_ids(no_tokens, "no_tokens")
        shared = set(self.yes_token_ids.tolist()) & set(self.no_token_ids.tolist())
        if shared:
            raise ValueError(f"yes_tokens and no_tokens share token ids {sorted(shared)} for {self.model_name!r}")

    # ------------------------------------------------------------------ prompts
    def messages(self, num_images: int, mission: str | None = None) -> list[dict[str, Any]]:
        """One multi-image user turn: ``num_images`` image slots, then the question."""
        return [user_turn(num_images, self.build_prompt(mission))]

    # ------------------------------------------------------------------ the verdict cache
    def cache_identity(self) -> dict[str, Any]:
        """Who answers, for :class:`~torchrl_vlm.CachedScorer`: the model, its revision, and what changes a verdict."""
        return {
            "scorer": type(self).__name__,
            "model": self.model_name,
            # A hub download records its commit; a local folder has none (its path stands for it).
            "revision": getattr(self.model.config, "_commit_hash", None),
            "dtype": str(self.dtype),
            "num_frames": self.num_frames,
            "image_size": self.image_size,
            "yes_tokens": list(self.yes_tokens),
            "no_tokens": list(self.no_tokens),
            "processor_kwargs": self.processor_kwargs,
        }

    # ------------------------------------------------------------------ inputs
    def _images(self, frames: torch.Tensor, mask: torch.Tensor) -> list:
        return to_pil_images(frames[frame_indices(mask, self.num_frames)], self.image_size)

    def prepare(self, clips: TensorDictBase):
        """Processor inputs (``input_ids``, ``attention_mask``, pixel tensors...) for one batch of clips.

        Exposed so tests and users can inspect exactly what the model sees.
        """
        validate_clips(clips)
        frames, mask = clips.get("frames"), clip_frame_mask(clips)
        missions = self._missions(clips)
        images = [self._images(frames[b], mask[b]) for b in range(frames.shape[0])]
        conversations = [self.messages(len(imgs), m) for imgs, m in zip(images, missions, strict=True)]
        return self.vlm.prepare(
            conversations,
            images,
            item="clip",
            too_long_hint=(f"lower num_frames (now {self.num_frames}), image_size or the processor's tiling "
                           "(processor_kwargs)"),
        )

    # ------------------------------------------------------------------ scoring
    def _forward(self, inputs) -> torch.Tensor:
        logits = self.vlm.last_logits(inputs)
        yes = torch.logsumexp(logits[:, self.yes_token_ids.to(logits.device)], dim=-1)
        no = torch.logsumexp(logits[:, self.no_token_ids.to(logits.device)], dim=-1)
        # softmax's normaliser cancels in mass_yes / (mass_yes + mass_no), so this
        # is sigmoid(logsumexp(yes logits) - logsumexp(no logits)), stable in float32.
        return torch.sigmoid(yes - no)

    def __call__(self, clips: TensorDictBase) -> torch.Tensor:
        """P(yes) per clip, float32 ``[B]`` on CPU."""
        validate_clips(clips)
        n = clips.batch_size[0]
        out = []
        for start in range(0, n, self.batch_size):
            chunk = clips[start : start + self.batch_size]
            out.append(self._forward(self.prepare(chunk)).cpu())
        return check_scores(torch.cat(out), n, f"TransformersScorer({self.model_name!r})")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_name!r}, num_frames={self.num_frames}, batch_size={self.batch_size}, "
            f"device={str(self.device)!r}, dtype={self.dtype}, mission_in_prompt={self.mission_in_prompt})"
        )
