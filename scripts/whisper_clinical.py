"""Domain adaptation of Whisper tiny.en to clinical dictation (synthetic espeak-ng speech): WER on unseen sentences
zero-shot and after adaptation per strategy, by known and by new voices, with trainable parameters and wall time.

    python scripts/clinical_speech.py data/clinical
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/whisper_clinical.py --seeds 0 1 2 --out runs/whisper-clinical

Each arm is the recipe (``recipes/finetune.py``) with ``recipes/configs/speech/whisper-clinical-<arm>.yaml`` and
``train.seed``; the zero-shot row is the pretrained model scored by the same evaluation (``generate``, greedy; WER and
CER by jiwer on Whisper's English normalisation). Test clips are split by ``voice_seen`` (a train voice or a new one)
from ``data/clinical/test.csv``; every test sentence is unseen. Writes ``<out>/results.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = ["freeze_n", "lora", "full"]  # freeze_n: the whole encoder frozen (strategy.freeze_layers=4)


def groups(rows: list[dict], test_csv: Path) -> dict:
    """WER and CER over all test clips, over those by train voices and over those by new voices."""
    from hftl.tasks.speech_text import error_rates

    seen = {str((test_csv.parent / r["audio"]).resolve()): r["voice_seen"] == "1"
            for r in csv.DictReader(open(test_csv))}
    out = {}
    kinds = (("all", lambda f: True), ("seen_voices", lambda f: seen[f]), ("new_voices", lambda f: not seen[f]))
    for name, keep in kinds:
        part = [r for r in rows if keep(str(Path(r["file"]).resolve()))]
        out[name] = error_rates([r["predicted"] for r in part], [r["label"] for r in part])
    return out


def zero_shot(config: Path) -> tuple[dict, float, int]:
    """The pretrained model on test, through the task's own evaluation: predictions rows, seconds, parameters."""
    import hftl
    from hftl.config import load_config
    from hftl.data import encode
    from hftl.reporting import evaluate_with_predictions
    from hftl.tasks import get_task

    start = time.perf_counter()
    cfg = load_config(str(config), ["output_dir=runs/unused"])
    task = get_task(cfg.task.name)
    splits = hftl.load_splits(cfg.data, task)
    processor = task.processor(cfg.model.name, cfg.model.revision, splits=splits, cfg=cfg)
    model = task.build_model(cfg, [], splits)
    encoded, _ = encode(splits, processor, cfg.data)
    accelerator = hftl.make_accelerator(cfg.train)
    loader = hftl.make_loader(encoded["test"], cfg.train.eval_batch_size, task.collator(processor), shuffle=False,
                              num_workers=0)
    model, loader = accelerator.prepare(model, loader)
    _, predictions = evaluate_with_predictions(model, loader, accelerator, cfg.eval.metrics)
    files = splits["test"]["audio"][:]
    rows = [{**r, "file": files[i]} for i, r in enumerate(predictions.rows)]
    return rows, time.perf_counter() - start, sum(p.numel() for p in model.parameters())


def run_arm(arm: str, seed: int, out: Path) -> dict:
    from hftl.config import load_config
    from recipes.finetune import main

    run = out / f"{arm}-seed{seed}"
    cfg = load_config(str(ROOT / "recipes/configs/speech" / f"whisper-clinical-{arm}.yaml"),
                      [f"train.seed={seed}", f"output_dir={run}", "overwrite=true"])
    start = time.perf_counter()
    metrics = main(cfg)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in open(run / "predictions.jsonl")]
    return {"arm": arm, "seed": seed, "seconds": seconds, "trainable": metrics["train"]["trainable_params"],
            "total": metrics["train"]["total_params"], "test": metrics["test"], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=ARMS)
    parser.add_argument("--out", default="runs/whisper-clinical")
    args = parser.parse_args()
    import sys

    import torch

    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    out, test_csv = Path(args.out), ROOT / "data/clinical/test.csv"
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": []}
    if "zero_shot" not in results:
        rows, seconds, total = zero_shot(ROOT / "recipes/configs/speech/whisper-clinical-full.yaml")
        results["zero_shot"] = {"seconds": seconds, "total": total, "wer": groups(rows, test_csv), "rows": rows}
        results_path.write_text(json.dumps(results, indent=1))
        print("zero-shot", results["zero_shot"]["wer"], flush=True)
    for seed in args.seeds:
        for arm in args.arms:
            if any(r["arm"] == arm and r["seed"] == seed for r in results["runs"]):
                continue
            result = run_arm(arm, seed, out)
            result["wer"] = groups(result["rows"], test_csv)
            results["runs"].append(result)
            results_path.write_text(json.dumps(results, indent=1))
            print(arm, seed, result["wer"], f"{result['seconds']:.0f} s", flush=True)
    print(table(results))


def table(results: dict) -> str:
    import statistics

    z = results["zero_shot"]
    lines = ["| arm | trainable params | WER all | WER train voices | WER new voices | CER all | wall s (per seed) |",
             "| --- | --- | --- | --- | --- | --- | --- |",
             f"| zero-shot | 0 | {z['wer']['all']['wer']:.3f} | {z['wer']['seen_voices']['wer']:.3f} | "
             f"{z['wer']['new_voices']['wer']:.3f} | {z['wer']['all']['cer']:.3f} | {z['seconds']:.0f} |"]
    for arm in dict.fromkeys(r["arm"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["arm"] == arm]

        def cell(group: str, key: str = "wer", runs: list = runs) -> str:
            values = [r["wer"][group][key] for r in runs]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.3f}{spread}"

        seeds = ",".join(str(r["seed"]) for r in runs)
        lines.append(f"| {arm} (seeds {seeds}) | {runs[0]['trainable']:,} of {runs[0]['total']:,} | {cell('all')} | "
                     f"{cell('seen_voices')} | {cell('new_voices')} | {cell('all', 'cer')} | "
                     f"{statistics.mean(r['seconds'] for r in runs):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
