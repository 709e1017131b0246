"""ScoringService(backend="ray") on a real local Ray cluster.

Not collected by ``make test`` directly: tests/test_ray_scoring.py runs this file in its own
network namespace (``unshare -rn``, loopback up), so that Ray listens on loopback only, with
HOME in a temporary folder and Ray's usage stats off.
"""
import os
import random
import signal
import time

import pytest
import torch
from tensordict import TensorDict

if os.environ.get("TORCHRL_VLM_RAY_NETNS") != "1":
    pytest.skip("run through tests/test_ray_scoring.py (a network namespace of its own)", allow_module_level=True)

import ray  # noqa: E402
from _scorers import HangsOnSingleStepClips, LengthScorer, SlowConstantScorer  # noqa: E402

from torchrl_vlm import MixtureSampler, ScoringService, ScoringServiceError, VLMReplayBuffer  # noqa: E402
from torchrl_vlm.scoring.ray_service import RayScoringService  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def cluster():
    # Under $TMPDIR, which the runner keeps short: Ray's Unix sockets live there.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=os.environ["TMPDIR"])
    yield
    ray.shutdown()


def clips(lengths, L=8):
    mask = torch.arange(L).expand(len(lengths), L) < torch.tensor(lengths).unsqueeze(-1)
    return TensorDict({"mask": mask}, batch_size=[len(lengths)])


def drain(service, tickets, timeout_s=60):
    """Polls until every ticket is answered or lost; returns {ticket: scores}."""
    answers, deadline = {}, time.monotonic() + timeout_s
    while any(service.is_pending(t) for t in tickets):
        for result in service.poll():
            answers[result.ticket] = result.scores
        assert time.monotonic() < deadline, "the service did not settle"
        time.sleep(0.01)
    for result in service.poll():
        answers[result.ticket] = result.scores
    return answers


def test_replicas_answer_what_the_scorer_says():
    with ScoringService(LengthScorer, backend="ray", num_replicas=2, batch_clips=4) as service:
        assert isinstance(service, RayScoringService) and len(set(service.replica_pids())) == 2
        rng = random.Random(0)
        batches = [[rng.randint(1, 8) for _ in range(rng.randint(1, 4))] for _ in range(40)]
        tickets = [service.submit(clips(b), meta=i) for i, b in enumerate(batches)]
        answers = drain(service, tickets)
        assert sorted(answers) == tickets
        for ticket, lengths in zip(tickets, batches, strict=True):
            torch.testing.assert_close(answers[ticket], torch.tensor(lengths) / 8.0)
        stats = service.stats()
        assert stats["clips_scored"] == stats["clips_submitted"] == sum(map(len, batches))
        assert stats["clips_lost"] == stats["worker_restarts"] == 0


def test_killed_replicas_lose_their_clips_and_the_others_carry_on():
    """Replica processes killed at random moments, many times: every clip is answered (1.0) or counted
    lost, Ray restarts the replicas, and the service keeps scoring."""
    rng = random.Random(1)
    with ScoringService(SlowConstantScorer, backend="ray", num_replicas=2, batch_clips=2, max_restarts=10,
                        max_pending=10_000) as service:
        tickets, kills, answers = [], 0, {}
        t_end = time.monotonic() + 8
        next_kill = time.monotonic() + rng.uniform(0.3, 1.5)
        while time.monotonic() < t_end or kills < 4:
            assert time.monotonic() < t_end + 60, "the replicas did not come back to be killed again"
            tickets.append(service.submit(clips([8, 8]), meta=None))
            for result in service.poll():
                answers[result.ticket] = result.scores
            if time.monotonic() > next_kill and kills < 4:
                pids = service.replica_pids()  # those up: both may be restarting
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                    next_kill = time.monotonic() + rng.uniform(0.5, 2.0)
            time.sleep(rng.uniform(0.0, 0.1))
        answers.update(drain(service, tickets, timeout_s=120))
        stats = service.stats()
        assert kills == 4 and stats["worker_restarts"] >= 1 and stats["clips_lost"] >= 2
        assert stats["clips_scored"] + stats["clips_lost"] + stats["clips_dropped"] == stats["clips_submitted"]
        assert stats["clips_scored"] == 2 * len(answers) and all(bool((s == 1.0).all()) for s in answers.values())
        # After the last kill, both replicas are back and answer.
        assert drain(service, [service.submit(clips([8]), meta=None) for _ in range(6)])


def test_a_hung_replica_is_killed_while_the_other_scores():
    with ScoringService(HangsOnSingleStepClips, backend="ray", num_replicas=2, batch_clips=1,
                        hang_timeout_s=2.0, max_restarts=2) as service:
        poison = service.submit(clips([1]), meta="poison")
        t0 = time.monotonic()
        normal = [service.submit(clips([8]), meta=i) for i in range(20)]
        answers = drain(service, [poison, *normal], timeout_s=60)
        # Lost: the poison clip, and the one batch at most that was queued behind it on its replica.
        missing = set(normal) - set(answers)
        assert poison not in answers and len(missing) <= 1 and set(answers) <= set(normal)
        assert service.stats()["clips_lost"] == 1 + len(missing) and service.stats()["worker_restarts"] == 1
        assert time.monotonic() - t0 < 30


def test_every_replica_out_of_restarts_is_a_clear_error():
    service = ScoringService(SlowConstantScorer, backend="ray", num_replicas=1, max_restarts=0)
    ticket = service.submit(clips([8]), meta=None)
    os.kill(service.replica_pids()[0], signal.SIGKILL)
    with pytest.raises(ScoringServiceError, match=r"every Ray replica .* 0 times \(max_restarts\)"):
        drain(service, [ticket], timeout_s=60)
        drain(service, [service.submit(clips([8]), meta=None)], timeout_s=60)
    service.close()


def test_a_scorer_that_cannot_be_built_is_a_clear_error():
    from _scorers import BrokenAtStart

    with pytest.raises(ScoringServiceError, match="acme/missing-vlm"):
        ScoringService(BrokenAtStart, backend="ray", num_replicas=2)


def test_the_vlm_buffer_does_not_care_which_backend_it_holds():
    from _scorers import ClipFingerprintScorer, clip_fingerprint
    from torchrl.collectors import Collector
    from torchrl.data import LazyTensorStorage
    from torchrl.envs.utils import RandomPolicy

    from torchrl_vlm import make_minigrid_env

    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=4, seed=0, render=False)
    collector = Collector(env, RandomPolicy(env.full_action_spec), frames_per_batch=64, total_frames=512)
    rb = VLMReplayBuffer(storage=LazyTensorStorage(1024), scorer=ClipFingerprintScorer, sampler=MixtureSampler(),
                         batch_size=16, clip_len=4, backend="ray", num_replicas=2)
    try:
        for batch in collector:
            rb.extend(batch)
        rb.drain(timeout_s=60)
        data = rb[:]
        scored = ~torch.isnan(data["vlm_score"])
        assert scored.float().mean() > 0.9  # all but the clips still open at the end
        assert torch.equal(data["vlm_score"][scored], clip_fingerprint(data["clip_id"][scored]))
        assert rb.stats()["clips_lost"] == 0 and len(rb.service.replica_pids()) == 2
    finally:
        rb.close()
        collector.shutdown()


def test_the_dqn_recipe_scores_with_ray_replicas(tmp_path):
    """vlm.backend=ray vlm.num_replicas=2 end to end in the DQN recipe, on the running cluster: every clip is
    answered (score_lag makes each extend wait for its verdicts), and the event scorer's 0/1 verdicts land."""
    from test_recipes import _stored, config, dqn_minigrid

    summary = dqn_minigrid.train(
        config("buffer.sampler=vlm", "vlm.backend=ray", "vlm.num_replicas=2", "vlm.score_lag=1",
               "vlm.replica_options={num_cpus: 1}", "collector.total_frames=512", "logger.gallery_interval=0"),
        tmp_path,
    )
    stats = summary["buffer_stats"]
    assert stats["clips_scored"] > 0 and stats["clips_lost"] == stats["clips_dropped"] == 0
    stored = _stored(summary["checkpoint"])
    written = int(stats["slots_written"])
    scores = stored["vlm_score"][:written]
    scores = scores[~scores.isnan()]
    assert scores.numel() > 0 and set(scores.unique().tolist()) <= {0.0, 1.0}
    assert stored["vlm_priority"][:written].sum() > 0

