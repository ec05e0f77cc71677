"""Letters A-J rendered from this machine's TrueType fonts, white on black at 28 px, one folder per letter: an
offline stand-in for EMNIST letters a-j (printed, not handwritten; upper and lower case in one class, as in
EMNIST), for `folder:PATH`. S2's digits -> letters pair without a download:

    python examples/printed_letters.py /tmp/letters --per-class 180
    SOURCE_A=digits SOURCE_B=folder:/tmp/letters examples/s2_fusion.sh
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts")


def fonts() -> list[str]:
    found = sorted(f for d in FONT_DIRS for f in glob.glob(f"{d}/**/*.ttf", recursive=True))
    return found or [""]  # "": Pillow's own scalable font


def render(letter: str, font: str, rng: np.random.Generator) -> Image.Image:
    size = int(rng.integers(30, 44))
    face = ImageFont.truetype(font, size) if font else ImageFont.load_default(size)
    shown = letter.lower() if rng.random() < 0.3 else letter
    img = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(img).text((32 + int(rng.integers(-4, 5)), 32 + int(rng.integers(-4, 5))), shown, fill=255,
                             font=face, anchor="mm")
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    return img.resize((28, 28), Image.BILINEAR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=180)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    rng, faces = np.random.default_rng(args.seed), fonts()
    for letter in "ABCDEFGHIJ":
        folder = args.out / letter
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            render(letter, faces[int(rng.integers(len(faces)))], rng).save(folder / f"{i:04d}.png")
    print(f"{10 * args.per_class} images from {len(faces)} fonts in {args.out}")


if __name__ == "__main__":
    main()
