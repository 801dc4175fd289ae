"""Object-detection data: a COCO JSON file with an image folder, or a dataset with an ``objects`` column, checked
before compute and read into one form (rows of absolute COCO ``[x, y, width, height]`` boxes and class indices).

Box formats are converted in one place (``convert_boxes``). Bad input never crashes an epoch: what can be fixed is
fixed and counted (boxes clipped to the image, boxes of zero or negative size or wholly outside it dropped, corrupt
images skipped, images without objects kept as negatives), and what cannot is a one-line ``DataError`` before the
model loads (missing image files, category ids the label set lacks). ``DetectionDataset`` encodes one row with the
detector's image processor, after a train-time augmentation (``augment``: flip, scale, crop) that moves the boxes
with the pixels.

Example:
    >>> data = load_detection(cfg.data)  # doctest: +SKIP
    >>> data.names, len(data.splits["train"]), data.skipped["train"]  # doctest: +SKIP
    (['circle', 'square'], 120, {'clipped_boxes': 2, 'dropped_boxes': 1, ...})
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hftl.data.sources import DataError

log = logging.getLogger(__name__)
BOX_FORMATS = ("xywh", "xyxy", "cxcywh")  # COCO, Pascal VOC, DETR; "_norm" suffix: fractions of the image size
MIN_SIDE = 1.0  # pixels: a box thinner than this after clipping is dropped (it holds no object to learn)
COUNTS = ("clipped_boxes", "dropped_boxes", "images_without_objects", "corrupt_images")


def convert_boxes(boxes, src: str, dst: str, size: tuple[float, float] | None = None) -> np.ndarray:
    """Boxes ``[n, 4]`` from format ``src`` to ``dst``: ``xywh`` (COCO: corner, width, height), ``xyxy`` (two
    corners), ``cxcywh`` (centre, width, height); ``*_norm``: in fractions of ``size`` = (width, height).

    Example:
        >>> convert_boxes([[10, 20, 30, 40]], "xywh", "cxcywh_norm", size=(100, 100)).tolist()
        [[0.25, 0.4, 0.3, 0.4]]
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for fmt in (src, dst):
        if fmt.removesuffix("_norm") not in BOX_FORMATS:
            raise DataError(f"box format {fmt!r} is unknown: set data.box_format to one of {list(BOX_FORMATS)} "
                            f"(or with _norm for fractions of the image size)")
    if (src.endswith("_norm") or dst.endswith("_norm")) and size is None:
        raise ValueError("normalised boxes need the image size")
    if src.endswith("_norm"):
        b = b * np.array([size[0], size[1], size[0], size[1]])
    kind = src.removesuffix("_norm")
    if kind == "xyxy":
        b = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
    elif kind == "cxcywh":
        b = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 2], b[:, 3]], 1)
    kind = dst.removesuffix("_norm")  # b is xywh now
    if kind == "xyxy":
        b = np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], 1)
    elif kind == "cxcywh":
        b = np.stack([b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2, b[:, 2], b[:, 3]], 1)
    if dst.endswith("_norm"):
        b = b / np.array([size[0], size[1], size[0], size[1]])
    return b


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xywh boxes clipped to the image; returns (clipped boxes, kept mask, changed mask). A box is dropped (not
    kept) when less than ``MIN_SIDE`` pixels of it, in width or height, lie inside the image (or are given)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(b).all(1)
    b = np.where(finite[:, None], b, 0.0)
    x0, y0 = np.clip(b[:, 0], 0, width), np.clip(b[:, 1], 0, height)
    x1, y1 = np.clip(b[:, 0] + b[:, 2], 0, width), np.clip(b[:, 1] + b[:, 3], 0, height)
    out = np.stack([x0, y0, x1 - x0, y1 - y0], 1)
    kept = finite & (out[:, 2] >= MIN_SIDE) & (out[:, 3] >= MIN_SIDE)
    changed = kept & ~np.isclose(out, b).all(1)
    return out, kept, changed


@dataclass
class DetectionData:
    """What ``load_detection`` read: ``splits`` (name -> rows), class ``names``, counts of what was fixed or
    skipped per split (``skipped``, for the log and ``metrics.json``) and a few named examples (``notes``)."""

    splits: dict[str, list[dict]]
    names: list[str]
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def open_image(path_or_image):
    """An RGB PIL image from a path (read whole: a corrupt file fails here) or a PIL image."""
    from PIL import Image

    if isinstance(path_or_image, (str, Path)):
        image = Image.open(path_or_image)
        image.load()  # a truncated or corrupt file fails here, at load time, not mid-epoch
        return image.convert("RGB")
    return path_or_image.convert("RGB")


def _clean(rows: list[dict], split: str, names: list[str], where) -> tuple[list[dict], dict[str, int], list[str]]:
    """Rows with readable images and boxes clipped to them; counts and the first named example of each fix."""
    counts, notes, out = dict.fromkeys(COUNTS, 0), [], []
    for i, row in enumerate(rows):
        bad = next((c for c in row["labels"] if not 0 <= c < len(names)), None)
        if bad is not None:
            raise DataError(f"{where(i)} has an object of category {row.get('raw_category', {}).get(bad, bad)!r} "
                            f"that the label set lacks ({len(names)} classes: {names[:20]}): add it to the "
                            f"categories, or remove those objects")
        try:
            image = open_image(row["image"])
        except Exception as err:  # PIL raises many kinds: a corrupt image is skipped, counted and named
            counts["corrupt_images"] += 1
            if counts["corrupt_images"] == 1:
                notes.append(f"{split}: skipped the corrupt image {where(i)} ({type(err).__name__})")
            continue
        width, height = image.size
        boxes, kept, changed = clip_boxes(row["boxes"], width, height)
        counts["clipped_boxes"] += int(changed.sum())
        counts["dropped_boxes"] += int((~kept).sum())
        if (~kept).any() and counts["dropped_boxes"] == int((~kept).sum()):
            notes.append(f"{split}: dropped a box of zero or negative size or outside the image, {where(i)}")
        labels = [c for c, k in zip(row["labels"], kept, strict=True) if k]
        counts["images_without_objects"] += not labels
        keep = row["image"] if isinstance(row["image"], (str, Path)) else image  # files: read again when used
        out.append({"image": keep, "image_id": len(out), "width": width, "height": height,
                    "boxes": boxes[kept].tolist(), "labels": labels, "name": row.get("name", str(i))})
    return out, counts, notes


def _coco_rows(path: Path, image_dir: Path, box_format: str, names: list[str] | None):
    """Rows of one COCO JSON file; its category names (sorted by id). DataError for missing image files."""
    try:
        coco = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the COCO file {path}: {err}; give a COCO JSON file (images, annotations, "
                        f"categories)") from err
    if not isinstance(coco, dict) or not {"images", "annotations"} <= set(coco):
        raise DataError(f"{path} is not a COCO detection file (no 'images' and 'annotations' lists): convert it, or "
                        f"give a dataset with an 'objects' column")
    cats = sorted(coco.get("categories") or [], key=lambda c: c["id"])
    file_names = [str(c["name"]) for c in cats]
    index = {c["id"]: file_names.index(str(c["name"])) for c in cats}
    if names is not None and file_names and file_names != names:
        index = {c["id"]: names.index(str(c["name"])) if str(c["name"]) in names else -1 for c in cats}
    missing = [im["file_name"] for im in coco["images"] if not (image_dir / im["file_name"]).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of the {len(coco['images'])} images of {path} are not in {image_dir} "
                        f"(first: {missing[0]!r}): set data.image_dir to their folder, or remove them from the file")
    by_image = {im["id"]: {"image": image_dir / im["file_name"], "name": im["file_name"], "boxes": [],
                           "labels": [], "raw_category": {}} for im in coco["images"]}
    for ann in coco["annotations"]:
        row = by_image.get(ann["image_id"])
        if row is None:
            raise DataError(f"{path}: an annotation refers to image id {ann['image_id']}, which is not in 'images': "
                            f"add the image or remove the annotation")
        size = (1.0, 1.0)
        if box_format.endswith("_norm"):
            im = next(m for m in coco["images"] if m["id"] == ann["image_id"])
            size = (im["width"], im["height"])
        row["boxes"].append(convert_boxes([ann["bbox"]], box_format, "xywh", size)[0].tolist())
        label = index.get(ann["category_id"], -1)
        row["raw_category"][label] = ann["category_id"]
        row["labels"].append(label)
    return list(by_image.values()), file_names


def _objects_rows(ds, box_format: str, names: list[str]) -> list[dict]:
    """Rows of a dataset with ``image`` and ``objects`` (``bbox``, ``category``) columns (the Hub's layout)."""
    for column in ("image", "objects"):
        if column not in ds.column_names:
            raise DataError(f"the detection dataset has no {column!r} column (columns: {ds.column_names}): give "
                            f"'image' and 'objects' with 'bbox' and 'category', or a COCO JSON file")
    rows = []
    for i, ex in enumerate(ds):
        objects = ex["objects"]
        image = ex["image"]
        size = image.size if box_format.endswith("_norm") else None
        boxes = convert_boxes(objects["bbox"], box_format, "xywh", size) if objects["bbox"] else np.zeros((0, 4))
        cats = objects["category"]
        labels = [names.index(str(c)) if isinstance(c, str) and str(c) in names else
                  (int(c) if not isinstance(c, str) else -1) for c in cats]
        rows.append({"image": image, "name": f"row {i + 1}", "boxes": boxes.tolist(), "labels": labels,
                     "raw_category": dict(zip(labels, cats, strict=True))})
    return rows


def _object_names(ds) -> list[str]:
    feature = ds.features["objects"]
    cat = feature["category"] if isinstance(feature, dict) else getattr(feature, "feature", {}).get("category")
    inner = getattr(cat, "feature", cat)
    if hasattr(inner, "names"):
        return list(inner.names)
    values = {c for ex in ds["objects"] for c in ex["category"]}
    return [str(v) for v in sorted(values)]


def _split_rows(rows: list[dict], cfg) -> dict[str, list[dict]]:
    rng = np.random.default_rng(cfg.split_seed)
    order = rng.permutation(len(rows))
    n_val, n_test = round(len(rows) * cfg.validation_size), round(len(rows) * cfg.test_size)
    if min(n_val, n_test) < 1 or len(rows) - n_val - n_test < 1:
        raise DataError(f"{len(rows)} images are too few to split into train, validation and test: give more, or "
                        f"give the splits in data.splits")
    parts = {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {k: [rows[i] for i in sorted(v)] for k, v in parts.items()}


def _raw_splits(cfg) -> tuple[dict[str, list[dict]], list[str], dict[str, str]]:
    """Rows per split before cleaning, the class names, and where each split came from (for messages)."""
    sources = dict(cfg.splits) if cfg.splits else {"all": cfg.name}
    if all(str(s).endswith(".json") for s in sources.values()):
        raw, names = {}, None
        for split, src in sources.items():
            path = Path(src)
            image_dir = Path(cfg.image_dir) if cfg.image_dir else path.parent
            raw[split], file_names = _coco_rows(path, image_dir, cfg.box_format, names)
            names = names or file_names
        return raw, names or [], {k: str(v) for k, v in sources.items()}
    from datasets import DatasetDict, load_dataset, load_from_disk

    ds = load_from_disk(cfg.name) if Path(cfg.name).is_dir() else load_dataset(cfg.name)
    ds = ds if isinstance(ds, DatasetDict) else DatasetDict(all=ds)
    names = _object_names(next(iter(ds.values())))
    return ({k: _objects_rows(v, cfg.box_format, names) for k, v in ds.items()}, names,
            {k: f"split {k!r} of {cfg.name}" for k in ds})


def load_detection(cfg) -> DetectionData:
    """Train, validation and test rows from ``cfg`` (``hftl.config.DataConfig``): ``data.name`` a COCO JSON file
    (images in ``data.image_dir``, default beside it), ``data.splits`` one COCO file per split, or a dataset (a
    ``save_to_disk`` folder or a Hub id) with ``image`` and ``objects`` columns; a missing validation or test split is
    cut from the rest (``data.validation_size``, ``data.test_size``, ``data.split_seed``). Boxes in
    ``data.box_format``. DataError (one line, before compute) for missing images, unknown category ids, no data."""
    raw, names, where = _raw_splits(cfg)
    if not names:
        raise DataError(f"{cfg.name}: no categories found: list them in the COCO file's 'categories'")
    if "train" not in raw:
        raw = _split_rows(raw.pop("all", None) or raw.pop(next(iter(raw))), cfg)
    elif not {"validation", "test"} <= set(raw):
        missing = sorted({"validation", "test"} - set(raw))
        raise DataError(f"data.splits has train but not {missing}: give all three, or only one file to be split")
    data = DetectionData({}, names)
    for split, rows in raw.items():
        src = where.get(split, where.get("all", cfg.name))
        data.splits[split], data.skipped[split], notes = _clean(
            rows, split, names, lambda i, rows=rows, src=src: f"image {rows[i].get('name', i)!r} of {src}")
        data.notes += notes
        if not data.splits[split]:
            raise DataError(f"split {split!r} of {src} has no readable image: check the files")
    if cfg.max_train_samples:
        data.splits["train"] = data.splits["train"][: cfg.max_train_samples]
    return data


def augment(image, boxes: np.ndarray, rng: np.random.Generator, flip: bool = True,
            scale: tuple[float, float] = (0.75, 1.25)) -> tuple[object, np.ndarray, np.ndarray]:
    """A random horizontal flip, then a random scale and a crop (or pad) back to the image's size, moving the xywh
    ``boxes`` with the pixels; returns the image, the clipped boxes and the mask of boxes kept (a box is dropped when
    less than ``MIN_SIDE`` pixels of it stay inside)."""
    from PIL import Image

    width, height = image.size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        b[:, 0] = width - b[:, 0] - b[:, 2]
    s = float(rng.uniform(*scale))
    new_w, new_h = max(1, round(width * s)), max(1, round(height * s))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    b *= np.array([new_w / width, new_h / height, new_w / width, new_h / height])
    left = int(rng.integers(min(0, new_w - width), max(0, new_w - width) + 1))  # crop when larger, pad when smaller
    top = int(rng.integers(min(0, new_h - height), max(0, new_h - height) + 1))
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, (-left, -top))
    b[:, 0] -= left
    b[:, 1] -= top
    clipped, kept, _ = clip_boxes(b, width, height)
    return canvas, clipped, kept


class DetectionDataset:
    """Rows encoded one at a time by the detector's image processor (``pixel_values``, ``labels`` with normalised
    ``boxes`` and ``class_labels``), augmented when ``augment``: seeded by ``seed``, the row, the epoch (``set_epoch``,
    which accelerate's loader calls) and how often the row was drawn in that epoch. So every epoch differs, a rerun
    repeats, a row is augmented alike whichever process draws it, and a run resumed mid-epoch draws what the run
    never stopped drew.

    ``drop_counts[epoch, row]``: boxes the augmentation pushed out of the image (a row's first draw in an epoch sets
    its count, later draws add). The epoch and the counts live in shared memory (loader workers see ``set_epoch``,
    the main process sees their counts); ``total_dropped`` adds them up over processes, and ``state_dict`` puts them
    in checkpoints (``accelerator.register_for_checkpointing``): the count of a resumed run is the uninterrupted one's.
    """

    column_names = ["image", "objects"]  # for hftl.train.make_loader: no "length" column

    def __init__(self, rows: list[dict], processor, augment: bool = False, seed: int = 0, flip: bool = True,
                 epochs: int = 1):
        import torch

        self.rows, self.processor, self.augment, self.seed, self.flip = rows, processor, augment, seed, flip
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()
        self._draws = torch.zeros(len(rows), dtype=torch.long).share_memory_()  # per row: one worker owns a row
        self.drop_counts = torch.zeros(max(1, epochs), len(rows), dtype=torch.long).share_memory_()

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        import torch

        if epoch >= len(self.drop_counts):  # more epochs than announced: workers started already keep the old table
            more = torch.zeros(epoch + 1 - len(self.drop_counts), len(self.rows), dtype=torch.long)
            self.drop_counts = torch.cat([self.drop_counts, more]).share_memory_()
        if epoch != int(self._epoch[0]):
            self._epoch[0] = epoch
            self._draws.zero_()

    @property
    def dropped(self) -> int:
        """Boxes the augmentation dropped on this process."""
        return int(self.drop_counts.sum())

    def _combined(self):
        import torch
        import torch.distributed as dist

        counts = self.drop_counts.clone()
        if dist.is_available() and dist.is_initialized():  # a row's draw in an epoch is on one process (and a
            dist.all_reduce(counts, op=dist.ReduceOp.MAX)  # redraw after a resume counts the same): max, not sum
        return counts if counts.device.type == "cpu" else torch.as_tensor(counts, device="cpu")

    def total_dropped(self) -> int:
        """Boxes the augmentation dropped, over every process (every process must call it)."""
        return int(self._combined().sum())

    def state_dict(self) -> dict:
        return {"drop_counts": self._combined()}

    def load_state_dict(self, state: dict) -> None:
        counts = state["drop_counts"]
        if len(counts) > len(self.drop_counts):
            self.set_epoch(len(counts) - 1)
        self.drop_counts[: len(counts)] = counts

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        image, boxes, labels = open_image(row["image"]), np.asarray(row["boxes"]).reshape(-1, 4), list(row["labels"])
        if self.augment:
            epoch, draw = int(self._epoch[0]), int(self._draws[i])
            rng = np.random.default_rng((self.seed, i, epoch, draw))
            self._draws[i] += 1
            image, boxes, kept = augment(image, boxes, rng, flip=self.flip)
            self.drop_counts[epoch, i] = int((~kept).sum()) + (int(self.drop_counts[epoch, i]) if draw else 0)
            boxes, labels = boxes[kept], [c for c, k in zip(labels, kept, strict=True) if k]
        annotations = {"image_id": row["image_id"], "annotations": [
            {"bbox": list(map(float, b)), "category_id": int(c), "area": float(b[2] * b[3]), "iscrowd": 0}
            for b, c in zip(boxes, labels, strict=True)]}
        enc = self.processor(images=[image], annotations=[annotations], return_tensors="pt")
        target = enc["labels"][0]
        return {"pixel_values": enc["pixel_values"][0], "labels": {
            "class_labels": target["class_labels"], "boxes": target["boxes"].float(),
            "size": target["size"], "orig_size": target["orig_size"], "image_id": target["image_id"]}}


def detection_collator(rows: list[dict]) -> dict:
    """A batch: ``pixel_values`` padded (bottom and right, zeros) to the largest image, ``pixel_mask`` (1 on real
    pixels), and ``labels`` as a list of dicts (``class_labels``, ``boxes`` in cxcywh fractions of the padded image,
    ``size``, ``orig_size``, ``image_id``), as transformers' detectors take them."""
    import torch

    height = max(r["pixel_values"].shape[1] for r in rows)
    width = max(r["pixel_values"].shape[2] for r in rows)
    pixels = torch.zeros(len(rows), 3, height, width)
    mask = torch.zeros(len(rows), height, width, dtype=torch.long)
    labels = []
    for i, r in enumerate(rows):
        _, h, w = r["pixel_values"].shape
        pixels[i, :, :h, :w] = r["pixel_values"]
        mask[i, :h, :w] = 1
        target = dict(r["labels"])
        target["boxes"] = target["boxes"] * torch.tensor([w / width, h / height, w / width, h / height])
        target["padded_size"] = torch.tensor([height, width])
        labels.append(target)
    return {"pixel_values": pixels, "pixel_mask": mask, "labels": labels}
