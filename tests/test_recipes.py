"""Smoke runs of recipes/dqn_minigrid.py with tiny budgets, its checkpoints, and its config errors."""
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))

import dqn_minigrid  # noqa: E402

TINY = [
    "env.name=MiniGrid-DoorKey-5x5-v0",
    "env.num_envs=4",
    "env.max_steps=24",
    "collector.total_frames=256",
    "collector.frames_per_batch=64",
    "collector.init_random_frames=64",
    "buffer.capacity=2000",
    "buffer.batch_size=32",
    "vlm.clip_len=8",
    "eval.interval=128",
    "eval.episodes=2",
    "logger.backend=csv",
    "logger.log_interval=64",
    "logger.progress=false",
    "logger.gallery_interval=128",
]


def config(*overrides):
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        return compose("dqn_minigrid", overrides=[*TINY, *overrides])


@pytest.mark.parametrize(
    "overrides",
    [
        ["buffer.sampler=uniform"],
        ["buffer.sampler=per"],
        ["buffer.sampler=vlm", "vlm.scorer=events"],
        ["buffer.sampler=vlm", "vlm.scorer=noisy_events", "buffer.td_boost=true", "buffer.importance_weights=true"],
    ],
    ids=["uniform", "per", "vlm-events", "vlm-noisy-tdboost"],
)
def test_smoke(overrides, tmp_path):
    summary = dqn_minigrid.train(config(*overrides), tmp_path)
    assert summary["frames"] == 256 and summary["updates"] > 0
    assert [row["frames"] for row in summary["evals"]] == [128, 256]  # the final evaluation is the one at 256
    assert (tmp_path / "checkpoint" / "checkpoint.pt").exists()
    logged = {f"{p.parent.name}/{p.stem}" for p in (tmp_path / "logs").rglob("scalars/*/*.csv")}
    assert {"train/sps", "train/success", "train/loss", "train/epsilon", "eval/success_greedy"} <= logged
    if "buffer.sampler=vlm" in overrides:
        stats = summary["vlm_stats"]
        assert stats["clips_submitted"] > 0 and stats["clips_scored"] > 0
        assert summary["lambda"] == 0.5  # warm-up is half of the 256 frames
        watched = {"vlm/lambda", "vlm/priority_fraction", "vlm/stale_rejected", "vlm/latency_mean_s",
                   "vlm/coverage", "vlm/clips_dropped", "vlm/positives"}
        assert watched <= logged
        assert list((tmp_path / "gallery").glob("*.png"))


def test_smoke_with_the_tiny_vlm(tiny_vlm, tmp_path):
    summary = dqn_minigrid.train(
        config(
            "buffer.sampler=vlm",
            "vlm.scorer=transformers",
            f"vlm.model={tiny_vlm}",
            "vlm.num_frames=4",
            "vlm.batch_size=4",
        ),
        tmp_path,
    )
    assert summary["vlm_stats"]["clips_scored"] > 0
    rb = summary["replay_buffer"]
    scores = rb[:]["vlm_score"]
    assert bool(((scores[~scores.isnan()] >= 0) & (scores[~scores.isnan()] <= 1)).all())


def test_checkpoint_round_trip_and_resume(tmp_path):
    first = dqn_minigrid.train(config("buffer.sampler=vlm", "collector.total_frames=192"), tmp_path / "a")
    rb = first["replay_buffer"]
    ckpt = tmp_path / "a" / "checkpoint"

    # What the checkpoint restores: the same transitions, priorities and λ.
    cfg = config("buffer.sampler=vlm", "collector.total_frames=192")
    restored = dqn_minigrid.make_buffer(cfg)
    state = dqn_minigrid.load_checkpoint(ckpt, restored)
    assert len(restored) == len(rb) == 192
    for key in ("observation", "vlm_priority", "vlm_score", "clip_id", "action"):
        torch.testing.assert_close(restored[:][key], rb[:][key], equal_nan=True)
    assert restored.sampler.lam == rb.sampler.lam
    assert restored.sampler.num_positive == rb.sampler.num_positive
    assert state["collected_frames"] == 192

    assert state["hook"]["counts"]["slots_written"] == 192
    for key, value in first["loss_module"].state_dict().items():
        torch.testing.assert_close(state["loss_module"][key], value)

    # Training continues from there. With a learning rate of 0 the weights stay the trained
    # ones only if they were restored (a fresh network starts from its initialisation).
    resumed = dqn_minigrid.train(
        config("buffer.sampler=vlm", "collector.total_frames=384", "optim.lr=0.0", "collector.eps_fraction=1.0",
               f"checkpoint.resume={ckpt}"),
        tmp_path / "b",
    )
    assert resumed["start_frames"] == 192 and resumed["frames"] == 384
    assert resumed["updates"] > first["updates"]
    assert resumed["replay_buffer"].sampler.transitions_written == 384
    trained = dict(first["loss_module"].value_network_params.flatten_keys().items())
    for key, value in resumed["loss_module"].value_network_params.flatten_keys().items():
        torch.testing.assert_close(value, trained[key])
    # Adam's step count runs on from the first run's updates.
    steps = {int(s["step"]) for s in resumed["optimizer"].state_dict()["state"].values()}
    assert steps == {resumed["updates"]}
    # ε was at its floor when the checkpoint was written; a fresh ε-greedy module annealing
    # over 384 frames would still be at 1 - 0.95 * 192 / 384 = 0.525.
    assert resumed["epsilon"] == pytest.approx(0.05)
    assert resumed["vlm_stats"]["slots_written"] == 384


def test_resume_refuses_a_different_replay_setup(tmp_path):
    dqn_minigrid.train(config("buffer.sampler=vlm", "collector.total_frames=128"), tmp_path / "a")
    with pytest.raises(ValueError, match="buffer:"):
        dqn_minigrid.train(
            config("buffer.sampler=uniform", "collector.total_frames=256", f"checkpoint.resume={tmp_path / 'a' / 'checkpoint'}"),
            tmp_path / "b",
        )


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["env.name=MiniGrid-DoorKey-9x9-v0"], "MiniGrid-DoorKey-8x8-v0"),
        (["buffer.sampler=rainbow"], "uniform"),
        (["vlm.scorer=gpt"], "transformers"),
        (["collector.frames_per_batch=63"], "multiple of env.num_envs"),
        (["logger.backend=neptune"], "logger.backend"),
        (["logger.mode=sometimes"], "logger.mode"),
        (["buffer.sampler=uniform", "buffer.td_boost=true"], "buffer.td_boost"),
        (["vlm.definition=keys"], "first_progress"),
        (["vlm.false_positive_rate=1.5"], r"vlm.false_positive_rate must be in \[0, 1\]"),
    ],
)
def test_config_errors_are_clear(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        dqn_minigrid.train(config(*overrides), tmp_path)


def test_a_missing_model_offline_suggests_the_way_out(tmp_path):
    from torchrl_vlm import ScoringServiceError

    with pytest.raises(ScoringServiceError, match="vlm.model='acme/no-such-vlm'.*local folder.*vlm.scorer=events"):
        dqn_minigrid.train(config("buffer.sampler=vlm", "vlm.scorer=transformers", "vlm.model=acme/no-such-vlm"), tmp_path)


def test_the_agent_learns_doorkey_5x5_with_the_ideal_scorer(tmp_path):
    """A real (short) training run: VLM-RB with the event scorer must solve DoorKey-5x5.

    Uniform replay solves it in about 35k steps here (benchmarks/RESULTS.md). The
    scorer runs in its own process, so when priorities land depends on the machine's
    load and the run is not bit-reproducible: 70k steps and a 0.5 bar on the steadier
    ε=0.05 evaluation leave room for that (an agent that learnt nothing scores ~0).
    """
    summary = dqn_minigrid.train(
        config(
            "buffer.sampler=vlm",
            "env.num_envs=8",
            "env.max_steps=null",
            "collector.total_frames=70000",
            "collector.frames_per_batch=128",
            "collector.init_random_frames=10000",
            "buffer.capacity=100000",
            "buffer.batch_size=128",
            "vlm.clip_len=32",
            "eval.interval=5000",
            "eval.episodes=16",
            "logger.backend=",
            "logger.gallery_interval=0",
            "checkpoint.at_end=false",
        ),
        tmp_path,
    )
    best = max(row["success_eps"] for row in summary["evals"])
    assert best >= 0.5, summary["evals"]


def test_wandb_is_the_default_and_runs_offline(monkeypatch, tmp_path):
    """No mode and no project: the run is written offline, for `wandb sync` later."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = dqn_minigrid.train(
        config("buffer.sampler=uniform", "logger.backend=wandb", "collector.total_frames=128"), tmp_path
    )
    assert summary["frames"] == 128
    runs = list((tmp_path / "logs").rglob("offline-run-*"))
    assert runs, sorted(str(p) for p in (tmp_path / "logs").rglob("*"))[:20]
    assert list(runs[0].rglob("*.wandb"))  # the run's history, waiting for `wandb sync`


def test_a_checkpoint_swap_interrupted_midway_leaves_the_previous_one_loadable(tmp_path):
    from torchrl_vlm.training import load_checkpoint, save_checkpoint

    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, {"collected_frames": 1})
    save_checkpoint(folder, {"collected_frames": 2})
    assert load_checkpoint(folder)["collected_frames"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no staging or old folder left
    # A crash between the two renames: the old folder is aside, the new one not yet in place.
    folder.rename(tmp_path / "checkpoint.old")
    assert load_checkpoint(folder)["collected_frames"] == 2
    with pytest.raises(FileNotFoundError, match="checkpoint.resume"):
        load_checkpoint(tmp_path / "elsewhere")
