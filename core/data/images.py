"""Decoding, channel conversion and resizing shared by every source.

One resize implementation (separable triangle filter, widened when shrinking
so it antialiases like Pillow's BILINEAR) serves files and arrays alike, so a
digit upsampled from an array and a PNG of it resize the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tle.errors import UserError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"
_CHUNK = 1024  # images per resize step: bounds the temporaries


def probe(path: str | Path) -> tuple[tuple[int, int], bool] | None:
    """``((height, width), is_colour)`` from the file header, or None if it is no image."""
    try:
        with Image.open(path) as im:
            return (im.height, im.width), im.mode not in _GRAY_MODES
    except Exception:  # Pillow's decoders raise many unrelated types on bad input
        return None


def load_image(path: str | Path, size: tuple[int, int] | None = None, channels: int | None = None) -> np.ndarray:
    """Decode one image to float32 HWC in [0, 1], converted to ``channels`` and resized to ``size``."""
    try:
        with Image.open(path) as im:
            if size is not None:
                # JPEGs decode at a reduced scale (still >= size): big photos load far faster.
                im.draft(None, (size[1], size[0]))
            arr = _pixels(im, channels)
    except Exception as exc:  # Pillow's decoders raise many unrelated types on bad input
        raise UserError(f"cannot read image {path}: {exc}", "remove or replace that file") from None
    if size is not None:
        arr = resize_batch(arr[None], size)[0]
    return arr


def _pixels(im: Image.Image, channels: int | None) -> np.ndarray:
    if im.mode.startswith("I"):
        # 16-bit grey: convert("L") would clip everything above 255.
        arr = np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)[..., None]
        return to_channels(arr, channels) if channels else arr
    gray = channels == 1 or (channels is None and im.mode in _GRAY_MODES)
    arr = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.float32)
    arr /= 255.0
    return arr[..., None] if gray else arr


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Grey -> RGB by repetition, RGB -> grey by luminance; an alpha channel is dropped."""
    have = images.shape[-1]
    if have in (2, 4):
        images, have = images[..., : have - 1], have - 1
    if have == channels:
        return images
    if channels == 3 and have == 1:
        return np.repeat(images, 3, axis=-1)
    if channels == 1 and have == 3:
        return (images @ _LUMA)[..., None]
    raise UserError(f"cannot convert {have}-channel images to {channels} channels", "use channels 1 or 3")


def resize_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float NHWC images to ``size`` = (height, width); returns the input if already that size."""
    n, h, w, c = images.shape
    oh, ow = size
    if (h, w) == (oh, ow):
        return images
    rows, cols = _weights(h, oh), _weights(w, ow)
    out = np.empty((n, oh, ow, c), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        x = images[start : start + _CHUNK].astype(np.float32, copy=False)
        t = np.einsum("oh,nhwc->nowc", rows, x, optimize=True)
        out[start : start + _CHUNK] = np.einsum("pw,nowc->nopc", cols, t, optimize=True)
    return out


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """Row-normalised triangle-filter weights mapping n_in samples to n_out (pixel centres aligned)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    taps = np.arange(n_in) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / support)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
