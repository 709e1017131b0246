"""LVLM2P's VLM teacher: a distribution over a MiniGrid env's actions, read from a frozen VLM's logits.

In LVLM2P (PAPERS.md section 2) a vision-language model looks at the rendered
frame of each state and the mission and gives a probability over the actions;
the student (PPO/A2C) is regularised towards it with
``lambda * KL(pi_T(.|o) || pi_theta(.|s))`` and acts alone at test time.

The reference code asks Gemini for a text list of probabilities and parses it
with a regex (and then uses ``0.8 * one_hot(argmax)`` as the target). We do
better: the actions are listed under one-token answer labels ("A. turn left",
"B. turn right", ...), and the teacher distribution is the softmax of the
model's next-token logits at those labels, in one batched forward pass per
batch of states. Soft probabilities come out directly; nothing is generated or
parsed for the answer, and nothing can fail to parse.
"""
from __future__ import annotations

import math
import os
import string
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDictBase

from torchrl_vlm._checks import check_int
from torchrl_vlm.envs.minigrid_names import MINIGRID_ACTIONS, decode_mission
from torchrl_vlm.hf_vlm import (
    HFVisionLanguageModel,
    VLMBacked,
    resolve_image_size,
    text_turn,
    to_pil_images,
    user_turn,
)

__all__ = [
    "DEFAULT_ANALYSIS_PROMPT",
    "DEFAULT_TEACHER_PROMPT",
    "VLMTeacher",
]

_SCENE = "This is a top-down view of a grid world. The agent is the red triangle; it points the way it faces.\n"

#: The action question. ``{mission}`` is replaced by the state's mission and
#: ``{actions}`` by the labelled action list ("A. turn left\nB. turn right...").
DEFAULT_TEACHER_PROMPT = (
    _SCENE + "Mission: {mission}\n"
    "Actions:\n{actions}\n"
    "Which action should the agent take next to complete the mission? Answer with the letter of the best action."
)

#: The first turn of two-stage prompting: a short scene analysis, generated.
DEFAULT_ANALYSIS_PROMPT = (
    _SCENE + "Mission: {mission}\n"
    "Describe the scene briefly: where the agent is and which way it faces, and where the objects that the "
    "mission mentions are relative to the agent."
)


def _template_fields(name: str, template: Any, allowed: set[str], required: set[str]) -> set[str]:
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"{name} must be a non-empty string, got {template!r}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise ValueError(f"{name} is not a valid format string: {err}") from err
    unknown = fields - allowed
    if unknown:
        raise ValueError(f"{name} has unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    missing = required - fields
    if missing:
        raise ValueError(f"{name} must contain the fields {sorted('{' + f + '}' for f in missing)}")
    return fields


def _flatten(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value]


class VLMTeacher(VLMBacked):
    """LVLM2P's teacher: a frozen VLM's probability over the env's actions for each state's frame.

    Call it on a TensorDict of states, ``teacher(td) -> probs``:

    - ``td["pixels"]``: uint8 ``[*batch, H, W, 3]``, the rendered frame of each state;
    - ``td["mission"]``: the mission as UTF-8 bytes, uint8 ``[*batch, K]``
      (``make_minigrid_env``'s encoding, decoded with
      :func:`~torchrl_vlm.envs.minigrid_names.decode_mission`), or a non-tensor string
      entry (one string for all states, or one per state);
    - ``probs``: float32 ``[*batch, n_actions]``, on ``td["pixels"]``'s device,
      each row a distribution over ``action_names`` in action-index order.

    An unbatched env output (``env.reset()``) is accepted as is: its ``probs``
    is ``[n_actions]``.

    How the distribution is read (LVLM2P's teacher distribution from logits).
    The prompt shows the frame, states the mission, lists the actions under
    one-token labels ("A. turn left", "B. turn right", ...) and asks for the
    letter of the best action. One forward pass per batch of states (left
    padding, ``logits_to_keep=1``) gives the next-token logits ``z`` after the
    assistant prompt, and

        pi_T(a) = softmax_a( logsumexp_{t in variants(label_a)} z_t / temperature ),

    i.e. the model's probability mass on each label (summed over its one-token
    spellings such as "A" and " A"), renormalised over the labels and sharpened
    or flattened by ``temperature``. This does better than the reference code,
    which asks for a text list of probabilities and parses it with a regex:
    soft probabilities come straight from the logits, nothing is generated for
    the answer, and no reply can fail to parse.

    Args:
        model: a Hugging Face hub id or local folder of an image-text-to-text
            model (see :class:`~torchrl_vlm.hf_vlm.HFVisionLanguageModel`;
            e.g. ``"HuggingFaceTB/SmolVLM-256M-Instruct"``).
        action_names: the env's actions in index order (MiniGrid's 7 by default,
            :data:`MINIGRID_ACTIONS`); Dynamic-Obstacles offers only the first
            three (``MINIGRID_ACTIONS[:3]``), as ``PlannerTeacher(num_actions=3)``.
        prompt: the question, a format string with ``{actions}`` (required) and
            ``{mission}`` (optional; when present every state needs a mission).
        labels: one answer label per action, each a single token for the
            model's tokenizer; ``None`` gives "A", "B", ... . Each label is read
            with the spellings ``label`` and ``" " + label`` that are single
            tokens; a label with none raises a ``ValueError`` naming the model.
        temperature: divides the label logits before the softmax; lower is sharper.
        two_stage: the paper's two-stage prompting. First the model *generates*
            a short scene analysis (``analysis_prompt``, at most
            ``max_new_tokens`` tokens, greedy), which is then put in the
            conversation as the assistant's answer before the action question,
            whose logits are read as above. Cost: one ``generate`` plus one
            forward pass per state instead of one forward pass; the image is
            encoded twice and the analysis is decoded one token at a time.
            Measured on CPU (1 torch thread, best of 7) with the tiny test
            model (``make_tiny_vlm``) on batches of 8 GoToDoor-6x6 frames:
            one-stage 2.3-2.6 ms per state; two-stage 8.3 ms (3.2-3.6x) with
            ``max_new_tokens=16``, 10-11 ms (4.2-4.5x) with 32 and 15 ms
            (6.0-6.5x) with the default 64 (the random model rarely stops
            early, so every decoding step runs). The ratio grows with
            ``max_new_tokens``, and more so for real models, where each
            decoding step costs a full pass through the language model.
        analysis_prompt: the first-turn question of two-stage prompting, a
            format string with optional ``{mission}``.
        max_new_tokens: the longest scene analysis, in tokens.
        device, dtype: where and in which precision the model runs (see
            :class:`~torchrl_vlm.hf_vlm.HFVisionLanguageModel`).
        batch_size: states per forward pass; larger inputs are chunked.
        image_size: ``None`` (frames as rendered), an int or ``(height, width)``:
            frames are resized before the processor sees them (nearest-neighbour
            when enlarging, which keeps pixel-art grids sharp; the processor's
            own resizing would blur them).
        local_files_only: ``None`` follows ``HF_HUB_OFFLINE``.
        trust_remote_code: passed to ``from_pretrained``.
        processor_kwargs: extra keyword arguments for the processor call.

    The constructor loads the model, so in a separate teacher process pass a
    picklable factory, e.g.
    ``functools.partial(VLMTeacher, "HuggingFaceTB/SmolVLM-256M-Instruct", temperature=0.5)``.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        action_names: Sequence[str] = MINIGRID_ACTIONS,
        prompt: str = DEFAULT_TEACHER_PROMPT,
        labels: Sequence[str] | None = None,
        temperature: float = 1.0,
        two_stage: bool = False,
        analysis_prompt: str = DEFAULT_ANALYSIS_PROMPT,
        max_new_tokens: int = 64,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 8,
        image_size: int | tuple[int, int] | None = None,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(model):
            raise TypeError(f"model must be a hub id or a local folder path, got {model!r}")
        if isinstance(action_names, str) or not isinstance(action_names, Sequence):
            raise TypeError(f"action_names must be a sequence of strings, got {action_names!r}")
        action_names = tuple(action_names)
        if len(action_names) < 2:
            raise ValueError(f"action_names needs at least 2 actions, got {action_names!r}")
        if not all(isinstance(a, str) and a.strip() for a in action_names):
            raise ValueError(f"action_names must hold non-empty strings, got {action_names!r}")
        if labels is None:
            if len(action_names) > 26:
                raise ValueError(f"{len(action_names)} actions are more than 26 letters; pass labels")
            labels = tuple(string.ascii_uppercase[: len(action_names)])
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise TypeError(f"labels must be None or a sequence of strings, got {labels!r}")
        labels = tuple(labels)
        if len(labels) != len(action_names):
            raise ValueError(f"labels has {len(labels)} entries for {len(action_names)} actions")
        if not all(isinstance(label, str) and label.strip() == label and label for label in labels):
            raise ValueError(f"labels must be non-empty strings without surrounding spaces, got {labels!r}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct, got {labels!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a number, got {temperature!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        fields = _template_fields("prompt", prompt, {"mission", "actions"}, {"actions"})
        analysis_fields = _template_fields("analysis_prompt", analysis_prompt, {"mission"}, set())

        self.action_names = action_names
        self.labels = labels
        self.prompt = prompt
        self.temperature = float(temperature)
        self.two_stage = bool(two_stage)
        self.analysis_prompt = analysis_prompt
        self.max_new_tokens = check_int("max_new_tokens", max_new_tokens)
        self.batch_size = check_int("batch_size", batch_size)
        self.image_size = resolve_image_size(image_size)
        self.needs_mission = "mission" in fields or (self.two_stage and "mission" in analysis_fields)
        #: The scene analyses of the last call with ``two_stage=True`` (flat, one per state).
        self.last_analyses: list[str] | None = None

        self.vlm = HFVisionLanguageModel(
            model,
            dtype=dtype,
            device=device,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
            processor_kwargs=processor_kwargs,
            owner="VLMTeacher",
            load_hint="use the exact PlannerTeacher (teacher=planner in the recipe) instead",
        )
        self.label_token_ids, self.label_variants = self._resolve_labels()
        # [n_actions, max_variants] ids, padded with the first variant and masked.
        width = max(len(ids) for ids in self.label_token_ids)
        self._label_index = torch.tensor([ids + ids[:1] * (width - len(ids)) for ids in self.label_token_ids])
        self._label_mask = torch.tensor([[i < len(ids) for i in range(width)] for ids in self.label_token_ids])

    @property
    def n_actions(self) -> int:
        return len(self.action_names)

    # ------------------------------------------------------------------ labels
    def _resolve_labels(self) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[str, ...], ...]]:
        """Single-token ids of each label's spellings (``"A"``, ``" A"``), checked to be distinct across labels."""
        all_ids: list[tuple[int, ...]] = []
        all_kept: list[tuple[str, ...]] = []
        owner: dict[int, str] = {}
        for label in self.labels:
            variants = (label, " " + label)
            try:
                ids, kept = self.vlm.single_token_ids(variants, f"label {label!r}")
            except ValueError as err:
                raise ValueError(
                    f"label {label!r} is not a single token for the tokenizer of {self.model_name!r} "
                    f"(tried {variants!r}); pass labels that are"
                ) from err
            for i in ids.tolist():
                if i in owner:
                    raise ValueError(
                        f"labels {owner[i]!r} and {label!r} share token id {i} for the tokenizer of {self.model_name!r}"
                    )
                owner[i] = label
            all_ids.append(tuple(ids.tolist()))
            all_kept.append(kept)
        return tuple(all_ids), tuple(all_kept)

    # ------------------------------------------------------------------ prompts
    def action_list(self) -> str:
        """The labelled action list: ``"A. turn left\\nB. turn right\\n..."``."""
        return "\n".join(f"{label}. {name}" for label, name in zip(self.labels, self.action_names, strict=True))

    def build_prompt(self, mission: str | None = None) -> str:
        """The text of the action question for one state."""
        if self.needs_mission and mission is None:
            raise ValueError("the prompt has a {mission} field: every state needs a mission (td['mission'])")
        return self.prompt.format(mission=str(mission or "").strip(), actions=self.action_list())

    def build_analysis_prompt(self, mission: str | None = None) -> str:
        """The text of the first (scene analysis) turn of two-stage prompting."""
        return self.analysis_prompt.format(mission=str(mission or "").strip())

    def messages(self, mission: str | None = None, analysis: str | None = None) -> list[dict[str, Any]]:
        """The conversation for one state: the frame and the action question, or,
        given a scene ``analysis``, the frame and the analysis question, the
        analysis as the assistant's answer, then the action question."""
        if analysis is None:
            return [user_turn(1, self.build_prompt(mission))]
        return [
            user_turn(1, self.build_analysis_prompt(mission)),
            text_turn("assistant", analysis),
            text_turn("user", self.build_prompt(mission)),
        ]

    # ------------------------------------------------------------------ inputs
    def _states(self, td: TensorDictBase) -> tuple[torch.Size, torch.Tensor, list[str | None]]:
        """Checks ``td`` and returns the batch shape, the frames flattened to ``[N, H, W, 3]`` and N missions."""
        if not isinstance(td, TensorDictBase):
            raise TypeError(f"td must be a TensorDict, got {type(td).__name__}")
        pixels = td.get("pixels", None)
        if pixels is None:
            raise ValueError("td has no 'pixels' entry (uint8 [*batch, H, W, 3]); build the env with render=True")
        if not torch.is_tensor(pixels) or pixels.dtype != torch.uint8:
            got = getattr(pixels, "dtype", type(pixels).__name__)
            raise TypeError(f"td['pixels'] must be a uint8 tensor, got {got}")
        if pixels.ndim < 3 or pixels.shape[-1] != 3 or pixels.shape[-3] < 1 or pixels.shape[-2] < 1:
            raise ValueError(f"td['pixels'] must be [*batch, H, W, 3], got {list(pixels.shape)}")
        batch = pixels.shape[:-3]
        frames = pixels.reshape(-1, *pixels.shape[-3:])
        n = frames.shape[0]
        if not self.needs_mission or n == 0:
            return batch, frames, [None] * n
        if "mission" not in td.keys():
            raise ValueError("td has no 'mission' entry, which the prompt's {mission} field needs")
        value = td.get("mission")
        if torch.is_tensor(value):
            if value.dtype != torch.uint8:
                raise TypeError(f"td['mission'] as a tensor must be uint8 UTF-8 bytes, got {value.dtype}")
            if value.ndim != len(batch) + 1 or value.shape[:-1] != batch:
                raise ValueError(
                    f"td['mission'] must be uint8 [*batch, K] with the batch {list(batch)} of td['pixels'], "
                    f"got {list(value.shape)}"
                )
            missions = decode_mission(value.reshape(n, value.shape[-1]))
        else:
            # NonTensorData (one mission for all) and NonTensorStack (one per state).
            value = value.tolist() if hasattr(value, "tolist") else getattr(value, "data", value)
            missions = _flatten(value)
            if len(missions) == 1:
                missions = missions * n
            if len(missions) != n:
                raise ValueError(f"td['mission'] holds {len(missions)} missions for {n} states")
        out = []
        for m in missions:
            if isinstance(m, bytes):
                m = m.decode("utf-8")
            if not isinstance(m, str):
                raise TypeError(f"td['mission'] entries must be strings, got {type(m).__name__}")
            out.append(m)
        return batch, frames, out

    def prepare(self, td: TensorDictBase, analyses: Sequence[str] | None = None):
        """Processor inputs of the action question for a batch of states (all in one forward pass).

        ``analyses`` (one per state) gives the second stage of two-stage
        prompting. Exposed so tests and users can inspect what the model sees.
        """
        _, frames, missions = self._states(td)
        return self._prepare(frames, missions, analyses)

    def _prepare(self, frames, missions, analyses=None):
        images = [[img] for img in to_pil_images(frames, self.image_size)]
        if analyses is None:
            conversations = [self.messages(m) for m in missions]
        else:
            conversations = [self.messages(m, a) for m, a in zip(missions, analyses, strict=True)]
        return self.vlm.prepare(conversations, images, item="state", too_long_hint="lower image_size or max_new_tokens")

    def _analyse(self, frames, missions) -> list[str]:
        images = [[img] for img in to_pil_images(frames, self.image_size)]
        conversations = [[user_turn(1, self.build_analysis_prompt(m))] for m in missions]
        inputs = self.vlm.prepare(conversations, images, item="state")
        texts = self.vlm.generate_text(inputs, self.max_new_tokens)
        # The analysis goes back into a prompt that must hold one image placeholder.
        return [" ".join(t.replace(self.image_token, " ").split()) for t in texts]

    def scene_analyses(self, td: TensorDictBase) -> list[str]:
        """The generated first-stage scene analysis of each state (flat list, greedy decoding)."""
        _, frames, missions = self._states(td)
        out: list[str] = []
        for start in range(0, frames.shape[0], self.batch_size):
            out += self._analyse(frames[start : start + self.batch_size], missions[start : start + self.batch_size])
        return out

    # ------------------------------------------------------------------ readout
    def _label_logits(self, inputs) -> torch.Tensor:
        logits = self.vlm.last_logits(inputs)  # [B, V] float32
        index = self._label_index.to(logits.device)
        per_variant = logits[:, index]  # [B, n_actions, max_variants]
        per_variant = per_variant.masked_fill(~self._label_mask.to(logits.device), float("-inf"))
        # log of the probability mass on each label, up to the shared normaliser.
        return torch.logsumexp(per_variant, dim=-1)

    def label_logits(self, td: TensorDictBase) -> torch.Tensor:
        """Float32 ``[*batch, n_actions]``: log of the model's next-token mass on each action's label
        (up to a per-state constant), before the temperature. ``log_softmax`` of it is the teacher's
        log-probability at ``temperature=1``."""
        batch, frames, missions = self._states(td)
        n = frames.shape[0]
        out = []
        analyses: list[str] = []
        for start in range(0, n, self.batch_size):
            chunk, chunk_missions = frames[start : start + self.batch_size], missions[start : start + self.batch_size]
            chunk_analyses = None
            if self.two_stage:
                chunk_analyses = self._analyse(chunk, chunk_missions)
                analyses += chunk_analyses
            out.append(self._label_logits(self._prepare(chunk, chunk_missions, chunk_analyses)).cpu())
        if self.two_stage:
            self.last_analyses = analyses
        logits = torch.cat(out) if out else torch.empty(0, self.n_actions)
        return logits.reshape(*batch, self.n_actions).to(td.get("pixels").device)

    def __call__(self, td: TensorDictBase) -> torch.Tensor:
        """The teacher distribution, float32 ``[*batch, n_actions]``, rows summing to 1."""
        probs = torch.softmax(self.label_logits(td) / self.temperature, dim=-1)
        if not bool(torch.isfinite(probs).all()):
            raise RuntimeError(f"{self!r} produced non-finite probabilities")
        return probs

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_name!r}, n_actions={self.n_actions}, temperature={self.temperature}, "
            f"two_stage={self.two_stage}, batch_size={self.batch_size}, device={str(self.device)!r}, "
            f"dtype={self.dtype})"
        )
