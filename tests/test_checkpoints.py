"""Checkpoints: nothing loaded runs code, corruption never goes unnoticed, the previous one is the fallback."""
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from torchrl_vlm.training import CheckpointError, load_checkpoint, save_checkpoint
from torchrl_vlm.training.checkpoints import _write_manifest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))

import dqn_minigrid  # noqa: E402

# The module's checkpoint (a training run and a scoring process) is built once: its tests run on one worker.
pytestmark = pytest.mark.xdist_group("checkpoints")

TINY = [
    "env.name=MiniGrid-DoorKey-5x5-v0", "env.num_envs=2", "env.max_steps=24", "collector.total_frames=128",
    "collector.frames_per_batch=32", "collector.init_random_frames=32", "buffer.capacity=500", "buffer.batch_size=16",
    "buffer.sampler=vlm", "vlm.clip_len=8", "eval.interval=0", "eval.episodes=1", "logger.backend=",
    "logger.progress=false", "logger.gallery_interval=0",
]


class Payload:
    """Unpickling this writes a marker file: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real run's checkpoint, and a buffer of the same kind to load it into (one scoring process for all)."""
    out = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        cfg = compose("dqn_minigrid", overrides=TINY)
    folder = Path(dqn_minigrid.train(cfg, out)["checkpoint"])
    rb = dqn_minigrid.make_buffer(cfg)
    yield folder, rb
    rb.close()


def _copy(checkpoint, tmp_path) -> Path:
    import shutil

    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, folder)
    return folder


def _load_all(folder, rb):
    """What a resume reads: the state, then the replay buffer (``loads`` replaces all it held)."""
    return load_checkpoint(folder, rb)


@pytest.mark.parametrize(
    "target",
    ["checkpoint.pt", "replay_buffer/sampler/mixture_sampler.pt", "replay_buffer/vlm_state.pt",
     "replay_buffer/prefetch.pkl"],
)
def test_a_planted_payload_never_runs_even_with_a_forged_manifest(target, checkpoint, tmp_path):
    folder = _copy(checkpoint[0], tmp_path)
    marker = tmp_path / "pwned"
    path = folder / target
    if path.suffix == ".pt":
        torch.save({"x": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    _write_manifest(folder)  # an attacker who shares the checkpoint can rewrite the manifest too
    try:
        _load_all(folder, checkpoint[1])
    except CheckpointError as err:
        assert target.split("/")[-1] in str(err) or "replay_buffer" in str(err)
    else:
        assert target.endswith("prefetch.pkl")  # never read: a loaded buffer samples afresh
    assert not marker.exists()


def _flip(path: Path, offset: int = 200):
    data = bytearray(path.read_bytes())
    data[min(offset, len(data) - 1)] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "flipped weights": lambda f: _flip(f / "checkpoint.pt"),
    "deleted clip_id memmap": lambda f: (f / "replay_buffer/storage/clip_id.memmap").unlink(),
    "empty vlm_priority memmap": lambda f: (f / "replay_buffer/storage/vlm_priority.memmap").write_bytes(b""),
    "flipped observations": lambda f: _flip(f / "replay_buffer/storage/observation.memmap", 1000),
    "truncated config": lambda f: (f / "config.json").write_text("{"),
    "no manifest": lambda f: (f / "manifest.json").unlink(),
    "garbled manifest": lambda f: (f / "manifest.json").write_text("[1, 2"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corruption_is_named_or_falls_back_to_the_previous_checkpoint(kind, checkpoint, tmp_path):
    folder = _copy(checkpoint[0], tmp_path)
    CORRUPTIONS[kind](folder)
    name = {"no manifest": "manifest.json", "garbled manifest": "manifest.json"}.get(kind)
    with pytest.raises(CheckpointError) as err:
        _load_all(folder, checkpoint[1])
    expected = name or {"flipped weights": "checkpoint.pt", "deleted clip_id memmap": "clip_id.memmap",
                        "empty vlm_priority memmap": "vlm_priority.memmap",
                        "flipped observations": "observation.memmap", "truncated config": "config.json"}[kind]
    assert expected in str(err.value)
    # With a previous checkpoint beside it, the run falls back to that one, and says so.
    import shutil

    shutil.copytree(checkpoint[0], tmp_path / "checkpoint.prev")
    with pytest.warns(UserWarning, match="previous checkpoint"):
        state = _load_all(folder, checkpoint[1])
    assert state["collected_frames"] == 128 and state["folder"].endswith("checkpoint.prev")


def test_a_checkpoint_holds_only_what_loads_without_code(tmp_path):
    save_checkpoint(tmp_path / "c", {"step": 3, "weights": torch.ones(2), "config": {"a": [1, 2]}})
    assert (tmp_path / "c" / "config.json").read_text().startswith("{")
    state = load_checkpoint(tmp_path / "c")
    assert state["step"] == 3 and state["config"] == {"a": [1, 2]}
    with pytest.raises(CheckpointError, match="could not be read"):
        save_checkpoint(tmp_path / "d", {"bad": Payload(tmp_path / "x")})
        load_checkpoint(tmp_path / "d")
    assert not (tmp_path / "x").exists()


def test_a_checkpoint_holds_the_filled_part_of_the_storage_not_its_capacity(tmp_path):
    # A 3,072-transition run once wrote 266 MB: the storage at its full 200k capacity.
    import os

    from tensordict import TensorDict

    from torchrl_vlm import make_replay_buffer

    rows = TensorDict({"observation": torch.randn(3072, 64), ("next", "observation"): torch.randn(3072, 64)}, [3072])
    sizes = {}
    for capacity in (4096, 200_000):
        rb = make_replay_buffer(capacity, sampler="uniform", batch_size=8)
        rb.extend(rows)
        rb.dumps(tmp_path / str(capacity))
        sizes[capacity] = sum(f.stat().st_size for f in (tmp_path / str(capacity) / "storage").rglob("*.memmap"))
        restored = make_replay_buffer(capacity, sampler="uniform", batch_size=8)
        restored.loads(tmp_path / str(capacity))
        assert len(restored) == 3072 and torch.equal(restored[:]["next", "observation"], rows["next", "observation"])
        restored.extend(rows[:10])  # writing goes on after the restored rows
        assert len(restored) == 3082 and torch.equal(restored[3072:3082]["observation"], rows[:10]["observation"])
    assert sizes[200_000] == sizes[4096] < 2 * 3072 * 64 * 4 * 1.1
    assert os.path.exists(tmp_path / "200000" / "storage" / "storage_metadata.json")
