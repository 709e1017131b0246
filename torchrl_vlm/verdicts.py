"""Audit a verdict cache from a shell: what the VLM was asked, what it said, and a gallery.

    python -m torchrl_vlm.verdicts verdicts.sqlite [--order score|step|created] [--limit 10]
        [--model MODEL] [--gallery top.png] [--rows 8]

Prints how many verdicts the file holds (per model and per run, with the share judged
positive and the rows failing their checksum), then the first ``--limit`` verdicts in
``--order`` (by default the clips the VLM liked most). ``--gallery`` draws the highest-
and lowest-scored clips that have thumbnails (``vlm.cache_thumbnails`` in the recipes).
Also installed as the ``torchrl-vlm-verdicts`` command.
"""
from __future__ import annotations

import argparse
from collections import Counter

from torchrl_vlm.scoring.cache import VerdictCacheError, read_verdicts, verdict_gallery


def summary(rows: list[dict]) -> list[str]:
    """Lines describing a cache's verdicts: per model and per run, counts and the positive share."""
    lines = [f"{len(rows)} verdicts"]
    for column in ("model", "run"):
        counts = Counter(row[column] for row in rows)
        for name, n in counts.most_common():
            positive = sum(row["score"] >= 0.5 for row in rows if row[column] == name)
            lines.append(f"  {column} {name}: {n} verdicts, {positive / n:.1%} with P(yes) >= 0.5")
    untrusted = sum(not row["trusted"] for row in rows)
    if untrusted:
        lines.append(f"  {untrusted} rows fail their checksum (altered on disk): not trusted, asked again on use")
    return lines


def table(rows: list[dict]) -> list[str]:
    """A fixed-width table of verdicts: score, step, run, clip, frames hash, thumbnail frames, prompt."""
    out = [f"{'P(yes)':>7}  {'step':>9}  {'run':<20}  {'clip':>8}  {'frames sha256':<12}  thumbs  prompt"]
    for row in rows:
        step = "" if row["step"] is None else f"{row['step']:,}"
        clip = "" if row["clip_id"] is None else f"{row['clip_id'] & 0xFFFFFF:x}"
        prompt = (row["prompt"] or "").replace("\n", " ")
        flag = "" if row["trusted"] else "  [checksum fails]"
        out.append(f"{row['score']:>7.3f}  {step:>9}  {(row['run'] or '')[:20]:<20}  {clip:>8}  "
                   f"{row['view_sha256'][:12]:<12}  {row['thumbnail_frames']:>6}  {prompt[:60]}{flag}")
    return out


def main(argv: list[str] | None = None) -> int:
    """The ``torchrl-vlm-verdicts`` command on ``argv`` (``sys.argv[1:]`` when ``None``): returns 0, or exits with
    status 2 and the error for a missing or unreadable cache, or a ``--model`` it does not hold."""
    parser = argparse.ArgumentParser(prog="torchrl-vlm-verdicts", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="the verdict cache (sqlite), e.g. the recipes' vlm.cache")
    parser.add_argument("--order", default="score", choices=["score", "step", "created"],
                        help="score: highest P(yes) first (default); step, created: oldest first")
    parser.add_argument("--limit", type=int, default=10, help="verdicts listed (default 10)")
    parser.add_argument("--model", default=None, help="only this model's verdicts")
    parser.add_argument("--gallery", default=None, metavar="PNG",
                        help="also draw the highest- and lowest-scored clips with thumbnails here")
    parser.add_argument("--rows", type=int, default=8, help="rows of the gallery (default 8)")
    args = parser.parse_args(argv)
    if args.limit < 1 or args.rows < 1:
        parser.error(f"--limit and --rows must be >= 1, got {args.limit} and {args.rows}")
    try:
        rows = read_verdicts(args.path, model=args.model)
        if args.model is not None and not rows:
            models = sorted({row["model"] for row in read_verdicts(args.path)})
            raise ValueError(f"no verdicts of --model {args.model!r} in {args.path}; its models: "
                             f"{', '.join(models) or 'none (the cache is empty)'}")
        print("\n".join(summary(rows)))
        print("\n".join(table(read_verdicts(args.path, order=args.order, limit=args.limit, model=args.model))))
        if args.gallery:
            print(f"gallery: {verdict_gallery(args.path, args.gallery, rows=args.rows, model=args.model)}")
    except (FileNotFoundError, VerdictCacheError, ValueError) as err:
        parser.exit(2, f"torchrl-vlm-verdicts: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
