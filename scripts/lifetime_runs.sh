#!/usr/bin/env bash
# The runs behind docs/lifetime_rewards.md (issue 12). Each run is its own command, so that a lane of
# a shared machine can take them one at a time through a queue, e.g. RUNNER="srun --cpus-per-task=1" bash scripts/lifetime_runs.sh
# A run that already completed is skipped. SCALE=quick|full sets the presets' length; SEEDS the seeds;
# ENVS the environments; BASELINES=0 skips the baselines, ABLATIONS=0 the ablations (so that a lane
# can take a few runs per job: ENVS=key_box SEEDS="2 3 4" BASELINES=0 ABLATIONS=0 ...); ARMS the ablation arms.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNNER=${RUNNER:-}
SCALE=${SCALE:-quick}
SEEDS=${SEEDS:-"0 1 2 3 4"}
ENVS=${ENVS-"random_abc empty_rooms key_box nonstationary_abc"}  # ENVS="" runs no environment (only the ablations)
ROOT=${ROOT:-outputs/lifetime}

run() {  # run <dir> <overrides...>
    local dir=$1; shift
    if [ -f "$dir/summary.json" ] && grep -q '"status": "completed"' "$dir/summary.json"; then return; fi
    $RUNNER metarun "$@" threads=1 progress=false "hydra.run.dir=$dir"
}

for env in $ENVS; do
    if [ "${BASELINES:-1}" = 1 ]; then
        for reward in extrinsic_ep extrinsic_life count oracle; do  # nothing to meta-train: evaluated once
            run "$ROOT/$env/$reward" "+experiment=lifetime_$env" "algo.reward=$reward" iterations=0 eval_every=1
        done
    fi
    for seed in $SEEDS; do
        run "$ROOT/$env/learned/seed$seed" "+experiment=lifetime_$env" "scale=$SCALE" "seed=$seed"
    done
done
if [ "${ABLATIONS:-1}" = 1 ]; then  # the full arm is the random_abc learned runs above
    for arm in ${ARMS:-feedforward episodic no_value}; do
        for seed in $SEEDS; do
            run "$ROOT/ablations/$arm/seed$seed" +experiment=lifetime_ablations "ablation=$arm" "scale=$SCALE" "seed=$seed"
        done
    done
fi
