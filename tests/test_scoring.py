"""The scoring pipeline: clip assembly, the separate-process service, the oracles, a real model."""
import functools
import math
import os
import signal
import time

import pytest
import torch
from _scorers import BrokenAtStart, HangingScorer, RaisingScorer, SlowConstantScorer
from tensordict import NonTensorStack, TensorDict
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage
from torchrl.envs.utils import RandomPolicy

from torchrl_vlm import (
    EVENT_DEFINITIONS,
    EVENT_NAMES,
    ClipAssembler,
    DelayedScorer,
    MiniGridEventScorer,
    NoisyScorer,
    ScoringService,
    ScoringServiceError,
    VLMReplayBuffer,
    make_minigrid_env,
)
from torchrl_vlm.scoring.base import validate_clips


def _wait_until(condition, poll, timeout_s=60.0):
    """Polls until ``condition()`` holds; the bound only turns a hang into a failure."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        poll()
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the scoring service")
        time.sleep(0.02)


def _clips(n=3, length=4, frames=True):
    td = TensorDict(
        {
            "mask": torch.ones(n, length, dtype=torch.bool),
            "events": torch.zeros(n, length, len(EVENT_NAMES), dtype=torch.bool),
            "clip_id": torch.arange(n),
        },
        [n],
    )
    if frames:
        td["frames"] = torch.zeros(n, length, 8, 8, 3, dtype=torch.uint8)
    return td


# ----------------------------------------------------------------- assembly
def _steps(clip_id, clip_step, end=None):
    n = len(clip_id)
    return TensorDict(
        {
            "clip_id": torch.tensor(clip_id),
            "clip_step": torch.tensor(clip_step),
            "end": torch.tensor(end or [False] * n),
            "value": torch.arange(n) + 100 * torch.tensor(clip_id),
        },
        [n],
    )


def test_assembler_joins_clips_across_batches_and_cuts_at_episode_end():
    asm = ClipAssembler(clip_len=4)
    # clip 1 gets 3 steps, clip 2 one step (its episode ends there), interleaved like [n_envs, T] flattened
    out = asm.add(_steps([1, 2, 1, 1], [0, 0, 1, 2], [False, True, False, False]), ["m1", "m2", "m1", "m1"])
    assert out["clip_id"].tolist() == [2]
    assert out["mask"].tolist() == [[True, False, False, False]]
    assert out["mission"] == ["m2"]
    assert asm.open_clips == 1
    # The fourth step of clip 1 arrives in the next batch, out of order with a new clip.
    out = asm.add(_steps([3, 1], [0, 3]), ["m3", "m1"])
    assert out["clip_id"].tolist() == [1]
    assert out["value"][0].tolist() == [100, 102, 103, 101]  # rows in clip_step order
    assert out["mask"].all()
    assert asm.open_clips == 1  # clip 3


def test_assembler_pads_with_zeros_and_abandons_silent_clips():
    asm = ClipAssembler(clip_len=3, max_idle=2)
    out = asm.add(_steps([7, 8], [0, 0], [True, False]))
    assert out["value"].tolist() == [[700, 0, 0]]
    asm.add(_steps([9], [0]))
    asm.add(_steps([9], [1]))  # clip 8 has been silent for two calls
    assert asm.abandoned == 1 and asm.open_clips == 1


# --------------------------------------------------------------------- oracles
def test_event_scorer_definitions():
    clips = _clips(3)
    col = {name: i for i, name in enumerate(EVENT_NAMES)}
    clips["events"][0, 1, col["key_pickup"]] = True  # a re-pickup, not the first
    clips["events"][1, 2, col["first_key_pickup"]] = True
    clips["events"][1, 2, col["key_pickup"]] = True
    clips["events"][2, 3, col["goal"]] = True
    clips["mask"][2, 3] = False  # ... but on a padded step: it does not count
    assert MiniGridEventScorer("any")(clips).tolist() == [1.0, 1.0, 0.0]
    assert MiniGridEventScorer("first_progress")(clips).tolist() == [0.0, 1.0, 0.0]
    assert MiniGridEventScorer("goal_only")(clips).tolist() == [0.0, 0.0, 0.0]
    assert set(EVENT_DEFINITIONS) == {"any", "first_progress", "goal_only"}
    with pytest.raises(ValueError, match="definition must be one of"):
        MiniGridEventScorer("sometimes")
    with pytest.raises(ValueError, match="events"):
        MiniGridEventScorer()(clips.exclude("events"))


def test_noisy_scorer_error_rates_within_binomial_bounds():
    n = 20_000
    clips = _clips(n, length=1, frames=False)
    truth = torch.rand(n, generator=torch.Generator().manual_seed(123)) < 0.3  # not the scorer's seed
    clips["events"][truth, 0, 2] = True
    scorer = NoisyScorer(MiniGridEventScorer(), false_positive_rate=0.1, false_negative_rate=0.25, seed=0)
    out = scorer(clips).bool()
    for rate, flipped, total in ((0.1, out[~truth].sum(), (~truth).sum()), (0.25, (~out[truth]).sum(), truth.sum())):
        sd = math.sqrt(total * rate * (1 - rate))
        assert abs(float(flipped) - rate * float(total)) < 5 * sd
    with pytest.raises(ValueError, match="false_positive_rate"):
        NoisyScorer(MiniGridEventScorer(), false_positive_rate=1.5)
    # A factory (as a recipe passes it to the scoring process) builds the same scorer.
    from_factory = NoisyScorer(functools.partial(MiniGridEventScorer, "any"), 0.1, 0.25, seed=0)
    assert torch.equal(from_factory(clips), NoisyScorer(MiniGridEventScorer("any"), 0.1, 0.25, seed=0)(clips))


def test_delayed_scorer_delegates_to_its_base():
    clips = _clips(2)
    clips["events"][0, 0, EVENT_NAMES.index("goal")] = True
    delayed = DelayedScorer(functools.partial(MiniGridEventScorer, "goal_only"), latency_s=0.0)
    assert delayed(clips).tolist() == [1.0, 0.0]
    assert delayed.needs_frames is False
    with pytest.raises(ValueError, match="latency_s"):
        DelayedScorer(MiniGridEventScorer, latency_s=-1.0)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (lambda c: c.set("frames", c["frames"].float()), TypeError, "uint8"),
        (lambda c: c.set("frames", c["frames"][:, 0]), ValueError, r"\[B, L, H, W, 3\]"),
        (lambda c: c.set("mask", c["mask"].long()), ValueError, "bool"),
        (lambda c: c[:0], ValueError, "empty"),
    ],
)
def test_bad_clip_input_is_refused(bad, error, match):
    clips = bad(_clips())
    with pytest.raises(error, match=match):
        validate_clips(clips)
    with pytest.raises(TypeError, match="TensorDict"):
        validate_clips({"frames": None})


# ------------------------------------------------------------------- service
def test_startup_failure_raises_a_clear_error_naming_the_model():
    with pytest.raises(ScoringServiceError, match="acme/missing-vlm"):
        ScoringService(BrokenAtStart, start_timeout_s=60)
    with pytest.raises(TypeError, match="scorer_factory"):
        ScoringService("acme/missing-vlm")


def test_backpressure_drops_the_oldest_and_counts_every_clip():
    with ScoringService(functools.partial(SlowConstantScorer, 0.3), max_pending=4, batch_clips=1) as service:
        service.submit(_clips(1, frames=False), meta="first")
        _wait_until(lambda: service._busy is not None, service.poll)  # the worker holds "first"
        tickets = [service.submit(_clips(1, frames=False), meta=i) for i in range(20)]
        stats = service.stats()
        assert stats["clips_submitted"] == 21
        # The worker holds at most 2 * batch_clips; at most max_pending wait.
        assert stats["queue_depth"] == 2 + 4
        assert stats["clips_dropped"] == 15
        assert all(t is not None for t in tickets)  # a submission that fits always gets in
        metas = []
        _wait_until(lambda: service.queue_depth == 0, lambda: metas.extend(r.meta for r in service.poll()))
        stats = service.stats()
        assert stats["clips_scored"] + stats["clips_dropped"] + stats["clips_lost"] == 21
        # What survived: what the worker held, and the newest four.
        assert metas == ["first", 0, 16, 17, 18, 19]
        assert service.submit(_clips(5, frames=False)) is None  # larger than max_pending by itself
        assert service.stats()["clips_dropped"] == 20


def test_worker_sigkill_is_restarted_and_its_clips_are_lost_not_positive():
    service = ScoringService(functools.partial(SlowConstantScorer, 0.5), batch_clips=1)
    try:
        old_pid = service.worker_pid
        service.submit(_clips(2, frames=False), meta="doomed")
        _wait_until(lambda: service._busy is not None, service.poll)
        service.submit(_clips(3, frames=False), meta="waiting")  # not yet handed over
        os.kill(old_pid, signal.SIGKILL)
        _wait_until(lambda: service.stats()["worker_restarts"] == 1, service.poll)
        assert service.worker_pid != old_pid
        assert service.stats()["clips_lost"] == 2  # only what the dead worker held
        # Training goes on: the new worker scores new clips.
        service.submit(_clips(1, frames=False), meta="after")
        got = []
        _wait_until(lambda: len(got) == 2, lambda: got.extend(service.poll()))
        assert [r.meta for r in got] == ["waiting", "after"]
    finally:
        service.close()
    assert service.worker_pid is None


def test_a_hung_scorer_is_killed_and_restarted():
    with ScoringService(HangingScorer, hang_timeout_s=1.0, max_restarts=1) as service:
        service.submit(_clips(1, frames=False))
        _wait_until(lambda: service.stats()["worker_restarts"] == 1, service.poll)
        assert service.stats()["clips_lost"] == 1
        service.submit(_clips(1, frames=False))
        with pytest.raises(ScoringServiceError, match="hung"):
            _wait_until(lambda: False, service.poll)


def test_scorer_exceptions_are_counted_then_fatal():
    with ScoringService(RaisingScorer, max_consecutive_errors=2, batch_clips=1) as service:
        service.submit(_clips(1, frames=False))
        _wait_until(lambda: service.stats()["scorer_errors"] == 1, service.poll)
        assert service.stats()["clips_lost"] == 1
        service.submit(_clips(1, frames=False))
        with pytest.raises(ScoringServiceError, match="out of memory"):
            _wait_until(lambda: False, service.poll)


# ------------------------------------------------------------- real model
def test_tiny_vlm_scores_real_frames_in_the_scoring_process(tiny_vlm):
    from torchrl_vlm import TransformersScorer

    clip_len = 8
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=clip_len, seed=0, tile_size=8)
    factory = functools.partial(TransformersScorer, str(tiny_vlm), num_frames=4, batch_size=4, mission_in_prompt=True)
    with VLMReplayBuffer(storage=LazyTensorStorage(1000), scorer=factory, clip_len=clip_len, threshold=0.5) as rb:
        torch.manual_seed(0)
        collector = Collector(env, RandomPolicy(env.full_action_spec), frames_per_batch=32, total_frames=96,
                              replay_buffer=rb)
        for _ in collector:
            pass
        collector.shutdown()
        assert rb.drain() == 0
        stats = rb.stats()
        data = rb[:]
    assert stats["clips_scored"] == stats["clips_submitted"] > 0
    scored = ~torch.isnan(data["vlm_score"])
    assert scored.any()
    score = data["vlm_score"][scored]
    assert bool(((score >= 0) & (score <= 1)).all())
    assert torch.equal(data["vlm_priority"][scored], (score >= 0.5).float())


def test_a_missing_model_fails_at_start_naming_it():
    from torchrl_vlm import TransformersScorer

    with pytest.raises(ScoringServiceError, match="acme/no-such-vlm"):
        ScoringService(functools.partial(TransformersScorer, "acme/no-such-vlm"))


def test_missions_reach_the_scorer():
    asm = ClipAssembler(clip_len=2)
    out = asm.add(_steps([1, 1], [0, 1]), ["go to the red door", "go to the red door"])
    assert isinstance(out.get("mission"), NonTensorStack)
    assert out["mission"] == ["go to the red door"]


# --------------------------------------------------------------------- gallery
def test_the_gallery_shows_the_highest_and_lowest_scored_clips(tmp_path):
    from torchrl_vlm import ClipGallery

    gallery = ClipGallery(capacity=6, frames_per_clip=2)
    frames = torch.zeros(1, 5, 4, 4, 3, dtype=torch.uint8)
    frames[0, :, 0, 0, 0] = torch.arange(5, dtype=torch.uint8)  # frame t shows t
    thumb = gallery.thumbnails(frames, torch.tensor([[True, True, True, True, False]]))
    assert thumb[0, :, 0, 0, 0].tolist() == [0, 3]  # evenly spaced over the 4 real steps, first and last
    for cid, score in enumerate([0.5, 0.9, 0.1, 0.7, 0.3, 0.95, 0.2, 0.8]):
        gallery.add(thumb, torch.tensor([score]), torch.tensor([cid]))
    # The capacity keeps the last six clips (ids 2..7); four rows: the two best, the two worst.
    assert [cid for _, cid, _ in gallery.chosen(rows=4)] == [5, 7, 6, 2]
    assert [cid for _, cid, _ in gallery.chosen(rows=20)] == [5, 7, 3, 4, 6, 2]  # each clip once
    assert gallery.save(tmp_path / "g.png", rows=4).stat().st_size > 0
    assert ClipGallery().save(tmp_path / "empty.png") is None


def test_ray_batches_ship_only_their_own_clips():
    """Ray pickles a tensor with its whole storage: a batch sliced out of a larger one is compacted first."""
    from tensordict import TensorDict

    from torchrl_vlm.scoring.ray_service import _compact

    big = TensorDict({"frames": torch.zeros(64, 4, 8, 8, 3, dtype=torch.uint8),
                      "mask": torch.ones(64, 4, dtype=torch.bool)}, batch_size=[64])
    part = big[8:16]
    compact = _compact(part)
    for key in ("frames", "mask"):
        t = compact[key]
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
        assert torch.equal(t, part[key])
    whole = big.clone()
    assert _compact(whole) is whole  # nothing to compact: no copy
