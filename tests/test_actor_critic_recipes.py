"""recipes/sac.py and td3.py at tiny budgets, on both env families: uniform, PER, VLM-RB with TD boosting;
resume; the tiny VLM scoring rendered frames; configuration errors."""
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))

import sac  # noqa: E402
import td3  # noqa: E402

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
RECIPE = {"sac": sac, "td3": td3}


def config(*overrides, recipe="sac", family="dmc"):
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        return compose(recipe, overrides=[*TINY, f"env.family={family}", *overrides])


def logged_keys(folder: Path) -> set[str]:
    return {f"{p.parent.name}/{p.stem}" for p in (folder / "logs").rglob("scalars/*/*.csv")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(recipe, family, *overrides)``: the summary and output folder of a run at the TINY budget, trained
    once in this worker for every test that only reads what it left (the checkpoint is read, never written)."""
    runs = {}

    def get(recipe, family, *overrides):
        key = (recipe, family, overrides)
        if key not in runs:
            out = tmp_path_factory.mktemp(f"{recipe}-{family}")
            runs[key] = RECIPE[recipe].train(config(*overrides, recipe=recipe, family=family), out), out
        return runs[key]

    return get


# The smoke runs of VLM-RB on DMC are also the first half of the resume tests: one worker runs both.
SHARES_A_RUN = pytest.mark.xdist_group("actor_critic_dmc_vlm_runs")


def _contents(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def td_errors_reached_the_sampler(summary) -> int:
    state = torch.load(Path(summary["checkpoint"]) / "replay_buffer" / "sampler" / "mixture_sampler.pt",
                       weights_only=True)
    return int((~torch.isnan(state["td_error"][: summary["frames"]])).sum())


@pytest.mark.parametrize(
    "recipe, family, sampler",
    [("sac", "dmc", "uniform"), ("sac", "dmc", "per"), pytest.param("sac", "dmc", "vlm", marks=SHARES_A_RUN),
     ("sac", "ogbench", "vlm"), pytest.param("td3", "dmc", "vlm", marks=SHARES_A_RUN), ("td3", "ogbench", "uniform")],
)
def test_smoke(recipe, family, sampler, trained):
    summary, out = trained(recipe, family, f"buffer.sampler={sampler}")
    assert summary["frames"] == 256 and summary["updates"] == 256 // 4  # 0.25 updates a frame, from the first batch on
    expected = {"train/loss_qvalue", "train/loss_actor", "train/sps", "train/env_steps", "eval/return",
                "eval/success", "eval/env_steps"}
    expected |= {"eval/subgoals"} if family == "ogbench" else set()
    expected |= {"train/alpha"} if recipe == "sac" else set()
    assert expected <= logged_keys(out)
    (row,) = summary["evals"]
    if family == "ogbench":
        # Task 3 starts with one of its five subgoals satisfied; 64 updates do not solve it.
        assert row["frames"] == row["env_steps"] == 256 and row["subgoals"] in {0, 1, 2, 3, 4}
    else:
        # ball_in_cup repeats each action 4 times: 256 agent steps are 1024 env steps.
        assert summary["action_repeat"] == 4 and row["frames"] == 256 and row["env_steps"] == 1024
        assert 0 <= row["return"] <= 1000 and row["success"] in (0.0, 1.0)
    if sampler == "vlm":
        stats = summary["buffer_stats"]
        assert stats["clips_submitted"] > 0 and stats["clips_scored"] > 0 and stats["lambda"] == 0.5
        assert td_errors_reached_the_sampler(summary) > 0  # TD boosting: the sampled transitions' |δ|


@SHARES_A_RUN
@pytest.mark.parametrize("recipe", ["sac", "td3"])
def test_resume_continues_from_the_checkpoint(recipe, tmp_path, trained):
    module = RECIPE[recipe]
    first, _ = trained(recipe, "dmc", "buffer.sampler=vlm")  # test_smoke's run
    files = _contents(first["checkpoint"])
    resumed = module.train(
        config("buffer.sampler=vlm", "collector.total_frames=384", "optim.lr=0.0",
               f"checkpoint.resume={first['checkpoint']}", recipe=recipe),
        tmp_path / "b",
    )
    assert resumed["start_frames"] == 256 and resumed["frames"] == 384
    before, after = load_checkpoint(first["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    actor_keys = [key for key in before["loss_module"] if key.startswith("actor_network_params")]  # not targets
    assert actor_keys
    for key in actor_keys:  # lr 0: the restored actor is unchanged
        torch.testing.assert_close(after["loss_module"][key], before["loss_module"][key], rtol=0, atol=0)
    assert resumed["buffer_stats"]["slots_written"] == 384
    # The evaluation history is the whole run's, the first part read from the checkpoint.
    assert resumed["evals"][0] == first["evals"][0] and [row["frames"] for row in resumed["evals"]] == [256, 384]
    for changed, key in (("network.hidden=[16,16]", "network"), ("env.action_repeat=2", "env.action_repeat"),
                         ("env.name=reacher-hard", "env.name")):
        with pytest.raises(ValueError, match=key):
            module.train(config(changed, "collector.total_frames=384", f"checkpoint.resume={first['checkpoint']}",
                                recipe=recipe), tmp_path / "c")
    assert _contents(first["checkpoint"]) == files  # a resume reads its checkpoint, never writes it


@pytest.mark.parametrize("family", ["dmc", "ogbench"])
@pytest.mark.slow  # a SAC run scored by the tiny VLM on rendered frames: ~15-25 s each (`make test-slow`)
def test_the_tiny_vlm_scores_rendered_frames(family, tiny_vlm, tmp_path):
    summary = sac.train(
        config("buffer.sampler=vlm", "vlm.scorer=transformers", f"vlm.model={tiny_vlm}", "vlm.num_frames=2",
               "vlm.batch_size=4", "env.num_envs=1", "env.frame_size=32", "collector.total_frames=64",
               "collector.frames_per_batch=32", "collector.init_random_frames=32", "logger.log_interval=32",
               family=family),
        tmp_path,
    )
    assert summary["buffer_stats"]["clips_scored"] > 0


def test_a_task_without_a_goal_trains_without_success_and_refuses_an_event_scorer(tmp_path):
    summary = sac.train(config("env.name=cheetah-run", "buffer.sampler=uniform", "collector.total_frames=128"),
                        tmp_path)
    assert "success" not in summary["evals"][0] and summary["final_success"] != summary["final_success"]
    assert "eval/success" not in logged_keys(tmp_path)
    with pytest.raises(ValueError, match="cheetah-run has no visible goal.*DMC_GOALS"):
        sac.train(config("env.name=cheetah-run", "buffer.sampler=vlm", "vlm.scorer=events"), tmp_path / "bad")


@pytest.mark.parametrize(
    "family, overrides, match",
    [
        ("ogbench", ["env.name=scene-singletask-task9-v0"], "scene-singletask-task3-v0"),
        ("ogbench", ["env.action_repeat=2"], "env.action_repeat"),
        ("dmc", ["env.name=ball_in_cup"], "domain-task"),
        ("dmc", ["env.name=ball_in_cup-throw"], "not a dm_control suite task"),
        ("dmc", ["env.action_repeat=0"], "env.action_repeat"),
        ("dmc", ["env.family=isaac"], "env.family"),
        ("dmc", ["buffer.sampler=rainbow"], "uniform"),
        ("dmc", ["loss.tau=0"], "loss.tau"),
        ("dmc", ["optim.updates_per_frame=-1"], "optim.updates_per_frame"),
        ("dmc", ["vlm.definition=keys"], "first_progress"),
        ("dmc", ["covr.prior=dpl"], "covr.prior"),
        ("dmc", ["covr.prior=covr", "covr.filter=top"], "covr.filter"),
        ("dmc", ["covr.prior=covr", "covr.psi0=0"], "covr.psi0"),
        ("dmc", ["covr.prior=covr", "covr.entropy_sign=0.5"], "covr.entropy_sign"),
        ("dmc", ["covr.prior=covr", "covr.min_keep_fraction=1.5"], "covr.min_keep_fraction"),
        ("dmc", ["covr.prior=covr", "covr.label_smoothing=1.5"], "covr.label_smoothing"),
        ("dmc", ["covr.prior=covr", "covr.prompt='Which way?'"], "action_dim"),
        ("dmc", ["covr.prior=covr", "buffer.sampler=vlm"], "own replay buffer"),
    ],
)
def test_config_errors_are_clear(family, overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        sac.train(config(*overrides, family=family), tmp_path)


@pytest.mark.slow  # COVR end to end, prior and fine-tunes in their processes: ~50 s (`make test-slow`)
def test_covr_trains_end_to_end_with_the_tiny_vlm(tiny_vlm, tmp_path):
    """The prior on rendered frames, written back into replay, pulling the actor, and a LoRA fine-tune on
    schedule whose adapter the prior then answers with."""
    summary = sac.train(
        config("buffer.sampler=uniform", "env.name=cartpole-swingup", "covr.prior=covr", f"covr.model={tiny_vlm}",
               "covr.max_new_tokens=24", "covr.psi0=256", "covr.lr=1e-2", "covr.epochs=4", "covr.max_steps=40",
               "covr.min_samples=2",
               "covr.prior_lag=1", "covr.finetune_lag=1", "env.frame_size=32", "collector.total_frames=384",
               "collector.frames_per_batch=32", "collector.init_random_frames=32"),
        tmp_path,
    )
    stats = summary["buffer_stats"]
    assert stats["prior_rows_answered"] == 384 - 32 * 1  # the last extend's rows are still on their way (lag 1)
    assert {"train/loss_prior", "train/prior_valid_fraction", "buffer/prior_coverage",
            "buffer/parse_failures"} <= logged_keys(tmp_path)
    # cartpole's episodes end after 125 agent steps an env: the fine-tune due at 256 steps (128 an env) has an
    # episode of each env in D_f.
    assert stats["covr_finetunes"] >= 1 and stats["covr_adapter_version"] >= 0 and stats["adapter_version"] >= 0
    assert stats["covr_last_loss_after"] < stats["covr_last_loss_before"]
    assert (tmp_path / "adapters" / "v0000" / "manifest.json").is_file()
    # Before the fine-tune the random tiny VLM never writes a parsable action; after it, it does (every row it
    # answers with adapter 0, in seeds 0, 2, 3, 4). Without the prefilled "Action:" it did in some seeds only: the
    # 2-layer model learns ':' -> ' ' from the answers and opened its own with a space.
    assert stats["prior_rows_valid"] > 0 and stats["parse_failures"] > 0, stats


def test_random_shift_crops_each_frame_of_the_padded_batch_at_its_own_offset():
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (64, 12, 10, 6), dtype=torch.uint8, generator=g)
    out = sac.random_shift(frames, 2, generator=g)
    padded = torch.nn.functional.pad(frames.permute(0, 3, 1, 2).float(), (2,) * 4, mode="replicate").permute(0, 2, 3, 1)
    offsets = set()
    for frame, shifted in zip(padded, out, strict=True):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(frame[dy:dy + 12, dx:dx + 10].to(torch.uint8), shifted)]
        assert matches
        offsets.add(matches[0])
    assert len(offsets) > 10  # offsets vary from frame to frame
    assert torch.equal(sac.random_shift(frames, 0), frames)


@pytest.mark.slow  # the pixel agent with a COVR prior: ~50 s (`make test-slow`)
def test_the_rad_agent_with_a_covr_prior_trains_from_pixels(tiny_vlm, tmp_path):
    """agent.from_pixels: stacked uint8 frames in replay, a conv encoder per network, RAD's random shift; the VLM
    prior reads the rendered frame beside it."""
    summary = sac.train(
        config("buffer.sampler=uniform", "env.name=cartpole-swingup", "agent.from_pixels=true", "env.frame_size=32",
               "covr.prior=covr", f"covr.model={tiny_vlm}", "covr.max_new_tokens=24", "covr.prior_lag=0",
               "collector.total_frames=192", "collector.frames_per_batch=32", "collector.init_random_frames=32",
               "checkpoint.at_end=true"),
        tmp_path,
    )
    assert summary["updates"] == (192 - 32) // 4 + 8 and summary["buffer_stats"]["prior_rows_answered"] == 192
    state = load_checkpoint(summary["checkpoint"])
    assert any("convs" in key for key in state["loss_module"])  # the actor's and critics' encoders
    from tensordict import TensorDict

    stored = TensorDict.load_memmap(Path(summary["checkpoint"]) / "replay_buffer" / "storage")
    assert stored["pixels_observation"].shape[1:] == (32, 32, 9) and stored["pixels_observation"].dtype == torch.uint8
    assert "pixels" not in stored.keys()  # the VLM's frames never enter replay


def test_td3_refuses_a_zero_policy_delay(tmp_path):
    with pytest.raises(ValueError, match="loss.policy_delay"):
        td3.train(config("loss.policy_delay=0", recipe="td3"), tmp_path)


def test_the_family_switches_every_family_default_and_a_command_line_value_wins():
    dmc, ogbench = config(), config(family="ogbench")
    assert (dmc.env.name, dmc.optim.lr, dmc.loss.alpha_init) == ("ball_in_cup-catch", 3e-4, 0.1)
    assert (ogbench.env.name, ogbench.optim.lr, ogbench.loss.alpha_init) == ("scene-singletask-task3-v0", 1e-4, 1.0)
    assert config("optim.lr=0.001", family="ogbench").optim.lr == 0.001
