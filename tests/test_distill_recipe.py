"""Smoke runs of recipes/ppo_minigrid_distill.py: PPO and A2C with each teacher, and its errors."""
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))

import ppo_minigrid_distill  # noqa: E402

TINY = [
    "env.name=MiniGrid-GoToDoor-6x6-v0",
    "env.num_envs=2",
    "env.max_steps=16",
    "collector.total_frames=128",
    "collector.frames_per_batch=64",
    "optim.minibatch_size=32",
    "eval.interval=64",
    "eval.episodes=2",
    "logger.backend=csv",
    "logger.progress=false",
]


def config(*overrides):
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        return compose("ppo_minigrid_distill", overrides=[*TINY, *overrides])


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
@pytest.mark.parametrize("teacher", ["none", "planner", "noisy_planner"])
def test_smoke(algo, teacher, tmp_path):
    summary = ppo_minigrid_distill.train(config(f"algo={algo}", f"teacher={teacher}"), tmp_path)
    assert summary["frames"] == 128
    assert [row["frames"] for row in summary["evals"]] == [64, 128]  # the final evaluation is the one at 128
    logged = {f"{p.parent.name}/{p.stem}" for p in (tmp_path / "logs").rglob("scalars/*/*.csv")}
    assert {"train/sps", "train/loss_objective", "eval/success"} <= logged
    if teacher != "none":
        assert {"train/loss_distill", "train/distill_kl", "time/teacher"} <= logged
    assert (tmp_path / "checkpoint" / "checkpoint.pt").exists()


def test_a_run_can_end_when_solved(tmp_path):
    # solved_success=0 makes the first evaluation count as solved.
    base = ["collector.total_frames=640", "eval.solved_success=0.0", "checkpoint.at_end=false"]
    summary = ppo_minigrid_distill.train(config(*base, "eval.stop_when_solved=true"), tmp_path / "stop")
    assert summary["frames"] == 64 and summary["solved_at"] == 64 and summary["stopped_when_solved"]
    assert [row["frames"] for row in summary["evals"]] == [64]
    summary = ppo_minigrid_distill.train(config(*base), tmp_path / "full")
    assert summary["frames"] == 640 and summary["solved_at"] == 64 and not summary["stopped_when_solved"]


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_smoke_with_the_tiny_vlm_teacher(algo, tiny_vlm, tmp_path):
    summary = ppo_minigrid_distill.train(
        config(f"algo={algo}", "teacher=vlm", f"teacher_vlm.model={tiny_vlm}", "teacher_vlm.batch_size=32"), tmp_path
    )
    assert summary["frames"] == 128
    kl = (next((tmp_path / "logs").rglob("scalars/train/distill_kl.csv"))).read_text().strip().splitlines()
    assert kl and all(float(line.split(",")[1]) >= 0 for line in kl)


def test_the_vlm_teacher_in_its_own_process(tiny_vlm, tmp_path):
    summary = ppo_minigrid_distill.train(
        config("algo=a2c", "teacher=vlm", f"teacher_vlm.model={tiny_vlm}", "teacher_vlm.remote=true"), tmp_path
    )
    assert summary["frames"] == 128
    assert next((tmp_path / "logs").rglob("scalars/train/distill_kl.csv")).read_text().strip()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["algo=dqn"], "ppo"),
        (["teacher=oracle"], "planner"),
        (["env.name=MiniGrid-Empty-5x5-v0"], "LavaGapS7"),
        (["collector.frames_per_batch=63"], "multiple of env.num_envs"),
    ],
)
def test_config_errors_are_clear(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        ppo_minigrid_distill.train(config(*overrides), tmp_path)


def test_a_missing_vlm_teacher_suggests_the_planner(tmp_path):
    with pytest.raises(OSError, match="(?s)acme/no-such-vlm.*teacher=planner"):
        ppo_minigrid_distill.train(config("teacher=vlm", "teacher_vlm.model=acme/no-such-vlm"), tmp_path)
