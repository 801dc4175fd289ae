"""A real-data localization set that runs without the Hub: real images from packaged sets (scikit-learn's 8x8 digits,
Fashion-MNIST from Debian's ``dataset-fashion-mnist``) placed on larger canvases at random positions and scales,
several per image, their boxes known exactly (the tight box of the object's pixels). Written as COCO JSON files, one
per split, with the images in ``images/``; each split draws its objects from its own disjoint pool of source images.

    python -m hftl.data.placed --out data/digits-src --source digits --classes 0 1 2 3 4 --train 600 --seed 0

Example:
    >>> placed_objects("data/digits-tgt", source="digits", classes=["5", "6"], counts={"train": 40})  # doctest: +SKIP
    {'train': 'data/digits-tgt/train.json', ...}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

INK = 40  # pixel value (0-255) above which a source pixel is part of the object: the box is the tight box of these


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).astype(np.uint8), d.target, [str(i) for i in range(10)]


def _fashion() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from hftl.data.sources import FASHION_DIR, FASHION_LABELS, read_idx

    images = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    return images, labels, list(FASHION_LABELS)


SOURCES = {"digits": _digits, "fashion": _fashion}


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _canvas(rng, pool: list[int], images, labels, names, classes, canvas: int, per_image, scale):
    """One canvas (uint8 HxW) and its objects: (xywh box, class index in ``classes``)."""
    from PIL import Image

    out = (rng.random((canvas, canvas)) * 30).astype(np.uint8)  # a dim noisy background
    objects = []
    for _ in range(int(rng.integers(per_image[0], per_image[1] + 1))):
        src = int(pool[rng.integers(len(pool))])
        side = max(4, round(images[src].shape[0] * rng.uniform(*scale)))
        patch = np.asarray(Image.fromarray(images[src]).resize((side, side), Image.Resampling.BILINEAR))
        ys, xs = np.nonzero(patch > INK)
        if not len(xs):
            continue
        for _try in range(20):  # a place that overlaps no other object much
            x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
            box = [x + int(xs.min()), y + int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if all(_iou(box, b) < 0.05 for b, _ in objects):
                out[y:y + side, x:x + side] = np.maximum(out[y:y + side, x:x + side], patch)
                objects.append((box, classes.index(names[labels[src]])))
                break
    return out, objects


def placed_objects(out_dir: str | Path, *, source: str = "digits", classes: list[str] | None = None,
                   counts: dict[str, int] | None = None, canvas: int = 64, per_image: tuple[int, int] = (1, 3),
                   scale: tuple[float, float] = (2.0, 3.5), seed: int = 0) -> dict[str, str]:
    """Write ``counts`` canvases per split (COCO JSON ``<split>.json`` + ``images/``) of ``source`` objects of
    ``classes`` (names; all by default) and return the JSON paths. ``scale``: side of an object in multiples of its
    source image's side (8 px digits, 28 px clothing); ``per_image``: objects per canvas (min, max). Seeded."""
    from PIL import Image

    images, labels, names = SOURCES[source]()
    classes = [str(c) for c in (classes or names)]
    counts = counts or {"train": 200, "validation": 50, "test": 50}
    rng = np.random.default_rng(seed)
    usable = rng.permutation(np.flatnonzero(np.isin([names[i] for i in labels], classes)))
    pools = np.array_split(usable, len(counts))  # disjoint source images per split
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths = {}
    for (split, n), pool in zip(counts.items(), pools, strict=True):
        coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": c} for i, c in enumerate(classes)]}
        for k in range(n):
            pixels, objects = _canvas(rng, list(pool), images, labels, names, classes, canvas, per_image, scale)
            file = f"images/{split}_{k:05d}.png"  # relative to the JSON file's folder
            Image.fromarray(pixels).convert("RGB").save(out / file)
            coco["images"].append({"id": k, "file_name": file, "width": canvas, "height": canvas})
            coco["annotations"] += [{"id": len(coco["annotations"]) + 1, "image_id": k, "bbox": box,
                                     "category_id": c, "area": box[2] * box[3], "iscrowd": 0} for box, c in objects]
        paths[split] = str(out / f"{split}.json")
        Path(paths[split]).write_text(json.dumps(coco))
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--source", choices=sorted(SOURCES), default="digits")
    p.add_argument("--classes", nargs="*", default=None)
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--validation", type=int, default=50)
    p.add_argument("--test", type=int, default=50)
    p.add_argument("--canvas", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    counts = {"train": a.train, "validation": a.validation, "test": a.test}
    print(placed_objects(a.out, source=a.source, classes=a.classes, counts=counts, canvas=a.canvas, seed=a.seed))


if __name__ == "__main__":
    main()
