"""What survives what: worker deaths at random moments, a killed trainer, a restart that hangs, Ctrl-C."""
import functools
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from _scorers import (
    BuildFailsWhenFlagged,
    BuildHangsWhenFlagged,
    ClipFingerprintScorer,
    SlowConstantScorer,
    clip_fingerprint,
)
from tensordict import TensorDict

from torchrl_vlm import ScoringService, ScoringServiceError

ROOT = Path(__file__).resolve().parents[1]
KILLS = 24


def _clips(n, first_id):
    return TensorDict(
        {"mask": torch.ones(n, 4, dtype=torch.bool), "clip_id": torch.arange(first_id, first_id + n)}, [n]
    )


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.slow  # 24 kills, each waiting for a new worker to import torch: minutes on 2 cores
def test_worker_kills_at_random_moments_end_in_counted_restarts():
    """SIGKILL the worker at random moments, two dozen times: while it loads, and while answers flow back.

    Each kill must end in a counted restart, never an exception out of submit/poll (the
    fetch of a dead worker's shared-memory answer used to raise ConnectionRefusedError),
    and every clip must end scored, dropped or lost, with each verdict on its own clip.
    """
    rng = random.Random(0)
    service = ScoringService(functools.partial(ClipFingerprintScorer, 0.002), batch_clips=2, max_restarts=KILLS)
    answered = {}

    def collect(results):
        for result in results:
            answered.update(zip(result.meta["ids"], result.scores.tolist(), strict=True))

    try:
        next_id = 0
        for kill in range(KILLS):
            # Every other kill lands while the new worker is still loading; the others once it
            # answers, a random while into the stream of answers.
            deadline = time.monotonic() + 60
            while kill % 2 and service._starting_since is not None:
                collect(service.poll())
                assert time.monotonic() < deadline
                time.sleep(0.005)
            until = time.monotonic() + rng.uniform(0.0, 0.15 if kill % 2 else 1.5)
            while time.monotonic() < until:
                clips = _clips(rng.randint(1, 3), next_id)
                next_id += clips.batch_size[0]
                service.submit(clips, meta={"ids": clips["clip_id"].tolist()})
                collect(service.poll())
                time.sleep(rng.uniform(0.0, 0.003))
            os.kill(service.worker_pid, signal.SIGKILL)
            restarts = kill + 1
            while service.stats()["worker_restarts"] < restarts:
                collect(service.poll())
                time.sleep(0.001)
        while service.queue_depth:
            collect(service.poll())
            time.sleep(0.005)
        stats = service.stats()
    finally:
        service.close()
    assert stats["worker_restarts"] == KILLS
    assert stats["clips_scored"] + stats["clips_dropped"] + stats["clips_lost"] == stats["clips_submitted"]
    assert stats["clips_lost"] > 0 and len(answered) > 100
    ids = torch.tensor(list(answered))
    assert torch.equal(torch.tensor(list(answered.values())), clip_fingerprint(ids))


def test_no_scoring_process_outlives_a_killed_trainer(tmp_path):
    trainer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            sys.path.insert(0, sys.argv[1])
            from _scorers import ClipFingerprintScorer
            from torchrl_vlm import ScoringService
            if __name__ == "__main__":
                service = ScoringService(ClipFingerprintScorer)
                print(service.worker_pid, flush=True)
                time.sleep(600)
        """), str(ROOT / "tests")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        worker = int(trainer.stdout.readline())
        children = [int(p) for p in Path(f"/proc/{trainer.pid}/task/{trainer.pid}/children").read_text().split()]
        assert worker in children and not _gone(worker)
        trainer.kill()  # SIGKILL, as the OOM killer would: no cleanup code runs in the trainer
        trainer.wait(10)
        deadline = time.monotonic() + 15
        while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(pid) for pid in children), [p for p in children if not _gone(p)]
    finally:
        trainer.kill()


def test_a_restarted_worker_that_hangs_building_its_scorer_is_detected(tmp_path):
    flag = tmp_path / "hang"
    service = ScoringService(functools.partial(BuildHangsWhenFlagged, str(flag)), max_restarts=1)
    service.start_timeout_s = 2.0  # the first start took its time (importing torch); restarts get 2 s
    try:
        flag.touch()  # from now on, building the scorer hangs
        os.kill(service.worker_pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(ScoringServiceError, match="did not finish building its scorer within 2s"):
            while time.monotonic() - t0 < 60:
                service.poll()
                time.sleep(0.01)
        assert time.monotonic() - t0 < 30
    finally:
        service.close()


def test_a_restarted_worker_that_cannot_rebuild_uses_a_restart_then_gives_up_clearly(tmp_path):
    flag = tmp_path / "fail"
    service = ScoringService(functools.partial(BuildFailsWhenFlagged, str(flag)), max_restarts=2)
    try:
        flag.touch()
        os.kill(service.worker_pid, signal.SIGKILL)
        expected = "(?s)could not rebuild its scorer.*out of memory.*restarted 2 times"
        with pytest.raises(ScoringServiceError, match=expected):
            t0 = time.monotonic()
            while time.monotonic() - t0 < 60:
                service.poll()
                time.sleep(0.01)
        assert service.stats()["worker_restarts"] == 2
    finally:
        service.close()


def test_an_answer_waiting_after_a_long_pause_is_not_taken_for_a_hang():
    with ScoringService(functools.partial(SlowConstantScorer, 0.05), hang_timeout_s=1.0) as service:
        service.submit(_clips(1, 0))
        time.sleep(2.0)  # a long evaluation or checkpoint: nobody polls, the answer waits in the queue
        service.submit(_clips(1, 1))
        answered = []
        t0 = time.monotonic()
        while len(answered) < 2 and time.monotonic() - t0 < 30:
            answered += service.poll()
            time.sleep(0.01)
        assert len(answered) == 2 and service.stats()["worker_restarts"] == 0


def test_a_resumed_run_gets_a_fresh_restart_budget_and_its_totals_continue():
    with ScoringService(ClipFingerprintScorer, max_restarts=1) as service:
        service.continue_counters({"worker_restarts": 3, "clips_submitted": 10, "clips_scored": 10})
        service.continue_counters({"worker_restarts": 3, "clips_submitted": 10, "clips_scored": 10})  # set, not added
        os.kill(service.worker_pid, signal.SIGKILL)
        t0 = time.monotonic()
        while service.stats()["worker_restarts"] < 4:
            service.poll()  # the earlier run's restarts do not use up this one's budget
            assert time.monotonic() - t0 < 30
            time.sleep(0.01)
        assert service.stats()["clips_submitted"] == 10


CTRL_C_RUNS = {
    "dqn_minigrid": ["env.name=MiniGrid-DoorKey-5x5-v0", "logger.gallery_interval=0"],
    "sac": ["env.name=ball_in_cup-catch", "network.hidden=[32,32]", "buffer.batch_size=32"],
}


@pytest.mark.parametrize("recipe", list(CTRL_C_RUNS))
@pytest.mark.slow  # a recipe in a subprocess, interrupted: ~20 s each (`make test-slow`)
def test_ctrl_c_ends_the_run_with_a_checkpoint_and_no_orphan(recipe, tmp_path):
    overrides = [
        *CTRL_C_RUNS[recipe],
        "env.num_envs=2",
        "collector.total_frames=10000000",
        "collector.frames_per_batch=32",
        "collector.init_random_frames=64",
        "buffer.capacity=2000",
        "buffer.sampler=vlm",
        "vlm.clip_len=8",
        "eval.interval=0",
        "eval.episodes=1",
        "logger.backend=csv",
        "logger.log_interval=64",
        "logger.progress=false",
        f"hydra.run.dir={tmp_path}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "RL_WARNINGS": "False", "MUJOCO_GL": "egl"}
    run = subprocess.Popen(
        [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *overrides],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.rglob("scalars/train/sps.csv")):  # the loop is running
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read() if run.poll() else ""
            time.sleep(0.2)
        workers = [int(p) for p in Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()]
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, out
    assert "SIGINT: stopping after this batch" in out and "Traceback" not in out
    from torchrl_vlm.training import load_checkpoint

    state = load_checkpoint(tmp_path / "checkpoint")
    assert 0 < state["collected_frames"] < 10_000_000
    assert all(_gone(pid) for pid in workers)
