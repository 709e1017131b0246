"""A frozen Hugging Face VLM as a clip scorer: P(yes) from next-token logits (VLM-RB step 4).

:class:`TransformersScorer` shows a clip's frames to an image-text-to-text model
as one multi-image user turn, asks a Yes/No question, and reads the answer off
the logits of the first answer token. There is no text generation and no
parsing of free text: one forward pass per batch of clips gives

    P(yes) = sum_{t in Yes variants} p(t) / (sum_{t in Yes variants} p(t) + sum_{t in No variants} p(t)),

where ``p`` is the model's next-token distribution after the assistant prompt.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from torchrl_vlm.scoring.base import check_scores, validate_clips

__all__ = [
    "DEFAULT_PROMPT",
    "MISSION_TEMPLATE",
    "DEFAULT_YES_TOKENS",
    "DEFAULT_NO_TOKENS",
    "TransformersScorer",
    "frame_indices",
]

#: The paper's task-agnostic question.
DEFAULT_PROMPT = "Does this clip contain a clear instance of goal satisfaction anywhere in it? Answer Yes or No."
#: Prefix put before the question when ``mission_in_prompt=True`` (a goal-conditioned prompt).
MISSION_TEMPLATE = "The agent's mission: {mission}. "
DEFAULT_YES_TOKENS = ("Yes", " Yes", "yes", " yes", "YES")
DEFAULT_NO_TOKENS = ("No", " No", "no", " no", "NO")

# Families whose processor + chat template + forward were checked against this
# code path (transformers 5.23 sources). Others are tried, guarded by the
# run-time checks in `_prepare` (placeholder count, left padding).
_CHECKED_MODEL_TYPES = ("idefics3", "smolvlm", "perception_lm", "qwen2_vl", "qwen2_5_vl")

# Processor-call defaults per family (the user's processor_kwargs win).
# Idefics3/SmolVLM rescale every image's longest edge up to size["longest_edge"]
# (2048 px for SmolVLM-256M) and split it into max_image_size tiles (512 px) plus
# a global view: 17 x 64 = 1088 tokens per frame, so 8 frames overflow the
# model's 8192-token context. Without splitting a frame is one 512-px view (64
# tokens), which is also how SmolVLM reads video frames.
_FAMILY_PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "idefics3": {"do_image_splitting": False},
    "smolvlm": {"do_image_splitting": False},
}

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}


def frame_indices(mask: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Indices of at most ``num_frames`` real steps of one clip, evenly spaced, first and last included.

    ``mask`` is the clip's bool ``[L]`` mask. A clip with fewer real steps than
    ``num_frames`` gives all of them; a request for one frame gives the last real
    step (where a clip cut at success shows the goal).
    """
    real = torch.nonzero(mask, as_tuple=False).flatten()
    n = real.numel()
    if n == 0:
        raise ValueError("mask has no real step")
    k = min(num_frames, n)
    if k == 1:
        return real[-1:]
    # k <= n makes the spacing (n - 1) / (k - 1) >= 1, so rounded positions are distinct.
    pos = torch.linspace(0, n - 1, k).round().long()
    return real[pos]


def _resolve_device(device: Any) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be None, 'auto', 'cpu', 'cuda[:i]' or a torch.device, got {device!r}") from err


def _resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype | str:
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
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be None, 'auto', a floating torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}")


def _resolve_image_size(image_size: Any) -> tuple[int, int] | None:
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


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class TransformersScorer:
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
        if processor_kwargs is not None and not isinstance(processor_kwargs, dict):
            raise TypeError(f"processor_kwargs must be a dict or None, got {type(processor_kwargs).__name__}")
        self.model_name = str(model)
        self.prompt = prompt
        self.num_frames = _positive_int("num_frames", num_frames)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.image_size = _resolve_image_size(image_size)
        self.mission_in_prompt = bool(mission_in_prompt)
        self.device = _resolve_device(device)
        load_dtype = _resolve_dtype(dtype, self.device)

        self.processor, self.model = self._load(load_dtype, local_files_only, trust_remote_code)
        self.dtype = self.model.dtype
        self.model_type = getattr(self.model.config, "model_type", "unknown")
        self.processor_kwargs = {**_FAMILY_PROCESSOR_DEFAULTS.get(self.model_type, {}), **(processor_kwargs or {})}
        text_config = self.model.config.get_text_config()
        self.max_length = getattr(text_config, "max_position_embeddings", None)

        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"the processor of {self.model_name!r} has no tokenizer; TransformersScorer needs one")
        # Left padding puts every row's last real token at position -1, where
        # the single kept logit is read.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            # Pad ids are masked out, so any existing token will do.
            tokenizer.pad_token = tokenizer.eos_token
        self.image_token = getattr(self.processor, "image_token", None)
        if not self.image_token:
            raise ValueError(
                f"the processor of {self.model_name!r} ({type(self.processor).__name__}) has no image placeholder "
                "token; TransformersScorer needs a processor that expands one placeholder per image "
                f"(checked families: {', '.join(_CHECKED_MODEL_TYPES)})"
            )

        self.yes_token_ids, self.yes_tokens = self._single_token_ids(yes_tokens, "yes_tokens")
        self.no_token_ids, self.no_tokens = self._single_token_ids(no_tokens, "no_tokens")
        shared = set(self.yes_token_ids.tolist()) & set(self.no_token_ids.tolist())
        if shared:
            raise ValueError(f"yes_tokens and no_tokens share token ids {sorted(shared)} for {self.model_name!r}")

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
    def _load(self, dtype, local_files_only, trust_remote_code):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if local_files_only is not None:
            kwargs["local_files_only"] = bool(local_files_only)
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        try:
            processor = AutoProcessor.from_pretrained(self.model_name, **kwargs)
            model = AutoModelForImageTextToText.from_pretrained(self.model_name, dtype=dtype, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised with the advice users need
            hint = (
                "install the missing package" if isinstance(err, ImportError)
                else "pass a local folder holding the model (e.g. one built by "
                "torchrl_vlm.testing.make_tiny_vlm, or a snapshot downloaded beforehand), "
                "or use the ground-truth 'events' scorer (MiniGridEventScorer) instead"
            )
            where = " with HF_HUB_OFFLINE=1 (no hub access)" if offline else ""
            name = os.path.expanduser(self.model_name)
            if name.startswith(("/", "./", "../", "~")) and not os.path.isdir(name):
                reason = f"there is no folder {name!r}"
            else:
                reason = f"{type(err).__name__}: {str(err).strip().rstrip('.')}"
            raise OSError(f"TransformersScorer could not load model {self.model_name!r}{where}: {reason}. Hint: {hint}.") from err
        model.eval().requires_grad_(False)
        model.to(self.device)
        return processor, model

    def _single_token_ids(self, variants: Sequence[str], name: str) -> tuple[torch.Tensor, tuple[str, ...]]:
        tokenizer = self.processor.tokenizer
        ids: list[int] = []
        kept: list[str] = []
        for text in variants:
            if not isinstance(text, str) or not text:
                raise TypeError(f"{name} must hold non-empty strings, got {text!r}")
            enc = tokenizer.encode(text, add_special_tokens=False)
            # A multi-token spelling has no single next-token probability: drop it.
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(int(enc[0]))
                kept.append(text)
        if not ids:
            raise ValueError(
                f"none of {name}={tuple(variants)!r} is a single token for the tokenizer of {self.model_name!r}; "
                "pass spellings that encode to exactly one token"
            )
        vocab = self.model.get_output_embeddings().weight.shape[0] if self.model.get_output_embeddings() is not None else None
        if vocab is not None and max(ids) >= vocab:
            raise ValueError(f"{name} ids {ids} fall outside the output vocabulary ({vocab}) of {self.model_name!r}")
        return torch.tensor(ids, dtype=torch.long), tuple(kept)

    # ------------------------------------------------------------------ prompts
    def build_prompt(self, mission: str | None = None) -> str:
        """The text of the user turn: the question, preceded by the mission when ``mission_in_prompt``."""
        if not self.mission_in_prompt:
            return self.prompt
        if mission is None:
            raise ValueError("mission_in_prompt=True needs a mission string for every clip (clips['mission'])")
        return MISSION_TEMPLATE.format(mission=str(mission).strip().rstrip(".")) + self.prompt

    def messages(self, num_images: int, mission: str | None = None) -> list[dict[str, Any]]:
        """One multi-image user turn: ``num_images`` image slots, then the question."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
        content.append({"type": "text", "text": self.build_prompt(mission)})
        return [{"role": "user", "content": content}]

    def _missions(self, clips: TensorDictBase) -> list[str | None]:
        n = clips.batch_size[0]
        if not self.mission_in_prompt:
            return [None] * n
        if "mission" not in clips.keys():
            raise ValueError("mission_in_prompt=True but clips has no 'mission' entry")
        value = clips.get("mission")
        # NonTensorData (one mission for all) and NonTensorStack both list out per clip.
        value = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(value, (str, bytes)):
            value = [value] * n
        value = list(value)
        if len(value) != n:
            raise ValueError(f"clips['mission'] holds {len(value)} entries for {n} clips")
        out = []
        for m in value:
            # A per-step mission list: the mission is constant within an episode.
            while isinstance(m, (list, tuple)) and m:
                m = m[0]
            if isinstance(m, bytes):
                m = m.decode()
            if not isinstance(m, str):
                raise TypeError(f"clips['mission'] entries must be strings, got {type(m).__name__}")
            out.append(m)
        return out

    # ------------------------------------------------------------------ inputs
    def _images(self, frames: torch.Tensor, mask: torch.Tensor) -> list:
        from PIL import Image

        idx = frame_indices(mask, self.num_frames)
        arrays = frames[idx].cpu().numpy()
        images = []
        for arr in arrays:
            img = Image.fromarray(np.ascontiguousarray(arr))
            if self.image_size is not None:
                h, w = self.image_size
                enlarging = h * w >= img.height * img.width
                resample = Image.Resampling.NEAREST if enlarging else Image.Resampling.BILINEAR
                img = img.resize((w, h), resample=resample)
            images.append(img)
        return images

    def prepare(self, clips: TensorDictBase):
        """Processor inputs (``input_ids``, ``attention_mask``, pixel tensors...) for one batch of clips.

        Exposed so tests and users can inspect exactly what the model sees.
        """
        validate_clips(clips)
        frames, mask = clips.get("frames"), clips.get("mask")
        missions = self._missions(clips)
        images = [self._images(frames[b], mask[b]) for b in range(frames.shape[0])]
        conversations = [self.messages(len(imgs), m) for imgs, m in zip(images, missions)]
        try:
            texts = self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # noqa: BLE001
            raise ValueError(
                f"the chat template of {self.model_name!r} could not render a multi-image user turn: {err}"
            ) from err
        for text, imgs in zip(texts, images):
            found = text.count(self.image_token)
            if found != len(imgs):
                raise ValueError(
                    f"the chat template of {self.model_name!r} placed {found} {self.image_token!r} placeholders "
                    f"for {len(imgs)} frames; this model family needs special handling in TransformersScorer"
                )
        tokenizer = self.processor.tokenizer
        # A template that writes BOS itself must not get a second one from the tokenizer.
        bos = tokenizer.bos_token
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        inputs = self.processor(
            text=texts,
            images=images,
            padding=True,
            return_tensors="pt",
            add_special_tokens=add_special,
            **self.processor_kwargs,
        )
        attention_mask = inputs["attention_mask"]
        if self.max_length is not None and attention_mask.shape[1] > self.max_length:
            # Past the trained context the positions are out of range: garbage, or an index error.
            raise ValueError(
                f"a clip's prompt is {attention_mask.shape[1]} tokens, more than the {self.max_length}-token context "
                f"of {self.model_name!r}; lower num_frames (now {self.num_frames}), image_size or the processor's "
                "tiling (processor_kwargs)"
            )
        if not bool(attention_mask[:, -1].all()):
            raise ValueError(
                f"the processor of {self.model_name!r} did not left-pad the batch; the last position would be "
                "padding for some clips"
            )
        return inputs

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def _forward(self, inputs) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        for key, value in inputs.items():
            if torch.is_tensor(value):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            kwargs[key] = value
        if self._pass_position_ids:
            am = kwargs["attention_mask"].long()
            kwargs["position_ids"] = (am.cumsum(-1) - 1).clamp_min(0)
        if self._keep_kwarg is not None:
            kwargs[self._keep_kwarg] = 1
        if self._accepts_use_cache:
            kwargs["use_cache"] = False  # one pass, no decoding: a KV cache is wasted memory
        logits = self.model(**kwargs).logits[:, -1, :].float()
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
