#!/usr/bin/env bash
# GPU smoke test: the same short jobs with device=cuda and device=cpu, seconds per iteration side by
# side, plus the GPU benchmark and a GPU checkpoint evaluated on the CPU. Run it unchanged on a
# machine with a CUDA GPU (this project's CI machines have none):
#
#     bash scripts/gpu_smoke.sh                # Omniglot from $METARUN_DATA or ../shared/data
#     DATA=/path/holding/omniglot-py bash scripts/gpu_smoke.sh
#
# Writes its runs under outputs/gpu_smoke/<time>/ and prints a table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_smoke: no CUDA device visible to torch')"
OUT=${OUT:-outputs/gpu_smoke/$(date +%Y-%m-%d_%H-%M-%S)}
DATA=${DATA:-${METARUN_DATA:-../shared/data}}
mkdir -p "$OUT"
echo "gpu_smoke: writing to $OUT"

jobs=(
  "default|iterations=300 eval_every=300"
  "omniglot|+experiment=omniglot_shared_5w1s task.root=$DATA iterations=20 eval_every=20 eval_tasks=50"
  "navigation|+experiment=maml_rl_navigation iterations=3 eval_every=3 eval_tasks=8"
)
# LIRPG with its compiled meta objective (the scale=full path) on the GPU: needs MuJoCo (pip install -e ".[rl]").
if python -c "import mujoco" 2>/dev/null; then
  jobs+=("lirpg|+experiment=lirpg_hopper_delayed scale=quick algo.compile=true iterations=4 eval_every=4 eval_tasks=3")
else
  echo "gpu_smoke: MuJoCo not installed, the compiled LIRPG job is skipped (pip install -e \".[rl]\")"
fi
names=()
for job in "${jobs[@]}"; do
  name=${job%%|*}; args=${job#*|}
  names+=("$name")
  for device in cuda cpu; do
    echo "== $name on $device"
    # shellcheck disable=SC2086
    metarun $args device=$device progress=false hydra.run.dir="$OUT/$name-$device"
  done
done

echo "== a checkpoint written on the GPU, meta-tested on the CPU"
metarun mode=eval run_dir="$OUT/default-cuda" device=cpu hydra.run.dir="$OUT/default-cuda-eval-cpu"

echo "== device-clean tests and the step benchmark on the GPU"
python -m pytest -q tests/test_device.py
python scripts/bench_step.py --device cuda --repeats 5

python - "$OUT" "${names[@]}" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"\n{'job':<12}{'cuda s/it':>12}{'cpu s/it':>12}{'cpu/cuda':>10}   test figure cuda | cpu")
for name in sys.argv[2:]:
    s = {d: json.loads((out / f"{name}-{d}" / "summary.json").read_text()) for d in ("cuda", "cpu")}
    per_it = {d: s[d]["time"] / max(1, s[d]["iteration"]) for d in s}
    key = next(k for k in ("test/accuracy", "test/return", "test/loss") if k in s["cpu"])
    print(f"{name:<12}{per_it['cuda']:>12.4f}{per_it['cpu']:>12.4f}{per_it['cpu'] / per_it['cuda']:>9.1f}x   "
          f"{key} {s['cuda'][key]:.4g} | {s['cpu'][key]:.4g}")
e = json.loads((out / "default-cuda-eval-cpu" / "summary.json").read_text())
t = json.loads((out / "default-cuda" / "summary.json").read_text())
print(f"GPU checkpoint evaluated on the CPU: test/loss {e['test/loss']:.5g} (on the GPU at the end of training: {t['test/loss']:.5g})")
PY
