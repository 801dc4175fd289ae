#!/usr/bin/env bash
# The README's "Tasks" figures: each task on real packaged data with MiniLM, linear_probe / lora / full, then class
# weights and the balanced sampler against none on a 90/10 Rotten Tomatoes train split over 3 seeds.
# One thread (OMP_NUM_THREADS=1), one run after another; each run's metrics.json under runs/tasks/, the wall time
# and the machine's load (uptime) of each run in runs/tasks/times.tsv. Then: python bench/tasks_summary.py
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
HFTL=${HFTL:-.venv/bin/hftl}
OUT=runs/tasks
mkdir -p "$OUT"
python=${PYTHON:-.venv/bin/python}
[ -f data/tasks/wnut16.conll ] || $python bench/task_data.py
LP="strategy.name=linear_probe train.lr=0.01 train.epochs=20 model.head_dropout=0.0"
FULL="strategy.name=full train.lr=5e-5"
run() {  # name config overrides...
  local name=$1 config=$2; shift 2
  local start=$(date +%s)
  if [ -f "$OUT/$name/metrics.json" ]; then echo "skip $name"; return; fi
  $HFTL finetune --config "recipes/configs/text/$config.yaml" "$@" "output_dir=$OUT/$name" overwrite=true \
    > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$(uptime | sed 's/.*average: //')" \
    | tee -a "$OUT/times.tsv"
}
# Cut for the 2-core shared machine (see the README's Tasks section): lora 3 epochs on General Inquirer, 1 epoch
# elsewhere; full 1 epoch; WNUT-16 3 epochs for lora and linear_probe, 1 for full. (On 2026-11-30 the WNUT-16 runs
# were started beside the Rotten Tomatoes ones, and its full and linear_probe runs beside each other, to end in time.)
run gi-multi_label-linear_probe minilm-gi-multi_label-lora $LP
run gi-multi_label-lora minilm-gi-multi_label-lora
run gi-multi_label-full minilm-gi-multi_label-lora $FULL train.epochs=1
for task in whissell-regression roget-pairs; do
  run "$task-linear_probe" "minilm-$task" $LP
  run "$task-lora" "minilm-$task" train.epochs=1
  run "$task-full" "minilm-$task" $FULL train.epochs=1
done
for seed in 0 1 2; do
  run "rt-skewed-none-$seed" minilm-rt-skewed-linear_probe "train.seed=$seed"
  run "rt-skewed-weights-$seed" minilm-rt-skewed-linear_probe "train.seed=$seed" train.class_weights=balanced
  run "rt-skewed-sampler-$seed" minilm-rt-skewed-linear_probe "train.seed=$seed" train.balanced_sampler=true
done
run wnut16-tokens-lora minilm-wnut16-tokens-lora train.epochs=3
run wnut16-tokens-full minilm-wnut16-tokens-lora $FULL train.epochs=1
run wnut16-tokens-linear_probe minilm-wnut16-tokens-lora strategy.name=linear_probe train.lr=0.01 train.epochs=3
echo done
