"""Smoke runs of recipes/ppo_minigrid_distill.py: PPO and A2C with each teacher, and its errors."""
import sys
from pathlib import Path

import pytest
import torch
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
    "logger.log_interval=64",
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
    assert {"train/sps", "train/loss_objective", "eval/success", "time/collect"} <= logged
    assert len(_logged(tmp_path, "train/sps")) == 2  # logger.log_interval=64 over 128 frames
    if teacher == "none":
        assert "train/loss_distill" not in logged or set(_logged(tmp_path, "train/loss_distill")) == {0.0}
    else:
        # The distillation term is λ·KL(π_T ‖ π_θ), λ = loss.distill_coeff (0.01 by default), and KL >= 0.
        kl, term = _logged(tmp_path, "train/distill_kl"), _logged(tmp_path, "train/loss_distill")
        assert all(k >= 0 for k in kl) and max(kl) > 0
        assert term == pytest.approx([0.01 * k for k in kl], rel=1e-4)
    assert summary["checkpoint"] == str(tmp_path / "checkpoint")


def _logged(run_dir, name):
    """The values of one logged scalar, in order (TorchRL's CSV logger: step,value per line)."""
    text = next((Path(run_dir) / "logs").rglob(f"scalars/{name}.csv")).read_text().strip()
    return [float(line.split(",")[1]) for line in text.splitlines()]


def test_resume_continues_the_run_and_refuses_other_settings(tmp_path):
    first = ppo_minigrid_distill.train(config("checkpoint.interval=64"), tmp_path / "a")
    ckpt = ppo_minigrid_distill.load_checkpoint(first["checkpoint"])
    assert ckpt["collected_frames"] == 128
    # With a learning rate of 0, the weights stay the checkpoint's only if they were restored.
    resumed = ppo_minigrid_distill.train(
        config("collector.total_frames=256", "optim.lr=0.0", f"checkpoint.resume={first['checkpoint']}"),
        tmp_path / "b",
    )
    assert resumed["start_frames"] == 128 and resumed["frames"] == 256
    assert [row["frames"] for row in resumed["evals"]] == [192, 256]  # the eval cadence carries on
    after = ppo_minigrid_distill.load_checkpoint(resumed["checkpoint"])
    for key, value in ckpt["loss_module"].items():
        if "actor_network_params" in key or "critic_network_params" in key:
            torch.testing.assert_close(after["loss_module"][key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="teacher: checkpoint 'planner', now 'none'"):
        ppo_minigrid_distill.train(
            config("teacher=none", "collector.total_frames=256", f"checkpoint.resume={first['checkpoint']}"),
            tmp_path / "c",
        )
    with pytest.raises(ValueError, match="nothing to do"):
        ppo_minigrid_distill.train(config(f"checkpoint.resume={first['checkpoint']}"), tmp_path / "d")


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
        (["logger.backend=neptune"], "logger.backend"),
        (["optim.minibatch_size=0"], "optim.minibatch_size"),
        (["teacher=noisy_planner", "teacher_planner.error_rate=2"], "error_rate"),
        (["checkpoint.interval=-1"], "checkpoint.interval"),
    ],
)
def test_config_errors_are_clear(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        ppo_minigrid_distill.train(config(*overrides), tmp_path)


def test_a_missing_vlm_teacher_suggests_the_planner(tmp_path):
    with pytest.raises(OSError, match="(?s)acme/no-such-vlm.*teacher=planner"):
        ppo_minigrid_distill.train(config("teacher=vlm", "teacher_vlm.model=acme/no-such-vlm"), tmp_path)
