"""Letters A-J rendered from this machine's TrueType fonts, white on black at 28 px, one folder per letter: an
offline stand-in for EMNIST letters a-j (printed, not handwritten; upper and lower case in one class, as in
EMNIST), for `folder:PATH`. S2's digits -> letters pair without a download:

    python examples/printed_letters.py /tmp/letters --per-class 180
    SOURCE_A=digits SOURCE_B=folder:/tmp/letters examples/s2_fusion.sh

`--style emnist` (the default) draws each glyph in EMNIST's format: thickened to a pen stroke, blurred, cropped
to its ink, fitted into a 20 px box and centred by its centre of mass in the 28 px frame, as MNIST and EMNIST
are; the ink per image is then close to MNIST's (0.18 against 0.135 mean intensity). `--style plain` is the
earlier set (the font's own thin stroke at a random size and offset, 0.06): with those letters a spiking net's
conv2 fires half as often as on digits, and the README's S2 rows marked "plain" measure that pair.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts")
BOX = 20  # MNIST's digits and this set's glyphs fit a 20 px box, centred by mass in 28 px
STROKES = (0, 4)  # extra stroke width at the 80 px drawing size (upper bound exclusive)


def fonts() -> list[str]:
    found = sorted(f for d in FONT_DIRS for f in glob.glob(f"{d}/**/*.ttf", recursive=True))
    return found or [""]  # "": Pillow's own scalable font


def _face(font: str, size: int):
    return ImageFont.truetype(font, size) if font else ImageFont.load_default(size)


def _shown(letter: str, rng: np.random.Generator) -> str:
    return letter.lower() if rng.random() < 0.3 else letter


def render_plain(letter: str, font: str, rng: np.random.Generator) -> Image.Image:
    face = _face(font, int(rng.integers(30, 44)))
    shown = _shown(letter, rng)
    img = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(img).text((32 + int(rng.integers(-4, 5)), 32 + int(rng.integers(-4, 5))), shown, fill=255,
                             font=face, anchor="mm")
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    return img.resize((28, 28), Image.BILINEAR)


def render_emnist(letter: str, font: str, rng: np.random.Generator) -> Image.Image:
    shown = _shown(letter, rng)
    img = Image.new("L", (160, 160), 0)
    ImageDraw.Draw(img).text((80, 80), shown, fill=255, font=_face(font, 80), anchor="mm",
                             stroke_width=int(rng.integers(*STROKES)), stroke_fill=255)
    img = img.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR).filter(ImageFilter.GaussianBlur(1.0))
    ys, xs = np.nonzero(np.asarray(img) > 20)
    glyph = img.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    scale = BOX / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.BICUBIC)
    ink = np.asarray(glyph, np.float64)
    cy = float((np.arange(ink.shape[0]) * ink.sum(axis=1)).sum() / ink.sum())
    cx = float((np.arange(ink.shape[1]) * ink.sum(axis=0)).sum() / ink.sum())
    out = Image.new("L", (28, 28), 0)
    out.paste(glyph, (round(14 - cx), round(14 - cy)))
    return out


STYLES = {"emnist": render_emnist, "plain": render_plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=180)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--style", choices=sorted(STYLES), default="emnist")
    args = parser.parse_args()
    rng, faces, render = np.random.default_rng(args.seed), fonts(), STYLES[args.style]
    for letter in "ABCDEFGHIJ":
        folder = args.out / letter
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            render(letter, faces[int(rng.integers(len(faces)))], rng).save(folder / f"{i:04d}.png")
    print(f"{10 * args.per_class} {args.style} images from {len(faces)} fonts in {args.out}")


if __name__ == "__main__":
    main()
