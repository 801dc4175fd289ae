"""COCO detection metrics by pycocotools (the reference implementation): mAP@[.5:.95], mAP@.5, mAP@.75 and the AP
of each class, from ground truth and predictions in absolute xywh pixels.

(A private module: ``hftl/metrics/*.py`` names are metric names for classification's ``eval.metrics``.)

Example:
    >>> gts = [{"image_id": 0, "width": 10, "height": 10, "boxes": [[0, 0, 5, 5]], "labels": [0]}]
    >>> preds = [{"image_id": 0, "boxes": [[0, 0, 5, 5]], "labels": [0], "scores": [0.9]}]
    >>> coco_map(gts, preds, ["cat"])["map"]
    1.0
"""

from __future__ import annotations

import contextlib
import io

import numpy as np


def _coco_dicts(gts: list[dict], preds: list[dict], names: list[str]) -> tuple[dict, list[dict]]:
    images = [{"id": g["image_id"], "width": g["width"], "height": g["height"]} for g in gts]
    objects = [(g, b, c) for g in gts for b, c in zip(g["boxes"], g["labels"], strict=True)]
    anns = [{"id": n + 1, "image_id": g["image_id"], "bbox": list(map(float, b)), "category_id": int(c),
             "area": float(b[2] * b[3]), "iscrowd": 0} for n, (g, b, c) in enumerate(objects)]
    cats = [{"id": i, "name": n} for i, n in enumerate(names)]
    dets = [{"image_id": p["image_id"], "bbox": list(map(float, b)), "category_id": int(c), "score": float(s)}
            for p in preds for b, c, s in zip(p["boxes"], p["labels"], p["scores"], strict=True)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def coco_map(gts: list[dict], preds: list[dict], names: list[str], max_dets: int = 100) -> dict[str, float]:
    """COCO box AP over images ``gts`` (``image_id``, ``width``, ``height``, ``boxes`` xywh, ``labels`` class ids)
    and ``preds`` (``image_id``, ``boxes`` xywh, ``labels``, ``scores``): ``map`` (IoU .50:.95), ``map_50``,
    ``map_75``, and ``ap_<class>`` (IoU .50:.95) for each class that has ground truth here. Area range "all", at most
    ``max_dets`` detections per image (COCO's default 100). 0.0 where nothing was predicted."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dets = _coco_dicts(gts, preds, names)
    present = sorted({c for g in gts for c in g["labels"]})
    zero = {"map": 0.0, "map_50": 0.0, "map_75": 0.0, **{f"ap_{names[c]}": 0.0 for c in present}}
    if not dets or not gt["annotations"]:
        return zero
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        result = coco.loadRes(dets)
        ev = COCOeval(coco, result, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou thresholds, recall points, classes, areas, max dets]

    def ap(iou: slice | int, cls: slice | int = slice(None)) -> float:
        p = precision[iou, :, cls, 0, -1]
        p = p[p > -1]  # -1: a class without ground truth
        return float(np.mean(p)) if p.size else 0.0

    out = {"map": ap(slice(None)), "map_50": ap(0), "map_75": ap(5)}
    for c in present:
        out[f"ap_{names[c]}"] = ap(slice(None), c)
    return out
