"""Images: decoded with PIL to RGB, augmented on the fly for training, processed by the model's image processor.

Images may be uint8 arrays (grayscale or colour), PIL images, encoded bytes, ``{"bytes", "path"}`` records or file
paths. Unreadable files are dropped before training, each named in a log line and counted (``skipped``); one
that breaks later is skipped in its batch and logged, never a crash mid-epoch. Augmentation (random resized crop,
horizontal flip) is PIL + numpy, no torchvision, applied by ``with_transform`` so each epoch sees new crops.

Example:
    >>> encoded, skipped = encode_images(splits, image_processor, augment=True)  # doctest: +SKIP
    >>> batch = image_collator(image_processor)([encoded["train"][0], encoded["train"][1]])  # doctest: +SKIP
    >>> batch["pixel_values"].shape  # doctest: +SKIP
    torch.Size([2, 3, 224, 224])
"""

from __future__ import annotations

import io
import logging
import math
import os

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from PIL import Image

from hftl.data.checks import drop_unreadable, input_name, processor_key

log = logging.getLogger(__name__)
FILE_DTYPES = ("string", "large_string", "binary", "large_binary")
CROP_SCALE, CROP_RATIO = (0.5, 1.0), (3 / 4, 4 / 3)  # gentler than ImageNet's (0.08, 1): small images lose less


def _eight_bit(array: np.ndarray) -> np.ndarray:
    """Pixel values as uint8 on a fixed scale (never stretched per image, so equal pixels stay equal across images):
    16-bit (0-65535) / 257, floats in [0, 1] x 255, other floats and ints clipped to 0-255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16 or (array.dtype.kind in "iu" and array.max(initial=0) > 255):
        return np.round(np.clip(array, 0, 65535) / 257).astype(np.uint8)
    if array.dtype.kind == "f" and array.max(initial=0) <= 1:
        array = array * 255
    return np.round(np.clip(array, 0, 255)).astype(np.uint8)


def to_pil(value) -> Image.Image:
    """Any stored image form as an RGB PIL image: THE conversion of training and of ``hftl predict`` alike.

    Grayscale (``L``, ``1``) is repeated over three channels, palette (``P``) takes its colours, alpha is dropped
    (``RGBA``, ``LA``: the colours under it are kept), 16-bit (``I;16``, ``I``, uint16 arrays) is divided by 257 and
    floats in [0, 1] are multiplied by 255: a 16-bit image of 8-bit content ``x * 257`` gives back ``x``.
    """
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    elif isinstance(value, Image.Image):
        image = value
    else:
        image = Image.fromarray(_eight_bit(np.asarray(value)))
    if image.mode.startswith(("I", "F")):  # 16/32-bit integer or float grayscale: to 8 bits, then RGB
        image = Image.fromarray(_eight_bit(np.asarray(image)))
    return image.convert("RGB")


def random_resized_crop(image: Image.Image, rng: np.random.Generator, scale=CROP_SCALE, ratio=CROP_RATIO):
    """A random crop of ``scale`` of the area and ``ratio`` aspect, resized back to the image's size."""
    w, h = image.size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return image.resize((w, h), Image.BILINEAR, box=(x, y, x + cw, y + ch))
    return image


def augment_image(image: Image.Image, rng: np.random.Generator, flip: bool = True) -> Image.Image:
    """The train-time augmentation users expect: random resized crop, then a horizontal flip half the time."""
    image = random_resized_crop(image, rng)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if flip and rng.random() < 0.5 else image


def _readable(value) -> str | None:
    """None when the image decodes; else why not."""
    try:
        to_pil(value).load()
        return None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        return f"{type(err).__name__}: {err}"


class ImageTransform:
    """The ``with_transform`` function: decode, maybe augment, process; a row that fails is skipped and logged."""

    def __init__(self, processor, augment: bool, seed: int = 0, flip: bool = True) -> None:
        self.processor, self.augment, self.flip, self.rng = processor, augment, flip, np.random.default_rng(seed)

    def __call__(self, batch: dict) -> dict:
        images, labels = [], []
        for value, label in zip(batch["image"], batch["label"], strict=True):
            try:
                image = to_pil(value)
            except Exception as err:  # noqa: BLE001
                log.warning("skipping %s mid-epoch: %s", input_name(value), err)
                continue
            images.append(augment_image(image, self.rng, self.flip) if self.augment else image)
            labels.append(label)
        if not images:
            return {"pixel_values": [], "label": []}
        pixels = self.processor(images=images, return_tensors="np")["pixel_values"]
        return {"pixel_values": list(pixels), "label": labels}


def _storable(ds: Dataset) -> Dataset:
    """Image records as file paths or bytes (hashable by the feature cache), not as nested records."""
    if type(ds.features["image"]).__name__ != "Image":
        return ds
    from datasets import Image as ImageFeature

    ds = ds.cast_column("image", ImageFeature(decode=False))
    paths = all(r["path"] and not r["bytes"] for r in ds["image"][:50])
    key = "path" if paths else "bytes"
    values = [r[key] for r in ds["image"]]
    return ds.remove_columns("image").add_column("image", values).select_columns(["image", "label"])


def encode_images(splits: DatasetDict, processor, *, augment: bool = False, seed: int = 0, flip: bool = True):
    """Splits whose rows become ``pixel_values`` on access (train augmented when asked); and skipped counts."""
    out, skipped = {}, {}
    key = processor_key(processor)
    for name, ds in splits.items():
        ds = _storable(ds.select_columns(["image", "label"]))
        skipped[name] = 0
        if ds.features["image"].dtype in FILE_DTYPES:  # files and bytes can be broken; arrays cannot
            ds, skipped[name] = drop_unreadable(ds, "image", _readable, name)
        ds = ds.add_column("preprocess", [key] * len(ds))  # what the feature cache hashes besides the images
        ds.set_transform(ImageTransform(processor, augment and name == "train", seed, flip))
        out[name] = ds
    return DatasetDict(out), skipped


def image_collator(processor=None):
    """Stacks ``pixel_values`` and ``labels`` (every image already has the processor's size)."""

    def collate(rows: list[dict]) -> dict:
        return {
            "pixel_values": torch.as_tensor(np.stack([r["pixel_values"] for r in rows])),
            "labels": torch.as_tensor([r["label"] for r in rows]),
        }

    return collate
