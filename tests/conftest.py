"""Shared fixtures. Tests never reach a model hub or the wandb servers."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402

from torchrl_vlm.testing import make_tiny_vlm  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """A tiny random Idefics3 saved to a folder, loaded by users' from_pretrained path."""
    return make_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-idefics3", seed=0)
