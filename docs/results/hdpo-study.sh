#!/usr/bin/env bash
# The HDPO study of docs/results/hdpo-study.md, on the default corpus. Run it in a fresh clone, with the project's
# venv on PATH (`make venv && export PATH=$PWD/.venv/bin:$PATH`):
#
#   docs/results/hdpo-study.sh val     # the val grid: 6 configurations x 2 seeds, then `polyalign compare`
#   docs/results/hdpo-study.sh test    # the configuration chosen on val, on test with 3 seeds
#
# Each phase queues DVC experiments and runs them two at a time (each stage then takes one of the two cores).
# The configuration chosen on val is set in CHOSEN below *after* the val phase, and only then is test run.
set -euo pipefail

phase=${1:?usage: hdpo-study.sh val|test}
export DVC_NO_ANALYTICS=1 WANDB_MODE=offline HF_HUB_OFFLINE=1

# what every run of the study evaluates: Bucket-Aware SFT, its best-of-k distillation, DPO and HDPO from it
METHODS=(-S 'evaluate.methods=[sft@bucket,sft@rs,hdpo@dpo,hdpo@hdpo]'
         -S 'evaluate.compare=[[hdpo@hdpo,sft@bucket],[hdpo@hdpo,hdpo@dpo],[hdpo@hdpo,sft@rs],[sft@rs,sft@bucket]]')

# the grid: one reference (on-policy pairs, selection by val naturalness) and one change per axis
declare -A GRID=(
  [human]="-S pairs.chosen=human -S hdpo.select=val_bng"
  [onpolicy]="-S pairs.chosen=nearest_sample -S hdpo.select=val_bng"
  [mixed]="-S pairs.chosen=mixed -S hdpo.select=val_bng"
  [rounds3]="-S pairs.chosen=nearest_sample -S hdpo.select=val_bng -S hdpo.rounds=3 -S hdpo.prompts_per_round=512"
  [beta02]="-S pairs.chosen=nearest_sample -S hdpo.select=val_bng -S hdpo.beta=0.2"
  [alpha1]="-S pairs.chosen=nearest_sample -S hdpo.select=val_bng -S hdpo.variants.hdpo.alpha=1.0"
)
CHOSEN=${CHOSEN:-onpolicy}

case $phase in
  val)
    for name in human onpolicy mixed rounds3 beta02 alpha1; do
      for seed in 1 2; do
        # shellcheck disable=SC2086  # the grid's settings are words on purpose
        dvc exp run --queue -n "val-$name-s$seed" -S seed=$seed -S evaluate.split=val "${METHODS[@]}" ${GRID[$name]}
      done
    done
    dvc queue start -j 2
    ;;
  test)
    for seed in 1 2 3; do
      # shellcheck disable=SC2086
      dvc exp run --queue -n "test-$CHOSEN-s$seed" -S seed=$seed -S evaluate.split=test "${METHODS[@]}" ${GRID[$CHOSEN]}
    done
    dvc queue start -j 2
    ;;
  *) echo "usage: hdpo-study.sh val|test" >&2; exit 2 ;;
esac
echo "queued; watch with 'dvc queue status', then run: polyalign compare --split $phase"
