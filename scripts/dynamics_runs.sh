#!/usr/bin/env bash
# Short real CIFAR-10 trainings with learning dynamics recorded (--dynamics), then the figures:
#   a searched cell (results/search_mini/darts_arch_lr2e-2) with its mixed rules and with each
#   single rule, and ResNet-20 with each rule. Two jobs at a time, one thread each; a finished
#   run (results.json present) is skipped, a killed one resumes. Writes results/analyses/.
#
#   BIONAS_DATA=.../cifar10 bash scripts/dynamics_runs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bionas=${BIONAS:-.venv/bin/bionas}
runs=${RUNS:-results/analyses/recorded}
genotype=${GENOTYPE:-results/search_mini/darts_arch_lr2e-2/genotype.json}
common=(--preset short --set epochs=${EPOCHS:-4} --set test_per_class=200 --set dynamics_every=20 --no-progress)
mkdir -p "$runs"

job() {  # name, then the arguments of bionas train
  local name=$1; shift
  local out="$runs/$name"
  if [[ -f "$out/results.json" ]]; then echo "done: $name"; return; fi
  local resume=(); [[ -f "$out/checkpoint.pt" ]] && resume=(--resume)
  OMP_NUM_THREADS=1 "$bionas" train "$@" "${common[@]}" --out "$out" "${resume[@]}" > "$runs/$name.log" 2>&1 \
    && echo "finished: $name" || echo "FAILED: $name (see $runs/$name.log)"
}

jobs_list=(
  "cell_mixed|--genotype $genotype --dynamics"
  "cell_mixed_unrecorded|--genotype $genotype"
)
for rule in bp fa usf brsf frsf; do
  jobs_list+=("cell_$rule|--genotype $genotype --rule $rule --dynamics")
  jobs_list+=("resnet20_$rule|--model resnet20 --rule $rule --dynamics")
done
running=0
for entry in "${jobs_list[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  # shellcheck disable=SC2086
  job "$name" $args &
  running=$((running + 1))
  if (( running == ${PARALLEL:-2} )); then wait -n; running=$((running - 1)); fi
done
wait
"$bionas" analyze "$runs"/cell_mixed "$runs"/cell_{bp,fa,usf,brsf,frsf} --out results/analyses/cell \
  --labels mixed bp fa usf brsf frsf
"$bionas" analyze "$runs"/resnet20_{bp,fa,usf,brsf,frsf} --out results/analyses/resnet20 --labels bp fa usf brsf frsf
