"""The scorer probe: clip collection and its saved format, the metrics, the scorers, the CLI and its errors."""
import json
import math

import pytest
import torch

from torchrl_vlm.probe import ClipSet, ClipSetError, binary_report, calibration, collect_clips, roc_auc
from torchrl_vlm.probe.cli import main as probe_main
from torchrl_vlm.probe.clipset import _Episode
from torchrl_vlm.probe.report import score_clips
from torchrl_vlm.scoring.oracle import MiniGridEventScorer, NoisyScorer, OGBenchEventScorer

ENV = "MiniGrid-DoorKey-5x5-v0"
# The module's clip set is collected once: its tests run on one worker.
pytestmark = pytest.mark.xdist_group("probe")


@pytest.fixture(scope="module")
def clipset():
    return collect_clips(ENV, 96, seed=0)


@pytest.fixture(scope="module")
def saved(clipset, tmp_path_factory):
    return clipset.save(tmp_path_factory.mktemp("clips") / "set")


# ------------------------------------------------------------------ clips
def test_clips_are_cut_as_training_cuts_them(clipset):
    assert len(clipset) == 96 and clipset.frames.dtype == torch.uint8 and clipset.frames.shape[1] == 32
    # Each policy gave half; the planner's clips show progress far more often than random ones.
    assert clipset.policy.bincount().tolist() == [48, 48]
    labels = clipset.labels("first_progress")
    by_policy = [float(labels[clipset.policy == p].mean()) for p in (0, 1)]
    assert by_policy[1] > by_policy[0] and 0.1 < float(labels.mean()) < 0.9  # positives are not rare
    # Real steps come first; padding is zero; clips start at multiples of L in their episode.
    mask = clipset.mask
    assert bool((mask.cumsum(-1) == mask.sum(-1, keepdim=True)).logical_or(mask).all())
    assert int(clipset.frames[~mask].abs().sum()) == 0 and bool(clipset.non_overlapping().all())
    # Labels are the event scorer's verdicts on the same clips under each definition.
    for definition in ("any", "first_progress", "goal_only"):
        torch.testing.assert_close(clipset.labels(definition), MiniGridEventScorer(definition)(clipset.clips()))
    assert set(clipset.missions) == {"use the key to open the door and then get to the goal"}
    # Same seed, same clips.
    again = collect_clips(ENV, 96, seed=0)
    assert torch.equal(again.frames, clipset.frames) and torch.equal(again.events, clipset.events)


@pytest.mark.parametrize("n, stride, expected", [
    (3, 2, [(0, 3)]),                  # shorter than L: the whole episode
    (4, 2, [(0, 4)]),                  # exactly L: nothing after (it would be a suffix)
    (5, 2, [(0, 4), (2, 3)]),          # the one window that reaches the end
    (9, 4, [(0, 4), (4, 4), (8, 1)]),  # non-overlapping, last one short
    (8, 4, [(0, 4), (4, 4)]),
    (7, 1, [(0, 4), (1, 4), (2, 4), (3, 4)]),
])
def test_episode_windows(n, stride, expected):
    ep, got = _Episode(clip_len=4, stride=stride), []
    for t in range(n):
        frame = torch.full((1, 1, 3), t, dtype=torch.uint8)
        got += [(s, length) for s, length, _, _ in ep.add(frame, frame + 100, torch.zeros(1, dtype=torch.bool))]
    got += [(s, length) for s, length, _, _ in ep.end()]
    assert got == expected
    # A clip's last frame is the outcome of its last action (the frame after it).
    ep = _Episode(clip_len=2, stride=2)
    ep.add(torch.zeros(1, 1, 3, dtype=torch.uint8), torch.ones(1, 1, 3, dtype=torch.uint8), torch.zeros(1))
    _, _, frames, _ = ep.add(torch.full((1, 1, 3), 1, dtype=torch.uint8), torch.full((1, 1, 3), 2, dtype=torch.uint8),
                             torch.zeros(1))[0]
    assert frames[:, 0, 0, 0].tolist() == [0, 2]


def test_sliding_windows_hold_the_non_overlapping_clips():
    sliding = collect_clips(ENV, 64, seed=1, stride=8, policies=["random"])
    assert bool((sliding.start % 8 == 0).all()) and int((sliding.start % 32 != 0).sum()) > 0
    flat = sliding.subset(sliding.non_overlapping())
    plain = collect_clips(ENV, len(flat), seed=1, policies=["random"])
    # The same experience: the clips training would cut are among the sliding ones, in order.
    assert torch.equal(flat.frames, plain.frames[: len(flat)]) and torch.equal(flat.events, plain.events[: len(flat)])


def test_a_saved_set_loads_back_and_a_tampered_one_is_refused(clipset, saved, tmp_path):
    loaded = ClipSet.load(saved)
    for key in ("frames", "mask", "events", "policy", "episode", "start"):
        assert torch.equal(getattr(loaded, key), getattr(clipset, key)), key
    assert loaded.missions == clipset.missions and loaded.env_name == ENV and loaded.policies == clipset.policies
    meta = json.loads((saved / "clipset.json").read_text())
    assert meta["format"] == "torchrl_vlm.clipset" and meta["clips"] == 96 and len(meta["sha256"]) == 64

    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    with open(bad / "clips.pt", "r+b") as f:
        f.seek(2000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ClipSetError, match="does not match the checksum"):
        ClipSet.load(bad)
    with pytest.raises(ClipSetError, match="needs clipset.json and clips.pt"):
        ClipSet.load(tmp_path / "nowhere")


# ------------------------------------------------------------------ metrics
def test_metrics_against_hand_counts():
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1.0])
    scores = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.1, 0.7])
    r = binary_report(scores, labels)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (3, 1, 3, 1)
    assert r["precision"] == r["recall"] == 0.75 and r["f1"] == 0.75 and r["fpr"] == r["fnr"] == 0.25
    assert r["base_rate"] == 0.5
    # AUC: of the 16 (positive, negative) pairs, the positives' 0.3 loses to 0.6 only: 15/16.
    assert r["roc_auc"] == pytest.approx(15 / 16)
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0]))[0] == 0.5  # ties count half
    assert math.isnan(roc_auc(torch.ones(3), torch.ones(3))[0])
    cal = calibration(scores, labels, bins=2)
    assert [b["clips"] for b in cal["bins"]] == [4, 4]
    assert cal["ece"] == pytest.approx(0.5 * abs(0.25 - 0.175) + 0.5 * abs(0.75 - 0.75))


def test_the_event_scorer_is_perfect_and_the_noisy_one_errs_at_its_rates(clipset):
    labels = clipset.labels("first_progress")
    scored = score_clips(MiniGridEventScorer("first_progress"), clipset.clips())
    r = binary_report(scored.scores, labels, verdicts=scored.verdicts)
    assert r["precision"] == r["recall"] == r["roc_auc"] == 1.0
    # Noisy verdicts, pooled over 40 independent draws of the same clips (seeded).
    fpr, fnr, draws = 0.1, 0.3, 40
    noisy = NoisyScorer(MiniGridEventScorer("first_progress"), fpr, fnr, seed=0)
    counts = {"fp": 0, "tn": 0, "fn": 0, "tp": 0}
    for _ in range(draws):
        r = binary_report(score_clips(noisy, clipset.clips()).scores, labels)
        for k in counts:
            counts[k] += r[k]
    neg, pos = counts["fp"] + counts["tn"], counts["fn"] + counts["tp"]
    # Binomial bounds: 4 standard deviations of the measured rate around the set one.
    assert abs(counts["fp"] / neg - fpr) < 4 * math.sqrt(fpr * (1 - fpr) / neg)
    assert abs(counts["fn"] / pos - fnr) < 4 * math.sqrt(fnr * (1 - fnr) / pos)


# ------------------------------------------------------------------ the command
def test_the_probe_command_reports_and_writes_json(saved, tmp_path, capsys):
    out = tmp_path / "out"
    assert probe_main(["--clips-from", str(saved), "--scorer", "noisy_events", "--fpr", "0.2", "--fnr", "0.2",
                       "--out", str(out), "--json", str(out / "r.json"), "--quiet"]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "r.json").read_text())
    for key in ("precision", "recall", "f1", "roc_auc", "base_rate", "clips", "clips_per_s"):
        assert isinstance(report[key], (int, float)), key
    assert report["clips"] == 96 and f"precision                    {report['precision']:.3f}" in text
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert probe_main(["--clips-from", str(saved), "--scorer", "events", "--out", str(out), "--json",
                       str(out / "e.json"), "--quiet"]) == 0
    perfect = json.loads((out / "e.json").read_text())
    assert perfect["precision"] == perfect["recall"] == 1.0 and "by construction" in capsys.readouterr().out


def test_the_probe_collects_and_saves_a_set_for_the_next_scorer(tmp_path, capsys):
    out = tmp_path / "first"
    assert probe_main(["--env", ENV, "--clips", "16", "--scorer", "events", "--out", str(out), "--quiet",
                       "--definition", "goal_only", "--seed", "3"]) == 0
    reloaded = ClipSet.load(out / "clips")
    assert len(reloaded) == 16 and reloaded.seed == 3
    assert "saved to" in capsys.readouterr().out


def test_the_tiny_vlm_with_every_option(saved, tiny_vlm, tmp_path, capsys):
    """The tiny random model through goal-conditioned prompts, frame and prompt voting, fewer frames and the
    non-overlapping windows: each runs, and the report says what the tiny model is."""
    runs = [
        [],
        ["--prompt-variant", "goal_conditioned"],
        ["--vote", "frames", "--votes", "3"],
        ["--vote", "prompts"],
        ["--num-frames", "2", "--windows", "non_overlapping"],
    ]
    for i, extra in enumerate(runs):
        path = tmp_path / f"r{i}.json"
        assert probe_main(["--clips-from", str(saved), "--scorer", "transformers", "--model", str(tiny_vlm),
                           "--device", "cpu", "--out", str(tmp_path), "--json", str(path), "--quiet", *extra]) == 0
        report = json.loads(path.read_text())
        assert report["clips"] == 96 and 0.0 <= report["roc_auc"] <= 1.0
        assert "tiny random model" in capsys.readouterr().out
    # Prompt voting asks once per prompt (3 default prompts), frame voting once per subset.
    assert json.loads((tmp_path / "r3.json").read_text())["scorer_calls"] == 3 * json.loads(
        (tmp_path / "r0.json").read_text())["scorer_calls"]


def test_majority_vote_is_the_majority_of_the_votes(clipset, tiny_vlm):
    from torchrl_vlm import TransformersScorer

    scorer = TransformersScorer(tiny_vlm, num_frames=2, device="cpu")
    prompts = ["Is the door open? Answer Yes or No.", "Is the key picked up? Answer Yes or No.",
               "Is the goal reached? Answer Yes or No."]
    clips = clipset.clips(slice(0, 12))
    voted = score_clips(scorer, clips, vote="prompts", prompts=prompts, threshold=0.5)
    singles = []
    for prompt in prompts:
        scorer.prompt = prompt
        singles.append(scorer(clips))
    singles = torch.stack(singles)
    assert torch.equal(voted.verdicts, (singles >= 0.5).sum(0) >= 2)
    torch.testing.assert_close(voted.scores, singles.mean(0))


@pytest.mark.parametrize("argv, message", [
    (["--env", "CartPole-v1", "--scorer", "events"], "has no simulator events to label clips from"),
    (["--env", ENV, "--scorer", "events", "--definition", "door_only"],
     "definition='door_only' is not defined for minigrid; choose one of"),
    (["--env", ENV, "--scorer", "transformers", "--model", "/no/such/model"],
     "--scorer transformers could not be built from --model /no/such/model"),
    (["--env", ENV, "--scorer", "openai", "--model", "m"], "--scorer openai needs --base-url"),
    (["--scorer", "events"], "give either --env"),
    (["--env", ENV, "--scorer", "events", "--vote", "frames"], "--vote frames needs a VLM scorer"),
    (["--env", ENV, "--scorer", "events", "--stride", "40"], "--stride must be in [1, --clip-len=32]"),
])
def test_clear_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        probe_main([*argv, "--out", str(tmp_path), "--quiet"])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # OGBench clips rendered in software: ~25 s (`make test-slow`)
def test_the_probe_on_ogbench_scene(tmp_path, tiny_vlm, capsys):
    """OGBench scene: random arm motions and the scripted policy, events from the simulator, frames rendered."""
    out = tmp_path / "scene"
    assert probe_main(["--env", "scene-singletask-task3-v0", "--clips", "8", "--clip-len", "4", "--scorer",
                       "noisy_events", "--fpr", "0.5", "--fnr", "0.5", "--definition", "any", "--out", str(out),
                       "--json", str(out / "r.json"), "--quiet"]) == 0
    report = json.loads((out / "r.json").read_text())
    clips = ClipSet.load(out / "clips")
    assert report["clips"] == len(clips) == 8 and clips.domain == "ogbench" and clips.missions is None
    assert clips.policies == ("random", "scripted") and clips.policy.bincount().tolist() == [4, 4]
    assert clips.frames.shape[1:] == (4, 64, 64, 3) and clips.frames.float().std() > 0
    torch.testing.assert_close(clips.labels("any"), OGBenchEventScorer("any")(clips.clips()))
    # The same clips through the tiny HF model (no missions: the task-agnostic prompt).
    assert probe_main(["--clips-from", str(out / "clips"), "--scorer", "transformers", "--model", str(tiny_vlm),
                       "--device", "cpu", "--num-frames", "2", "--definition", "any", "--out", str(out),
                       "--json", str(out / "hf.json"), "--quiet"]) == 0
    assert json.loads((out / "hf.json").read_text())["clips"] == 8
    assert "tiny random model" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        probe_main(["--clips-from", str(out / "clips"), "--scorer", "events", "--prompt-variant", "goal_conditioned",
                    "--out", str(out), "--quiet"])
    assert "OGBench's clips have none" in capsys.readouterr().err


def test_a_measured_scorer_is_placed_on_the_nearest_sweep_cell(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from torchrl_vlm.probe import cli, report

    table = {"env": "MiniGrid-DoorKey-8x8-v0", "definition": "first_progress", "frames": 600_000,
             "schedule_frames": 1_000_000, "cells": [
        {"fpr": 0.0, "fnr": 0.0, "gain": 0.25, "p": 0.05, "seeds": 3},
        {"fpr": 0.1, "fnr": 0.3, "gain": -0.1, "p": 0.8, "seeds": 3},
        {"fpr": 0.3, "fnr": 0.6, "gain": None, "p": 0.5, "seeds": 3},
    ]}
    path = tmp_path / "gain.json"
    path.write_text(json.dumps(table))
    cell = report.place_on_gain_table(0.12, 0.25, path)
    assert (cell["fpr"], cell["fnr"], cell["frames"], cell["env"]) == (0.1, 0.3, 600_000, table["env"])
    assert cell["distance"] == pytest.approx(math.hypot(0.02, 0.05))
    assert report.place_on_gain_table(0.1, 0.3, tmp_path / "absent.json") is None
    assert report.place_on_gain_table(math.nan, 0.3, path) is None  # a scorer that never said yes or no

    # The probe's note reads the cell's sign and budget, and says when no gain was measurable.
    measured = {"roc_auc": 0.9, "roc_auc_se": 0.01, "near_chance": False, "base_rate": 0.2, "length_auc": math.nan}
    args = SimpleNamespace(scorer="noisy_events", model=None)
    place = report.place_on_gain_table
    monkeypatch.setattr(report, "place_on_gain_table", lambda fpr, fnr: place(fpr, fnr, path))
    for (fpr, fnr), expected in [((0.01, 0.02), "25% fewer steps than uniform replay"),
                                 ((0.1, 0.31), "10% more steps than uniform replay"),
                                 ((0.3, 0.6), "no gain could be measured")]:
        note = cli._notes(args, {**measured, "fpr": fpr, "fnr": fnr})[-1]
        assert expected in note and "600,000 steps of a 1,000,000-step run" in note, note
    note = cli._notes(args, {**measured, "fpr": math.nan, "fnr": 0.1})[-1]
    assert "cannot be placed" in note, note
