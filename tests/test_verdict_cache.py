"""CachedScorer: verdicts answered from disk, keyed on what the model is shown; audits; damaged files."""
import multiprocessing as mp
import random
import shutil

import pytest
import torch
from _scorers import FrameMeanScorer
from tensordict import NonTensorStack, TensorDict

from torchrl_vlm import (
    CachedScorer,
    ScoringService,
    TransformersScorer,
    VerdictCacheError,
    cached,
    read_verdicts,
    verdict_gallery,
)
from torchrl_vlm import verdicts as verdicts_cli
from torchrl_vlm.scoring.base import frame_indices
from torchrl_vlm.scoring.cache import _frames_from_strip


def make_clips(n, *, L=8, size=8, seed=0, missions=None):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (n, L, size, size, 3), generator=g, dtype=torch.uint8)
    mask = torch.ones(n, L, dtype=torch.bool)
    td = TensorDict({"frames": frames, "mask": mask, "clip_id": torch.arange(n), "step": torch.full((n,), 640)},
                    batch_size=[n])
    if missions is not None:
        td["mission"] = NonTensorStack(*missions)
    return td


def test_replayed_clips_are_answered_from_disk(tmp_path):
    path = tmp_path / "verdicts.sqlite"
    base = FrameMeanScorer()
    scorer = CachedScorer(base, path, run="seed0")
    clips = make_clips(6)
    first = scorer(clips)
    assert base.asked == 6 and scorer.stats()["cache_misses"] == 6
    torch.testing.assert_close(first, FrameMeanScorer()(clips))
    # Same clips again, then a batch mixing two known clips with two new ones.
    torch.testing.assert_close(scorer(clips), first, rtol=0, atol=0)
    mixed = torch.cat([clips[[4, 1]], make_clips(2, seed=1)])
    out = scorer(mixed)
    assert base.asked == 8
    torch.testing.assert_close(out, FrameMeanScorer()(mixed))
    assert scorer.stats() == {"cache_hits": 8.0, "cache_misses": 8.0, "cache_hit_rate": 0.5, "cache_corrupt": 0.0}
    scorer.close()

    # A new run (a new process would open it the same way) asks the model for nothing it has answered.
    again = FrameMeanScorer()
    rerun = CachedScorer(again, path, run="seed0-rerun")
    torch.testing.assert_close(rerun(mixed), out, rtol=0, atol=0)
    assert again.asked == 0 and rerun.stats()["cache_hit_rate"] == 1.0


def test_every_verdict_can_be_audited(tmp_path):
    path = tmp_path / "verdicts.sqlite"
    scorer = CachedScorer(FrameMeanScorer(), path, run="dqn_seed3")
    clips = make_clips(5)
    scores = scorer(clips)
    rows = read_verdicts(path)
    assert [r["score"] for r in rows] == sorted(scores.tolist(), reverse=True)  # the clips the VLM liked most first
    best = rows[0]
    assert best["run"] == "dqn_seed3" and best["step"] == 640 and best["clip_id"] == int(scores.argmax())
    assert best["model"] == "_scorers.FrameMeanScorer" and len(best["view_sha256"]) == 64
    assert [r["clip_id"] for r in read_verdicts(path, order="score", limit=2)] == scores.argsort(descending=True)[
        :2
    ].tolist()
    with pytest.raises(ValueError, match="order='best'"):
        read_verdicts(path, order="best")
    with pytest.raises(FileNotFoundError, match="no verdict cache"):
        read_verdicts(tmp_path / "missing.sqlite")


def test_thumbnails_are_the_clips_own_frames_and_the_gallery_shows_the_extremes(tmp_path, monkeypatch):
    path = tmp_path / "verdicts.sqlite"
    scorer = CachedScorer(FrameMeanScorer(), path, run="dqn_seed0", thumbnails=3)
    clips = make_clips(10, L=8, size=8)
    clips["mask"][2, 5:] = False  # a clip cut short: its thumbnails come from its real steps only
    scores = scorer(clips)
    scorer(clips)  # answered from disk: nothing stored twice
    rows = read_verdicts(path, order="step")
    assert len(rows) == 10 and all(r["thumbnail_frames"] == 3 and r["trusted"] for r in rows)
    import sqlite3

    db = sqlite3.connect(path)
    by_clip = {
        cid: (n, png)
        for cid, n, png in db.execute(
            "SELECT v.clip_id, t.frames, t.png FROM verdicts v JOIN thumbnails t ON t.key = v.key"
        )
    }
    db.close()
    for b in (0, 2):
        n, png = by_clip[b]
        expected = clips["frames"][b][frame_indices(clips["mask"][b], 3)]
        torch.testing.assert_close(_frames_from_strip(png, n), expected, rtol=0, atol=0)  # PNG is lossless

    # The gallery draws the rows//2 highest and lowest, highest first; record what it draws.
    drawn = {}

    def record(items, out, title):
        drawn["scores"] = [score for score, _, _ in items]
        drawn["labels"] = [label for _, label, _ in items]
        return out

    monkeypatch.setattr("torchrl_vlm.scoring.gallery.save_clip_rows", record)
    verdict_gallery(path, tmp_path / "g.png", rows=4)
    ranked = sorted(scores.tolist(), reverse=True)
    assert drawn["scores"] == pytest.approx(ranked[:2] + ranked[-2:])
    assert all(label == "step 640\ndqn_seed0" for label in drawn["labels"])
    verdict_gallery(path, tmp_path / "g.png", rows=40)  # more rows than clips: each clip once
    assert drawn["scores"] == pytest.approx(ranked)
    monkeypatch.undo()
    out = verdict_gallery(path, tmp_path / "gallery.png", rows=4)
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cache_without_thumbnails_says_how_to_keep_them(tmp_path):
    path = tmp_path / "v.sqlite"
    CachedScorer(FrameMeanScorer(), path)(make_clips(2))
    assert all(r["thumbnail_frames"] == 0 for r in read_verdicts(path))
    with pytest.raises(ValueError, match=r"has thumbnails; keep them with CachedScorer\(\.\.\., thumbnails=4\)"):
        verdict_gallery(path, tmp_path / "g.png")
    with pytest.raises(ValueError, match="thumbnails must be an int >= 0"):
        CachedScorer(FrameMeanScorer(), path, thumbnails=-1)
    with pytest.raises(ValueError, match="rows must be an int >= 1"):
        verdict_gallery(path, tmp_path / "g.png", rows=0)


def test_the_verdicts_command_lists_audits_and_draws(tmp_path, capsys):
    path = tmp_path / "v.sqlite"
    scores = CachedScorer(FrameMeanScorer(), path, run="sac_seed1", thumbnails=2)(make_clips(6))
    assert verdicts_cli.main([str(path), "--limit", "3", "--gallery", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "6 verdicts"
    positive = int((scores >= 0.5).sum())
    assert f"  run sac_seed1: 6 verdicts, {positive / 6:.1%} with P(yes) >= 0.5" in out
    listed = [
        float(line.split()[0])
        for line in out[out.index(next(row for row in out if row.startswith(" P(yes)"))) + 1 :]
        if line[:8].strip().replace(".", "").isdigit()
    ]
    assert listed == pytest.approx(sorted(scores.tolist(), reverse=True)[:3], abs=5e-4)
    assert (tmp_path / "g.png").is_file() and out[-1] == f"gallery: {tmp_path / 'g.png'}"
    with pytest.raises(SystemExit) as stop:
        verdicts_cli.main([str(tmp_path / "missing.sqlite")])
    assert stop.value.code == 2 and "no verdict cache at" in capsys.readouterr().err


def test_the_key_is_what_the_vlm_is_shown(tiny_vlm, tmp_path):
    """Frames the scorer does not select, the clip's id and step leave the key alone; a shown frame, the mission
    in a goal-conditioned prompt, the number of frames or the model change it."""
    vlm = TransformersScorer(tiny_vlm, num_frames=2, mission_in_prompt=True)
    scorer = CachedScorer(vlm, tmp_path / "v.sqlite")
    clips = make_clips(1, L=8, size=16, missions=["open the door"])
    key = scorer.keys(clips)[0][0]
    shown = frame_indices(clips["mask"][0], 2).tolist()
    hidden = next(i for i in range(8) if i not in shown)

    def key_of(edit):
        other = clips.clone()
        edit(other)
        return scorer.keys(other)[0][0]

    assert key_of(lambda c: c["frames"][0, hidden].fill_(7)) == key
    assert key_of(lambda c: c.set("clip_id", torch.tensor([99])).set("step", torch.tensor([1]))) == key
    assert key_of(lambda c: c["frames"][0, shown[0]].fill_(7)) != key
    assert key_of(lambda c: c.set("mission", NonTensorStack("pick up the key"))) != key
    fewer = CachedScorer(TransformersScorer(tiny_vlm, num_frames=3, mission_in_prompt=True), tmp_path / "v.sqlite")
    assert fewer.keys(clips)[0][0] != key
    # The cached answer is the model's own.
    torch.testing.assert_close(scorer(clips), vlm(clips), rtol=0, atol=0)
    row = read_verdicts(tmp_path / "v.sqlite")[0]
    assert row["prompt"] == vlm.build_prompt("open the door") and str(tiny_vlm) in row["model"]


def _writer(path, seed, n, queue):
    try:
        scorer = CachedScorer(FrameMeanScorer(), path, run=f"w{seed}")
        for i in range(n):
            scorer(make_clips(2, seed=1000 * seed + i))
            read_verdicts(path, limit=5)  # readers alongside the writers
        queue.put(("ok", scorer.stats()["cache_misses"]))
    except Exception as err:  # noqa: BLE001 - reported to the test
        queue.put(("error", repr(err)))


def test_two_processes_share_one_cache(tmp_path):
    path = tmp_path / "shared.sqlite"
    CachedScorer(FrameMeanScorer(), path).close()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, s, 40, queue)) for s in (1, 2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == [("ok", 80.0), ("ok", 80.0)]
    rows = read_verdicts(path)
    assert len(rows) == 160 and {r["run"] for r in rows} == {"w1", "w2"}


def test_a_damaged_cache_is_an_error_or_is_not_trusted(tmp_path):
    """Random bytes overwritten at random places, many times: opening and scoring either raise
    VerdictCacheError naming the file, or return exactly the model's answers."""
    good = tmp_path / "good.sqlite"
    clips = make_clips(64)
    expected = FrameMeanScorer()(clips)
    CachedScorer(FrameMeanScorer(), good, thumbnails=2)(clips)
    size = good.stat().st_size
    rng = random.Random(0)
    outcomes = {"error": 0, "answered": 0}
    for trial in range(60):
        bad = tmp_path / f"bad{trial}.sqlite"
        shutil.copy(good, bad)
        with open(bad, "r+b") as f:
            for _ in range(rng.randint(1, 4)):
                f.seek(rng.randrange(size))
                f.write(bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))))
        try:
            out = CachedScorer(FrameMeanScorer(), bad)(clips)
        except VerdictCacheError as err:
            assert str(bad) in str(err)
            outcomes["error"] += 1
            continue
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        outcomes["answered"] += 1
        try:  # the audit reader too: rows, or the same clear error
            assert all(not r["trusted"] or 0 <= r["score"] <= 1 for r in read_verdicts(bad))
        except VerdictCacheError as err:
            assert str(bad) in str(err)
    assert sum(outcomes.values()) == 60
    assert outcomes["error"] and outcomes["answered"]  # both paths were taken (fixed seed)

    not_a_db = tmp_path / "notes.sqlite"
    not_a_db.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(VerdictCacheError, match="notes.sqlite is not a readable verdict cache"):
        CachedScorer(FrameMeanScorer(), not_a_db)


def test_an_altered_score_is_asked_again(tmp_path):
    import sqlite3

    path = tmp_path / "v.sqlite"
    clips = make_clips(3)
    CachedScorer(FrameMeanScorer(), path)(clips)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE verdicts SET score = 0.999 WHERE clip_id = 1")
    assert {r["clip_id"]: r["trusted"] for r in read_verdicts(path)} == {0: True, 1: False, 2: True}  # audits see it
    base = FrameMeanScorer()
    scorer = CachedScorer(base, path)
    torch.testing.assert_close(scorer(clips), FrameMeanScorer()(clips), rtol=0, atol=0)
    assert base.asked == 1 and scorer.stats()["cache_corrupt"] == 1
    base = FrameMeanScorer()  # the altered row was replaced by the model's answer
    CachedScorer(base, path)(clips)
    assert base.asked == 0


def test_the_hit_rate_reaches_the_service_stats(tmp_path):
    factory = cached(FrameMeanScorer, tmp_path / "v.sqlite", run="svc")
    clips = make_clips(4)
    for expected_rate in (0.0, 1.0):
        with ScoringService(factory, start_timeout_s=120) as service:
            service.submit(clips, meta=None)
            while not service.poll():
                pass
            assert service.stats()["cache_hit_rate"] == expected_rate
    with pytest.raises(TypeError, match="build it in the scoring process with cached"):
        import pickle

        pickle.dumps(CachedScorer(FrameMeanScorer(), tmp_path / "v.sqlite"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"base": "not a scorer"}, "base must be a scorer"),
        ({"path": 3}, "path must be a file path"),
        ({"run": 5}, "run must be a string"),
        ({"timeout_s": 0}, "timeout_s must be a number > 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, match, tmp_path):
    args = {"base": FrameMeanScorer(), "path": tmp_path / "v.sqlite", **kwargs}
    with pytest.raises((TypeError, ValueError), match=match):
        CachedScorer(args.pop("base"), args.pop("path"), **args)
