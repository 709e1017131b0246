"""recipes/sac_ogbench.py and td3_ogbench.py at tiny budgets: uniform, PER, VLM-RB with TD boosting; resume; the tiny VLM."""
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))

import sac_ogbench  # noqa: E402
import td3_ogbench  # noqa: E402
from torchrl_vlm.training import load_checkpoint  # noqa: E402

TINY = [
    "env.num_envs=2",
    "collector.total_frames=256",
    "collector.frames_per_batch=64",
    "collector.init_random_frames=64",
    "buffer.capacity=1000",
    "buffer.batch_size=32",
    "network.hidden=[32,32]",
    "optim.updates_per_frame=0.25",
    "vlm.clip_len=8",
    "eval.interval=0",
    "eval.episodes=1",
    "logger.backend=csv",
    "logger.log_interval=64",
    "logger.progress=false",
]


def config(*overrides, recipe="sac_ogbench"):
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        return compose(recipe, overrides=[*TINY, *overrides])


@pytest.mark.parametrize("sampler", ["uniform", "per", "vlm"])
def test_smoke(sampler, tmp_path):
    summary = sac_ogbench.train(config(f"buffer.sampler={sampler}"), tmp_path)
    assert summary["frames"] == 256 and summary["updates"] == 256 // 4  # 0.25 updates a frame, from the first batch on
    logged = {f"{p.parent.name}/{p.stem}" for p in (tmp_path / "logs").rglob("scalars/*/*.csv")}
    assert {"train/loss_qvalue", "train/loss_actor", "train/alpha", "train/sps", "eval/success",
            "eval/subgoals"} <= logged
    # Task 3 starts with one of its five subgoals satisfied; 64 updates do not solve it.
    assert [row["frames"] for row in summary["evals"]] == [256] and summary["evals"][0]["subgoals"] in {0, 1, 2, 3, 4}
    if sampler == "vlm":
        stats = summary["buffer_stats"]
        assert stats["clips_submitted"] > 0 and stats["clips_scored"] > 0 and stats["lambda"] == 0.5
        # TD boosting: every sampled transition's |δ| reached the sampler.
        state = torch.load(Path(summary["checkpoint"]) / "replay_buffer" / "sampler" / "mixture_sampler.pt",
                           weights_only=True)
        assert int((~torch.isnan(state["td_error"][:256])).sum()) > 0


def test_resume_continues_from_the_checkpoint(tmp_path):
    first = sac_ogbench.train(config("buffer.sampler=vlm"), tmp_path / "a")
    resumed = sac_ogbench.train(
        config("buffer.sampler=vlm", "collector.total_frames=384", "optim.lr=0.0", f"checkpoint.resume={first['checkpoint']}"),
        tmp_path / "b",
    )
    assert resumed["start_frames"] == 256 and resumed["frames"] == 384
    before, after = load_checkpoint(first["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for key, value in before["loss_module"].items():
        if "actor_network_params" in key:  # lr 0: the restored actor is unchanged
            torch.testing.assert_close(after["loss_module"][key], value, rtol=0, atol=0)
    assert resumed["buffer_stats"]["slots_written"] == 384
    # The evaluation history is the whole run's, the first part read from the checkpoint.
    assert resumed["evals"][0] == first["evals"][0] and [row["frames"] for row in resumed["evals"]] == [256, 384]
    with pytest.raises(ValueError, match="network"):
        sac_ogbench.train(config("network.hidden=[16,16]", "collector.total_frames=384",
                                 f"checkpoint.resume={first['checkpoint']}"), tmp_path / "c")


def test_the_tiny_vlm_scores_rendered_frames(tiny_vlm, tmp_path):
    summary = sac_ogbench.train(
        config("buffer.sampler=vlm", "vlm.scorer=transformers", f"vlm.model={tiny_vlm}", "vlm.num_frames=2",
               "vlm.batch_size=4", "env.num_envs=1", "env.frame_size=32", "collector.total_frames=64",
               "collector.frames_per_batch=32", "collector.init_random_frames=32", "logger.log_interval=32"),
        tmp_path,
    )
    assert summary["buffer_stats"]["clips_scored"] > 0


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["env.name=scene-singletask-task9-v0"], "scene-singletask-task3-v0"),
        (["buffer.sampler=rainbow"], "uniform"),
        (["loss.tau=0"], "loss.tau"),
        (["optim.updates_per_frame=-1"], "optim.updates_per_frame"),
        (["vlm.definition=keys"], "first_progress"),
    ],
)
def test_config_errors_are_clear(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        sac_ogbench.train(config(*overrides), tmp_path)


@pytest.mark.parametrize("sampler", ["uniform", "vlm"])
def test_td3_smoke(sampler, tmp_path):
    summary = td3_ogbench.train(config(f"buffer.sampler={sampler}", "loss.policy_delay=2", recipe="td3_ogbench"),
                                tmp_path)
    assert summary["frames"] == 256 and summary["updates"] == 256 // 4
    logged = {f"{p.parent.name}/{p.stem}" for p in (tmp_path / "logs").rglob("scalars/*/*.csv")}
    assert {"train/loss_qvalue", "train/loss_actor", "train/sps", "eval/success"} <= logged
    if sampler == "vlm":
        state = torch.load(Path(summary["checkpoint"]) / "replay_buffer" / "sampler" / "mixture_sampler.pt",
                           weights_only=True)
        assert int((~torch.isnan(state["td_error"][:256])).sum()) > 0  # |δ| of the sampled transitions
    with pytest.raises(ValueError, match="loss.policy_delay"):
        td3_ogbench.train(config("loss.policy_delay=0", recipe="td3_ogbench"), tmp_path / "bad")
