"""Upsampling class logits to an image's size in bounded memory, then argmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Largest upsampled logits tensor (bytes) made at once; bigger images go in row bands.
UPSAMPLE_BYTES = 256 * 2**20
#: Out of memory while upsampling halves the bands, down to this (then the error is real).
MIN_UPSAMPLE_BYTES = 2**20


def upsample_argmax(
    logits: torch.Tensor,
    size: tuple[int, int],
    max_bytes: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """argmax over classes of ``logits`` ``(C, h, w)`` bilinearly upsampled to ``size``.

    Same as ``F.interpolate(..., mode="bilinear", align_corners=False)`` then argmax (what
    ``post_process_semantic_segmentation`` does); when the upsampled logits would exceed
    ``max_bytes`` they are made in bands of output rows (each a blend of its two nearest
    input rows, then interpolated along the width), so memory stays bounded for any image
    size and class count, and time grows with the output's pixels (C x out_h x (w + out_w)),
    not with the product of the input's and the output's sizes.

    ``out``, an integer tensor of shape ``size`` on the logits' device, receives the class
    ids band by band, converted to its dtype (uint8 for up to 256 classes: an eighth of the
    argmax's int64); without it the result is int64.
    """
    c, h, w = logits.shape
    out_h, out_w = size
    logits = logits.float()
    if out is None:
        out = torch.empty(size, dtype=torch.int64, device=logits.device)
    if c * out_h * out_w * 4 <= max_bytes:
        up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)
        return out.copy_(up[0].argmax(0))
    y0, y1, fy = _bilinear_taps(h, out_h, logits.device)
    band = max(1, max_bytes // (4 * c * (out_w + 3 * w)))
    for r0 in range(0, out_h, band):
        rs = slice(r0, r0 + band)
        # Rows: each output row blends its two input rows (bilinear is separable) ...
        u = torch.lerp(logits[:, y0[rs]], logits[:, y1[rs]], fy[rs].view(1, -1, 1))
        # ... then the columns of every row at once, over the full width (so the scale is
        # the image's own), by the native 1-D kernel.
        b = u.shape[1]
        v = F.interpolate(u.reshape(1, c * b, w), size=out_w, mode="linear", align_corners=False)
        out[rs].copy_(v.view(c, b, out_w).argmax(0))
    return out


def _bilinear_taps(
    n_in: int, n_out: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``n_out`` rows: its two input neighbours and the weight of the second
    (half-pixel centres, edge clamp: ``F.interpolate``'s ``align_corners=False``)."""
    dst = torch.arange(n_out, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, src - i0.float()
