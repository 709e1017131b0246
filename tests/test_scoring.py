"""The scoring pipeline: clip assembly, the separate-process service, the hook, and the oracles."""
import functools
import math
import os
import signal
import time

import pytest
import torch
from tensordict import NonTensorStack, TensorDict
from torchrl.collectors import Collector
from torchrl.envs.utils import RandomPolicy

from _scorers import (
    BrokenAtStart,
    ClipIdParityScorer,
    HangingScorer,
    LastFrameScorer,
    RaisingScorer,
    SlowConstantScorer,
    last_frame_fingerprint,
)
from torchrl_vlm import (
    EVENT_DEFINITIONS,
    EVENT_NAMES,
    ClipAssembler,
    DelayedScorer,
    MiniGridEventScorer,
    MixtureSampler,
    NoisyScorer,
    ScoringService,
    ScoringServiceError,
    VLMScoringHook,
    make_minigrid_env,
    make_replay_buffer,
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
        stats = service.stats
        assert stats["clips_submitted"] == 21
        # The worker holds at most 2 * batch_clips; at most max_pending wait.
        assert stats["queue_depth"] == 2 + 4
        assert stats["clips_dropped"] == 15
        assert all(t is not None for t in tickets)  # a submission that fits always gets in
        metas = []
        _wait_until(lambda: service.queue_depth == 0, lambda: metas.extend(r.meta for r in service.poll()))
        stats = service.stats
        assert stats["clips_scored"] + stats["clips_dropped"] + stats["clips_lost"] == 21
        # What survived: what the worker held, and the newest four.
        assert metas == ["first", 0, 16, 17, 18, 19]
        assert service.submit(_clips(5, frames=False)) is None  # larger than max_pending by itself
        assert service.stats["clips_dropped"] == 20


def test_worker_sigkill_is_restarted_and_its_clips_are_lost_not_positive():
    service = ScoringService(functools.partial(SlowConstantScorer, 0.5), batch_clips=1)
    try:
        old_pid = service.worker_pid
        service.submit(_clips(2, frames=False), meta="doomed")
        _wait_until(lambda: service._busy is not None, service.poll)
        service.submit(_clips(3, frames=False), meta="waiting")  # not yet handed over
        os.kill(old_pid, signal.SIGKILL)
        _wait_until(lambda: service.stats["worker_restarts"] == 1, service.poll)
        assert service.worker_pid != old_pid
        assert service.stats["clips_lost"] == 2  # only what the dead worker held
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
        _wait_until(lambda: service.stats["worker_restarts"] == 1, service.poll)
        assert service.stats["clips_lost"] == 1
        service.submit(_clips(1, frames=False))
        with pytest.raises(ScoringServiceError, match="hung"):
            _wait_until(lambda: False, service.poll)


def test_scorer_exceptions_are_counted_then_fatal():
    with ScoringService(RaisingScorer, max_consecutive_errors=2, batch_clips=1) as service:
        service.submit(_clips(1, frames=False))
        _wait_until(lambda: service.stats["scorer_errors"] == 1, service.poll)
        assert service.stats["clips_lost"] == 1
        service.submit(_clips(1, frames=False))
        with pytest.raises(ScoringServiceError, match="out of memory"):
            _wait_until(lambda: False, service.poll)


# ---------------------------------------------------------------------- hook
def _run(hook, env, frames, frames_per_batch, seed=0):
    torch.manual_seed(seed)
    collector = Collector(env, RandomPolicy(env.full_action_spec), frames_per_batch=frames_per_batch, total_frames=frames)
    for batch in collector:
        hook.extend(batch)
    collector.shutdown()


def test_end_to_end_priorities_sit_exactly_on_clips_with_events():
    clip_len = 8
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=3, clip_len=clip_len, seed=0, max_steps=40)
    sampler = MixtureSampler(lam_max=0.5)
    rb = make_replay_buffer(5000, sampler=sampler, batch_size=64)
    with VLMScoringHook(rb, ScoringService(MiniGridEventScorer), clip_len=clip_len) as hook:
        # 3 envs x 25 steps per batch: clips of 8 straddle the batches.
        _run(hook, env, frames=3000, frames_per_batch=75)
        assert hook.drain() == 0
        stats = hook.stats

    data = rb[: len(rb)]
    assert "pixels" not in data.keys() and ("next", "pixels") not in data.keys(True)
    clip_ids = data["clip_id"]
    scored = ~torch.isnan(data["vlm_score"])
    hit = data["next", "events"][:, [EVENT_NAMES.index(e) for e in EVENT_DEFINITIONS["any"]]].any(-1)
    n_pos_clips = 0
    for cid in torch.unique(clip_ids).tolist():
        rows = clip_ids == cid
        if not scored[rows].any():
            continue  # the last, unfinished clip of an env
        assert scored[rows].all()
        positive = bool(hit[rows].any())
        n_pos_clips += positive
        assert torch.all(data["vlm_priority"][rows] == float(positive)), cid
        assert torch.all(data["vlm_score"][rows] == float(positive))
    assert n_pos_clips > 0
    assert stats["positives"] == n_pos_clips
    assert stats["stale_rejected"] == 0 and stats["clips_dropped"] == 0 and stats["clips_lost"] == 0
    # At most the three envs' unfinished clips stay unscored.
    assert int((~scored).sum()) < 3 * clip_len
    # The sampler sees exactly the rows the column marks.
    assert sampler.num_positive == int(data["vlm_priority"].sum())
    assert set(sampler._pos_list[: sampler.num_positive].tolist()) == set(
        torch.nonzero(data["vlm_priority"]).squeeze(-1).tolist()
    )


def test_a_resumed_hook_continues_its_counters():
    clip_len = 4
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=clip_len, seed=4, render=False)
    rb = make_replay_buffer(1000, sampler=MixtureSampler(lam_max=0.5), batch_size=8)
    with VLMScoringHook(rb, ScoringService(functools.partial(ClipIdParityScorer, 0.05)), clip_len=clip_len) as hook:
        _run(hook, env, frames=160, frames_per_batch=40)
        assert hook.drain() == 0  # every complete clip answered and written back
        before, state = hook.stats, hook.state_dict()
    assert before["slots_scored"] > 0 and before["positives"] > 0
    with VLMScoringHook(rb, ScoringService(ClipIdParityScorer), clip_len=clip_len) as resumed:
        resumed.load_state_dict(state)
        after = resumed.stats
    for key in ("positives", "slots_written", "slots_scored", "coverage", "stale_rejected"):
        assert after[key] == before[key], key


def test_a_clip_ends_on_the_state_its_last_action_reached():
    clip_len = 8
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=clip_len, seed=3, max_steps=20)
    rb = make_replay_buffer(1000, sampler=MixtureSampler(lam_max=0.5), batch_size=8)
    torch.manual_seed(0)
    collector = Collector(env, RandomPolicy(env.full_action_spec), frames_per_batch=30, total_frames=120)
    batches = []
    with VLMScoringHook(rb, ScoringService(LastFrameScorer), clip_len=clip_len) as hook:
        for batch in collector:
            batches.append(batch.reshape(-1).clone())
            hook.extend(batch)
        collector.shutdown()
        assert hook.drain() == 0
    steps = torch.cat(batches)
    data = rb[:]
    checked = 0
    for cid in torch.unique(data["clip_id"]).tolist():
        rows = torch.nonzero(steps["clip_id"] == cid).squeeze(-1)
        score = data["vlm_score"][data["clip_id"] == cid]
        if torch.isnan(score).all():
            continue  # unfinished at the end of the run
        last = rows[steps["clip_step"][rows].argmax()]
        expected = last_frame_fingerprint(steps["next", "pixels"][last].unsqueeze(0))
        assert torch.allclose(score, expected.expand_as(score)), cid
        checked += 1
    assert checked >= 10


def test_heavy_overwrite_never_lands_a_late_score_on_a_reused_slot():
    clip_len = 4
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=clip_len, seed=1, render=False)
    rb = make_replay_buffer(48, sampler=MixtureSampler(lam_max=0.5), batch_size=8)
    service = ScoringService(functools.partial(ClipIdParityScorer, 0.2), batch_clips=4)
    with VLMScoringHook(rb, service, clip_len=clip_len) as hook:
        _run(hook, env, frames=1200, frames_per_batch=40)
        assert hook.drain() == 0
        stats = hook.stats
    assert stats["stale_rejected"] > 0  # the buffer turned over many times while scores were late
    data = rb[:]
    scored = ~torch.isnan(data["vlm_score"])
    # Every score on a slot belongs to the clip that slot now holds.
    assert torch.equal(data["vlm_score"][scored], (data["clip_id"][scored] % 2).float())
    assert torch.equal(data["vlm_priority"], torch.nan_to_num(data["vlm_score"], nan=0.0))


def test_hook_survives_a_worker_kill_mid_run():
    clip_len = 4
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=clip_len, seed=2, render=False)
    rb = make_replay_buffer(4000, sampler=MixtureSampler(lam_max=0.5), batch_size=8)
    service = ScoringService(functools.partial(ClipIdParityScorer, 0.05), batch_clips=4)
    with VLMScoringHook(rb, service, clip_len=clip_len) as hook:
        _run(hook, env, frames=400, frames_per_batch=40)
        os.kill(service.worker_pid, signal.SIGKILL)
        _run(hook, env, frames=400, frames_per_batch=40, seed=1)
        assert hook.drain() == 0
        stats = hook.stats
    assert stats["worker_restarts"] == 1
    assert stats["clips_scored"] > 0
    assert stats["clips_scored"] + stats["clips_lost"] + stats["clips_dropped"] == stats["clips_submitted"]
    data = rb[:]
    unscored = torch.isnan(data["vlm_score"])
    # Rows without a score (lost in the crash, or in clips still unfinished) are never positive ...
    assert torch.all(data["vlm_priority"][unscored] == 0)
    assert torch.equal(data["vlm_priority"][~unscored], (data["clip_id"][~unscored] % 2).float())
    rb.sample()  # ... and training goes on


def test_tiny_vlm_scores_real_frames_in_the_scoring_process(tiny_vlm):
    from torchrl_vlm import TransformersScorer

    clip_len = 8
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=clip_len, seed=0, tile_size=8)
    rb = make_replay_buffer(1000, sampler=MixtureSampler(lam_max=0.5), batch_size=8)
    factory = functools.partial(TransformersScorer, str(tiny_vlm), num_frames=4, batch_size=4, mission_in_prompt=True)
    with VLMScoringHook(rb, ScoringService(factory), clip_len=clip_len, threshold=0.5) as hook:
        _run(hook, env, frames=96, frames_per_batch=32)
        assert hook.drain() == 0
        stats = hook.stats
    assert stats["clips_scored"] == stats["clips_submitted"] > 0
    data = rb[:]
    scored = ~torch.isnan(data["vlm_score"])
    assert scored.any()
    score = data["vlm_score"][scored]
    assert bool(((score >= 0) & (score <= 1)).all())
    assert torch.equal(data["vlm_priority"][scored], (score >= 0.5).float())


def test_a_missing_model_fails_at_start_naming_it():
    from torchrl_vlm import TransformersScorer

    with pytest.raises(ScoringServiceError, match="acme/no-such-vlm"):
        ScoringService(functools.partial(TransformersScorer, "acme/no-such-vlm"))


def test_hook_refuses_batches_without_clip_tags_and_buffers_without_generations():
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

    with pytest.raises(ValueError, match="generations"):
        VLMScoringHook(TensorDictReplayBuffer(storage=LazyTensorStorage(10)), service=None)
    rb = make_replay_buffer(10)
    hook = VLMScoringHook(rb, service=None)
    with pytest.raises(KeyError, match="RenderClips"):
        hook.extend(TensorDict({"observation": torch.zeros(4, 2)}, [4]))
    with pytest.raises(ValueError, match="threshold"):
        VLMScoringHook(rb, service=None, threshold=2.0)


def test_missions_reach_the_scorer():
    asm = ClipAssembler(clip_len=2)
    out = asm.add(_steps([1, 1], [0, 1]), ["go to the red door", "go to the red door"])
    assert isinstance(out.get("mission"), NonTensorStack)
    assert out["mission"] == ["go to the red door"]
