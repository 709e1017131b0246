"""OGBench scene envs: specs, event attribution, truncation, rendering, and the OGBench event scorer."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import subprocess  # noqa: E402
import sys  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.envs.utils import check_env_specs, step_mdp  # noqa: E402

from torchrl_vlm import MiniGridEventScorer, OGBenchEventScorer  # noqa: E402
from torchrl_vlm.envs import EPISODE_STEPS, OGBENCH_ENVS, OGBENCH_EVENT_NAMES, OGBENCH_SUBGOALS, make_ogbench_env  # noqa: E402
from torchrl_vlm.envs.minigrid_names import EVENT_NAMES  # noqa: E402
from torchrl_vlm.envs.ogbench import _make_gym_env  # noqa: E402
from torchrl_vlm.scoring import OGBENCH_EVENT_DEFINITIONS  # noqa: E402

# OGBench's action_space casts float64 bounds to float32 each time an env is built: its warning, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered by casting to float32")

COL = {name: i for i, name in enumerate(OGBENCH_EVENT_NAMES)}
DRAWER = OGBENCH_SUBGOALS.index("drawer")


# Building an OGBench env compiles its MuJoCo model (~1 s): share them across tests.
@pytest.fixture(scope="module")
def env():
    env = make_ogbench_env("scene-singletask-task3-v0", seed=0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def env2():
    env = make_ogbench_env("scene-singletask-task3-v0", num_envs=2, seed=0)
    yield env
    env.close()


def _zeros(td):
    return td.set("action", torch.zeros(td.batch_size + (5,)))


def test_specs_pass_check_env_specs(env, env2):
    check_env_specs(env)
    check_env_specs(env2)


def test_entries_have_the_documented_shapes_and_dtypes(env, env2):
    assert OGBENCH_EVENT_NAMES == (
        *(f"subgoal_{i}" for i in range(5)), *(f"first_subgoal_{i}" for i in range(5)), "goal",
    )
    for e, batch in ((env, ()), (env2, (2,))):
        td = e.rollout(4)
        steps = batch + (4,)
        assert td["action"].shape == steps + (5,) and td["action"].dtype == torch.float32
        assert bool((td["action"].abs() <= 1).all())
        nxt = td["next"]
        assert nxt["observation"].shape == steps + (40,) and nxt["observation"].dtype == torch.float32
        assert nxt["events"].shape == steps + (len(OGBENCH_EVENT_NAMES),) and nxt["events"].dtype == torch.bool
        assert nxt["success"].shape == steps + (1,) and nxt["success"].dtype == torch.bool
        for key in ("clip_id", "clip_step", "step_count", "episode_reward", "truncated", "terminated"):
            assert key in nxt.keys()
        assert "pixels" not in nxt.keys() and "pixels" not in td.keys()
    spec = env.full_action_spec["action"]
    assert spec.shape == (5,) and float(spec.space.low.min()) == -1 and float(spec.space.high.max()) == 1


def _gym(env):
    """The OGBenchObservation wrapper under the TorchRL env, and OGBench's SceneEnv."""
    wrapper = env.base_env._env
    return wrapper, wrapper.unwrapped


def _teleport_drawer(scene, pos, vel):
    scene._data.joint("drawer_slide").qpos[0] = pos
    scene._data.joint("drawer_slide").qvel[0] = vel
    mujoco.mj_forward(scene._model, scene._data)


def _step(env, td):
    td = env.step(_zeros(td))
    return td, step_mdp(td)


def test_subgoal_event_lands_on_the_row_whose_action_caused_it(env):
    wrapper, scene = _gym(env)
    td = env.reset()
    # Task 3: drawer closed (0.0), target open (-0.16), unlocked (button 0 at 1).
    assert scene._target_drawer_pos == pytest.approx(-0.16) and not wrapper.subgoals()[DRAWER]
    row, td = _step(env, td)
    assert not row["next", "events"].any()

    # Just outside the 4 cm threshold, sliding open: the next action's physics step completes it.
    _teleport_drawer(scene, -0.11, -1.0)
    assert not wrapper.subgoals()[DRAWER]
    before = wrapper.subgoals()
    row, td = _step(env, td)
    cube, buttons, drawer, window = scene._compute_successes()  # OGBench's own verdict after the step
    after = np.array([*cube, *buttons, drawer, window], dtype=bool)
    assert after[DRAWER] and not before[DRAWER]
    events = row["next", "events"]
    assert events[COL[f"subgoal_{DRAWER}"]] and events[COL[f"first_subgoal_{DRAWER}"]]
    # Exactly what the action changed, nothing else; the next row's "events" is this row's next.
    assert torch.equal(events[:5], torch.as_tensor(after & ~before))
    assert not events[COL["goal"]] and not row["next", "success"]
    assert torch.equal(td["events"], events)

    # Undo it (no event for a loss), then redo it: subgoal fires again, first_subgoal does not.
    _teleport_drawer(scene, 0.0, 0.0)
    row, td = _step(env, td)
    assert not row["next", "events"].any()
    _teleport_drawer(scene, -0.11, -1.0)
    row, td = _step(env, td)
    events = row["next", "events"]
    assert events[COL[f"subgoal_{DRAWER}"]] and not events[COL[f"first_subgoal_{DRAWER}"]]

    # A new episode: first_subgoal fires again.
    td = env.reset()
    _teleport_drawer(scene, -0.11, -1.0)
    row, td = _step(env, td)
    assert row["next", "events"][COL[f"first_subgoal_{DRAWER}"]]


def test_goal_success_and_termination_land_on_the_solving_row(env):
    wrapper, scene = _gym(env)
    td = env.reset()
    row, td = _step(env, td)
    assert not row["next", "success"] and not row["next", "done"]
    # Put every part of the scene at its task-3 target except the drawer, which the next step opens.
    goal = scene.cur_task_info["goal"]
    scene._cur_button_states = goal["button_states"].copy()
    scene._apply_button_states()
    cube = scene._data.joint("object_joint_0")
    cube.qpos[:3] = scene._data.mocap_pos[scene._cube_target_mocap_ids[0]]
    cube.qpos[3:] = [1.0, 0.0, 0.0, 0.0]
    cube.qvel[:] = 0.0
    scene._data.joint("window_slide").qpos[0] = goal["window_pos"]
    _teleport_drawer(scene, -0.11, -1.0)
    assert not wrapper.subgoals().all()
    row, td = _step(env, td)
    nxt = row["next"]
    assert wrapper.subgoals().all()
    assert nxt["success"] and nxt["events"][COL["goal"]] and nxt["terminated"] and not nxt["truncated"]
    assert nxt["reward"].item() == 0.0  # OGBench's reward: minus the number of unsatisfied subgoals


def test_episodes_are_truncated_after_750_steps(env):
    env.reset()
    td = env.rollout(EPISODE_STEPS + 10, policy=_zeros, break_when_any_done=True)
    assert EPISODE_STEPS == 750 and td.shape == (750,)
    assert td["next", "truncated"][-1] and not td["next", "terminated"][-1]
    assert not td["next", "done"][:-1].any()
    assert td["next", "step_count"][-1].item() == 750
    # What the recipes' eval/subgoals reads: 5 + the last reward is the number of subgoals holding at the end.
    wrapper, _ = _gym(env)
    assert td["next", "reward"][-1].item() == -float((~wrapper.subgoals()).sum())


def test_render_false_renders_nothing(env, monkeypatch):
    calls = []
    monkeypatch.setattr(mujoco.Renderer, "render", lambda *a, **k: calls.append("render"))
    monkeypatch.setattr(mujoco.Renderer, "update_scene", lambda *a, **k: calls.append("update_scene"))
    td = env.rollout(20)
    assert calls == [] and "pixels" not in td["next"].keys()


def test_rendered_frame_has_the_right_shape_and_content():
    env = make_ogbench_env(render=True, frame_size=48, seed=0)
    try:
        assert env.observation_spec["pixels"].shape == (48, 48, 3)
        frame = env.reset()["pixels"]  # one frame only: software rendering is slow
        assert frame.shape == (48, 48, 3) and frame.dtype == torch.uint8
        assert frame.float().std() > 5  # a scene, not a blank image
    finally:
        env.close()


@pytest.mark.parametrize("env_name", OGBENCH_ENVS)
def test_every_task_has_the_same_five_subgoals(env_name):
    gym_env = _make_gym_env(env_name, render=False, frame_size=64)
    try:
        gym_env.reset(seed=0)
        assert gym_env.subgoals().shape == (len(OGBENCH_SUBGOALS),)
        assert not gym_env.subgoals().all()  # no task starts solved
    finally:
        gym_env.close()


def test_names_import_without_mujoco_ogbench_or_torchrl():
    code = (
        "import sys; from torchrl_vlm.scoring.oracle import OGBenchEventScorer; "
        "from torchrl_vlm.envs.ogbench import OGBENCH_EVENT_NAMES; "
        "print(sorted(m for m in ('mujoco', 'ogbench', 'torchrl', 'dm_control') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------- scorer
def _clips(n=4, length=4):
    return TensorDict(
        {
            "mask": torch.ones(n, length, dtype=torch.bool),
            "events": torch.zeros(n, length, len(OGBENCH_EVENT_NAMES), dtype=torch.bool),
            "clip_id": torch.arange(n),
        },
        [n],
    )


def test_ogbench_event_scorer_definitions():
    clips = _clips()
    clips["events"][0, 1, COL["subgoal_1"]] = True  # a button pressed back: not its first time
    clips["events"][1, 2, COL["subgoal_3"]] = True  # the drawer opened, the first time
    clips["events"][1, 2, COL["first_subgoal_3"]] = True
    clips["events"][2, 3, COL["goal"]] = True
    clips["events"][3, 3, COL["goal"]] = True
    clips["mask"][3, 3] = False  # ... but on a padded step: it does not count
    assert OGBenchEventScorer("any")(clips).tolist() == [1.0, 1.0, 1.0, 0.0]
    assert OGBenchEventScorer("first_progress")(clips).tolist() == [0.0, 1.0, 1.0, 0.0]
    assert OGBenchEventScorer()(clips).tolist() == [0.0, 1.0, 1.0, 0.0]  # first_progress by default
    assert OGBenchEventScorer("goal_only")(clips).tolist() == [0.0, 0.0, 1.0, 0.0]
    assert OGBenchEventScorer(("subgoal_1",))(clips).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert set(OGBENCH_EVENT_DEFINITIONS) == {"any", "first_progress", "goal_only"}
    assert OGBenchEventScorer.needs_frames is False
    assert repr(OGBenchEventScorer("any")) == "OGBenchEventScorer(definition='any')"


def test_ogbench_event_scorer_refuses_bad_input():
    with pytest.raises(ValueError, match="definition must be one of"):
        OGBenchEventScorer("sometimes")
    with pytest.raises(ValueError, match="unknown event names \\['key_pickup'\\]"):
        OGBenchEventScorer(("key_pickup",))
    with pytest.raises(ValueError, match="OGBenchEventScorer needs the clips' 'events'"):
        OGBenchEventScorer()(_clips().exclude("events"))
    minigrid_clips = _clips().set("events", torch.zeros(4, 4, len(EVENT_NAMES), dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, L, 11\] \(OGBENCH_EVENT_NAMES\)"):
        OGBenchEventScorer()(minigrid_clips)
    # ... and the MiniGrid scorer still refuses OGBench's events with its own names.
    with pytest.raises(ValueError, match=r"\[B, L, 5\] \(EVENT_NAMES\)"):
        MiniGridEventScorer()(_clips())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(env_name="scene-singletask-task1-v0"),
            ValueError,
            "env_name=.*task1.*choose one of scene-singletask-task3",
        ),
        (dict(env_name=3), ValueError, "env_name=3"),
        (dict(num_envs=0), ValueError, "num_envs must be an int >= 1, got 0"),
        (dict(num_envs="2"), TypeError, "num_envs must be an int"),
        (dict(clip_len=0), ValueError, "clip_len"),
        (dict(frame_size=True), TypeError, "frame_size"),
        (dict(frame_size=0), ValueError, "frame_size"),
        (dict(render="yes"), TypeError, "render must be a bool"),
        (dict(scripted=1), TypeError, "scripted must be a bool"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_ogbench_env(**kwargs)


@pytest.mark.parametrize("env_name", OGBENCH_ENVS)
def test_the_scripted_policy_completes_subgoals_that_random_motions_do_not(env_name):
    """OGBench's oracles, aimed at the task's own targets, do subgoals (task 4's cube goes into the drawer,
    which has to be unlocked and opened first); uniformly random actions, from the same starts, do few if any."""
    np.random.seed(0)  # the oracles' resting poses
    env = make_ogbench_env(env_name, num_envs=2, seed=0, scripted=True)
    try:
        check_env_specs(env)
        done_by = {}
        for policy in ("scripted", "random"):
            td, first = env.reset(), torch.zeros(len(OGBENCH_SUBGOALS))
            generator = torch.Generator().manual_seed(0)
            for _ in range(400):
                assert td["scripted_action"].shape == (2, 5) and td["scripted_action"].abs().max() <= 1
                td["action"] = (
                    td["scripted_action"] if policy == "scripted" else torch.rand(2, 5, generator=generator) * 2 - 1
                )
                stepped, td = env.step_and_maybe_reset(td)
                first += stepped["next", "events"][:, COL["first_subgoal_0"] : COL["first_subgoal_0"] + 5].sum(0)
            done_by[policy] = first
    finally:
        env.close()
    # Random motions can brush a button now and then: the scripted policy has to do several times as much.
    assert done_by["scripted"].sum() >= max(2, 3 * done_by["random"].sum()), done_by
