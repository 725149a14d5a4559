"""Random translation of a batch (the paper's jitter; random crops are the same with zero padding)."""

from __future__ import annotations

import torch

from ensemble.base.errors import DataError


def jitter(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by a random (dy, dx) in [-max_shift, max_shift]², filling with zeros.

    The paper's MNIST teacher saw inputs "jittered by up to two pixels in any direction".
    """
    if max_shift <= 0:
        return x
    if x.dim() != 4:
        raise DataError(f"data.jitter needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, height, width = x.shape
    shifts = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(x.device)
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    rows = torch.arange(height, device=x.device)[None, :] + shifts[0][:, None]  # (N, H)
    cols = torch.arange(width, device=x.device)[None, :] + shifts[1][:, None]  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (N, H, W, C) -> back to (N, C, H, W).
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
