#!/usr/bin/env bash
# Evaluate a model on a cluster without a shared launcher: a Slurm job array of N shards, then one merge job that
# runs once every shard has finished. The shards share the results directory (and its cache) on one filesystem.
#
#   examples/slurm/eval-shards.sh MODEL NAME N [bench eval options...]
#   examples/slurm/eval-shards.sh qwen2.5-coder-0.5b-instruct seed 8 --suite math,code --data-dir /data/mirror
#
# A shard that failed is re-run alone (`bench eval ... --shard I/N` resumes it); `bench merge` refuses a set with
# a shard missing, twice, or of another configuration, naming it.
set -euo pipefail
bench=${BENCH:-bench}
model=$1 name=$2 shards=$3
shift 3
options=$(printf ' %q' "$@")
array=$(sbatch --parsable --array="0-$((shards - 1))" --job-name="$name-eval" --cpus-per-task=8 --mem=24G \
    --wrap="$bench eval $model --name $name --shard \$SLURM_ARRAY_TASK_ID/$shards $options")
parts=$(for i in $(seq 0 $((shards - 1))); do printf ' %s.shard-%s-of-%s' "$name" "$i" "$shards"; done)
results=$(printf '%s\n' "$@" | grep -A1 -x -- --results-dir | tail -n +2 | head -1)
sbatch --dependency="afterok:$array" --job-name="$name-merge" --cpus-per-task=1 --mem=4G \
    --wrap="$bench merge$parts --name $name${results:+ --results-dir $results}"
