"""Tiny offline models for tests and benchmarks (no network, no downloaded weights).

These machines have no model hub and no GPU, yet the VLM scoring path must be
exercised end to end. :func:`make_tiny_vlm` builds a randomly initialised but
architecturally real **Idefics3** model (the SmolVLM architecture) and saves it
with ``save_pretrained``, so tests and benchmarks load it through the very
``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained`` path that
users take with ``HuggingFaceTB/SmolVLM-256M-Instruct``:

- the tokenizer is a byte-level BPE trained here with the ``tokenizers`` library
  on a small built-in corpus, wrapped as a ``PreTrainedTokenizerFast``, with the
  special tokens the Idefics3 processor needs and a SmolVLM-style chat template;
- the image processor is an ``Idefics3ImageProcessor`` built from its config,
  with a tiny image size and no image splitting;
- the model has a few layers with hidden sizes of 32-64, so a forward pass on a
  CPU takes milliseconds.

Its answers are random: it checks plumbing (shapes, padding, batching, the
Yes/No readout), never semantics.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["make_tiny_vlm", "TINY_VLM_MARKER"]

#: File written last into a finished model folder; its presence means "complete".
TINY_VLM_MARKER = "tiny_vlm.json"

# Bumped whenever the recipe below changes, so that a stale cached folder is
# detected instead of silently reused.
_RECIPE_VERSION = 2

_SPECIAL_TOKENS = {
    "bos_token": "<|im_start|>",
    "eos_token": "<end_of_utterance>",
    "pad_token": "<|pad|>",
    "unk_token": "<|unk|>",
}
# Idefics3Processor looks these up by name; the <row_i_col_j> tags are only used
# when images are split, but the processor resolves their ids at construction.
_IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]

# A SmolVLM-style template: "<|im_start|>User:<image>...<image>text<end_of_utterance>\nAssistant:".
# The model's first answer token after "Assistant:" is then " Yes" / " No".
_CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}"
    "{{ ': ' + message['content'] }}"
    "{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Words repeated so that BPE merges each into a single token, with and without
# a leading space (byte-level BPE spells " Yes" as "ĠYes").
_CORE_WORDS = ["Yes", "yes", "YES", "No", "no", "NO", "User", "Assistant", "agent", "goal", "clip", "mission"]
_CORPUS = [
    "Does this clip contain a clear instance of goal satisfaction anywhere in it? Answer Yes or No.",
    "The agent's mission: use the key to open the door and then get to the goal.",
    "The agent picked up the key, opened the door and reached the green goal square.",
    "User: is the task solved? Assistant: Yes. User: is the door open? Assistant: No.",
    "yes no Yes No YES NO the a an of to in it is was and or with for on at by",
]


def _is_complete(path: Path) -> bool:
    return (path / TINY_VLM_MARKER).is_file()


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    corpus = list(_CORPUS)
    for word in _CORE_WORDS:
        corpus += [f"{word} " * 20, f" {word}" * 20]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(_SPECIAL_TOKENS.values()),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **_SPECIAL_TOKENS)
    fast.add_special_tokens({"additional_special_tokens": _IMAGE_TOKENS})
    fast.chat_template = _CHAT_TEMPLATE
    for word in ("Yes", " Yes", "yes", " yes", "No", " No", "no", " no"):
        ids = fast.encode(word, add_special_tokens=False)
        if len(ids) != 1:  # the corpus above is built so this never happens
            raise RuntimeError(f"tiny tokenizer splits {word!r} into {len(ids)} tokens")
    return fast


def _build(path: Path, *, seed: int, image_size: int, patch_size: int, head_dim: int) -> None:
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        LlamaConfig,
    )

    tokenizer = _build_tokenizer()
    scale_factor = 2
    # One image becomes (image_size / patch_size)^2 patches, merged scale_factor^2 at a time.
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2

    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
        do_image_splitting=False,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=_CHAT_TEMPLATE,
    )

    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=64 // head_dim,
        num_key_value_heads=max(1, 32 // head_dim),
        head_dim=head_dim,
        max_position_embeddings=4096,
        # Wider than the usual 0.02 so that different inputs give visibly
        # different answers, which the batching tests rely on.
        initializer_range=0.2,
        rms_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        initializer_range=0.2,
    )
    config = Idefics3Config(
        text_config=text_config.to_dict(),
        vision_config=vision_config,
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # Weights are drawn from the global generator: seed it (and restore it, so a
    # test that builds the model does not perturb the caller's random stream).
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config).eval()
    finally:
        torch.random.set_rng_state(state)

    model.save_pretrained(path)
    processor.save_pretrained(path)


def make_tiny_vlm(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    head_dim: int = 16,
) -> Path:
    """Builds (once) a tiny random Idefics3 model folder at ``path`` and returns it.

    The folder loads offline with ``AutoProcessor.from_pretrained(path)`` and
    ``AutoModelForImageTextToText.from_pretrained(path)``, so it stands in for
    ``HuggingFaceTB/SmolVLM-256M-Instruct`` in tests and benchmarks.

    Args:
        path: target folder. If it already holds a complete tiny model built with
            the same arguments it is returned as is. It may also be missing or an
            empty directory; anything else is refused rather than overwritten.
        seed: seeds the random weights, so two builds with the same seed hold
            identical weights.
        image_size: side in pixels of the square image the vision tower sees
            (every frame is resized to it); must be a multiple of
            ``2 * patch_size``.
        patch_size: vision-transformer patch side in pixels.
        head_dim: the language model's attention head size (16, 32 or 64; its width is 64).
            vLLM's CPU attention needs at least 32.

    The folder is built in a sibling temporary directory and renamed into place,
    so two processes (e.g. parallel pytest workers) never see half a folder.
    """
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not isinstance(patch_size, int) or patch_size <= 0:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if not isinstance(image_size, int) or image_size <= 0 or image_size % (2 * patch_size):
        raise ValueError(
            f"image_size must be a positive multiple of 2 * patch_size = {2 * patch_size}, got {image_size!r}"
        )
    if head_dim not in (16, 32, 64):
        raise ValueError(f"head_dim must be 16, 32 or 64, got {head_dim!r}")
    path = Path(path)
    recipe = {"recipe_version": _RECIPE_VERSION, "seed": seed, "image_size": image_size, "patch_size": patch_size,
              "head_dim": head_dim}

    def _check_existing() -> Path:
        found = json.loads((path / TINY_VLM_MARKER).read_text())
        if found != recipe:
            raise ValueError(
                f"{path} already holds a tiny VLM built with {found}, not the requested {recipe}; "
                "pass another path or delete that folder"
            )
        return path

    if _is_complete(path):
        return _check_existing()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"path {str(path)!r} exists and is not a tiny VLM folder (no {TINY_VLM_MARKER}); "
                         "refusing to overwrite it")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _build(tmp, seed=seed, image_size=image_size, patch_size=patch_size, head_dim=head_dim)
        # Written last: its presence is what marks a folder complete.
        (tmp / TINY_VLM_MARKER).write_text(json.dumps(recipe, sort_keys=True))
        try:
            # Atomic on POSIX; replaces `path` only if it is missing or an empty dir.
            os.rename(tmp, path)
        except OSError:
            # Another process finished first (path now non-empty): use its folder.
            if not _is_complete(path):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _check_existing()
