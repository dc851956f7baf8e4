"""A tiny synthetic object-detection dataset in YOLO format, for tests and demos.

Each image is uniform noise with one to three filled rectangles drawn on it;
a rectangle's colour is its class. Labels are YOLO text files (``class cx cy
w h``, normalised to [0, 1]) next to an ``images/`` tree, and a data yaml that
ultralytics' trainers, validators and ``YOLO.val`` read as they read COCO's.
Everything is drawn from one seeded generator, so the same arguments write
the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: class name -> BGR colour (OpenCV's channel order, as ultralytics reads images).
COLOURS = {"red": (40, 40, 220), "green": (40, 200, 40), "blue": (220, 60, 40), "yellow": (30, 220, 230)}


def _draw(rng: np.random.Generator, size: int, classes: int) -> tuple[np.ndarray, list[tuple]]:
    """One noise image with 1-3 rectangles, and its YOLO label rows."""
    image = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
    colours = list(COLOURS.values())
    rows = []
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(0, classes))
        w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        image[y0 : y0 + h, x0 : x0 + w] = colours[cls]
        rows.append((cls, (x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size))
    return image, rows


def _row(cls: int, x: float, y: float, w: float, h: float, segments: bool) -> str:
    if not segments:
        return f"{cls} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n"
    corners = ((x - w / 2, y - h / 2), (x + w / 2, y - h / 2), (x + w / 2, y + h / 2), (x - w / 2, y + h / 2))
    return f"{cls} " + " ".join(f"{u:.6f} {v:.6f}" for u, v in corners) + "\n"


def write_detection_dataset(
    root: str | Path, train: int = 16, val: int = 8, size: int = 64, classes: int = 3, seed: int = 0,
    segments: bool = False,
) -> Path:
    """Write a synthetic YOLO detection dataset under ``root``; return its data yaml.

    ``train`` and ``val`` images of ``size`` x ``size`` pixels, ``classes``
    (at most 4) colour classes, all drawn from ``seed``. The layout is
    ultralytics' own (``images/{split}/*.png``, ``labels/{split}/*.txt``,
    ``data.yaml`` with an absolute ``path``), so it can be passed as ``data=``
    to any ultralytics trainer or validator, offline. ``segments=True`` writes
    each rectangle as a polygon (the segmentation label format) instead of a box.
    """
    import cv2  # an ultralytics dependency

    if not 1 <= classes <= len(COLOURS):
        raise ValueError(f"classes must be in 1..{len(COLOURS)}, got {classes}")
    root = Path(root).resolve()
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            image, rows = _draw(rng, size, classes)
            if not cv2.imwrite(str(images / f"{split}_{k:04d}.png"), image):
                raise OSError(f"could not write {images / f'{split}_{k:04d}.png'}")
            text = "".join(_row(*row, segments) for row in rows)
            (labels / f"{split}_{k:04d}.txt").write_text(text)
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(list(COLOURS)[:classes]))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data
