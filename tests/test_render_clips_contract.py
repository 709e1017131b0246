"""RenderClips against TorchRL's transform contract.

One test per item of the checklist that pytorch/rl's ``TransformBase`` (in its
``test/transforms``) asks of every transform: spec checks in each env layout,
a real env, and what happens with no env, in a Compose, before a model, in a
replay buffer and for the inverse. RenderClips only makes sense while an env
steps, so the offline items check for its error. The batched layouts also
check that no clip id is shared by two streams, however TorchRL copies the
transform into its workers (clone, EnvCreator's state copy, a new process).
"""
import functools

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import LazyTensorStorage, ReplayBuffer, TensorDictReplayBuffer
from torchrl.envs import Compose, EnvCreator, ParallelEnv, SerialEnv, StepCounter, TransformedEnv
from torchrl.envs.utils import check_env_specs

from torchrl_vlm import RenderClips, make_minigrid_env
from torchrl_vlm.envs.minigrid import _single_env

CLIP_LEN = 4
OUTSIDE_ENV = "RenderClips must be used inside a TransformedEnv"


def _base(max_steps=6, **wrapper_kwargs):
    """A small MiniGrid GymWrapper with no RenderClips: episodes end every ``max_steps`` steps."""
    return _single_env("MiniGrid-DoorKey-5x5-v0", max_steps, "cpu", render=False, **wrapper_kwargs)


def _tagged(max_steps=6):
    return TransformedEnv(_base(max_steps), RenderClips(CLIP_LEN, frame_key=None))


def _minigrid():
    """RenderClips inside a Compose, as the recipes build their envs."""
    return make_minigrid_env("MiniGrid-DoorKey-5x5-v0", render=False, max_steps=6, clip_len=CLIP_LEN)


# Built once, copied into every worker by clone: the pattern TorchRL's own
# TrajCounter tests use for a transform defined ahead of the env.
_PREDEFINED = RenderClips(CLIP_LEN, frame_key=None)


def _tagged_by_a_clone():
    return TransformedEnv(_base(), _PREDEFINED.clone())


def _assert_one_stream_per_id(td):
    """No clip id is shared by two (env, episode) streams of a rollout ``[*batch, T]``.

    An env is a row once the batch (workers, then each worker's envs) is
    flattened; an episode is a run of rows between two ``done``. Both the
    root id (the clip of ``s_t``) and the next id (that of ``s_t+1``) count.
    """
    horizon = td.shape[-1]
    done = td["next", "done"].reshape(-1, horizon)
    episode = torch.cat([torch.zeros_like(done[:, :1], dtype=torch.long), done[:, :-1].long().cumsum(-1)], -1)
    owner = {}
    for key in ("clip_id", ("next", "clip_id")):
        ids = td[key].reshape(-1, horizon)
        for row in range(ids.shape[0]):
            for t in range(horizon):
                stream = (row, int(episode[row, t]))
                first = owner.setdefault(int(ids[row, t]), stream)
                assert first == stream, f"clip id {int(ids[row, t])} is shared by streams {first} and {stream}"
    # Several episodes per env were seen, so the check covered new clips at resets.
    assert int(episode[:, -1].min()) >= 2


def _offline_data(batch=()):
    return TensorDict(
        {"observation": torch.zeros(*batch, 3), "action": torch.zeros(batch, dtype=torch.long)}, batch
    )


@pytest.mark.parametrize("frames", ["none", "from_parent", "rendered"])
def test_single_trans_env_check(frames):
    if frames == "none":
        env = _tagged()
    elif frames == "from_parent":
        # The parent writes "pixels" itself: RenderClips only tags.
        env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", max_steps=6, clip_len=CLIP_LEN, tile_size=2)
    else:
        import gymnasium as gym
        from torchrl.envs import GymWrapper

        from torchrl_vlm.envs.minigrid import MiniGridObservation

        gym_env = MiniGridObservation(
            gym.make("MiniGrid-DoorKey-5x5-v0", render_mode="rgb_array", tile_size=4, max_steps=6), render=False
        )
        env = TransformedEnv(
            GymWrapper(gym_env, categorical_action_encoding=True), RenderClips(CLIP_LEN, frame_shape=(20, 20, 3))
        )
    check_env_specs(env)
    td = env.rollout(20, break_when_any_done=False)
    _assert_one_stream_per_id(td.unsqueeze(0))
    if frames != "none":
        assert td["pixels"].dtype == torch.uint8 and td["next", "pixels"].shape[0] == 20


@pytest.mark.parametrize("creator", [EnvCreator, None], ids=["EnvCreator", "plain"])
@pytest.mark.parametrize("make_env", [_minigrid, _tagged_by_a_clone], ids=["own_transform", "cloned_transform"])
def test_serial_trans_env_check(creator, make_env):
    # EnvCreator builds a first env, steps it, and loads its state (RenderClips'
    # counter and salt included) into every worker it builds afterwards.
    env = SerialEnv(2, creator(make_env) if creator else make_env)
    check_env_specs(env)
    _assert_one_stream_per_id(env.rollout(150, break_when_any_done=False))


def test_parallel_trans_env_check():
    env = ParallelEnv(2, EnvCreator(_minigrid), mp_start_method="fork")
    try:
        check_env_specs(env)
        _assert_one_stream_per_id(env.rollout(100, break_when_any_done=False))
    finally:
        env.close()


def test_trans_serial_env_check():
    # Workers end their episodes at different steps: partial resets of one transform.
    env = TransformedEnv(
        SerialEnv(2, [lambda: _base(5), lambda: _base(7)]), RenderClips(CLIP_LEN, frame_key=None)
    )
    check_env_specs(env)
    td = env.rollout(100, break_when_any_done=False)
    _assert_one_stream_per_id(td)
    assert td["clip_step"].max() == CLIP_LEN - 1


def test_trans_parallel_env_check():
    env = TransformedEnv(
        ParallelEnv(2, [functools.partial(_base, 5), functools.partial(_base, 7)], mp_start_method="fork"),
        RenderClips(CLIP_LEN, frame_key=None),
    )
    try:
        check_env_specs(env)
        _assert_one_stream_per_id(env.rollout(100, break_when_any_done=False))
    finally:
        env.close()


@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_transform_no_env(batch):
    with pytest.raises(RuntimeError, match=OUTSIDE_ENV):
        RenderClips(CLIP_LEN, frame_key=None)(_offline_data(batch))


def test_transform_compose():
    with pytest.raises(RuntimeError, match=OUTSIDE_ENV):
        Compose(RenderClips(CLIP_LEN, frame_key=None), StepCounter())(_offline_data((4,)))
    # The same Compose inside an env tags its steps.
    env = TransformedEnv(_base(), Compose(RenderClips(CLIP_LEN, frame_key=None), StepCounter()))
    check_env_specs(env)
    assert env.rollout(6)["clip_step"].tolist() == [0, 1, 2, 3, 0, 1]


def test_transform_env():
    env = _tagged(max_steps=6)
    # reset: a fresh clip.
    td = env.reset()
    assert td["clip_step"].item() == 0 and td["clip_id"].dtype == torch.int64
    first = td["clip_id"].item()
    # step: the clip goes on until it holds CLIP_LEN steps, then a new one starts.
    for expected_step in [1, 2, 3, 0]:
        td = env.rand_step(td)
        assert td["next", "clip_step"].item() == expected_step
        td = td["next"]
    assert td["clip_id"].item() != first
    # A rollout: clips of 4 then 2 in each 6-step episode, a new clip after each reset.
    td = env.rollout(18, break_when_any_done=False)
    assert td["clip_step"].tolist() == [0, 1, 2, 3, 0, 1] * 3
    assert len(set(td["clip_id"].tolist())) == 6
    assert td["next", "done"].squeeze(-1).nonzero().squeeze(-1).tolist() == [5, 11, 17]


def test_transform_model():
    model = nn.Sequential(RenderClips(CLIP_LEN, frame_key=None), nn.Identity())
    with pytest.raises(RuntimeError, match=OUTSIDE_ENV):
        model(_offline_data((4,)))


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("rb_class", [ReplayBuffer, TensorDictReplayBuffer])
def test_transform_rb(rb_class, invert):
    data = _offline_data((10,))
    # Writing through it fails...
    rb = rb_class(storage=LazyTensorStorage(20))
    rb.append_transform(RenderClips(CLIP_LEN, frame_key=None), invert=invert)
    with pytest.raises(RuntimeError, match=OUTSIDE_ENV):
        rb.extend(data)
    # ... and so does sampling through it.
    rb = rb_class(storage=LazyTensorStorage(20), batch_size=4)
    rb.extend(data)
    rb.append_transform(RenderClips(CLIP_LEN, frame_key=None), invert=invert)
    with pytest.raises(RuntimeError, match=OUTSIDE_ENV):
        rb.sample()


def test_transform_inverse():
    # No inverse: inside an env the input to a step passes through untouched...
    transform = RenderClips(CLIP_LEN, frame_key=None)
    assert not transform.invertible and not transform.in_keys_inv
    env = TransformedEnv(_base(), transform)
    td = env.reset()
    td["action"] = torch.tensor(2)
    assert env.step(td)["action"].item() == 2
    # ... and offline there is nothing to invert.
    with pytest.raises(RuntimeError, match=OUTSIDE_ENV):
        RenderClips(CLIP_LEN, frame_key=None).inv(_offline_data((4,)))
