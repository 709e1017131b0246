"""A clip gallery: what the scorer liked, as a picture.

:class:`~torchrl_vlm.VLMReplayBuffer` keeps a few evenly spaced frames of recently scored clips together
with their P(yes); :meth:`ClipGallery.save` draws the highest- and
lowest-scored ones as rows of a PNG, so a researcher sees at a glance whether
the VLM's verdicts make sense.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["ClipGallery", "save_clip_rows"]


class ClipGallery:
    """Keeps thumbnails of the last ``capacity`` scored clips and renders them.

    Args:
        capacity: how many recent clips to remember.
        frames_per_clip: evenly spaced frames kept per clip.
    """

    def __init__(self, capacity: int = 256, frames_per_clip: int = 4):
        if capacity < 1 or frames_per_clip < 1:
            raise ValueError("capacity and frames_per_clip must be >= 1")
        self.frames_per_clip = frames_per_clip
        self._items: deque[tuple[float, int, torch.Tensor]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._items)

    def thumbnails(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``frames_per_clip`` evenly spaced frames of each clip, among the steps ``mask`` marks (its real,
        rendered steps: :func:`~torchrl_vlm.scoring.base.clip_frame_mask`): uint8 ``[B, F, H, W, 3]``; a clip
        with fewer shows some twice."""
        out = []
        for b in range(frames.shape[0]):
            shown = torch.nonzero(mask[b]).flatten()
            pos = torch.linspace(0, max(shown.numel() - 1, 0), self.frames_per_clip).round().long()
            out.append(frames[b, shown[pos]])
        return torch.stack(out)

    def add(self, thumbnails: torch.Tensor, scores: torch.Tensor, clip_ids: torch.Tensor) -> None:
        for thumb, score, cid in zip(thumbnails, scores.tolist(), clip_ids.tolist(), strict=True):
            self._items.append((float(score), int(cid), thumb))

    def chosen(self, rows: int = 8) -> list[tuple[float, int, torch.Tensor]]:
        """The clips a gallery of ``rows`` rows shows: the ``rows // 2`` highest-scored, then the lowest.

        Each is ``(P(yes), clip_id, thumbnails)``, highest first; no clip appears twice
        (fewer than ``rows`` clips: each once). Ties keep the order the clips arrived in.
        """
        half = max(1, rows // 2)
        ranked = sorted(range(len(self._items)), key=lambda i: -self._items[i][0])
        top = ranked[:half]
        bottom = [i for i in ranked[-half:] if i not in top]
        return [self._items[i] for i in top + bottom]

    def save(self, path: str | Path, rows: int = 8, title: str = "") -> Path | None:
        """Draws :meth:`chosen` as a PNG, a row per clip; returns its path (None if no clip was scored)."""
        if not self._items:
            return None
        chosen = [(score, f"clip {cid & 0xFFFFFF:x}", thumb) for score, cid, thumb in self.chosen(rows)]
        return save_clip_rows(chosen, path, title or f"highest and lowest scored of the last {len(self._items)} clips")


def save_clip_rows(rows: Sequence[tuple[float, str, torch.Tensor]], path: str | Path, title: str) -> Path:
    """Draws clips as the rows of a PNG; returns its path.

    Each row is ``(P(yes), label, frames)`` with ``frames`` uint8 ``[F, H, W, 3]`` (``F`` may differ
    between rows); the score and label go left of the row, green from 0.5 up, red below.
    """
    if not rows:
        raise ValueError("rows is empty: there is no clip to draw")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(frames) for _, _, frames in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols + 1.5, 1.6 * len(rows)), squeeze=False)
    for r, (score, label, frames) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(frames):
                ax.imshow(np.asarray(frames[c]))
            else:
                ax.axis("off")
            if c == 0:
                color = "tab:green" if score >= 0.5 else "tab:red"
                ax.set_ylabel(f"P(yes)={score:.2f}\n{label}", color=color, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
