#!/bin/bash
# Sleep mode on one GPU (issue 19 item 6), from the repository root once the GPU kit is unpacked
# (tools/gpu_kit_README.md). Logs go to $OUT (default: gpu-out/).
#   tools/sleep_check.sh bench                  python -m rlplat.bench.sleep: the engine's memory, what levels 1 and 2
#                                               free, wake and reload times, same greedy tokens after each cycle
#   tools/sleep_check.sh train [LEVEL] [STEPS]  configs/gpu_sleep.yaml at rollout.sleep_level LEVEL (default 2; 0 is
#                                               the same run without sleep mode) for STEPS steps (default 30), then
#                                               its metrics from MLflow (one JSON line last)
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 TOKENIZERS_PARALLELISM=false
model=models/sleep05b
[ -f $model/config.json ] || python3 -c "from rlplat.bench.sleep import QWEN25_05B_DECODER as shape
from rlplat.models import write_tiny_model; write_tiny_model('$model', shape=shape)" 2>&1 | grep -v Writing

summary() {  # the run's metrics: last value, and over steps 2.. (step 1 warms up) the median, min and max
  python3 - "$1" <<'PY'
import json, statistics, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
run = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time DESC"])[0]
keys = ["sync/checksum_match", "sync/max_logp_diff", "time/step_s", "time/rollout_s", "time/train_s",
        "time/weight_sync_s", "sleep/freed_gib", "time/sleep_s", "time/wake_s", "time/wake_weights_s",
        "time/wake_kv_cache_s", "rollout/reward_mean", "loss/policy"]
out = {"status": run.info.status, "placement": run.data.tags.get("rlplat.placement")}
for k in keys:
    hist = sorted(client.get_metric_history(run.info.run_id, k), key=lambda h: h.step)
    if not hist:
        continue
    vals = [h.value for h in hist if h.step >= 2] or [h.value for h in hist]
    out[k] = {"last": hist[-1].value, "median": statistics.median(vals), "min": min(vals), "max": max(vals),
              "n": len(hist)}
    print(f"{k}: last {hist[-1].value:.6g}  median {out[k]['median']:.6g}  min {min(vals):.6g}  max {max(vals):.6g}"
          f"  n {len(hist)}")
print(json.dumps(out))
PY
}

case ${1:-bench} in
bench)
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm --format=csv
  python3 -m rlplat.bench.sleep "${@:2}" > "$out/bench_sleep.log" 2>&1
  echo "exit $?"; grep -v -e "^INFO" -e "^(" "$out/bench_sleep.log" | tail -12
  ;;
train)
  level=${2:-2}; steps=${3:-30}; name=gpu-sleep-l$level
  export VLLM_LOGGING_LEVEL=INFO  # into the engine log (outputs/NAME/logs/engine_0.log), not the console
  rm -rf outputs/$name
  python3 -m rlplat train configs/gpu_sleep.yaml rollout.sleep_level=$level experiment.num_steps=$steps \
    experiment.name=$name experiment.output_dir=outputs/$name cluster.address=local cluster.call_timeout_s=120 --no-progress \
    > "$out/$name.log" 2>&1
  echo "exit $?"; tail -4 "$out/$name.log"
  # vLLM's own account: the engine's model and KV cache sizes, and what each sleep freed (first two and last)
  grep -hE "Model loading took|Available KV cache memory|Sleep mode freed|to fall asleep|to wake up" \
    outputs/$name/logs/engine_0.log 2>/dev/null | sed -E 's/^.*\] //' | awk 'NR<=6 {print; next} {last=$0} END {print last}'
  summary outputs/$name
  ;;
*) echo "usage: tools/sleep_check.sh bench|train [LEVEL] [STEPS]" >&2; exit 2 ;;
esac
