"""Shared fixtures, and the order the tests start in. Tests never reach a model hub or the wandb servers.

What is shared, because building it is what a test costs (see ``make test``'s ``--durations``):

- ``tiny_vlm``: one tiny model folder for the whole run, built by the first pytest worker that asks for it;
- ``running_service``: one scoring process per scorer and worker, for tests that neither kill nor break it
  (starting one costs ~3 s: a new interpreter importing torch);
- the longest tests start first (``LONGEST_FIRST``), so that the two workers of ``make test`` finish together;
  tests that share a run or a service carry ``xdist_group`` so that one worker runs them all
  (``--dist loadgroup``).
"""
import functools
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402

from torchrl_vlm.testing import make_tiny_vlm  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """A tiny random Idefics3 saved to a folder, loaded by users' from_pretrained path.

    Built once per run: under pytest-xdist the workers share their base temporary folder's parent, and a file
    lock keeps the second worker from building it again while the first does (it only reads the folder)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this run's folder, above each worker's own
    with FileLock(str(root / "tiny-idefics3.lock")):
        return make_tiny_vlm(root / "tiny-idefics3", seed=0)


# ------------------------------------------------------------------------------------------- scoring services
@pytest.fixture(scope="session")
def _running_services():
    services = {}
    yield services
    for service in services.values():
        service.close()


def _service_key(factory, slot, options):
    if isinstance(factory, functools.partial):
        factory = (factory.func, factory.args, tuple(sorted(factory.keywords.items())))
    return factory, slot, tuple(sorted(options.items()))


def _settle(service, timeout_s=60.0) -> bool:
    """Whether ``service`` is as a fresh one would be once what it holds is answered: its worker never restarted,
    no clip dropped or lost, no scorer error. Answers for the test's buffers (closed now) are read and discarded;
    the totals a loaded checkpoint made it continue (``continue_counters``) are undone."""
    from torchrl_vlm import ScoringServiceError

    try:
        deadline = time.monotonic() + timeout_s
        while service.queue_depth and time.monotonic() < deadline:
            service.poll()
            time.sleep(0.01)
        service.poll()
    except ScoringServiceError:
        return False
    service.continue_counters({})
    counters = service.counters()
    return service.worker_pid is not None and not service.queue_depth and not any(
        counters[key] for key in ("worker_restarts", "clips_dropped", "clips_lost", "scorer_errors")
    )


@pytest.fixture
def running_service(_running_services):
    """``running_service(factory, slot=0, **options)``: a running ``ScoringService(factory, **options)`` that
    this worker's later tests get again, instead of starting a process each.

    For tests whose buffer only uses the service (``VLMReplayBuffer(scorer=service)`` leaves a caller's service
    running): never for a test that kills its worker, makes its scorer fail or checks the counters of a fresh
    service. Two buffers alive at once each take a ``slot`` of their own. After the test, the service is kept
    only if it is as a fresh one would be (:func:`_settle`); otherwise it is closed, and the next test starts
    another."""
    from torchrl_vlm import ScoringService

    used = []

    def get(factory, slot=0, **options):
        key = _service_key(factory, slot, options)
        service = _running_services.get(key)
        if service is None:
            service = _running_services[key] = ScoringService(factory, **options)
        used.append(key)
        return service

    yield get
    for key in dict.fromkeys(used):
        service = _running_services[key]
        if not _settle(service):
            service.close()
            del _running_services[key]


# ------------------------------------------------------------------------------------------------ test order
# Tests that take seconds, with about how many (a quiet 2-core machine, `make test`'s two workers; refresh from
# `--durations=60`). They start first, longest first, the many short tests after them: with `--dist loadgroup`
# a worker takes the next test (or group) whenever it has fewer than three waiting, so the two end together
# instead of one finishing a long test minutes after the other went idle. A name here that no longer exists
# only loses its place; the prefix matches every parametrisation of a test.
LONGEST_FIRST = {
    "tests/test_covr_prior.py::test_covr_fine_tunes_on_schedule_and_resumes_bit_identically_under_prior_lag": 36,
    "tests/test_actor_critic_recipes.py::test_covr_trains_end_to_end_with_the_tiny_vlm": 27,
    "tests/test_actor_critic_recipes.py::test_the_rad_agent_with_a_covr_prior_trains_from_pixels": 26,
    "tests/test_own_env.py::test_the_guide_runs_on_cartpole_and_priorities_sit_on_the_clips_the_scorer_said_yes_to": 26,
    "tests/test_covr_prior.py::test_a_failed_finetune_is_counted_and_training_goes_on_with_the_adapter_it_had": 15,
    "tests/test_covr_prior.py::test_a_failed_finetune_is_counted_and_training_goes_on_with_the_adapter_it_had"
    "[Dying": 23,
    "tests/test_actor_critic_recipes.py::test_smoke[sac-ogbench-vlm]": 19,
    "tests/test_recipes.py::test_checkpoint_round_trip_and_resume": 17,
    "tests/test_actor_critic_recipes.py::test_the_tiny_vlm_scores_rendered_frames": 16,
    "tests/test_own_env.py::test_scorers_are_taken_in_the_forms_users_pass_and_refused_early_otherwise": 16,
    "tests/test_recipes.py::test_score_lag_makes_two_runs_identical_under_different_scorer_latencies": 15,
    "tests/test_recipes.py::test_a_rerun_with_the_verdict_cache_asks_the_scorer_nothing": 13,
    "tests/test_faults.py::test_ctrl_c_ends_the_run_with_a_checkpoint_and_no_orphan": 13,
    "tests/test_checkpoints.py::test_a_planted_payload_never_runs_even_with_a_forged_manifest[checkpoint.pt]": 12,
    "tests/test_probe.py::test_the_probe_on_ogbench_scene": 12,
    "tests/test_openai_scorer.py::test_the_dqn_recipe_with_a_server_without_logprobs_stops_with_the_reason": 12,
    "tests/test_actor_critic_recipes.py::test_smoke[td3-ogbench-uniform]": 11,
    "tests/test_own_env.py::test_a_plain_function_scorer_has_a_stable_cache_identity_and_a_rerun_hits": 11,
    "tests/test_verdict_cache.py::test_the_hit_rate_reaches_the_service_stats": 11,
    "tests/test_faults.py::test_a_restarted_worker_that_cannot_rebuild_uses_a_restart_then_gives_up_clearly": 10,
    "tests/test_vlm_buffer.py::test_a_state_dict_taken_while_verdicts_arrive_keeps_sampler_and_column_agreed": 10,
    "tests/test_iqn.py::test_quantiles_of_a_two_armed_bandit_are_recovered": 10,
    "tests/test_recipes.py::test_smoke_with_the_tiny_vlm": 10,
    "tests/test_vlm_buffer.py::test_the_buffer_survives_a_worker_kill_mid_run": 10,
    "tests/test_own_env.py::test_the_verdict_audit_fails_on_a_model_the_cache_does_not_hold": 9,
    "tests/test_actor_critic_recipes.py::test_smoke[": 9,
    "tests/test_actor_critic_recipes.py::test_resume_continues_from_the_checkpoint": 9,
    "tests/test_recipes.py::test_smoke[iqn-vlm-tdboost]": 9,
    "tests/test_recipes.py::test_smoke[vlm-": 8,
    "tests/test_scoring.py::test_a_hung_scorer_is_killed_and_restarted": 8,
    "tests/test_scoring.py::test_a_missing_model_fails_at_start_naming_it": 8,
    "tests/test_verdict_cache.py::test_two_processes_share_one_cache": 7,
    "tests/test_recipes.py::test_a_missing_model_offline_suggests_the_way_out": 7,
    "tests/test_scoring.py::test_tiny_vlm_scores_real_frames_in_the_scoring_process": 7,
    "tests/test_vlm_buffer.py::test_the_readme_example_runs": 7,
    "tests/test_scoring.py::test_worker_sigkill_is_restarted_and_its_clips_are_lost_not_positive": 7,
    "tests/test_vlm_buffer.py::test_score_lag_lands_each_verdict_exactly_k_extends_later": 7,
    "tests/test_faults.py::test_a_resumed_run_gets_a_fresh_restart_budget_and_its_totals_continue": 7,
    "tests/test_covr_prior.py::test_a_prior_never_lands_on_a_slot_that_was_overwritten": 7,
    "tests/test_faults.py::test_no_scoring_process_outlives_a_killed_trainer": 7,
    "tests/test_ogbench.py::test_the_scripted_policy_completes_subgoals_that_random_motions_do_not": 7,
    "tests/test_distill_recipe.py::test_the_vlm_teacher_in_its_own_process": 6,
    "tests/test_recipes.py::test_resume_refuses_a_different_replay_setup": 6,
    "tests/test_vlm_buffer.py::test_a_clip_ends_on_the_state_its_last_action_reached": 6,
    "tests/test_own_env.py::test_a_scorer_that_fails_from_the_start_stops_the_run_early_with_its_own_error": 6,
    "tests/test_covr_prior.py::test_a_vlm_that_answers_garbage_leaves_no_prior_and_says_so": 6,
    "tests/test_planner.py::test_a_teacher_in_its_own_process_answers_like_the_local_one": 5,
    "tests/test_recipes.py::test_an_absent_pandas_is_remembered_and_an_installed_one_left_importable": 5,
    "tests/test_faults.py::test_an_answer_waiting_after_a_long_pause_is_not_taken_for_a_hang": 5,
    "tests/test_scoring.py::test_startup_failure_raises_a_clear_error_naming_the_model": 5,
    "tests/test_frame_stride.py::test_dmc_renders_episode_end": 5,
    "tests/test_frame_stride.py::test_buffer_ships_frame_mask": 5,
    "tests/test_scoring.py::test_backpressure_drops_the_oldest_and_counts_every_clip": 5,
    "tests/test_faults.py::test_a_restarted_worker_that_hangs_building_its_scorer_is_detected": 5,
    "tests/test_covr_prior.py::test_a_lora_finetune_brings_the_prior_to_the_actions_it_was_shown": 4,
    "tests/test_scoring.py::test_scorer_exceptions_are_counted_then_fatal": 4,
    "tests/test_dmc.py::test_names_import_without_mujoco_dm_control_or_torchrl": 4,
    "tests/test_ogbench.py::test_names_import_without_mujoco_ogbench_or_torchrl": 4,
    "tests/test_recipes.py::test_wandb_is_the_default_and_runs_offline": 3,
    "tests/test_render_clips_contract.py::test_trans_parallel_env_check": 3,
}


def _expected_seconds(nodeid: str) -> float:
    best, seconds = 0, 0.0
    for prefix, s in LONGEST_FIRST.items():
        if nodeid.startswith(prefix) and len(prefix) > best:
            best, seconds = len(prefix), s
    return seconds


def _group(item) -> str | None:
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")})
    return "_".join(names) or None


def pytest_collection_modifyitems(config, items):
    expected = {item.nodeid: _expected_seconds(item.nodeid) for item in items}
    groups = {item.nodeid: _group(item) for item in items}
    group_total = {}
    for nodeid, group in groups.items():
        if group:
            group_total[group] = group_total.get(group, 0.0) + expected[nodeid]
    # A group runs as one unit: it starts where its whole time says it should.
    items.sort(key=lambda item: -group_total.get(groups[item.nodeid], expected[item.nodeid]))  # stable
    path = os.environ.get(_GROUPS_FILE)
    if path and hasattr(config, "workerinput"):  # a pytest-xdist worker tells the controller the groups
        tmp = f"{path}.{config.workerinput['workerid']}"
        Path(tmp).write_text(json.dumps({nodeid: group for nodeid, group in groups.items() if group}))
        os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ xdist groups
# `--dist loadgroup` should send the tests marked @pytest.mark.xdist_group(name) to one worker, but pytest-xdist
# 3.8 does it by renaming the tests' node ids, which pytest 9 ignores: every test went anywhere. The same here,
# with the names kept aside: the workers (which collect) write each grouped test's group to a file that the
# controller (which schedules, from node ids alone) reads.
_GROUPS_FILE = "TORCHRL_VLM_XDIST_GROUPS"


def _controls_loadgroup(config) -> bool:
    return not hasattr(config, "workerinput") and getattr(config.option, "dist", None) == "loadgroup"


def pytest_configure(config):
    if _controls_loadgroup(config):
        handle, path = tempfile.mkstemp(prefix="xdist-groups-", suffix=".json")
        os.close(handle)
        os.environ[_GROUPS_FILE] = path  # the workers start after this, with this environment


def pytest_unconfigure(config):
    if _controls_loadgroup(config):
        Path(os.environ.pop(_GROUPS_FILE, "")).unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown to a run with -p no:xdist (the Ray suite's)
def pytest_xdist_make_scheduler(config, log):
    if not _controls_loadgroup(config):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class MarkedGroups(LoadScopeScheduling):
        """A test's unit of work is its xdist_group, or the test alone; units go to whichever worker has fewer
        than three tests waiting, in collection order (with --no-loadscope-reorder)."""

        groups = None

        def _split_scope(self, nodeid):
            if self.groups is None:  # first asked once every worker has collected (and written the file)
                text = Path(os.environ.get(_GROUPS_FILE, "")).read_text() if os.environ.get(_GROUPS_FILE) else ""
                self.groups = json.loads(text) if text else {}
            return self.groups.get(nodeid, nodeid)

    return MarkedGroups(config, log)
