"""VLMReplayBuffer: collector batches in, verdicts on exactly the right slots, reproducible with score_lag."""
import functools
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from _scorers import ClipFingerprintScorer, LastFrameScorer, LengthScorer, clip_fingerprint, last_frame_fingerprint
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage
from torchrl.envs.utils import RandomPolicy

from torchrl_vlm import (
    EVENT_DEFINITIONS,
    EVENT_NAMES,
    DelayedScorer,
    MiniGridEventScorer,
    MixtureSampler,
    VLMReplayBuffer,
    make_minigrid_env,
)

README = Path(__file__).resolve().parents[1] / "README.md"
# Tests given a running_service (tests/conftest.py) share its scoring process, on one worker.
SHARES_A_SERVICE = pytest.mark.xdist_group("running_services")


def _batches(env, frames, frames_per_batch, seed=0):
    """Collector batches of a random policy, cloned (the collector reuses its buffers)."""
    torch.manual_seed(seed)
    collector = Collector(
        env, RandomPolicy(env.full_action_spec), frames_per_batch=frames_per_batch, total_frames=frames
    )
    out = [batch.clone() for batch in collector]
    collector.shutdown()
    return out


def _buffer(scorer, capacity=5000, **kwargs):
    return VLMReplayBuffer(
        storage=LazyTensorStorage(capacity), scorer=scorer, batch_size=kwargs.pop("batch_size", 64), **kwargs
    )


# ----------------------------------------------------------------- the README
def test_the_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "replay_buffer=rb" in b and "VLMReplayBuffer" in b)
    printed = []
    exec(compile(example, str(README), "exec"), {"print": printed.append, "__name__": "readme"})
    assert len(printed) == 4096 // 128
    assert printed[-1]["lambda"] == 0.5  # warm-up is half of the 4,096 frames
    assert printed[-1]["positive_clips"] > 0  # random play on 5x5 picks up keys
    assert any("train/success" in row for row in printed)  # episode metrics reach the loop


# --------------------------------------------------------------- the mechanism
@SHARES_A_SERVICE
def test_priorities_sit_exactly_on_event_clips_and_the_sampled_share_follows_lambda(running_service):
    """Discriminates a working VLM-RB from a broken one in seconds.

    Every slot's priority is 1 exactly when its clip holds an event, and the share of
    sampled transitions that are positive is λ + (1 − λ)·(share of positive slots):
    the λ part always lands on positives, the uniform part like a Binomial.
    """
    clip_len, lam = 8, 0.5
    env = make_minigrid_env(
        "MiniGrid-DoorKey-5x5-v0", num_envs=3, clip_len=clip_len, seed=0, max_steps=40, render=False
    )
    sampler = MixtureSampler(lam_max=lam)
    with _buffer(running_service(MiniGridEventScorer), sampler=sampler, clip_len=clip_len, score_lag=0,
                 batch_size=100) as rb:
        # 3 envs x 25 steps per batch: clips of 8 straddle the batches.
        for batch in _batches(env, 3000, 75):
            rb.extend(batch)
        stats = rb.stats()
        data = rb[:]
        torch.manual_seed(0)
        draws, positive_draws, from_priority = 0, 0, 0
        for _ in range(200):
            sample = rb.sample()
            draws += sample.numel()
            positive_draws += int(data["vlm_priority"][sample["index"]].sum())
            from_priority += int(sample["from_priority"].sum())

    assert "pixels" not in data.keys() and ("next", "pixels") not in data.keys(True)
    scored = ~torch.isnan(data["vlm_score"])
    hit = data["next", "events"][:, [EVENT_NAMES.index(e) for e in EVENT_DEFINITIONS["any"]]].any(-1)
    n_pos_clips = 0
    for cid in torch.unique(data["clip_id"]).tolist():
        rows = data["clip_id"] == cid
        if not scored[rows].any():
            continue  # the last, unfinished clip of an env
        assert scored[rows].all()
        positive = bool(hit[rows].any())
        n_pos_clips += positive
        assert torch.all(data["vlm_priority"][rows] == float(positive)), cid
    assert n_pos_clips > 0 and stats["positive_clips"] == n_pos_clips
    assert stats["stale_rejected"] == 0 and stats["clips_dropped"] == 0 and stats["clips_lost"] == 0
    assert int((~scored).sum()) < 3 * clip_len  # at most the envs' unfinished clips
    assert sampler.num_positive == int(data["vlm_priority"].sum())

    share = float(data["vlm_priority"].mean())
    assert 0.02 < share < 0.6  # the check below needs both kinds of slot
    assert from_priority == lam * draws  # the prioritised share is exact (remainders carried)
    uniform = (1 - lam) * draws
    sd = math.sqrt(uniform * share * (1 - share))
    assert abs(positive_draws - (lam * draws + uniform * share)) < 5 * sd


def test_score_lag_lands_each_verdict_exactly_k_extends_later():
    clip_len, lag = 4, 2
    env = make_minigrid_env(
        "MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=clip_len, seed=1, render=False, max_steps=10
    )
    batches = _batches(env, 400, 10)
    # The extend in which each clip's last step arrived: that is when the clip completes.
    completed = {}
    for t, batch in enumerate(batches):
        for cid in batch["clip_id"].reshape(-1).tolist():
            completed[cid] = t
    first_scored = {}
    scorer = functools.partial(DelayedScorer, ClipFingerprintScorer, 0.02)  # answers arrive late, not lagged
    with _buffer(scorer, clip_len=clip_len, score_lag=lag) as rb:
        for t, batch in enumerate(batches):
            rb.extend(batch)
            rb.sample()  # must not let an early verdict in
            data = rb[:]
            for cid in data["clip_id"][~torch.isnan(data["vlm_score"])].unique().tolist():
                first_scored.setdefault(cid, t)
        assert rb.stats()["score_wait_s"] > 0
    assert len(first_scored) > 20
    for cid, t in first_scored.items():
        assert t == completed[cid] + lag, cid


# --------------------------------------------------------- verdicts and slots
@SHARES_A_SERVICE
def test_a_late_verdict_never_lands_on_a_reused_slot(running_service):
    """Verdicts two extends late, in a buffer that turns over every 2.5 extends.

    ``score_lag=2`` makes it deterministic which verdicts find their slots reused
    (the same write path serves the asynchronous mode).
    """
    clip_len = 4
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=clip_len, seed=1, render=False)

    def check(data):
        # Every verdict on a slot names the clip that slot holds now (a stale one names another),
        # whatever the buffer's own counters say; checked after every extend, before a later
        # verdict could overwrite a stale one.
        scored = ~torch.isnan(data["vlm_score"])
        assert torch.equal(data["vlm_score"][scored], clip_fingerprint(data["clip_id"][scored]))
        assert torch.equal(data["vlm_priority"], (torch.nan_to_num(data["vlm_score"], nan=0.0) >= 0.5).float())
        return int(scored.sum())

    scored = 0
    with _buffer(running_service(ClipFingerprintScorer), capacity=100, clip_len=clip_len, score_lag=2) as rb:
        for batch in _batches(env, 1200, 40):
            rb.extend(batch)
            scored += check(rb[:])
        stats = rb.stats()
    assert scored > 0  # verdicts that found their slots ...
    assert stats["stale_rejected"] > 0  # ... and verdicts that did not


@SHARES_A_SERVICE
def test_a_clip_cut_short_by_a_partial_reset_is_scored_as_the_steps_it_had(running_service):
    clip_len = 8
    # Episodes of at most 11 steps in 3 envs: clips end at clip_len or at an episode's end, at different times.
    env = make_minigrid_env(
        "MiniGrid-DoorKey-5x5-v0", num_envs=3, clip_len=clip_len, seed=2, render=False, max_steps=11
    )
    with _buffer(running_service(LengthScorer), clip_len=clip_len, score_lag=0) as rb:
        for batch in _batches(env, 600, 30):
            rb.extend(batch)
        data = rb[:]
    scored = ~torch.isnan(data["vlm_score"])
    short = 0
    for cid in data["clip_id"][scored].unique().tolist():
        rows = data["clip_id"] == cid
        length = int(rows.sum())
        assert length <= clip_len
        # The scorer saw exactly the clip's own steps (its mask), no more and no fewer.
        assert torch.all(data["vlm_score"][rows] == length / clip_len), cid
        if length < clip_len:
            short += 1
            assert bool(data["next", "done"][rows].reshape(-1)[data["clip_step"][rows].argmax()])
    assert short > 5


@pytest.mark.parametrize("env_len, buffer_len", [(8, 32), (32, 8)])
@SHARES_A_SERVICE
def test_a_clip_length_that_disagrees_with_the_env_is_refused_naming_both(env_len, buffer_len, running_service):
    # Both once ran silently: 8 in the env and 32 in the buffer scored only episode-ending clips (coverage
    # 0.18); 32 and 8 dropped 24 of every 32 steps (coverage 0.51).
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=env_len, seed=0, render=False)
    with _buffer(running_service(LengthScorer), clip_len=buffer_len) as rb:
        with pytest.raises(ValueError, match=f"the env's clips have {env_len} steps.*clip_len is {buffer_len}"):
            for batch in _batches(env, 256, 64):
                rb.extend(batch)
        assert len(rb) == 0  # refused before the batch was written


@SHARES_A_SERVICE
def test_the_buffer_reads_the_clip_length_from_the_env_and_covers_every_step(running_service):
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=8, seed=0, render=False)
    with _buffer(running_service(LengthScorer), score_lag=0) as rb:
        assert rb.clip_len is None
        for batch in _batches(env, 512, 64):
            rb.extend(batch)
        assert rb.clip_len == 8
        data = rb[:]
    scored = ~torch.isnan(data["vlm_score"])
    # Every step of every clip the env closed got its verdict: only the clips still open at the end did not.
    open_clips = data["clip_id"][~scored].unique().numel()
    assert open_clips <= 2 and float(scored.float().mean()) > 0.95
    full = data["clip_step"][scored] == 7
    assert torch.all(data["vlm_score"][scored][full] == 1.0)  # a whole clip: 8 real steps of L = 8


def test_a_clip_ends_on_the_state_its_last_action_reached():
    clip_len = 8
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=clip_len, seed=3, max_steps=20)
    batches = _batches(env, 120, 30)
    with _buffer(LastFrameScorer, clip_len=clip_len) as rb:
        for batch in batches:
            rb.extend(batch)
        assert rb.drain() == 0
        data = rb[:]
    steps = torch.cat([b.reshape(-1) for b in batches])
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


@SHARES_A_SERVICE
def test_a_non_default_priority_key_works_end_to_end(running_service):
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=4, seed=5, render=False, max_steps=30)
    sampler = MixtureSampler(lam_max=None, priority_key="semantic")
    with _buffer(running_service(ClipFingerprintScorer), sampler=sampler, clip_len=4, score_lag=0) as rb:
        for batch in _batches(env, 200, 20):
            rb.extend(batch)
        data = rb[:]
        torch.manual_seed(0)
        drawn = rb.sample(500)["index"]
    assert "vlm_priority" not in data.keys()
    expected = (torch.nan_to_num(data["vlm_score"], nan=0.0) >= 0.5).float()
    assert torch.equal(data["semantic"], expected) and expected.sum() > 0
    assert bool(data["semantic"][drawn].all())  # pure prioritisation draws only what the column marks


# ------------------------------------------------------------- faults and state
def test_the_buffer_survives_a_worker_kill_mid_run():
    clip_len = 4
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=clip_len, seed=2, render=False)
    with _buffer(functools.partial(ClipFingerprintScorer, 0.05), capacity=4000, clip_len=clip_len, batch_clips=4) as rb:
        batches = _batches(env, 800, 40)
        for batch in batches[:10]:
            rb.extend(batch)
        os.kill(rb.service.worker_pid, signal.SIGKILL)
        for batch in batches[10:]:
            rb.extend(batch)
        assert rb.drain() == 0
        stats = rb.stats()
        data = rb[:]
        rb.sample()  # training goes on
    assert stats["worker_restarts"] == 1 and stats["clips_scored"] > 0
    assert stats["clips_scored"] + stats["clips_lost"] + stats["clips_dropped"] == stats["clips_submitted"]
    unscored = torch.isnan(data["vlm_score"])
    # Rows without a verdict (lost in the crash, or in unfinished clips) are never positive.
    assert torch.all(data["vlm_priority"][unscored] == 0)
    assert torch.equal(data["vlm_score"][~unscored], clip_fingerprint(data["clip_id"][~unscored]))


@SHARES_A_SERVICE
@pytest.mark.parametrize("via", ["state_dict", "dumps"])
def test_a_restored_buffer_carries_on_exactly_like_the_original(via, tmp_path, running_service):
    """Partial clips, counters, generations, held verdicts and λ survive a checkpoint.

    The original and the restored buffer are fed the same remaining batches; with
    ``score_lag`` both must end bit-identical, including the clips that straddled
    the checkpoint.
    """
    clip_len = 8
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=3, clip_len=clip_len, seed=6, render=False)
    batches = _batches(env, 900, 30)

    def fresh(slot):
        return _buffer(
            running_service(ClipFingerprintScorer, slot),
            capacity=600,
            clip_len=clip_len,
            score_lag=1,
            sampler=MixtureSampler(lam_max=0.5, warmup=900),
        )

    with fresh(0) as original, fresh(1) as restored:
        for batch in batches[:13]:
            original.extend(batch)
        assert original.assembler.open_clips > 0  # something straddles the checkpoint
        if via == "dumps":
            original.dumps(tmp_path / "rb")
            restored.loads(tmp_path / "rb")
        else:
            restored.load_state_dict(original.state_dict())
        for batch in batches[13:]:
            original.extend(batch)
            restored.extend(batch)
        a, b = original[:], restored[:]
        for key in ("observation", "action", "clip_id", "vlm_priority", "vlm_score"):
            torch.testing.assert_close(a[key], b[key], equal_nan=True, rtol=0, atol=0)
        sa, sb = original.stats(), restored.stats()
        for key in (
            "positive_clips",
            "slots_written",
            "slots_scored",
            "coverage",
            "lambda",
            "positive_slots",
            "extends",
        ):
            assert sa[key] == sb[key], key
        assert torch.equal(
            original.writer.generations_of(torch.arange(600)), restored.writer.generations_of(torch.arange(600))
        )


@SHARES_A_SERVICE
def test_a_state_dict_taken_while_verdicts_arrive_keeps_sampler_and_column_agreed(running_service):
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=4, seed=7, render=False, max_steps=30)
    batches = _batches(env, 200, 20)
    with (
        _buffer(functools.partial(ClipFingerprintScorer, 0.05), capacity=500, clip_len=4) as rb,
        _buffer(running_service(ClipFingerprintScorer), capacity=500, clip_len=4) as restored,
    ):
        for batch in batches:
            rb.extend(batch)  # asynchronous: verdicts still in flight
        restored.load_state_dict(rb.state_dict())  # drains, then saves what the drain wrote
        column = restored[:]["vlm_priority"]
        assert column.sum() > 0
        assert restored.sampler.num_positive == int(column.sum())
        assert torch.equal(restored.sampler.priority(torch.arange(len(restored))), column)


@SHARES_A_SERVICE
def test_bad_arguments_are_refused_naming_them(running_service):
    storage = LazyTensorStorage(10)
    with pytest.raises(ValueError, match="threshold"):
        VLMReplayBuffer(storage=storage, scorer=MiniGridEventScorer, threshold=2.0)
    with pytest.raises(ValueError, match="score_lag"):
        VLMReplayBuffer(storage=storage, scorer=MiniGridEventScorer, score_lag=-1)
    with pytest.raises(ValueError, match="clip_len"):
        VLMReplayBuffer(storage=storage, scorer=MiniGridEventScorer, clip_len=0)
    with pytest.raises(
        TypeError, match="scorer must be a scorer or its factory .or a ScoringService, where one is taken., got str"
    ):
        VLMReplayBuffer(storage=storage, scorer="acme/vlm")
    service = running_service(MiniGridEventScorer)
    with pytest.raises(TypeError, match="max_pending"):
        VLMReplayBuffer(storage=storage, scorer=service, max_pending=4)
    rb = VLMReplayBuffer(storage=storage, scorer=service)
    with pytest.raises(KeyError, match="RenderClips"):
        rb.extend(TensorDict({"observation": torch.zeros(4, 2)}, [4]))
    with pytest.raises(TypeError, match="TensorDict"):
        rb.extend({"observation": torch.zeros(4, 2)})
    tags = {"clip_id": torch.zeros(11, dtype=torch.int64), "clip_step": torch.zeros(11, dtype=torch.int64)}
    with pytest.raises(ValueError, match="11 rows does not fit the buffer's capacity of 10"):
        rb.extend(TensorDict(tags, [11]))
    rb.close()
    assert service.worker_pid is not None  # the caller's service stays up
