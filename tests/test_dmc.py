"""DMControl envs: specs, event attribution from a state just short of the goal, action repeat and truncation,
frames from the physics' renderer, bad input, and the DMControl event scorer."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.envs.utils import check_env_specs  # noqa: E402

from torchrl_vlm import DMCEventScorer, decode_mission  # noqa: E402
from torchrl_vlm.envs import DMC_EVENT_DEFINITIONS, DMC_EVENT_NAMES, DMC_GOALS, make_dmc_env  # noqa: E402
from torchrl_vlm.envs.dmc import DMCTaskState  # noqa: E402

GOAL, ENTERED, FIRST = (DMC_EVENT_NAMES.index(name) for name in ("goal", "entered_goal", "first_goal"))


@pytest.fixture(scope="module")
def cartpole():
    env = make_dmc_env("cartpole", "swingup_sparse", seed=0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def reacher():
    env = make_dmc_env("reacher", "hard", seed=0)
    yield env
    env.close()


def physics(env):
    return env.base_env._env.physics


def test_specs_pass_check_env_specs():
    for env in (make_dmc_env("ball_in_cup", "catch", seed=0), make_dmc_env("reacher", "hard", num_envs=2, seed=1),
                make_dmc_env("cheetah", "run", seed=0), make_dmc_env("finger", "turn_hard", render=True, seed=0)):
        check_env_specs(env)
        env.close()


def test_entries_have_the_documented_shapes_dtypes_and_mission():
    env = make_dmc_env("ball_in_cup", "catch", num_envs=2, seed=0)
    td = env.rollout(5)
    assert td["observation"].shape == (2, 5, 8) and td["observation"].dtype == torch.float32
    assert td["action"].shape == (2, 5, 2) and td["action"].dtype == torch.float32
    spec = env.full_action_spec_unbatched["action"]
    assert spec.space.low.tolist() == [-1, -1] and spec.space.high.tolist() == [1, 1]
    assert td["next", "events"].shape == (2, 5, 3) and td["next", "events"].dtype == torch.bool
    assert td["next", "success"].shape == (2, 5, 1) and td["next", "success"].dtype == torch.bool
    assert torch.equal(td["next", "success"][..., 0], td["next", "events"][..., GOAL])
    assert decode_mission(td["next", "mission"][0, 0]) == "Swing the ball up and catch it in the cup."
    assert "pixels" not in td["next"].keys() and td["clip_id"].dtype == torch.int64
    env.close()


def test_a_task_without_a_visible_goal_has_no_events_and_no_success():
    env = make_dmc_env("cheetah", "run", seed=0)
    td = env.rollout(3)
    assert "events" not in td["next"].keys() and "success" not in td["next"].keys()
    assert decode_mission(td["next", "mission"][0]) == "Make the cheetah run forward as fast as it can."
    env.close()


def _cartpole_short_of_upright(p, velocity):
    # cos(0.1415) = 0.990: outside the goal's cos > 0.995 (~0.100 rad), the cart centred and still
    with p.reset_context():
        p.named.data.qpos["slider"] = 0.0
        p.named.data.qpos["hinge_1"] = 0.1415
        p.named.data.qvel["slider"] = 0.0
        p.named.data.qvel["hinge_1"] = velocity


def test_the_goal_event_lands_on_the_row_whose_step_crosses_into_the_goal(cartpole):
    # The pole swinging towards upright at -1.5 rad/s crosses cos = 0.995 within one agent step (8 x 10 ms);
    # at rest it falls away. Both start from the same angle, short of the goal.
    for velocity, crosses in ((-1.5, True), (0.0, False)):
        td = cartpole.reset()
        _cartpole_short_of_upright(physics(cartpole), velocity)
        out = cartpole.step(td.set("action", torch.zeros(1)))["next"]
        assert out["events"].tolist() == [crosses] * 3, velocity
        assert bool(out["success"]) == crosses


def test_entered_and_first_fire_once_while_goal_fires_every_step_in_it(cartpole):
    td = cartpole.reset()
    _cartpole_short_of_upright(physics(cartpole), -1.5)
    td = cartpole.step(td.set("action", torch.zeros(1)))
    assert td["next", "events"].tolist() == [True, True, True]
    # Held upright over the centre (set again: the sim would let it fall), the goal holds and is not new.
    with physics(cartpole).reset_context():
        physics(cartpole).named.data.qpos["hinge_1"] = 0.0
        physics(cartpole).named.data.qvel[:] = 0.0
    td = cartpole.step(td["next"].clone().set("action", torch.zeros(1)))
    assert td["next", "events"].tolist() == [True, False, False]
    # Out of it and back in: entered again, but not the episode's first.
    _cartpole_short_of_upright(physics(cartpole), 0.0)
    td = cartpole.step(td["next"].clone().set("action", torch.zeros(1)))
    assert td["next", "events"].tolist() == [False, False, False]
    _cartpole_short_of_upright(physics(cartpole), -1.5)
    td = cartpole.step(td["next"].clone().set("action", torch.zeros(1)))
    assert td["next", "events"].tolist() == [True, True, False]
    # A reset starts a new episode: the next entry is its first again.
    td = cartpole.reset()
    assert td["events"].tolist() == [False, False, False]
    _cartpole_short_of_upright(physics(cartpole), -1.5)
    td = cartpole.step(td.set("action", torch.zeros(1)))
    assert td["next", "events"].tolist() == [True, True, True]


def test_the_reacher_action_that_moves_the_fingertip_into_the_target_gets_the_event(reacher):
    p = physics(reacher)
    push = torch.tensor([1.0, 1.0])
    td = reacher.reset()
    start = p.get_state().copy()
    # Where one agent step of `push` takes the fingertip from rest: the target goes there.
    before = p.named.data.geom_xpos["finger", :2].copy()
    reacher.step(td.clone().set("action", push))
    tip = p.named.data.geom_xpos["finger", :2].copy()
    assert np.linalg.norm(tip - before) > 0.03  # further than the two radii: it starts outside the target
    for action, crosses in ((push, True), (-push, False)):
        reacher.reset()
        with p.reset_context():
            p.set_state(start)
            p.named.model.geom_pos["target", :2] = tip
        radii = p.named.model.geom_size[["target", "finger"], 0].sum()
        assert p.finger_to_target_dist() > radii  # short of the goal before the action
        out = reacher.step(td.clone().set("action", action))["next"]
        assert out["events"].tolist() == [crosses] * 3, action


def test_action_repeat_defaults_per_domain_and_episodes_last_1000_physics_steps():
    for domain, task, repeat in (("cartpole", "swingup_sparse", 8), ("finger", "turn_hard", 2),
                                 ("ball_in_cup", "catch", 4)):
        env = make_dmc_env(domain, task, seed=0)
        assert env.action_repeat == repeat
        if domain == "cartpole":
            td = env.rollout(1000, break_when_any_done=True)
            assert td.shape[-1] == 1000 // repeat and bool(td["next", "truncated"][-1])
            assert int(td["next", "step_count"][-1]) == 125
        env.close()
    env = make_dmc_env("cartpole", "swingup_sparse", action_repeat=2, seed=0)
    assert env.action_repeat == 2 and env.rollout(1000).shape[-1] == 500
    env.close()


def test_frames_come_from_the_physics_renderer_only_when_asked(reacher):
    td = reacher.rollout(2)
    assert "pixels" not in td["next"].keys()
    env = make_dmc_env("reacher", "hard", render=True, from_pixels=True, frame_size=48, seed=0)
    td = env.rollout(3)
    frames = td["next", "pixels"]
    assert frames.shape == (3, 48, 48, 3) and frames.dtype == torch.uint8
    assert frames.float().std() > 10  # a scene, not a blank image
    assert torch.equal(td["next", "pixels_observation"], frames)
    # RenderClips ships the frames of each step with its clip id.
    assert td["next", "clip_id"].unique().numel() == 1
    env.close()


def test_fast_rendering_draws_the_full_quality_scene():
    # The same seeded states under both qualities: fast frames are the same scene, within a few levels a pixel.
    frames = {}
    for quality in ("fast", "full"):
        env = make_dmc_env("cartpole", "swingup", render=True, frame_size=32, seed=0, render_quality=quality)
        torch.manual_seed(0)
        frames[quality] = env.rollout(4)["next", "pixels"].float()
        quality_of_model = env.base_env._env.physics.model.vis.quality
        assert (quality_of_model.offsamples == 0) == (quality == "fast")
        env.close()
    assert frames["fast"].std() > 10
    difference = (frames["fast"] - frames["full"]).abs()
    assert 0 < difference.mean() < 4 and (difference > 32).float().mean() < 0.1
    with pytest.raises(ValueError, match="render_quality must be one of 'fast', 'full', got 'low'"):
        DMCTaskState("cartpole", "swingup", render=True, render_quality="low")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"domain": "ball_in_cupp", "task": "catch"}, ValueError, "domain='ball_in_cupp'.*ball_in_cup"),
        ({"domain": "reacher", "task": "medium"}, ValueError, "task='medium'.*easy, hard"),
        ({"action_repeat": 0}, ValueError, "action_repeat must be None .* or an int >= 1, got 0"),
        ({"action_repeat": 2.5}, TypeError, "action_repeat"),
        ({"action_repeat": "4"}, TypeError, "action_repeat"),
        ({"num_envs": 0}, ValueError, "num_envs"),
        ({"frame_size": 4}, ValueError, "frame_size"),
        ({"render": "yes"}, TypeError, "render must be a bool"),
        ({"from_pixels": 1}, TypeError, "from_pixels must be a bool"),
        ({"render_quality": "draft"}, ValueError, "render_quality must be one of 'fast', 'full', got 'draft'"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    args = {"domain": "reacher", "task": "hard", **kwargs}
    with pytest.raises(error, match=match):
        make_dmc_env(args.pop("domain"), args.pop("task"), **args)


def test_names_import_without_mujoco_dm_control_or_torchrl():
    code = (
        "import sys; from torchrl_vlm.scoring.oracle import DMCEventScorer; "
        "from torchrl_vlm.envs.dmc_goals import DMC_EVENT_NAMES, DMC_GOALS; "
        "print(sorted(m for m in ('mujoco', 'dm_control', 'torchrl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_goal_reads_the_physics_of_its_task():
    for (domain, task), goal in DMC_GOALS.items():
        env = make_dmc_env(domain, task, seed=0)
        dm = env.base_env._env
        assert goal.holds(dm.physics, dm.task) in (True, False)
        env.close()


# --------------------------------------------------------------------- scorer
def _clips(events):
    events = torch.tensor(events, dtype=torch.bool)
    n, length = events.shape[:2]
    return TensorDict({"mask": torch.ones(n, length, dtype=torch.bool), "events": events,
                       "clip_id": torch.arange(n)}, [n])


def test_dmc_event_scorer_definitions():
    no, held, entered, first = [False] * 3, [True, False, False], [True, True, False], [True, True, True]
    clips = _clips([[no, no], [no, held], [entered, held], [first, held]])
    assert DMCEventScorer("goal_only")(clips).tolist() == [0, 1, 1, 1]
    assert DMCEventScorer("any")(clips).tolist() == [0, 0, 1, 1]
    assert DMCEventScorer("first_progress")(clips).tolist() == [0, 0, 0, 1]
    assert set(DMC_EVENT_DEFINITIONS) == {"any", "first_progress", "goal_only"}


def test_dmc_event_scorer_refuses_bad_input():
    with pytest.raises(ValueError, match="definition must be one of .*first_progress"):
        DMCEventScorer("keys")
    with pytest.raises(ValueError, match="unknown event names"):
        DMCEventScorer(("door_open",))
    with pytest.raises(ValueError, match=r"\[B, L, 3\] \(DMC_EVENT_NAMES\)"):
        DMCEventScorer()(_clips([[[True] * 5]]))
