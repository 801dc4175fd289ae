"""Object detection: a transformers detector (DETR, Conditional DETR, YOLOS, ...; by Hub id or path) with its class
head replaced for the new label set while the box head, the transformer and the backbone keep their weights; the
model's own loss (Hungarian matching); predictions post-processed by the family's image processor into boxes, labels
and scores; COCO mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP (``hftl.metrics._detection``).

Strategies act on the detector's parts: ``head`` trains the prediction heads (the new class head and the box head)
on the frozen detector; ``freeze_n`` freezes the backbone (the CNN, or a ViT's embeddings and its first
``strategy.freeze_layers`` blocks) and trains the transformer and heads; ``full`` trains all; a peft method (``lora``)
puts adapters on the transformer's attention projections and saves both heads with them (``modules_to_save``).
Data: ``hftl.data.detection``; the recipe: ``recipes/detect.py`` (``hftl finetune task.name=detection`` runs it).

Example:
    >>> model, processor = hftl.load("runs/digits-lora")  # doctest: +SKIP
    >>> detect(model, processor, [image])  # doctest: +SKIP
    [{'boxes': [[12.0, 30.5, 20.1, 22.0]], 'labels': ['7'], 'scores': [0.93]}]
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from hftl.config import ConfigError
from hftl.tasks import register

log = logging.getLogger(__name__)
HEADS = ("class_labels_classifier", "bbox_predictor")  # the prediction heads of transformers' detectors
CLASS_HEAD = "class_labels_classifier"
KEYS = ("map", "map_50", "map_75", "loss")
STRATEGIES = ("head", "full", "freeze_n")  # and any peft method
# peft targets: the transformer's attention projections, per family (fallback: every q_proj/v_proj found)
TARGET_MODULES = {"detr": ["q_proj", "v_proj"], "yolos": ["query", "value"],
                  "conditional_detr": ["q_proj", "v_proj"], "deformable_detr": ["value_proj", "output_proj"]}


def _new_weights(model: nn.Module, info: dict, reset: bool) -> list[str]:
    """Names of the weights that start new: missing or resized on load, and the class head when ``reset``."""
    new = {k for k in info.get("missing_keys", [])} | {k[0] if isinstance(k, tuple) else k
                                                      for k in info.get("mismatched_keys", [])}
    if reset:
        new |= {n for n, _ in model.named_parameters() if n.startswith(CLASS_HEAD)}
    return sorted(new)


def reset_class_head(model: nn.Module) -> None:
    """New random weights for the class head (used when the label set changes but not its size)."""
    head = getattr(model, CLASS_HEAD)
    for m in head.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()


def load_detector(name: str, labels: list[str], *, revision: str = "main", trust_remote_code: bool = False,
                  log_fn=print):
    """The detector at ``name`` with a new class head of ``len(labels)`` classes; every other weight is the
    checkpoint's. The log names what starts new and how much is kept. ModelNotFoundError when ``name`` is missing.

    Example:
        >>> model = load_detector("runs/digits-source/model", ["5", "6", "7"])  # doctest: +SKIP
    """
    from transformers import AutoConfig, AutoModelForObjectDetection

    from hftl.models import resolve

    kwargs = resolve(name, revision, trust_remote_code)  # ModelNotFoundError at once for an unknown id offline
    source = AutoConfig.from_pretrained(name, **kwargs)
    config = AutoConfig.from_pretrained(name, **kwargs)
    config.id2label = dict(enumerate(labels))  # num_labels follows
    config.label2id = {v: k for k, v in config.id2label.items()}
    model, info = AutoModelForObjectDetection.from_pretrained(
        name, config=config, ignore_mismatched_sizes=True, output_loading_info=True, dtype=torch.float32, **kwargs)
    old = [source.id2label[i] for i in sorted(source.id2label)] if source.id2label else []
    reset = old != list(labels)  # other classes (even as many): the class head starts new
    if reset:
        reset_class_head(model)
    new = _new_weights(model, info, reset)
    kept = sum(p.numel() for n, p in model.named_parameters() if n not in new)
    log_fn(f"detector {name} ({source.model_type}): new weights: {', '.join(new) or 'none'}; kept from the "
           f"checkpoint: {kept:,} parameters (backbone, transformer, box head)")
    if source.model_type == "yolos" and getattr(model.config, "auxiliary_loss", False):
        # transformers 5.24's YOLOS reads hidden states it was not asked for: the first step would fail mid-epoch
        model.config.auxiliary_loss = False
        log_fn("YOLOS: auxiliary_loss turned off (transformers' YOLOS fails on it: no hidden states to read)")
    model.config.task = "detection"
    process_count_free(model)  # the same loss on 1 or N processes
    return model


# How transformers 5.24's detection losses normalise on N processes, by loss function: ImageLoss.forward (DETR,
# YOLOS, Conditional and Deformable DETR) divides the box losses by the box count all-reduced with accelerate's
# *mean* and then by N again (N times too small: box losses N times too large); DETR's and YOLOS's class loss
# (True here) is a cross-entropy weighted by class ("no object" at config.eos_coefficient), averaged over the
# process's own queries only. tests/test_detection.py checks 1 against 2 processes.
WEIGHTED_CE = {"ForObjectDetectionLoss": True, "DeformableDetrForObjectDetectionLoss": False}


class ProcessCountFree:
    """A detector's ``loss_function`` wrapped so that its loss, and so the step's gradient, is the same on 1 or N
    processes: each process's loss is its share of the whole batch's (box losses over the boxes of all processes,
    the class loss over the class weights of all queries of all processes), which DDP's mean of gradients adds up.
    One all-reduce of two numbers per forward with labels on N processes; on one process the loss is untouched.
    ``loss_dict`` keeps the family's per-process values (informative only)."""

    def __init__(self, loss_fn, weighted_ce: bool):
        self.loss_fn, self.weighted_ce = loss_fn, weighted_ce

    def __call__(self, logits, labels, device, pred_boxes, config, *args, **kwargs):
        loss, parts, aux = self.loss_fn(logits, labels, device, pred_boxes, config, *args, **kwargs)
        import torch.distributed as dist
        from accelerate import PartialState

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return loss, parts, aux
        n, queries = dist.get_world_size(), logits.shape[1]
        boxes = [min(len(t["class_labels"]), queries) for t in labels]  # each matched to one query
        eos = getattr(config, "eos_coefficient", 0.1)
        local = torch.tensor([sum(boxes), sum(b + (queries - b) * eos for b in boxes)], dtype=torch.float64,
                             device=logits.device)
        total = local.clone()
        dist.all_reduce(total)
        reduced = PartialState._shared_state != {}  # transformers reduces (as above) only under accelerate's state
        used = max(float(total[0]) / n / n, 1.0) if reduced else max(float(local[0]), 1.0)
        box = used / max(float(total[0]) / n, 1.0)
        if not self.weighted_ce:
            return loss * box, parts, aux
        ce = sum(v for k, v in parts.items() if k == "loss_ce" or k.startswith("loss_ce_"))  # weight 1
        return (loss - ce) * box + ce * float(local[1] * n / total[1]), parts, aux


def process_count_free(model: nn.Module) -> bool:
    """Wrap ``model.loss_function`` in ``ProcessCountFree`` when its family's normalisation is known (WEIGHTED_CE);
    whether it was."""
    fn = model.loss_function
    name = getattr(fn, "__name__", "")
    if isinstance(fn, ProcessCountFree) or name not in WEIGHTED_CE:
        return isinstance(fn, ProcessCountFree)
    model.loss_function = ProcessCountFree(fn, WEIGHTED_CE[name])
    return True


def _backbone_parts(model: nn.Module, freeze_layers: int) -> list[tuple[str, nn.Module]]:
    """The parts ``freeze_n`` freezes: a CNN backbone whole, or a ViT's embeddings and first blocks (YOLOS)."""
    inner = getattr(model, "model", None) or getattr(model, "vit", None)
    if getattr(inner, "backbone", None) is not None:
        return [("model.backbone", inner.backbone)]
    if inner is not None and hasattr(inner, "embeddings"):
        blocks = inner.encoder.layer
        if freeze_layers > len(blocks):
            raise ConfigError(f"strategy.freeze_layers={freeze_layers} but the detector has {len(blocks)} blocks")
        return [("vit.embeddings", inner.embeddings)] + [(f"vit.encoder.layer.{i}", blocks[i])
                                                         for i in range(freeze_layers)]
    raise ConfigError(f"no backbone found in {type(model).__name__}: use strategy.name=full or head")


def apply_strategy(model: nn.Module, cfg):
    """``hftl.strategies.apply_strategy`` for detectors (see the module docstring); an ``Adapted``."""
    from hftl.strategies import Adapted, _peft_methods, freeze_norm_statistics, set_trainable

    name = cfg.name
    if name == "full":
        set_trainable(model, True)
        return Adapted(model, name)
    if name == "head":
        freeze_norm_statistics(model)
        set_trainable(model, False)
        for h in HEADS:
            set_trainable(getattr(model, h), True)
        return Adapted(model, name, frozen=["backbone", "transformer"])
    if name == "freeze_n":
        set_trainable(model, True)
        parts = _backbone_parts(model, cfg.freeze_layers)
        for _, part in parts:
            freeze_norm_statistics(part)
            set_trainable(part, False)
        return Adapted(model, name, frozen=[n for n, _ in parts])
    if name not in _peft_methods():
        raise ConfigError(f"strategy.name={name!r} does not apply to task.name=detection: choose one of "
                          f"{list(STRATEGIES)} or a peft method such as lora")
    return _peft(model, cfg)


def _peft(model: nn.Module, cfg):
    from peft import get_peft_model

    from hftl.strategies import Adapted, freeze_norm_statistics, make_peft_config, peft_config_args

    config_cls, _, args = peft_config_args(
        cfg, lambda _: TARGET_MODULES.get(model.config.model_type, ["q_proj", "v_proj"]))
    args["modules_to_save"] = sorted(set(args.get("modules_to_save") or []) | set(HEADS))
    peft_config = make_peft_config(config_cls, args)
    freeze_norm_statistics(model)
    peft_model = get_peft_model(model, peft_config)
    return Adapted(peft_model, cfg.name, frozen=["detector (except adapters and heads)"],
                   peft_config=peft_config.to_dict())


def _post_processor(model_type: str):
    """The family's image processor (PIL class: no torchvision), whose ``post_process_object_detection`` turns
    outputs into boxes."""
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    name = names.get("pil") if isinstance(names, dict) else None
    return getattr(transformers, name or "DetrImageProcessorPil")()


def _scale(target: dict) -> torch.Tensor:
    """(height, width) in original pixels of the padded input: boxes in fractions of it become pixels."""
    return target["padded_size"].float() * target["orig_size"].float() / target["size"].float()


def boxes_of(outputs, targets: list[dict], model_type: str, threshold: float = 0.0) -> list[dict]:
    """Per image: predicted ``boxes`` (xywh, original pixels), ``labels`` (class ids), ``scores``."""
    from hftl.data.detection import convert_boxes

    sizes = torch.stack([_scale(t) for t in targets])
    found = _post_processor(model_type).post_process_object_detection(outputs, threshold=threshold,
                                                                      target_sizes=sizes)
    return [{"boxes": convert_boxes(f["boxes"].detach().cpu().numpy(), "xyxy", "xywh").tolist(),
             "labels": f["labels"].tolist(), "scores": f["scores"].tolist()} for f in found]


def truth_of(targets: list[dict]) -> list[dict]:
    """Per image: the ground truth in original pixels (xywh), with its id and size (COCO's image fields)."""
    from hftl.data.detection import convert_boxes

    out = []
    for t in targets:
        h, w = _scale(t).tolist()
        out.append({"image_id": int(t["image_id"].reshape(-1)[0]), "height": int(t["orig_size"][0]),
                    "width": int(t["orig_size"][1]), "labels": t["class_labels"].tolist(),
                    "boxes": convert_boxes(t["boxes"].cpu().numpy(), "cxcywh_norm", "xywh", (w, h)).tolist()})
    return out


def detect_batch(model, batch: dict, model_type: str) -> tuple[list[dict], list[dict], float]:
    """One batch's ground truth and predictions (all scores, for mAP; ``image_id`` of their image) and its loss."""
    out = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])
    truth, preds = truth_of(batch["labels"]), boxes_of(out, batch["labels"], model_type)
    for g, q in zip(truth, preds, strict=True):
        q["image_id"] = g["image_id"]
    return truth, preds, float(out.loss)


@torch.no_grad()
def run_detector(model, loader, accelerator, desc: str = "eval") -> tuple[list[dict], list[dict], float]:
    """Ground truth, predictions (all scores, for mAP) and the mean loss over a loader, gathered over processes."""
    from hftl.strategies import adapters_merged
    from hftl.train import progress, sharded

    model.eval()
    base = accelerator.unwrap_model(model)
    model_type = (base.get_base_model() if hasattr(base, "get_base_model") else base).config.model_type
    truth, preds, losses = [], [], []
    with adapters_merged(base, sharded(accelerator)):
        for batch in progress(loader, accelerator, desc):
            t, p, loss = detect_batch(model, batch, model_type)
            truth.append(t)
            preds.append(p)
            losses.append(loss)
    truth = accelerator.gather_for_metrics([g for t in truth for g in t], use_gather_object=True)
    preds = accelerator.gather_for_metrics([q for p in preds for q in p], use_gather_object=True)
    loss = float(accelerator.reduce(torch.tensor(sum(losses) / max(len(losses), 1), device=accelerator.device),
                                    "mean"))
    return truth, preds, loss


def evaluate(model, loader, accelerator, desc: str = "eval") -> dict:
    """COCO mAP, mAP@.5, mAP@.75, per-class AP and the loss on a loader (``fit``'s ``evaluate_fn``)."""
    from hftl.metrics._detection import coco_map

    truth, preds, loss = run_detector(model, loader, accelerator, desc)
    config = accelerator.unwrap_model(model).config
    names = [config.id2label[i] for i in range(len(config.id2label))]
    return {**coco_map(truth, preds, names), "loss": loss}


def detect(model, processor, images: list, threshold: float = 0.5) -> list[dict]:
    """Boxes (xywh pixels), label names and scores above ``threshold`` for PIL ``images``: what ``predict`` gives.
    ``model, processor = hftl.load(run_dir)`` loads a detection run, full or adapter."""
    enc = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        out = model(pixel_values=enc["pixel_values"], pixel_mask=enc.get("pixel_mask"))
    sizes = [(im.height, im.width) for im in images]
    found = processor.post_process_object_detection(out, threshold=threshold, target_sizes=sizes)
    from hftl.data.detection import convert_boxes

    return [{"boxes": convert_boxes(f["boxes"].numpy(), "xyxy", "xywh").round(2).tolist(),
             "labels": [base.config.id2label[int(i)] for i in f["labels"]],
             "scores": [round(float(s), 4) for s in f["scores"]]} for f in found]


@register("detection")
class Detection:
    tunes = False
    stratify = False
    caches_features = False  # boxes need the whole detector every step
    baselines = False

    def model_class(self):
        from transformers import AutoModelForObjectDetection

        return AutoModelForObjectDetection

    def build_model(self, cfg, labels: list[str], splits=None, log_fn=print):
        m = cfg.model
        return load_detector(m.name, labels, revision=m.revision, trust_remote_code=m.trust_remote_code,
                             log_fn=log_fn)

    apply_strategy = staticmethod(apply_strategy)
    evaluate = staticmethod(evaluate)

    def collator(self, processor=None):
        from hftl.data.detection import detection_collator

        return detection_collator

    def label_names(self, data, cfg=None) -> list[str]:
        return list(data.names)

    def model_config(self, splits=None, cfg=None) -> dict:
        return {"task": self.name}

    def encode_labels(self, encoded, cfg=None):
        return encoded

    def check(self, cfg) -> None:
        from hftl.tasks import only_classification

        only_classification(cfg)
        self.best_metric(cfg)
        if cfg.strategy.name in ("linear_probe", "gradual_unfreeze", "lp_ft"):
            raise ConfigError(f"strategy.name={cfg.strategy.name} does not apply to task.name=detection: choose one "
                              f"of {list(STRATEGIES)} or a peft method such as lora")

    def best_metric(self, cfg, splits=None, log=print) -> str:
        from hftl.tasks import resolve_best

        return resolve_best(cfg, list(KEYS), "map")

    def auto_best(self, metrics=None) -> str:
        return "map"

    def check_best(self, metrics, metric_for_best: str, trust_remote_code: bool = True) -> list[str]:
        if metric_for_best not in KEYS and metric_for_best != "auto" and not metric_for_best.startswith("ap_"):
            raise ConfigError(f"train.metric_for_best={metric_for_best!r} is not reported by task.name=detection: "
                              f"it reports {list(KEYS)} and ap_<class>")
        return list(KEYS)

    def tune(self, config, logits, labels, cfg=None) -> dict:
        return {}

    def prediction_rows(self, truth: list[dict], preds: list[dict], config, threshold: float = 0.05,
                        top: int = 20) -> list[dict]:
        """Per test image: its true boxes and labels, and the ``top`` predicted ones scoring at least ``threshold``,
        best first (low: a weakly trained detector's sigmoid scores rarely pass 0.5, yet rank its boxes)."""
        names = config.id2label
        rows = []
        for g, p in zip(truth, preds, strict=True):
            best = sorted(range(len(p["scores"])), key=lambda i: -p["scores"][i])[:top]
            keep = [i for i in best if p["scores"][i] >= threshold]
            rows.append({"image_id": g["image_id"], "label": {"boxes": _round(g["boxes"]),
                                                              "labels": [names[c] for c in g["labels"]]},
                         "predicted": {"boxes": _round([p["boxes"][i] for i in keep]),
                                       "labels": [names[p["labels"][i]] for i in keep],
                                       "scores": [round(p["scores"][i], 4) for i in keep]}})
        return rows

    def outputs(self, outputs, config, targets=None, model_type: str = "detr") -> list:
        return boxes_of(outputs, targets, model_type)

    def input_rows(self, items: list, processor) -> list[dict]:
        """Each image (a path or PIL image) read and encoded as training's ``DetectionDataset`` does, with no boxes;
        DataError naming an image that cannot be read."""
        from hftl.data.detection import DetectionDataset
        from hftl.data.sources import DataError

        rows = DetectionDataset([{"image": item, "image_id": i, "boxes": [], "labels": []}
                                 for i, item in enumerate(items)], processor)
        out = []
        for i, item in enumerate(items):
            try:
                out.append(rows[i])
            except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
                raise DataError(f"cannot read the image {item}: {type(err).__name__}: {err}; give image "
                                f"files") from err
        return out

    def targets(self, values, config, items, where: str) -> list:
        from hftl.data.sources import DataError

        if values is not None:
            raise DataError(f"{where}: hftl evaluate reads a detection model's labels from a COCO JSON file (images "
                            f"beside it): give one, as in training's data.name")
        return [None] * len(items)  # the boxes are input_rows' (none)

    @torch.no_grad()
    def predict_rows(self, model, batch: dict, config, items: list, threshold: float | None = None) -> list[dict]:
        """Per image: ``objects``, each ``label``, ``score`` and ``box`` [x0, y0, x1, y1] in the original image's
        pixels, scoring at least ``threshold`` (0.5 by default), best first; by the detector family's
        ``post_process_object_detection`` with the images' sizes, as evaluation reads them."""
        from hftl.data.detection import convert_boxes
        from hftl.tasks.speech_text import unwrap

        out = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        at = 0.5 if threshold is None else threshold
        found = boxes_of(out, batch["labels"], unwrap(model).config.model_type, at)
        rows = []
        for f in found:
            boxes = convert_boxes(f["boxes"], "xywh", "xyxy").reshape(-1, 4).tolist() if f["boxes"] else []
            best = sorted(range(len(boxes)), key=lambda i: -f["scores"][i])
            rows.append({"objects": [{"label": config.id2label[f["labels"][i]], "score": round(f["scores"][i], 4),
                                      "box": [round(v, 2) for v in boxes[i]]} for i in best]})
        return rows

    @torch.no_grad()
    def evaluate_labelled(self, model, processor, path, batch_size: int = 8, box_format: str = "xywh") -> dict:
        """COCO mAP, mAP@.5, mAP@.75, per-class AP and the loss (a mean over batches of ``batch_size``, as the run's
        evaluation batches) of ``model`` on a COCO JSON file with its images (beside it; boxes in ``box_format``,
        the run's ``data.box_format``); ``examples``: images.
        DataError for a file that is not COCO or a category the model does not know."""
        from hftl.data.detection import DetectionDataset, _clean, _coco_rows, detection_collator
        from hftl.data.sources import DataError
        from hftl.metrics._detection import coco_map
        from hftl.tasks.speech_text import unwrap

        config = unwrap(model).config
        names = [config.id2label[i] for i in range(len(config.id2label))]
        path = Path(path)
        if path.suffix.lower() != ".json":
            raise DataError(f"{path}: hftl evaluate reads a detection model's labels from a COCO JSON file (images "
                            f"beside it): give one, as in training's data.name")
        rows, file_names = _coco_rows(path, path.parent, box_format, names)  # categories matched by name
        unknown = sorted(set(file_names) - set(names))
        if unknown:
            raise DataError(f"{path} has categories the model does not know: {unknown[:10]}; its labels are "
                            f"{names[:30]}: fix those categories, or evaluate a model trained with them")
        rows, _, _ = _clean(rows, "test", names, lambda i: f"image {rows[i].get('name', i)!r} of {path}")
        data = DetectionDataset(rows, processor)
        model_type, truth, preds, losses = config.model_type, [], [], []
        device = next(model.parameters()).device
        for start in range(0, len(data), batch_size):
            batch = detection_collator([data[i] for i in range(start, min(start + batch_size, len(data)))])
            batch = {k: _to(v, device) for k, v in batch.items()}
            t, p, loss = detect_batch(model, batch, model_type)
            truth += t
            preds += p
            losses.append(loss)
        return {**coco_map(truth, preds, names), "loss": sum(losses) / max(len(losses), 1), "examples": len(rows)}

    def pipeline_tag(self, modality: str = "vision") -> str:
        return "object-detection"


def _to(value, device):
    """Tensors (also inside lists and dicts, as detection batches hold their targets) moved to ``device``."""
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value.to(device) if hasattr(value, "to") else value


def _round(boxes: list) -> list:
    return [[round(float(v), 2) for v in b] for b in boxes]


def prediction_picture(path, rows: list[dict], predictions: list[dict], n: int = 8, zoom: int = 3) -> None:
    """A picture of the first ``n`` test images (``rows``: ``image``, a path or PIL) with their true boxes (green)
    and as many predicted ones as there are true boxes, the best scoring (red, with label and score), from
    ``prediction_rows``, written to ``path`` (PNG)."""
    from PIL import Image, ImageDraw

    from hftl.data.detection import open_image

    shown = list(zip(rows, predictions, strict=False))[:n]
    if not shown:
        return
    w, h = (max(r["width" if i == 0 else "height"] for r, _ in shown) * zoom for i in (0, 1))
    sheet = Image.new("RGB", (w * min(4, len(shown)), h * -(-len(shown) // 4)), "white")
    for k, (row, pred) in enumerate(shown):
        image = open_image(row["image"])
        image = image.resize((image.width * zoom, image.height * zoom))
        draw = ImageDraw.Draw(image)
        for box in pred["label"]["boxes"]:
            draw.rectangle([v * zoom for v in (box[0], box[1], box[0] + box[2], box[1] + box[3])], outline="lime")
        shown_preds = list(zip(pred["predicted"]["boxes"], pred["predicted"]["labels"], pred["predicted"]["scores"],
                               strict=True))[: max(1, len(pred["label"]["boxes"]))]
        for box, name, score in shown_preds:
            xy = [v * zoom for v in (box[0], box[1], box[0] + box[2], box[1] + box[3])]
            draw.rectangle(xy, outline="red")
            draw.text((xy[0] + 1, xy[1] + 1), f"{name} {score:.2f}", fill="red")
        sheet.paste(image, ((k % 4) * w, (k // 4) * h))
    sheet.save(path)
