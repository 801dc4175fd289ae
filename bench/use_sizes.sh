#!/bin/bash
# Issue 15 before/after: --help wall time, a config error's time, run-directory sizes (tiny and MiniLM, 200 train examples).
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${1:?give the output folder, e.g. runs/use-sizes}
if [ -e "$OUT" ]; then echo "$OUT exists: give a new folder (nothing is deleted)"; exit 2; fi
mkdir -p "$OUT"
uptime
for i in 1 2 3; do /usr/bin/time -f "help %e s" .venv/bin/hftl --help >/dev/null; done
for i in 1 2; do /usr/bin/time -f "config-error %e s" .venv/bin/hftl finetune --config recipes/configs/text/minilm-rt-lora.yaml train.epoch=1; done
/usr/bin/time -f "version %e s" .venv/bin/hftl --version
.venv/bin/python -c "
from hftl.testing import tiny_text_model, tiny_text_csv
tiny_text_model('$OUT/bert'); tiny_text_csv('$OUT/data.csv', n=120)"
for s in linear_probe lora full; do
  .venv/bin/hftl finetune --config recipes/configs/text/minilm-rt-$s.yaml model.name=$OUT/bert data.name=$OUT/data.csv \
    train.epochs=2 train.batch_size=8 output_dir=$OUT/tiny-$s eval.report=false train.report_to=none >$OUT/tiny-$s.log 2>&1
  echo "tiny $s rc=$?"; du -sh $OUT/tiny-$s $OUT/tiny-$s/* | sed 's/^/  /'
done
for s in linear_probe lora; do
  /usr/bin/time -f "minilm $s %e s" .venv/bin/hftl finetune --config recipes/configs/text/minilm-rt-$s.yaml data.max_train_samples=200 \
    train.epochs=1 output_dir=$OUT/minilm-$s eval.report=false train.report_to=none >$OUT/minilm-$s.log 2>&1
  echo "minilm $s rc=$?"; du -sh $OUT/minilm-$s $OUT/minilm-$s/* $OUT/minilm-$s/checkpoints/* | sed 's/^/  /'
done
uptime
