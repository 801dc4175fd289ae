"""Disentanglement: split a frozen backbone's features into a part per factor, and measure what each part predicts.

    python scripts/espeak_words.py ...   # or bench/disentangle_speech.py, which makes its own words x voices set
    python recipes/disentangle.py --config recipes/configs/speech/whisper-words-voices-disentangle.yaml train.seed=0

The first factor is ``data.label_column`` (e.g. the spoken word), the second ``disentangle.factor_column`` (e.g. the
voice). The backbone's pooled features are computed once (``hftl.features``' cache, as ``linear_probe``'s); on them
``hftl.disentangle`` trains the split representation (two projections z_a, z_b, a head each for its own factor, an
adversary each for the other factor) and its comparisons, and fresh logistic-regression probes measure each part
for each factor on the test split, beside chance (hftl/disentangle.py says which arms and why).
Writes ``output_dir/`` (the run-directory rules of hftl/rundir.py): ``config.yaml``, ``metrics.json`` (numbers
only: ``chance``, ``raw``, ``plain``, ``adversarial``, ``erasure``, ``knn`` (the same tables read by 5-nearest-
neighbour probes), ``train``, ``features``), ``factors.json`` (the
columns and class names) and ``split_models.safetensors`` (each arm's projections, heads and adversaries as
``<arm>.<name>``, the erasers ``erase_a.*``, ``erase_b.*``, and ``standardize.mean``/``.std``: each reads the
backbone's pooled features standardized by these).
"""

from __future__ import annotations

import json
import sys
import time

import hftl
from hftl.config import Config, save_config
from hftl.data.sources import source_files
from hftl.disentangle import check_factors, disentangle, factor_features
from hftl.rundir import claim
from hftl.tasks import get_task


def main(cfg: Config) -> dict:
    accelerator = hftl.make_accelerator(cfg.train)
    run = claim(cfg, accelerator)  # before any model or data: output_dir is this run's
    try:
        return _main(cfg, accelerator, run)
    finally:
        run.release()


def _main(cfg: Config, accelerator, run) -> dict:
    d = cfg.disentangle
    hftl.set_seed(cfg.train.seed)
    task = get_task("classification")
    splits = hftl.load_splits(cfg.data, task)
    check_factors(splits, cfg.data.label_column, d.factor_column, source_files(cfg.data))  # before the model loads
    processor = hftl.load_processor(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    model = task.build_model(cfg, task.label_names(splits, cfg.data), splits)
    start = time.perf_counter()
    data = factor_features(model, splits, processor, task.collator(processor), d.factor_column, accelerator,
                           max_length=cfg.model.max_length, data_cfg=cfg.data,
                           batch_size=hftl.eval_batch(cfg.train, accelerator))
    feature_seconds = time.perf_counter() - start
    result = disentangle(data, dim=d.dim, adversary_weight=d.adversary_weight, epochs=d.epochs, lr=d.lr,
                         batch_size=d.batch_size, adversary_steps=d.adversary_steps, adversary_lr=d.adversary_lr,
                         mode=d.adversary, probe_c=d.probe_c, seed=cfg.train.seed)
    models = result.pop("models")
    metrics = {**result, "features": {"seconds": feature_seconds, "width": int(data.features["train"].shape[1]),
                                      **{f"{s}_examples": len(x) for s, x in data.features.items()}},
               "seconds": time.perf_counter() - start}
    table = metrics["adversarial"]
    accelerator.print(f"chance {metrics['chance']}; raw {metrics['raw']}; adversarial z_a {table['z_a']}, z_b "
                      f"{table['z_b']}; erasure {metrics['erasure']}")
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        with run.final_save() as stage:  # moved into place whole, then marked complete
            save_config(cfg, stage / "config.yaml")
            (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
            factors = {"factor_a": {"column": cfg.data.label_column, "names": data.names_a},
                       "factor_b": {"column": d.factor_column, "names": data.names_b}}
            (stage / "factors.json").write_text(json.dumps(factors, indent=2))
            tensors = {f"{arm}.{k}": v.contiguous() for arm, m in models.items() for k, v in m.state_dict().items()}
            save_file(tensors, str(stage / "split_models.safetensors"))
        accelerator.print(f"disentanglement written to {cfg.output_dir}/metrics.json")
    return metrics


if __name__ == "__main__":
    main(hftl.parse_args(sys.argv[1:]))
