"""A frozen Hugging Face vision-language model read through its next-token logits.

This is the machinery that the VLM components of the project share:
:class:`~torchrl_vlm.scoring.transformers.TransformersScorer` (VLM-RB step 4,
P(yes) of a clip) and :class:`~torchrl_vlm.teacher.vlm.VLMTeacher` (LVLM2P's
teacher, a distribution over actions). Both show images and a question to an
image-text-to-text model and read the answer off the logits of the *first*
answer token, so one forward pass per batch answers a whole batch, without
generating or parsing text.

:class:`HFVisionLanguageModel` holds the processor and the model and does the
parts where mistakes silently give wrong answers:

- loading any ``AutoModelForImageTextToText`` with an ``OSError`` that names the
  model and says what to do when it cannot be found (offline machines);
- answer strings resolved to single-token ids;
- chat turns rendered with the model's template and tokenized with **left
  padding**, so the last position of every row is its last real token, with
  guards: one image placeholder per image, a prompt that fits the context, no
  double BOS, per-family processor defaults (:data:`FAMILY_PROCESSOR_DEFAULTS`);
- one forward pass with ``logits_to_keep=1`` (``[B, V]`` float32 logits of the
  next token), with 1-D ``position_ids`` from the attention mask where the
  model uses 1-D RoPE, so a left-padded row gets the positions it would get alone;
- greedy generation (for two-stage prompting).

The module-level helpers (device, dtype and image-size parsing, frame to PIL
conversion, chat turns) are the argument handling that the components share.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from torchrl_vlm._checks import check_int

__all__ = [
    "CHECKED_MODEL_TYPES",
    "DTYPES",
    "FAMILY_PROCESSOR_DEFAULTS",
    "HFVisionLanguageModel",
    "VLMBacked",
    "resolve_device",
    "resolve_dtype",
    "resolve_image_size",
    "text_turn",
    "to_pil_images",
    "user_turn",
]

#: Families whose processor + chat template + forward were checked against this
#: code path (transformers 5.23 sources). Others are tried, guarded by the
#: run-time checks in :meth:`HFVisionLanguageModel.prepare` (placeholder count,
#: context length, left padding).
CHECKED_MODEL_TYPES = ("idefics3", "smolvlm", "perception_lm", "qwen2_vl", "qwen2_5_vl")

#: Processor-call defaults per family (the user's ``processor_kwargs`` win).
#: Idefics3/SmolVLM rescale every image's longest edge up to size["longest_edge"]
#: (2048 px for SmolVLM-256M) and split it into max_image_size tiles (512 px) plus
#: a global view: 17 x 64 = 1088 tokens per frame, so 8 frames overflow the
#: model's 8192-token context. Without splitting a frame is one 512-px view (64
#: tokens), which is also how SmolVLM reads video frames.
FAMILY_PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "idefics3": {"do_image_splitting": False},
    "smolvlm": {"do_image_splitting": False},
}

#: Accepted dtype names.
DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}


# ---------------------------------------------------------------------- arguments
def resolve_device(device: Any) -> torch.device:
    """``None``/``"auto"`` (CUDA if available, else CPU) or anything ``torch.device`` takes."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be None, 'auto', 'cpu', 'cuda[:i]' or a torch.device, got {device!r}") from err


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype | str:
    """The dtype to load the weights in: ``None`` picks bf16/fp16 on CUDA and float32 on CPU."""
    if dtype is None:
        # bf16 halves memory and is what the checkpoints ship in; on CPU it is
        # slow and lossy, so float32 there.
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype == "auto":
        return "auto"  # the checkpoint's own dtype
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be None, 'auto', a floating torch.dtype or one of {sorted(DTYPES)}, got {dtype!r}")


def resolve_image_size(image_size: Any) -> tuple[int, int] | None:
    """``None``, a positive int (square side) or ``(height, width)`` as ``(h, w)`` or ``None``."""
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool) and image_size > 0:
        return (image_size, image_size)
    if (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_size)
    ):
        return (int(image_size[0]), int(image_size[1]))
    raise ValueError(f"image_size must be None, a positive int or (height, width), got {image_size!r}")


def to_pil_images(frames: torch.Tensor, image_size: tuple[int, int] | None = None) -> list:
    """uint8 ``[N, H, W, 3]`` frames as PIL images, resized to ``image_size = (h, w)`` if given.

    Enlarging uses nearest-neighbour (pixel-art grids stay sharp), shrinking bilinear.
    """
    from PIL import Image

    arrays = frames.cpu().numpy() if torch.is_tensor(frames) else np.asarray(frames)
    images = []
    for arr in arrays:
        img = Image.fromarray(np.ascontiguousarray(arr))
        if image_size is not None:
            h, w = image_size
            enlarging = h * w >= img.height * img.width
            resample = Image.Resampling.NEAREST if enlarging else Image.Resampling.BILINEAR
            img = img.resize((w, h), resample=resample)
        images.append(img)
    return images


def user_turn(num_images: int, text: str) -> dict[str, Any]:
    """One user turn: ``num_images`` image slots, then ``text``."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def text_turn(role: str, text: str) -> dict[str, Any]:
    """A text-only turn (e.g. an assistant's earlier answer, or a follow-up question)."""
    return {"role": role, "content": [{"type": "text", "text": text}]}


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


# ---------------------------------------------------------------------- the model
class HFVisionLanguageModel:
    """A frozen Hugging Face image-text-to-text model, its processor, and a logits readout.

    Args:
        model: a hub id or a local folder, loaded with ``AutoProcessor`` and
            ``AutoModelForImageTextToText`` (frozen, eval mode, on ``device``).
        dtype: ``None`` (bf16/fp16 on CUDA, float32 on CPU), ``"auto"`` (the
            checkpoint's dtype), a floating ``torch.dtype`` or its name.
        device: ``None``/``"auto"`` (CUDA if available, else CPU) or any torch device.
        local_files_only: ``None`` follows ``HF_HUB_OFFLINE``; ``True`` never
            reaches the hub.
        trust_remote_code: passed to ``from_pretrained``.
        processor_kwargs: extra keyword arguments for every processor call;
            they override :data:`FAMILY_PROCESSOR_DEFAULTS`.
        owner: the name of the component using the model, used in error messages.
        load_hint: what to suggest, besides a local folder, when loading fails
            (e.g. a ground-truth stand-in).

    Device and dtype are checked before anything is loaded, so a bad argument
    fails fast.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
        owner: str = "HFVisionLanguageModel",
        load_hint: str | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(model):
            raise TypeError(f"model must be a hub id or a local folder path, got {model!r}")
        if processor_kwargs is not None and not isinstance(processor_kwargs, dict):
            raise TypeError(f"processor_kwargs must be a dict or None, got {type(processor_kwargs).__name__}")
        self.model_name = str(model)
        self.owner = owner
        self.device = resolve_device(device)
        load_dtype = resolve_dtype(dtype, self.device)

        self.processor, self.model = self._load(load_dtype, local_files_only, trust_remote_code, load_hint)
        self.dtype = self.model.dtype
        self.model_type = getattr(self.model.config, "model_type", "unknown")
        self.processor_kwargs = {**FAMILY_PROCESSOR_DEFAULTS.get(self.model_type, {}), **(processor_kwargs or {})}
        text_config = self.model.config.get_text_config()
        self.max_length = getattr(text_config, "max_position_embeddings", None)

        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"the processor of {self.model_name!r} has no tokenizer; {owner} needs one")
        # Left padding puts every row's last real token at position -1, where
        # the single kept logit is read.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            # Pad ids are masked out, so any existing token will do.
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.image_token = getattr(self.processor, "image_token", None)
        if not self.image_token:
            raise ValueError(
                f"the processor of {self.model_name!r} ({type(self.processor).__name__}) has no image placeholder "
                f"token; {owner} needs a processor that expands one placeholder per image "
                f"(checked families: {', '.join(CHECKED_MODEL_TYPES)})"
            )

        params = inspect.signature(self.model.forward).parameters
        # Keep only the last position's logits: [B, 1, V] instead of [B, T, V].
        if "logits_to_keep" in params:
            self._keep_kwarg = "logits_to_keep"
        elif "num_logits_to_keep" in params:  # older remote-code models
            self._keep_kwarg = "num_logits_to_keep"
        else:  # full logits, sliced at [:, -1] after the forward pass
            self._keep_kwarg = None
        self._accepts_use_cache = "use_cache" in params
        # M-RoPE models (Qwen2-VL family) compute their 3-D positions from the
        # attention mask themselves; a 1-D position_ids would override them.
        inner = getattr(self.model, "model", None)
        self._pass_position_ids = "position_ids" in params and not (
            hasattr(self.model, "get_rope_index") or hasattr(inner, "get_rope_index")
        )

    # ------------------------------------------------------------------ loading
    def _load(self, dtype, local_files_only, trust_remote_code, load_hint):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if local_files_only is not None:
            kwargs["local_files_only"] = bool(local_files_only)
        try:
            processor = AutoProcessor.from_pretrained(self.model_name, **kwargs)
            model = AutoModelForImageTextToText.from_pretrained(self.model_name, dtype=dtype, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised with the advice users need
            if isinstance(err, ImportError):
                hint = "install the missing package"
            else:
                hint = (
                    "pass a local folder holding the model (e.g. one built by "
                    "torchrl_vlm.testing.make_tiny_vlm, or a snapshot downloaded beforehand)"
                )
                if load_hint:
                    hint += f", or {load_hint}"
            where = " with HF_HUB_OFFLINE=1 (no hub access)" if _hub_offline() else ""
            name = os.path.expanduser(self.model_name)
            if name.startswith(("/", "./", "../", "~")) and not os.path.isdir(name):
                reason = f"there is no folder {name!r}"
            else:
                reason = f"{type(err).__name__}: {str(err).strip().rstrip('.')}"
            raise OSError(
                f"{self.owner} could not load model {self.model_name!r}{where}: {reason}. Hint: {hint}.") from err
        model.eval().requires_grad_(False)
        model.to(self.device)
        return processor, model

    # ------------------------------------------------------------------ answers
    def single_token_ids(self, variants: Sequence[str], name: str) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Ids of the spellings in ``variants`` that encode to exactly one token, and those spellings.

        Multi-token spellings have no single next-token probability and are
        dropped; duplicates count once. A ``ValueError`` naming ``name`` and the
        model is raised when none is left.
        """
        if isinstance(variants, str):
            raise TypeError(f"{name} must be a sequence of strings, not a single string")
        ids: list[int] = []
        kept: list[str] = []
        for text in variants:
            if not isinstance(text, str) or not text:
                raise TypeError(f"{name} must hold non-empty strings, got {text!r}")
            enc = self.tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(int(enc[0]))
                kept.append(text)
        if not ids:
            raise ValueError(
                f"none of {name}={tuple(variants)!r} is a single token for the tokenizer of {self.model_name!r}; "
                "pass spellings that encode to exactly one token"
            )
        out = self.model.get_output_embeddings()
        vocab = out.weight.shape[0] if out is not None else None
        if vocab is not None and max(ids) >= vocab:
            raise ValueError(f"{name} ids {ids} fall outside the output vocabulary ({vocab}) of {self.model_name!r}")
        return torch.tensor(ids, dtype=torch.long), tuple(kept)

    # ------------------------------------------------------------------ inputs
    def render(self, conversations: Sequence[list[dict[str, Any]]], num_images: Sequence[int]) -> list[str]:
        """The chat template applied to each conversation (with the assistant prompt), checked.

        Each rendered text must hold exactly ``num_images[i]`` image placeholders.
        """
        try:
            texts = self.processor.apply_chat_template(list(conversations), add_generation_prompt=True, tokenize=False)
        except Exception as err:  # noqa: BLE001
            raise ValueError(
                f"the chat template of {self.model_name!r} could not render a multi-image user turn: {err}"
            ) from err
        if isinstance(texts, str):
            texts = [texts]
        for text, n in zip(texts, num_images, strict=True):
            found = text.count(self.image_token)
            if found != n:
                raise ValueError(
                    f"the chat template of {self.model_name!r} placed {found} {self.image_token!r} placeholders "
                    f"for {n} frames; this model family needs special handling in {self.owner}"
                )
        return texts

    def prepare(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        images: Sequence[list],
        *,
        item: str = "prompt",
        too_long_hint: str = "lower image_size or the processor's tiling (processor_kwargs)",
        answer_prefix: str = "",
    ):
        """Left-padded processor inputs (``input_ids``, ``attention_mask``, pixel tensors...) for a batch.

        ``conversations[i]`` is a chat (a list of turns) that shows the PIL
        images ``images[i]`` in order. ``item`` names one row in error messages
        (``"clip"``, ``"state"``), ``too_long_hint`` says how to shorten a
        prompt past the model's context. ``answer_prefix`` is written after the
        assistant prompt: the model's answer goes on from it.
        """
        if len(conversations) != len(images):
            raise ValueError(f"{len(conversations)} conversations for {len(images)} image lists")
        texts = [t + answer_prefix for t in self.render(conversations, [len(imgs) for imgs in images])]
        # A template that writes BOS itself must not get a second one from the tokenizer.
        bos = self.tokenizer.bos_token
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        inputs = self.processor(
            text=texts,
            images=[list(imgs) for imgs in images],
            padding=True,
            return_tensors="pt",
            add_special_tokens=add_special,
            **self.processor_kwargs,
        )
        attention_mask = inputs["attention_mask"]
        if self.max_length is not None and attention_mask.shape[1] > self.max_length:
            # Past the trained context the positions are out of range: garbage, or an index error.
            raise ValueError(
                f"a {item}'s prompt is {attention_mask.shape[1]} tokens, more than the {self.max_length}-token context "
                f"of {self.model_name!r}; {too_long_hint}"
            )
        if not bool(attention_mask[:, -1].all()):
            raise ValueError(
                f"the processor of {self.model_name!r} did not left-pad the batch; the last position would be "
                f"padding for some {item}s"
            )
        return inputs

    def to_model(self, inputs) -> dict[str, Any]:
        """``inputs`` as keyword arguments on the model's device, floating tensors in its dtype."""
        kwargs: dict[str, Any] = {}
        for key, value in inputs.items():
            if torch.is_tensor(value):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            kwargs[key] = value
        return kwargs

    # ------------------------------------------------------------------ model calls
    @torch.inference_mode()
    def last_logits(self, inputs) -> torch.Tensor:
        """Float32 ``[B, V]`` next-token logits after each (left-padded) row: one forward pass."""
        kwargs = self.to_model(inputs)
        if self._pass_position_ids:
            am = kwargs["attention_mask"].long()
            kwargs["position_ids"] = (am.cumsum(-1) - 1).clamp_min(0)
        if self._keep_kwarg is not None:
            kwargs[self._keep_kwarg] = 1
        if self._accepts_use_cache:
            kwargs["use_cache"] = False  # one pass, no decoding: a KV cache is wasted memory
        return self.model(**kwargs).logits[:, -1, :].float()

    @torch.inference_mode()
    def generate_text(self, inputs, max_new_tokens: int) -> list[str]:
        """Greedy continuations of each (left-padded) row, decoded without special tokens."""
        kwargs = self.to_model(inputs)
        prompt_len = kwargs["input_ids"].shape[1]
        out = self.model.generate(
            **kwargs,
            max_new_tokens=check_int("max_new_tokens", max_new_tokens),
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        sequences = out.sequences if hasattr(out, "sequences") else out
        return self.tokenizer.batch_decode(sequences[:, prompt_len:].cpu(), skip_special_tokens=True)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_name!r}, model_type={self.model_type!r}, "
            f"device={str(self.device)!r}, dtype={self.dtype})"
        )


class VLMBacked:
    """Mixin for components holding an :class:`HFVisionLanguageModel` as ``self.vlm``.

    Exposes the usual attributes (``model``, ``processor``, ``dtype``,
    ``max_length``...) so that users and tests can reach the model directly.
    """

    vlm: HFVisionLanguageModel

    @property
    def model_name(self) -> str:
        return self.vlm.model_name

    @property
    def model(self):
        return self.vlm.model

    @property
    def processor(self):
        return self.vlm.processor

    @property
    def tokenizer(self):
        return self.vlm.tokenizer

    @property
    def device(self) -> torch.device:
        return self.vlm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vlm.dtype

    @property
    def model_type(self) -> str:
        return self.vlm.model_type

    @property
    def processor_kwargs(self) -> dict[str, Any]:
        return self.vlm.processor_kwargs

    @property
    def image_token(self) -> str:
        return self.vlm.image_token

    @property
    def max_length(self) -> int | None:
        return self.vlm.max_length

    @max_length.setter
    def max_length(self, value: int | None) -> None:
        self.vlm.max_length = value
