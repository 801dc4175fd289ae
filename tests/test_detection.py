"""Detection as a task (issue 18): box formats, clipping and augmentation, COCO mAP against AP worked out by hand,
data checks before compute, the detector's new class head, strategies, and a tiny run saved and loaded back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from same_run import assert_same_run, saved_weights

import hftl
from hftl.config import ConfigError, StrategyConfig
from hftl.data.detection import (
    DetectionDataset,
    augment,
    clip_boxes,
    convert_boxes,
    detection_collator,
    load_detection,
)
from hftl.data.sources import DataError
from hftl.metrics._detection import coco_map
from hftl.tasks import get_task
from hftl.tasks.detection import apply_strategy, detect, load_detector
from hftl.testing import numbers_only, tiny_detector
from hftl.train import KILL_ENV, last_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["0", "1", "2"]


@pytest.fixture(scope="module")
def detr(tmp_path_factory) -> str:
    return tiny_detector(tmp_path_factory.mktemp("det") / "detr", labels=["a", "b"])


@pytest.fixture(scope="module")
def placed(tmp_path_factory) -> dict:
    from hftl.data.placed import placed_objects

    return placed_objects(tmp_path_factory.mktemp("placed") / "data", classes=LABELS,
                          counts={"train": 16, "validation": 6, "test": 6}, seed=0)


def _data_cfg(placed: dict, **kw):
    from hftl.config import DataConfig

    return DataConfig(name=placed["train"], splits=dict(placed), **kw)


# -- boxes ------------------------------------------------------------------------------------------------------------
box = st.tuples(*[st.floats(0, 50)] * 2, *[st.floats(1, 50)] * 2)


@settings(max_examples=50, deadline=None)
@given(st.lists(box, min_size=1, max_size=5))
def test_box_formats_round_trip(boxes):
    size = (120, 90)
    b = np.array(boxes)
    for fmt in ("xyxy", "cxcywh", "xywh_norm", "xyxy_norm", "cxcywh_norm"):
        back = convert_boxes(convert_boxes(b, "xywh", fmt, size), fmt, "xywh", size)
        np.testing.assert_allclose(back, b, atol=1e-9)


def test_clip_drops_outside_and_degenerate_boxes():
    boxes = [[5, 5, 10, 10], [-4, 2, 10, 5], [50, 50, 5, 5], [3, 3, 0, 4], [3, 3, -2, 4], [float("nan"), 0, 1, 1]]
    out, kept, changed = clip_boxes(boxes, 40, 40)
    assert kept.tolist() == [True, True, False, False, False, False]
    assert changed.tolist() == [False, True, False, False, False, False]
    assert out[1].tolist() == [0, 2, 6, 5]


def test_augmentation_moves_boxes_with_pixels():
    image = np.zeros((48, 64, 3), np.uint8)
    image[10:20, 30:44] = 255  # the object: box xywh [30, 10, 14, 10]
    for seed in range(12):
        out, boxes, kept = augment(Image.fromarray(image), [[30, 10, 14, 10]], np.random.default_rng(seed))
        ys, xs = np.nonzero(np.asarray(out)[..., 0] > 127)
        if not kept[0]:
            assert len(xs) < 3 or xs.max() - xs.min() < 2 or ys.max() - ys.min() < 2
            continue
        seen = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        np.testing.assert_allclose(boxes[0], seen, atol=2.0)


def test_augmentation_counts_boxes_pushed_out(tmp_path):
    rows = [{"image": Image.new("RGB", (64, 64)), "image_id": 0, "boxes": [[0, 0, 2, 2], [62, 62, 2, 2]],
             "labels": [0, 1]}]
    processor = hftl.load_processor(tiny_detector(tmp_path / "d"))
    ds = DetectionDataset(rows, processor, augment=True, seed=0)
    for _ in range(20):
        item = ds[0]
        assert len(item["labels"]["class_labels"]) == len(item["labels"]["boxes"]) <= 2
    assert ds.dropped > 0


def test_augmentation_is_the_epochs_and_its_counts_survive_a_resume(tmp_path):
    """A row is augmented by (seed, row, epoch, draw in the epoch): a new dataset set to the epoch draws it alike.
    The counts of dropped boxes go into checkpoints (state_dict): a run stopped after drawing a row of epoch 5 (as a
    loader prefetches) and resumed, which draws that row again, counts what the run never stopped counted."""
    boxes = [[0, 0, 3, 3], [61, 61, 3, 3], [20, 20, 9, 9]]  # two in corners: crops push them out
    rows = [{"image": Image.new("RGB", (64, 64)), "image_id": k, "boxes": boxes, "labels": [0, 1, 0]}
            for k in range(3)]
    processor = hftl.load_processor(tiny_detector(tmp_path / "d"))
    make = lambda: DetectionDataset(rows, processor, augment=True, seed=5, epochs=8)  # noqa: E731
    whole, stopped = make(), make()
    seen = {}
    for epoch in range(8):
        whole.set_epoch(epoch)
        seen[epoch] = [whole[i]["labels"]["boxes"] for i in range(3)]
    assert whole.dropped > 0 and whole.drop_counts.sum(1).gt(0).sum() > 1  # several epochs drop boxes
    assert any(not torch.equal(seen[0][0], seen[e][0]) for e in range(1, 8))  # epochs differ
    for epoch in range(6):
        stopped.set_epoch(epoch)
        for i in range(3 if epoch < 5 else 2):  # killed mid-epoch 5, row 1 (2 boxes dropped) already drawn
            stopped[i]
    resumed = make()
    resumed.load_state_dict(stopped.state_dict())
    for epoch in range(5, 8):
        resumed.set_epoch(epoch)
        for i in range(1 if epoch == 5 else 0, 3):
            assert torch.equal(resumed[i]["labels"]["boxes"], seen[epoch][i])
    assert resumed.total_dropped() == whole.total_dropped()


# -- COCO mAP against AP worked out by hand ---------------------------------------------------------------------------
def test_coco_map_matches_hand_computed_ap():
    """Class "a": two true boxes, one found exactly (score .9) and one false alarm (score .8): precision 1 up to recall
    .5, then nothing: COCO's 101-point AP = 51/101 at every IoU threshold. Class "b": one box found with IoU 0.725:
    AP 1 at the thresholds .50-.70 (5 of 10), 0 at .75-.95."""
    gts = [{"image_id": 0, "width": 100, "height": 100, "boxes": [[0, 0, 10, 10], [50, 50, 10, 10]], "labels": [0, 0]},
           {"image_id": 1, "width": 100, "height": 100, "boxes": [[20, 20, 10, 10]], "labels": [1]}]
    preds = [{"image_id": 0, "boxes": [[0, 0, 10, 10], [80, 80, 10, 10]], "labels": [0, 0], "scores": [0.9, 0.8]},
             {"image_id": 1, "boxes": [[20, 20, 10, 7.25]], "labels": [1], "scores": [0.7]}]
    scores = coco_map(gts, preds, ["a", "b"])
    a, b = 51 / 101, 0.5
    assert scores["ap_a"] == pytest.approx(a)
    assert scores["ap_b"] == pytest.approx(b)
    assert scores["map"] == pytest.approx((a + b) / 2)
    assert scores["map_50"] == pytest.approx((a + 1) / 2)
    assert scores["map_75"] == pytest.approx((a + 0) / 2)
    assert coco_map(gts, [], ["a", "b"])["map"] == 0.0


# -- data checks ------------------------------------------------------------------------------------------------------
def _coco(tmp_path, images: dict, annotations: list, categories=("x", "y")) -> str:
    (tmp_path / "img").mkdir(exist_ok=True)
    for name, content in images.items():
        if content == "corrupt":
            (tmp_path / "img" / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
        elif content is not None:
            Image.new("RGB", (40, 30)).save(tmp_path / "img" / name)
    coco = {"images": [{"id": i, "file_name": f"img/{n}", "width": 40, "height": 30} for i, n in enumerate(images)],
            "annotations": [{"id": k, "image_id": i, "bbox": b, "category_id": c}
                            for k, (i, b, c) in enumerate(annotations)],
            "categories": [{"id": 10 + i, "name": n} for i, n in enumerate(categories)]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    return str(path)


def _load(path, **kw):
    from hftl.config import DataConfig

    return load_detection(DataConfig(name=path, splits={s: path for s in ("train", "validation", "test")}, **kw))


def test_coco_fixes_and_skips_are_counted(tmp_path):
    images = {"a.png": 1, "b.png": 1, "c.png": "corrupt", "d.png": 1}
    ann = [(0, [5, 5, 10, 10], 10), (0, [35, 20, 10, 20], 11), (1, [45, 5, 5, 5], 10), (1, [3, 3, 0, 5], 11),
           (2, [1, 1, 5, 5], 10)]
    data = _load(_coco(tmp_path, images, ann))
    assert data.names == ["x", "y"]
    counts = data.skipped["train"]
    assert counts == {"clipped_boxes": 1, "dropped_boxes": 2, "images_without_objects": 2, "corrupt_images": 1}
    train = data.splits["train"]
    assert len(train) == 3 and train[0]["boxes"][1] == [35, 20, 5, 10] and train[0]["labels"] == [0, 1]
    assert any("corrupt" in n and "c.png" in n for n in data.notes)


def test_coco_missing_images_is_one_line_before_compute(tmp_path):
    path = _coco(tmp_path, {"a.png": 1, "gone.png": None}, [(0, [1, 1, 5, 5], 10)])
    with pytest.raises(DataError, match=r"1 of the 2 images .* 'img/gone.png'.*data.image_dir") as err:
        _load(path)
    assert "\n" not in str(err.value)


def test_unknown_category_is_named(tmp_path):
    path = _coco(tmp_path, {"a.png": 1}, [(0, [1, 1, 5, 5], 99)])
    with pytest.raises(DataError, match=r"image 'img/a.png' .* category 99 .* label set lacks"):
        _load(path)


def test_objects_column_dataset(tmp_path):
    from datasets import ClassLabel, Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    feats = Features({"image": ImageFeature(), "objects": {"bbox": List(List(Value("float32"))),
                                                           "category": List(ClassLabel(names=["cat", "dog"]))}})
    rows = {"image": [Image.new("RGB", (32, 32))] * 12,
            "objects": [{"bbox": [[2, 2, 12, 12], [4, 4, 30, 30]], "category": [0, 1]}] * 12}
    Dataset.from_dict(rows, features=feats).save_to_disk(tmp_path / "ds")
    from hftl.config import DataConfig

    data = load_detection(DataConfig(name=str(tmp_path / "ds"), box_format="xyxy", validation_size=0.25,
                                     test_size=0.25))
    assert data.names == ["cat", "dog"]
    assert sum(len(v) for v in data.splits.values()) == 12
    assert data.splits["train"][0]["boxes"] == [[2, 2, 10, 10], [4, 4, 26, 26]]


# -- model, collator, strategies --------------------------------------------------------------------------------------
def test_new_class_head_other_weights_kept(detr, capsys):
    from transformers import AutoModelForObjectDetection

    source = AutoModelForObjectDetection.from_pretrained(detr)
    model = load_detector(detr, LABELS)
    assert model.class_labels_classifier.out_features == len(LABELS) + 1  # DETR's "no object" class
    assert model.config.id2label == dict(enumerate(LABELS)) and model.config.task == "detection"
    for name, p in source.state_dict().items():
        if not name.startswith("class_labels_classifier"):
            assert torch.equal(p, model.state_dict()[name]), name
    assert "new weights: class_labels_classifier.bias, class_labels_classifier.weight" in capsys.readouterr().out
    same_size = load_detector(detr, ["c", "d"])  # same size, other classes: the head starts new all the same
    assert not torch.equal(same_size.class_labels_classifier.weight, source.class_labels_classifier.weight)


@pytest.mark.parametrize("kind", ["conditional_detr", "yolos"])
def test_other_families_train_a_step(kind, tmp_path, placed):
    path = tiny_detector(tmp_path / kind, kind=kind)
    model = load_detector(path, LABELS)
    processor = hftl.load_processor(path)
    data = load_detection(_data_cfg(placed))
    batch = detection_collator([DetectionDataset(data.splits["train"], processor)[i] for i in range(3)])
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.class_labels_classifier.parameters().__next__().grad is not None


def test_collator_pads_and_rescales_boxes():
    rows = [{"pixel_values": torch.ones(3, 20, 40), "labels": {"class_labels": torch.tensor([0]),
                                                            "boxes": torch.tensor([[0.5, 0.5, 1.0, 1.0]]),
                                                            "size": torch.tensor([20, 40]),
                                                            "orig_size": torch.tensor([20, 40]),
                                                            "image_id": torch.tensor([0])}},
            {"pixel_values": torch.ones(3, 40, 20), "labels": {"class_labels": torch.tensor([], dtype=torch.long),
                                                            "boxes": torch.zeros(0, 4), "size": torch.tensor([40, 20]),
                                                            "orig_size": torch.tensor([40, 20]),
                                                            "image_id": torch.tensor([1])}}]
    batch = detection_collator(rows)
    assert batch["pixel_values"].shape == (2, 3, 40, 40)
    assert batch["pixel_mask"][0].sum() == 800 and batch["pixel_mask"][0, 30].sum() == 0
    assert batch["labels"][0]["boxes"].tolist() == [[0.5, 0.25, 1.0, 0.5]]


@pytest.mark.parametrize("name, trains, frozen_part", [
    ("head", {"class_labels_classifier", "bbox_predictor"}, "model"),
    ("freeze_n", {"class_labels_classifier", "bbox_predictor", "model"}, "model.backbone"),
    ("full", {"class_labels_classifier", "bbox_predictor", "model"}, None),
])
def test_strategies_on_a_detector(detr, name, trains, frozen_part):
    adapted = apply_strategy(load_detector(detr, LABELS), StrategyConfig(name=name))
    model = adapted.model
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == trains
    if frozen_part == "model.backbone":
        assert not any(p.requires_grad for p in model.model.backbone.parameters())
        assert any(p.requires_grad for p in model.model.encoder.parameters())


def test_lora_saves_both_heads_and_refuses_linear_probe(detr):
    adapted = apply_strategy(load_detector(detr, LABELS), StrategyConfig(name="lora", peft={"r": 4}))
    names = [n for n, p in adapted.model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names)
    assert any("modules_to_save" in n and "class_labels_classifier" in n for n in names)
    assert any("modules_to_save" in n and "bbox_predictor" in n for n in names)
    with pytest.raises(ConfigError, match="does not apply to task.name=detection"):
        apply_strategy(load_detector(detr, LABELS), StrategyConfig(name="linear_probe"))


# -- a run, saved and loaded back -------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_run_saves_map_picture_and_loads_back(detr, placed, tmp_path, strategy):
    from hftl.recipes.finetune import main

    cfg = hftl.load_config(None, [
        "task.name=detection", f"model.name={detr}", f"data.name={placed['train']}",
        f"data.splits={json.dumps(placed)}", f"strategy.name={strategy}", "train.epochs=2", "train.batch_size=8",
        "train.eval_batch_size=8", "train.lr=1e-3", "train.report_to=none", f"output_dir={tmp_path / 'run'}"])
    metrics = main(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert numbers_only(saved), saved  # strict numbers, as every recipe's metrics.json
    card = (run / "README.md").read_text()
    assert "find objects of 3 classes" in " ".join(card.split())
    assert "trust_remote_code=True" not in card and "classification" not in card and "classifies" not in card
    assert {"map", "map_50", "map_75", "loss"} <= set(saved["test"]) and "ap_0" in saved["history"][0]["validation"]
    assert saved["data"]["skipped"]["train"]["corrupt_images"] == 0 and "augment_dropped_boxes" in \
        saved["data"]["skipped"]["train"]
    assert metrics["train"]["trainable_params"] == saved["train"]["trainable_params"]
    assert (run / "predictions.png").is_file() and len((run / "predictions.jsonl").read_text().splitlines()) == 6
    model, processor = hftl.load(run)
    images = [Image.open(p).convert("RGB") for p in sorted((tmp_path.parent).glob("**/images/test_*.png"))[:2]]
    found = detect(model, processor, images, threshold=0.0)
    assert len(found) == 2 and set(found[0]) == {"boxes", "labels", "scores"}
    assert set(found[0]["labels"]) <= set(LABELS) and len(found[0]["boxes"]) == len(found[0]["scores"]) > 0
    assert get_task("detection").pipeline_tag() == "object-detection"


def test_true_boxes_as_outputs_score_map_one(detr, placed):
    """The conversions around the model (processor -> collator -> post-processing -> original pixels) are exact:
    outputs that put the true boxes on confident queries score mAP 1."""
    from types import SimpleNamespace

    from hftl.tasks.detection import boxes_of, truth_of

    processor = hftl.load_processor(detr)
    data = load_detection(_data_cfg(placed))
    batch = detection_collator([DetectionDataset(data.splits["test"], processor)[i] for i in range(4)])
    queries = 10
    logits = torch.full((4, queries, len(LABELS) + 1), -10.0)
    logits[..., -1] = 10.0  # "no object" everywhere...
    boxes = torch.full((4, queries, 4), 0.5)
    for i, t in enumerate(batch["labels"]):  # ...but on one query per true box
        for q, (c, b) in enumerate(zip(t["class_labels"], t["boxes"], strict=True)):
            logits[i, q, -1], logits[i, q, c], boxes[i, q] = -10.0, 10.0, b
    truth = truth_of(batch["labels"])
    preds = boxes_of(SimpleNamespace(logits=logits, pred_boxes=boxes), batch["labels"], "detr")
    for g, p in zip(truth, preds, strict=True):
        p["image_id"] = g["image_id"]
    np.testing.assert_allclose(truth[0]["boxes"], data.splits["test"][0]["boxes"], atol=1e-3)
    assert coco_map(truth, preds, LABELS)["map"] == pytest.approx(1.0)


def test_yolos_auxiliary_loss_is_turned_off_before_compute(tmp_path, capsys):
    model = load_detector(tiny_detector(tmp_path / "y", kind="yolos", aux_loss=True), LABELS)
    assert model.config.auxiliary_loss is False and "auxiliary_loss turned off" in capsys.readouterr().out


# -- 2 processes against 1; SIGKILL and resume (as tests/test_tasks_roundtrip.py and tests/test_asr.py do) ----------
@pytest.fixture(scope="module")
def placed24(tmp_path_factory) -> dict:
    """24 train canvases (augmented in training), 8 validation, 8 test, of 3 digit classes."""
    from hftl.data.placed import placed_objects

    return placed_objects(tmp_path_factory.mktemp("placed24") / "data", classes=LABELS,
                          counts={"train": 24, "validation": 8, "test": 8}, seed=1)


def _run_args(model: str, placed: dict, out, *extra: str) -> list[str]:
    return ["task.name=detection", f"model.name={model}", f"data.name={placed['train']}",
            f"data.splits={json.dumps(placed)}", "strategy.name=full", "train.epochs=2", "train.batch_size=8",
            "train.eval_batch_size=8", "train.lr=1e-3", "train.metric_for_best=loss", "train.report_to=none",
            f"output_dir={out}", *extra]  # best by loss: the weights saved are the last epoch's (mAP is 0 this early)


def test_two_processes_match_one(tmp_path, placed24):
    """The same run on 1 and on 2 CPU processes (accelerate launch, DDP over gloo): the same losses per epoch and on
    test, the same predicted boxes and scores, weights and count of boxes the augmentation dropped. The detector
    without dropout (no random numbers drawn while training); augmentation on: it is seeded by the row and the epoch,
    whichever process draws the row. Without hftl's correction of transformers' DETR loss on N processes
    (``ProcessCountFree``) the 2-process losses are 1.8 times the 1-process ones."""
    from hftl.recipes.finetune import main

    model = tiny_detector(tmp_path / "still", labels=["a", "b"], dropout=0.0)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / "cpu-ddp-2.yaml"), str(ROOT / "recipes" / "finetune.py"),
           *_run_args(model, placed24, tmp_path / "two")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "effective batch 8 = 4 per process x 2 processes" in out.stdout
    one = main(hftl.load_config(None, _run_args(model, placed24, tmp_path / "one")))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # Losses: the same sums in another order (1e-7 seen). Weights: Adam moves each entry by about lr whatever its
    # gradient's size, so an entry whose gradient is at rounding level (1e-9) may move either way: a few hundred of
    # 100k entries differ by up to 1e-4 (lr 1e-3, 6 steps); all the others agree to 1e-5.
    assert_same_run(one, two, tmp_path / "one", tmp_path / "two", rtol=1e-5, atol=1e-6, weight_atol=1e-3)
    weights = [saved_weights(tmp_path / d) for d in ("one", "two")]
    apart = sum(int(((weights[0][k] - weights[1][k]).abs() > 1e-5).sum()) for k in weights[0])
    assert apart < 0.01 * sum(w.numel() for w in weights[0].values())
    assert two["data"]["skipped"] == one["data"]["skipped"]  # boxes the augmentation dropped: over both processes
    rows = [[json.loads(r) for r in (tmp_path / d / "predictions.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    assert [r["image_id"] for r in rows[1]] == [r["image_id"] for r in rows[0]]  # gathered in order, no repeats
    for a, b in zip(*rows, strict=True):
        np.testing.assert_allclose(sorted(b["predicted"]["scores"]), sorted(a["predicted"]["scores"]), atol=1e-3)
        np.testing.assert_allclose(sorted(b["predicted"]["boxes"]), sorted(a["predicted"]["boxes"]), atol=0.05)


def test_resume_after_sigkill_matches_uninterrupted_run(detr, tmp_path, placed24):
    """24 augmented train canvases in batches of 4: 6 steps per epoch, 12 in all; checkpoints at steps 4 and 8
    (train.checkpoint_every=4) and at the epoch ends 6 and 12. Killed at step 9, resumed from step 8 (mid-epoch 2) with
    train.resume=true: the same history, test mAP, weights and count of boxes the augmentation dropped as the run
    never killed (dropout on: the RNG states come back; the augmentation of epoch 2 is epoch 2's)."""
    from hftl.recipes.finetune import main

    args = lambda out: _run_args(detr, placed24, out, "train.batch_size=4", "train.checkpoint_every=4")  # noqa: E731
    reference = main(hftl.load_config(None, args(tmp_path / "reference")))
    assert reference["train"]["steps"] == 12
    killed = subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), *args(tmp_path / "killed")],
                            env={**os.environ, KILL_ENV: "step-9"}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "metrics.json").exists()
    assert last_checkpoint(tmp_path / "killed" / "checkpoints").name == "step-00000008"
    resumed = main(hftl.load_config(None, [*args(tmp_path / "killed"), "train.resume=true"]))
    assert_same_run(reference, resumed, tmp_path / "reference", tmp_path / "killed", rtol=1e-6, atol=1e-7)
    assert resumed["data"]["skipped"] == reference["data"]["skipped"]


HALVES = r"""
import json, sys
import torch
import torch.distributed as dist
from accelerate import PartialState

import hftl
from hftl.config import DataConfig
from hftl.data.detection import DetectionDataset, detection_collator, load_detection
from hftl.tasks.detection import load_detector

placed, out = json.loads(sys.argv[1]), {}
data = load_detection(DataConfig(name=placed["train"], splits=placed))
torch.manual_seed(0)  # the new class heads: the same on both processes, as hftl.set_seed makes them in a run
models = {kind: load_detector(path, ["0", "1", "2"], log_fn=lambda *a: None) for kind, path in json.loads(sys.argv[2])}
for kind, model in models.items():  # the whole batch, before any process group: the loss of one process
    ds = DetectionDataset(data.splits["train"], hftl.load_processor(dict(json.loads(sys.argv[2]))[kind]))
    batch = detection_collator([ds[i] for i in range(8)])
    loss = model(**batch).loss
    loss.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
    out[kind] = {"whole": float(loss.detach()), "grads": grads, "batch": batch}
state = PartialState(cpu=True)  # gloo: as hftl's runs on N processes
rank, n = state.process_index, state.num_processes
for kind, model in models.items():
    model.zero_grad()
    batch = out[kind].pop("batch")
    part = slice(rank * 4, (rank + 1) * 4)
    half = {"pixel_values": batch["pixel_values"][part], "pixel_mask": batch["pixel_mask"][part],
            "labels": batch["labels"][part]}
    loss = model(**half).loss
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    apart = []  # gradients that are zero but for rounding (attention key biases: softmax ignores them) pass by atol
    for (name, p), g in zip(model.named_parameters(), out[kind].pop("grads")):
        mean = torch.zeros_like(p) if p.grad is None else p.grad.clone()
        dist.all_reduce(mean)  # DDP's mean of gradients
        if float((mean / n - g).abs().max()) > 1e-5 * float(g.abs().max()) + 1e-9:  # float32 sums, reordered
            apart.append(name)
    out[kind].update(halves=float(total) / n, apart=apart)
if rank == 0:
    print("RESULT " + json.dumps(out))
"""


def test_loss_and_gradient_of_a_batch_split_over_two_processes_are_the_whole_batchs(tmp_path, placed24):
    """transformers' detection losses on N processes normalise by a box count N times too small (DETR, YOLOS,
    Conditional DETR) and DETR's and YOLOS's class loss by each process's own queries: hftl's ``ProcessCountFree``
    makes the mean of the halves' losses and gradients (what DDP takes) the whole batch's, for each family."""
    paths = [[kind, tiny_detector(tmp_path / kind, kind=kind)] for kind in ("detr", "yolos", "conditional_detr")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "halves.py"), json.dumps(placed24), json.dumps(paths)]
    (tmp_path / "halves.py").write_text(HALVES)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    got = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for kind, r in got.items():
        assert r["halves"] == pytest.approx(r["whole"], rel=1e-5), kind
        assert r["apart"] == [], kind
