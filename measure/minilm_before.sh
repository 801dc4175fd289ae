#!/bin/bash
# MiniLM run-directory sizes with main's code (before this branch), 200 training examples, 1 epoch.
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
while pgrep -f "measure/before.sh" >/dev/null; do sleep 5; done
OUT=measure/before-main; rm -rf $OUT; mkdir -p $OUT; uptime
for s in linear_probe lora; do
  /usr/bin/time -f "minilm $s %e s" /work/main/.venv/bin/hftl finetune --config recipes/configs/text/minilm-rt-$s.yaml data.max_train_samples=200 \
    train.epochs=1 output_dir=$OUT/minilm-$s eval.report=false train.report_to=none >$OUT/minilm-$s.log 2>&1
  echo "minilm $s rc=$?"; du -sh $OUT/minilm-$s $OUT/minilm-$s/* $OUT/minilm-$s/checkpoints/* | sed 's/^/  /'
done
uptime
