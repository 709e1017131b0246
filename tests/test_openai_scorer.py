"""OpenAIScorer against real servers only (no mocks), plus the P(yes) arithmetic.

Two real servers on loopback: ``transformers serve`` (which ignores logprobs: the error
paths) and vLLM's CPU build (``make vllm``, an environment of its own: the success path,
P(yes) read off real logprobs, in the scorer and in the DQN recipe). Where vLLM could not be
installed, its tests are skipped and say so.
"""
import math
import pickle
import time
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from torchrl_vlm import loopback
from torchrl_vlm.loopback import free_port
from torchrl_vlm.scoring.openai import OpenAIScorer, OpenAIScorerError, p_yes_from_top_logprobs
from torchrl_vlm.testing import make_tiny_vlm


def make_clips(b=2, length=4, mission=None) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (b, length, 16, 16, 3), dtype=torch.uint8, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[-1, length // 2:] = False
    td = TensorDict({"frames": frames, "mask": mask}, batch_size=[b])
    if mission is not None:
        td.set_non_tensor("mission", mission)
    return td


# --------------------------------------------------------------------- the arithmetic
def lp(p):
    return math.log(p)


def test_p_yes_formula_sums_variants():
    pairs = [(" Yes", lp(0.5)), ("No", lp(0.2)), ("yes", lp(0.1)), (" no", lp(0.1)), ("Maybe", lp(0.05))]
    # (0.5 + 0.1) / (0.5 + 0.1 + 0.2 + 0.1)
    assert p_yes_from_top_logprobs(pairs) == pytest.approx(0.6 / 0.9)


def test_p_yes_case_sensitive_and_whitespace_stripped():
    pairs = [("\nYes ", lp(0.3)), ("nO", lp(0.6)), ("No", lp(0.1))]
    # "nO" is not a listed variant; "\nYes " strips to "Yes".
    assert p_yes_from_top_logprobs(pairs) == pytest.approx(0.75)
    assert p_yes_from_top_logprobs(pairs, yes_tokens=("yes",), no_tokens=("No",)) == pytest.approx(0.0)


def test_p_yes_one_side_missing_and_none():
    assert p_yes_from_top_logprobs([("Yes", lp(0.9)), ("The", lp(0.05))]) == 1.0
    assert p_yes_from_top_logprobs([("NO", lp(0.4))]) == 0.0
    assert p_yes_from_top_logprobs([("The", lp(0.9)), ("A", lp(0.1))]) is None
    assert p_yes_from_top_logprobs([]) is None
    assert p_yes_from_top_logprobs([("Yes", -math.inf), ("No", -math.inf)]) == 0.5


def test_p_yes_rejects_malformed_entries():
    with pytest.raises(ValueError, match="pairs"):
        p_yes_from_top_logprobs([("Yes",)])
    with pytest.raises(ValueError, match="string"):
        p_yes_from_top_logprobs([(None, -1.0)])
    with pytest.raises(ValueError, match="<= 0"):
        p_yes_from_top_logprobs([("Yes", 0.5)])
    with pytest.raises(ValueError, match="<= 0"):
        p_yes_from_top_logprobs([("Yes", None)])


# --------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"base_url": 8000}, TypeError, "base_url"),
        ({"base_url": "127.0.0.1:8000/v1"}, ValueError, "base_url must start with http"),
        ({"model": ""}, TypeError, "model"),
        ({"prompt": "  "}, ValueError, "prompt"),
        ({"num_frames": 0}, ValueError, "num_frames must be an int >= 1, got 0"),
        ({"num_frames": 2.0}, TypeError, "num_frames"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"max_concurrency": True}, TypeError, "max_concurrency"),
        ({"timeout_s": 0}, ValueError, "timeout_s must be a finite number > 0, got 0"),
        ({"timeout_s": "30"}, ValueError, "timeout_s"),
        ({"max_retries": -1}, ValueError, "max_retries must be an int >= 0"),
        ({"top_logprobs": 0}, ValueError, "top_logprobs"),
        ({"api_key": 123}, TypeError, "api_key"),
        ({"mission_in_prompt": "yes"}, TypeError, "mission_in_prompt"),
        ({"yes_tokens": "Yes"}, TypeError, "yes_tokens must be a sequence of strings"),
        ({"no_tokens": ()}, ValueError, "no_tokens"),
        ({"yes_tokens": ("Yes", " No")}, ValueError, "share"),
    ],
)
def test_argument_validation(kwargs, exc, match):
    args = {"base_url": "http://127.0.0.1:1/v1", "model": "m", **kwargs}
    with pytest.raises(exc, match=match):
        OpenAIScorer(args.pop("base_url"), args.pop("model"), **args)


def test_request_body_and_cache_view():
    scorer = OpenAIScorer("http://127.0.0.1:1/v1/", "m", num_frames=3, top_logprobs=5, mission_in_prompt=True)
    assert scorer.base_url == "http://127.0.0.1:1/v1"
    clips = make_clips(mission=["open the door", "get the key"])
    view = scorer.cache_view(clips)
    assert [len(v[1][0]) for v in view] == [3, 2]  # the second clip has 2 real steps
    assert view[0][0].startswith("The agent's mission: open the door. ")
    body = scorer.request_body(view[0][1][0], "open the door")
    assert {k: body[k] for k in ("model", "max_tokens", "logprobs", "top_logprobs", "temperature")} == {
        "model": "m", "max_tokens": 1, "logprobs": True, "top_logprobs": 5, "temperature": 0}
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 3 + ["text"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[-1]["text"] == view[0][0]
    assert scorer.cache_identity()["model"] == "m"
    with pytest.raises(ValueError, match="mission"):
        scorer(make_clips())
    pickle.loads(pickle.dumps(scorer))


# --------------------------------------------------------------------- real servers
def test_unreachable_server_fails_fast():
    port = free_port()  # closed again: nothing listens there
    scorer = OpenAIScorer(f"http://127.0.0.1:{port}/v1", "some-model", timeout_s=5.0)
    start = time.monotonic()
    with pytest.raises(
        OpenAIScorerError, match=rf"cannot reach the server at http://127.0.0.1:{port}/v1 \(model 'some-model'\)"
    ):
        scorer(make_clips(b=3))
    assert time.monotonic() - start < 10
    assert scorer.stats()["openai_retries"] >= 2


def _one_server(name):
    """The tests of one server run on one worker, where it starts once, and in `make test-slow`: starting
    `transformers serve` takes ~15 s, vLLM ~45 s."""

    def mark(test):
        return pytest.mark.slow(pytest.mark.xdist_group(name)(test))

    return mark


ONE_SERVER = _one_server("transformers_server")
ONE_VLLM = _one_server("vllm_server")


@pytest.fixture(scope="module")
def transformers_server(tiny_vlm, tmp_path_factory):
    """`transformers serve` with the tiny offline model on a free loopback port; stopped afterwards."""
    try:
        with loopback.transformers_server(tiny_vlm, log_path=tmp_path_factory.mktemp("serve") / "serve.log") as url:
            yield url
    except FileNotFoundError as err:
        pytest.skip(str(err))


@ONE_SERVER
def test_transformers_serve_without_logprobs_is_a_clear_error(transformers_server, tiny_vlm):
    scorer = OpenAIScorer(transformers_server, str(tiny_vlm), num_frames=2, timeout_s=60.0)
    with pytest.raises(OpenAIScorerError) as info:
        scorer(make_clips(b=2))
    msg = str(info.value)
    assert f"the server at {transformers_server} (model {str(tiny_vlm)!r}) returned no logprobs" in msg
    assert "vLLM returns them with logprobs=true" in msg and "`transformers serve` ignores logprobs" in msg
    assert "vllm serve" in msg
    # The request itself went through: the server answered (without logprobs).
    assert scorer.stats()["openai_requests"] >= 1


@ONE_SERVER
def test_transformers_serve_unknown_model_is_a_clear_error(transformers_server):
    # transformers serve, pinned to one model, answers HTTP 400 "Server is pinned to '...'; requested '...'".
    scorer = OpenAIScorer(transformers_server, "nosuch", num_frames=1, timeout_s=60.0)
    start = time.monotonic()
    with pytest.raises(
        OpenAIScorerError, match=r"does not serve model 'nosuch' \(HTTP 400\): .*requested 'nosuch'\. Pass the name"
    ):
        scorer(make_clips(b=1))
    assert time.monotonic() - start < 10


@ONE_SERVER
def test_the_dqn_recipe_with_a_server_without_logprobs_stops_with_the_reason(transformers_server, tiny_vlm, tmp_path):
    """vlm.scorer=openai end to end: frames rendered, clips sent to the real server, and its missing logprobs
    stop the run with the scorer's own explanation (here after one failed batch)."""
    import dqn_minigrid
    from test_recipes import config

    from torchrl_vlm import ScoringServiceError

    cfg = config(
        "buffer.sampler=vlm",
        "vlm.scorer=openai",
        f"vlm.base_url={transformers_server}",
        f"vlm.model={tiny_vlm}",
        "vlm.num_frames=2",
        "vlm.max_consecutive_errors=1",
        "collector.total_frames=2048",
        "logger.gallery_interval=0",
    )
    assert dqn_minigrid.wants_frames(cfg)
    with pytest.raises(ScoringServiceError, match="returned no logprobs"):
        dqn_minigrid.train(cfg, tmp_path)
    with pytest.raises(ValueError, match="vlm.scorer=openai needs vlm.base_url"):
        dqn_minigrid.scorer_factory(config("vlm.scorer=openai"))


@ONE_SERVER
def test_the_probe_with_a_server_without_logprobs_stops_with_the_reason(
    transformers_server, tiny_vlm, tmp_path, capsys
):
    from torchrl_vlm.probe.cli import main as probe_main

    with pytest.raises(SystemExit) as stop:
        probe_main(
            [
                "--env",
                "MiniGrid-DoorKey-5x5-v0",
                "--clips",
                "4",
                "--scorer",
                "openai",
                "--base-url",
                transformers_server,
                "--model",
                str(tiny_vlm),
                "--num-frames",
                "2",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
    assert stop.value.code == 2
    assert "returned no logprobs" in capsys.readouterr().err


# --------------------------------------------------------------------- vLLM: the success path
VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="module")
def vllm_tiny(tmp_path_factory):
    # vLLM's CPU attention needs heads of 32 or more: the same tiny Idefics3 with 2 heads of 32.
    return make_tiny_vlm(tmp_path_factory.mktemp("vlm32") / "tiny-idefics3-h32", seed=0, head_dim=32)


@pytest.fixture(scope="module")
def vllm_url(vllm_tiny, tmp_path_factory):
    if not (VLLM_PYTHON.parent.parent / ".installed").is_file():
        pytest.skip("vLLM's CPU build is not installed (make vllm): the success path against vLLM is not tested here")
    with loopback.vllm_server(vllm_tiny, VLLM_PYTHON, log_path=tmp_path_factory.mktemp("vllm") / "vllm.log") as url:
        yield url


def _top(reply) -> list[tuple[str, float]]:
    return [(e["token"], e["logprob"]) for e in reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]]


@ONE_VLLM
def test_vllm_logprobs_give_p_yes_and_top_k_stays_within_its_bound(vllm_url, vllm_tiny):
    """P(yes) from vLLM's real logprobs: with the whole vocabulary listed it is exact for the served model;
    with the top 20 the exact value lies inside the bound the docstring states."""
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(vllm_tiny))
    clips = make_clips(b=8, length=6)
    exact = OpenAIScorer(vllm_url, str(vllm_tiny), num_frames=2, top_logprobs=vocab, max_concurrency=4, timeout_s=120.0)
    scores = exact(clips)
    stats = exact.stats()
    assert stats["openai_requests"] == 8 and stats["openai_no_answer"] == 0 and stats["openai_retries"] == 0
    assert bool(((scores > 0) & (scores < 1)).all()) and scores.unique().numel() > 1  # the frames matter

    short = OpenAIScorer(vllm_url, str(vllm_tiny), num_frames=2, top_logprobs=20, timeout_s=120.0)
    yes = {t.strip() for t in short.yes_tokens}
    no = {t.strip() for t in short.no_tokens}
    checked = 0
    for b in range(8):
        frames = clips["frames"][b][:2]
        full = dict(_top(exact.complete(exact.request_body(frames))))
        true_yes = sum(math.exp(lp) for t, lp in full.items() if t.strip() in yes)
        true_no = sum(math.exp(lp) for t, lp in full.items() if t.strip() in no)
        truth = true_yes / (true_yes + true_no)
        top = _top(short.complete(short.request_body(frames)))
        listed = {t for t, _ in top}
        y = sum(math.exp(lp) for t, lp in top if t.strip() in yes)
        n = sum(math.exp(lp) for t, lp in top if t.strip() in no)
        if y + n == 0:
            continue  # neither listed: the scorer says 0.5 and counts it
        p_min = min(math.exp(lp) for _, lp in top)
        tokens = {t for t in full if t.strip() in yes | no}
        m_yes = sum(1 for t in tokens if t.strip() in yes and t not in listed)
        m_no = sum(1 for t in tokens if t.strip() in no and t not in listed)
        low, high = y / (y + n + m_no * p_min), (y + m_yes * p_min) / (y + m_yes * p_min + n)
        assert low - 1e-6 <= truth <= high + 1e-6
        assert p_yes_from_top_logprobs(top, short.yes_tokens, short.no_tokens) == pytest.approx(y / (y + n))
        checked += 1
    assert checked >= 2  # clips whose top 20 list an answer (the rest score 0.5, counted)
    assert exact.stats()["openai_requests"] == 16


@ONE_VLLM
def test_the_dqn_recipe_scores_with_vllm(vllm_url, vllm_tiny, tmp_path):
    """vlm.scorer=openai end to end against vLLM: frames rendered, clips sent, P(yes) from logprobs in the buffer."""
    from test_recipes import _stored, config, dqn_minigrid

    cfg = config(
        "buffer.sampler=vlm",
        "vlm.scorer=openai",
        f"vlm.base_url={vllm_url}",
        f"vlm.model={vllm_tiny}",
        "vlm.num_frames=2",
        "vlm.score_lag=1",
        "collector.total_frames=256",
        "logger.gallery_interval=0",
    )
    summary = dqn_minigrid.train(cfg, tmp_path)
    stats = summary["buffer_stats"]
    assert stats["clips_scored"] > 0 and stats["clips_lost"] == 0 and stats["openai_requests"] >= stats["clips_scored"]
    scores = _stored(summary["checkpoint"])["vlm_score"][: summary["frames"]]
    scores = scores[~scores.isnan()]
    assert scores.numel() > 0 and bool(((scores >= 0) & (scores <= 1)).all())


@ONE_VLLM
def test_the_probe_scores_with_vllm(vllm_url, vllm_tiny, tmp_path):
    """The probe end to end with --scorer openai against vLLM: every clip answered, the figures written,
    and the untrained model reported as such (its ROC-AUC sits within chance's interval)."""
    import json

    from torchrl_vlm.probe.cli import main as probe_main

    out = tmp_path / "probe"
    assert (
        probe_main(
            [
                "--env",
                "MiniGrid-DoorKey-5x5-v0",
                "--clips",
                "16",
                "--clip-len",
                "8",
                "--scorer",
                "openai",
                "--base-url",
                vllm_url,
                "--model",
                str(vllm_tiny),
                "--num-frames",
                "2",
                "--timeout-s",
                "120",
                "--definition",
                "any",
                "--out",
                str(out),
                "--json",
                str(out / "r.json"),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((out / "r.json").read_text())
    assert report["clips"] == 16 and report["clips_per_s"] > 0
    assert {"precision", "recall", "f1", "roc_auc", "base_rate"} <= set(report)
    assert 0 < report["base_rate"] < 1  # the planner's half of the clips makes progress
    assert report["near_chance"]  # random weights: the report must not read skill into them
