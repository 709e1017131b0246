"""Bad input to the library gets a clear error at the call, naming the argument, never a failure later."""
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage

from torchrl_vlm import MixtureSampler, ScoringService, VLMReplayBuffer, make_minigrid_env, make_replay_buffer
from torchrl_vlm._checks import check_int
from torchrl_vlm.scoring.base import check_scores


def test_a_priority_for_a_slot_not_yet_written_is_refused_and_sampling_goes_on():
    rb = make_replay_buffer(100, sampler=MixtureSampler(lam_max=1.0), batch_size=8)
    rb.extend(TensorDict({"obs": torch.zeros(50, 1)}, [50]))
    with pytest.raises(ValueError, match="index 80 has not been written yet: the storage holds 50 rows"):
        rb.update_priority(torch.tensor([3, 80]), torch.ones(2))
    with pytest.raises(ValueError, match="index"):
        rb.update_priority(torch.tensor([200]), torch.ones(1))  # beyond the capacity
    assert rb.sampler.num_positive == 0
    assert rb.sample()["index"].max() < 50  # the sampler was left as it was


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"td_boost": "false"}, TypeError, "td_boost must be a bool"),
        ({"importance_weights": 1}, TypeError, "importance_weights must be a bool"),
        ({"td_eps": "0.1"}, TypeError, "td_eps must be a number"),
        ({"beta": "0.4"}, TypeError, "beta must be a number"),
        ({"lam_max": 1.5}, ValueError, "lam_max"),
        ({"warmup": -1}, ValueError, "warmup"),
    ],
)
def test_bad_sampler_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MixtureSampler(**kwargs)


@pytest.mark.parametrize("max_steps, error", [(0, ValueError), (-5, ValueError), (2.5, TypeError), (True, TypeError)])
def test_a_step_limit_must_be_a_positive_int(max_steps, error):
    with pytest.raises(error, match=r"max_steps must be None \(the env's own limit\) or an int >= 1, got"):
        make_minigrid_env("MiniGrid-DoorKey-5x5-v0", max_steps=max_steps)


@pytest.mark.parametrize(
    "value, low, kwargs, error, match",
    [
        (0, 1, {}, ValueError, "n must be an int >= 1, got 0$"),
        (-1, 0, {"meaning": "0 = never"}, ValueError, r"n must be an int >= 0 \(0 = never\), got -1$"),
        (2.0, 1, {}, TypeError, "n must be an int >= 1, got float 2.0$"),
        (True, 0, {}, TypeError, "n must be an int >= 0, got bool True$"),
        ("3", 1, {}, TypeError, "n must be an int >= 1, got str '3'$"),
        (None, 1, {}, TypeError, "n must be an int >= 1, got NoneType None$"),
        (0, 1, {"none_means": "unlimited"}, ValueError, r"n must be None \(unlimited\) or an int >= 1, got 0$"),
    ],
)
def test_a_count_is_refused_in_one_wording(value, low, kwargs, error, match):
    with pytest.raises(error, match=match):
        check_int("n", value, low, **kwargs)


def test_a_count_passes_as_a_python_int():
    assert check_int("n", np.int64(3)) == 3 and type(check_int("n", np.int64(3))) is int
    assert check_int("n", 0, 0) == 0
    assert check_int("n", None, none_means="unlimited") is None


def test_a_service_timeout_must_be_a_number():
    with pytest.raises(TypeError, match="hang_timeout_s must be a number of seconds"):
        ScoringService(lambda: None, hang_timeout_s="600")


@pytest.mark.parametrize("output", ["yes", None, {"p": 1}, [0.5, "x"]])
def test_a_scorer_answer_that_is_not_numbers_is_named(output):
    with pytest.raises(TypeError, match="MyVLM returned"):
        check_scores(output, 2, "MyVLM")


@pytest.mark.xdist_group("running_services")  # see tests/conftest.py
@pytest.mark.parametrize("frames, match", [
    (torch.full((4, 8, 8, 3), 2.0), r"float frames must be in \[0, 1\]"),  # 0-255 floats: not ToTensorImage's
    (torch.zeros(4, 8, 8, dtype=torch.uint8), r"batch\['pixels'\] must hold RGB frames"),  # no channel axis
])
def test_frames_a_scorer_cannot_take_are_refused_at_the_first_extend(frames, match, running_service):
    from torchrl_vlm import MiniGridEventScorer

    with VLMReplayBuffer(storage=LazyTensorStorage(100), scorer=running_service(MiniGridEventScorer), clip_len=4) as rb:
        batch = TensorDict(
            {"clip_id": torch.zeros(4, dtype=torch.int64), "clip_step": torch.arange(4),
             "pixels": frames, "next": {"pixels": frames.clone()}},
            [4],
        )
        with pytest.raises(TypeError, match=match):
            rb.extend(batch)
        assert len(rb) == 0


def test_an_env_that_is_not_minigrid_is_named():
    with pytest.raises(ValueError, match="'CartPole-v1' is a gymnasium env but not a MiniGrid one"):
        make_minigrid_env("CartPole-v1")
