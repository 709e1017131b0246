"""Rendering only the frames a scorer reads: FrameSchedule in the envs, frame_mask through the buffer, the
scorers and the gallery picking among rendered frames, and the recipes' env.frame_stride."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402
from _scorers import FrameMeanScorer  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.data import LazyTensorStorage  # noqa: E402

from torchrl_vlm import MixtureSampler, VLMReplayBuffer, make_dmc_env, make_minigrid_env  # noqa: E402
from torchrl_vlm.frames import FRAME_RENDERED_KEY, FrameSchedule, frame_stride_for  # noqa: E402
from torchrl_vlm.scoring.base import (  # noqa: E402
    FRAME_STEPS_KEY,
    PACKED_FRAMES_KEY,
    clip_frame_mask,
    frame_indices,
    unpack_frames,
    validate_clips,
)
from torchrl_vlm.scoring.gallery import ClipGallery  # noqa: E402
from torchrl_vlm.training import env_frame_stride  # noqa: E402


def fixed_actions(n_envs: int, steps: int, n_actions: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, n_actions, (steps, n_envs), generator=torch.Generator().manual_seed(seed))


def rollout(env, actions: torch.Tensor):
    """Steps ``env`` through ``actions`` (``[T, n_envs]``), resetting finished envs as a collector does."""
    from torchrl.envs.utils import step_mdp

    td = env.reset()
    rows = []
    for a in actions:
        td.set("action", a)
        td = env.step(td)
        rows.append(td.clone())
        td = step_mdp(td)
        done = td.get("done").reshape(-1)
        if bool(done.any()):
            td.set("_reset", done.reshape(td.get("done").shape))
            td = env.reset(td)
    return torch.stack(rows, dim=1)


class TestFrameSchedule:
    def test_stride_and_episode_end(self):
        s = FrameSchedule(clip_len=6, frame_stride=3)
        got = [s.reset()] + [s.step(ended=(t == 8)) for t in range(1, 9)] + [s.reset(), s.step(False)]
        # steps since reset 0..8: clip steps 0,1,2,3,4,5,0,1,2 -> rendered at 0, 3, 6 (clip step 0) and 8 (the end)
        assert got == [True, False, False, True, False, False, True, False, True, True, False]

    @pytest.mark.parametrize("bad, error", [(0, ValueError), (1.5, TypeError), (True, TypeError)])
    def test_bad_stride(self, bad, error):
        with pytest.raises(error, match="frame_stride"):
            FrameSchedule(32, bad)

    def test_stride_for(self):
        assert frame_stride_for(32, 8) == 4
        assert frame_stride_for(32, 5) == 6
        assert frame_stride_for(4, 8) == 1
        for clip_len in range(1, 40):
            for k in range(1, 12):
                s = frame_stride_for(clip_len, k)
                # the frames a full clip then has: steps j < L - 1 with j % s == 0, and the last
                shown = len([j for j in range(clip_len - 1) if j % s == 0]) + 1
                assert shown >= min(k, clip_len), (clip_len, k, s)


class TestMiniGridStride:
    def test_rendered_frames_match_every_step_env(self):
        # DoorKey-5x5 with max_steps=20: episodes end inside clips; stride 4 of clip_len 8.
        kwargs = dict(num_envs=3, clip_len=8, seed=3, max_steps=20)
        actions = fixed_actions(3, 70)
        full = rollout(make_minigrid_env("MiniGrid-DoorKey-5x5-v0", **kwargs), actions)
        strided = rollout(make_minigrid_env("MiniGrid-DoorKey-5x5-v0", frame_stride=4, **kwargs), actions)
        assert FRAME_RENDERED_KEY not in full.keys()
        rendered = strided[FRAME_RENDERED_KEY].squeeze(-1)
        assert torch.equal(rendered, strided["clip_step"] % 4 == 0)
        # the state an episode ends in is rendered, and shown as its last row's outcome
        next_rendered = strided["next", FRAME_RENDERED_KEY].squeeze(-1)
        done = strided["next", "done"].squeeze(-1)
        assert bool(done.any()) and bool(next_rendered[done].all())
        assert torch.equal(next_rendered, done | (strided["next", "clip_step"] % 4 == 0))
        for key in ("pixels", ("next", "pixels")):
            where = rendered if key == "pixels" else next_rendered
            assert torch.equal(strided[key][where], full[key][where])
            assert not bool(strided[key][~where].any())
        assert 0.2 < rendered.float().mean() < 0.35  # about one step in four

    def test_bad_stride_names_argument(self):
        with pytest.raises(ValueError, match="frame_stride"):
            make_minigrid_env("MiniGrid-DoorKey-5x5-v0", frame_stride=0)


def test_dmc_renders_episode_end():
    # ball_in_cup: 1000 physics steps, action repeat 4 -> 250 agent steps an episode
    env = make_dmc_env("ball_in_cup", "catch", num_envs=2, seed=0, render=True, frame_size=16, clip_len=32,
                       frame_stride=4)
    td = env.rollout(260, break_when_any_done=False)
    rendered = td[FRAME_RENDERED_KEY].squeeze(-1)
    assert torch.equal(rendered, td["clip_step"] % 4 == 0)
    done = td["next", "done"].squeeze(-1)
    assert bool(done[:, 249].all()) and bool(td["next", FRAME_RENDERED_KEY].squeeze(-1)[:, 249].all())
    assert not bool(td["pixels"][~rendered].any()) and bool(td["pixels"][rendered].flatten(1).any(-1).all())


def test_ogbench_renders_only_the_schedule():
    from torchrl_vlm import make_ogbench_env

    env = make_ogbench_env("scene-singletask-task3-v0", num_envs=2, seed=0, render=True, frame_size=16, clip_len=8,
                           frame_stride=4)
    td = env.rollout(12, break_when_any_done=False)
    rendered = td[FRAME_RENDERED_KEY].squeeze(-1)
    assert torch.equal(rendered, td["clip_step"] % 4 == 0)
    assert not bool(td["pixels"][~rendered].any()) and bool(td["pixels"][rendered].flatten(1).any(-1).all())


class RecordingBuffer(VLMReplayBuffer):
    """Keeps what the buffer hands to the scoring service."""

    def _submit(self, clips, meta):
        self.sent.append(clips)
        super()._submit(clips, meta)


def test_buffer_ships_frame_mask():
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=8, seed=1, max_steps=20, frame_stride=4)
    batch = rollout(env, fixed_actions(2, 64, seed=1))
    with RecordingBuffer(storage=LazyTensorStorage(1000), scorer=FrameMeanScorer, sampler=MixtureSampler(warmup=1),
                         batch_size=8) as rb:
        rb.sent = []
        rb.extend(batch)
        # Frames and which were rendered are the scorer's; replay stores neither (each entry costs every sample).
        stored = set(rb[:].keys(include_nested=True))
        assert not stored & {"pixels", ("next", "pixels"), "frame_rendered", ("next", "frame_rendered")}
    # Only the rendered frames travel, packed into one shared-memory block per submission.
    for sent in rb.sent:
        assert "frames" not in sent.keys() and sent.is_consolidated()
        assert sent[PACKED_FRAMES_KEY].untyped_storage().is_shared()
        assert int((sent[FRAME_STEPS_KEY] >= 0).sum()) == int(clip_frame_mask(unpack_frames(sent)).sum())
    clips = torch.cat([unpack_frames(sent) for sent in rb.sent])
    mask, shown = clips["mask"], clip_frame_mask(clips)
    steps = torch.arange(mask.shape[1]).expand_as(mask)
    last = steps == (mask.sum(-1, keepdim=True) - 1)
    assert torch.equal(shown, mask & ((steps % 4 == 0) | last))
    assert bool(clips["frames"][shown].flatten(1).any(-1).all())  # every shown frame was rendered
    assert not bool(clips["frames"][mask & ~shown].any())
    validate_clips(clips)
    for b in range(clips.batch_size[0]):
        assert bool(shown[b][frame_indices(shown[b], 8)].all())


def test_validate_and_gallery_use_frame_mask():
    mask = torch.ones(2, 8, dtype=torch.bool)
    frame_mask = torch.zeros(2, 8, dtype=torch.bool)
    frame_mask[:, ::4] = True
    frame_mask[:, -1] = True
    frames = torch.zeros(2, 8, 4, 4, 3, dtype=torch.uint8)
    frames[frame_mask] = torch.arange(1, 7, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 4, 4, 3)
    clips = TensorDict({"mask": mask, "frames": frames, "frame_mask": frame_mask}, [2])
    validate_clips(clips)
    thumbs = ClipGallery(frames_per_clip=4).thumbnails(frames, clip_frame_mask(clips))
    assert bool(thumbs.flatten(2).all())  # no blank frame shown
    with pytest.raises(ValueError, match="frame_mask"):
        validate_clips(clips.set("frame_mask", frame_mask[:, :4]))
    with pytest.raises(ValueError, match="rendered frame"):
        validate_clips(clips.set("frame_mask", torch.zeros(2, 8, dtype=torch.bool)))


@pytest.mark.parametrize(
    "sampler, scorer, every_step, value, expected",
    [
        ("vlm", "transformers", False, "auto", 4),
        ("vlm", "openai", False, "auto", 4),
        ("vlm", "events", False, "auto", 1),
        ("uniform", "transformers", False, "auto", 1),
        ("vlm", "transformers", True, "auto", 1),  # a COVR prior reads every row's frame
        ("vlm", "events", False, 2, 2),
    ],
)
def test_recipe_frame_stride(sampler, scorer, every_step, value, expected):
    cfg = OmegaConf.create({"env": {"frame_stride": value}, "buffer": {"sampler": sampler},
                            "vlm": {"scorer": scorer, "clip_len": 32, "num_frames": 8}})
    assert env_frame_stride(cfg, every_step=every_step) == expected


def test_recipe_frame_stride_bad_value():
    cfg = OmegaConf.create({"env": {"frame_stride": 0}, "buffer": {"sampler": "vlm"},
                            "vlm": {"scorer": "events", "clip_len": 32, "num_frames": 8}})
    with pytest.raises(ValueError, match="env.frame_stride"):
        env_frame_stride(cfg)
