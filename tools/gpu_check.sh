#!/bin/bash
# GPU verification of placement and weight sync on a 2-GPU machine (the device tool's nvidia-h100-x2), run from
# the repository root after the GPU kit is unpacked (tools/gpu_kit_README.md). Logs go to $OUT (default: gpu-out/).
#   tools/gpu_check.sh train    separate GPUs + NCCL, colocated + CUDA IPC (+ learner MFU bench on the other GPU),
#                               and too many GPUs asked for
#   tools/gpu_check.sh bench    rlplat bench weight_sync (bytes / broadcast / ipc) and rlplat bench async
#   tools/gpu_check.sh async [K ...]   rlplat bench async on configs/gpu_async.yaml (a ~1.2B model, 256-token
#                               responses), synchronous and at each staleness K (default 1)
#   tools/gpu_check.sh learner  rlplat bench learner (one GPU): SDPA vs FlexAttention, and a kernel profile
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 TOKENIZERS_PARALLELISM=false
common=(cluster.address=local tracking.system_metrics_interval_s=5 --no-progress)
[ -d models/tiny ] || python3 -m rlplat model tiny models/tiny

summary() {  # the MLflow metrics that say whether the engines hold the learner's weights
  python3 - "$1" <<'EOF'
import sys
from mlflow.tracking import MlflowClient
uri = f"sqlite:///{sys.argv[1]}/mlflow.db"
client = MlflowClient(uri)
runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time DESC"])
run = runs[0]
m = run.data.metrics
keys = ["sync/checksum_match", "sync/max_logp_diff", "train/logp_old_vs_behaviour", "time/weight_sync_s",
        "time/step_s", "rollout/reward_mean", "eval/exact_match", "eval/digit_accuracy"]
print(run.data.tags.get("rlplat.placement"))
for k in keys:
    hist = client.get_metric_history(run.info.run_id, k)
    if hist:
        vals = [h.value for h in hist]
        print(f"{k}: last {vals[-1]:.6g}  first {vals[0]:.6g}  max {max(vals):.6g}  n {len(vals)}")
EOF
}

case ${1:-train} in
train)
  nvidia-smi -L
  python3 -m rlplat train configs/gpu_2.yaml --dry-run cluster.address=local | tail -4
  echo "== separate GPUs, NCCL broadcast"
  python3 -m rlplat train configs/gpu_2.yaml experiment.num_steps=30 experiment.name=gpu-separate \
    experiment.output_dir=outputs/gpu-separate "${common[@]}" >"$out/separate.log" 2>&1
  echo "exit $?"; tail -5 "$out/separate.log"; summary outputs/gpu-separate
  echo "== colocated on GPU 0, CUDA IPC (meanwhile on GPU 1: the learner MFU bench, flash-only attention vs default)"
  CUDA_VISIBLE_DEVICES=1 python3 -m rlplat.bench.learner --configs compile_fused@32768,compile_fused_flash@32768 \
    --time-limit 300 >"$out/learner.log" 2>&1 &
  mfu=$!
  CUDA_VISIBLE_DEVICES=0 python3 -m rlplat train configs/gpu_2.yaml placement.colocate=true \
    rollout.gpu_memory_utilization=0.3 rollout.enforce_eager=true experiment.num_steps=30 \
    experiment.name=gpu-colocated experiment.output_dir=outputs/gpu-colocated "${common[@]}" >"$out/colocated.log" 2>&1
  echo "exit $?"; tail -5 "$out/colocated.log"; summary outputs/gpu-colocated
  wait $mfu; tail -8 "$out/learner.log"
  echo "== 2 engines + learner = 3 GPUs asked of a 2-GPU machine (expect exit 2 with the numbers)"
  python3 -m rlplat train configs/gpu_2.yaml rollout.num_workers=2 experiment.output_dir=outputs/gpu-toomany \
    "${common[@]}" 2>&1 | tail -2
  ;;
bench)
  python3 -m rlplat bench weight_sync --spec configs/gpu_2.yaml --modes bytes broadcast ipc \
    --hidden-size 1024 --num-layers 24 --num-heads 16 --intermediate-size 4096 rollout.enforce_eager=true 2>&1 | tee "$out/weight_sync.log" | tail -12
  python3 -m rlplat bench async --spec configs/gpu_2.yaml --steps 30 cluster.address=local \
    rollout.enforce_eager=true tracking.system_metrics_interval_s=0 --staleness 1 2>&1 | tee "$out/async.log" | tail -10
  ;;
async)
  shift
  [ -d models/medium ] || python3 -m rlplat model tiny models/medium --hidden-size 2048 --num-layers 24 \
    --num-heads 16 --intermediate-size 5632 --context-length 512
  python3 -m rlplat bench async --spec ${SPEC:-configs/gpu_async.yaml} --steps ${STEPS:-12} cluster.address=local \
    tracking.system_metrics_interval_s=0 --staleness "${@:-1}" 2>&1 | tee "$out/async_medium.log" \
    | grep -v -E "WARNING|INFO|it/s]" | tail -30
  ;;
learner)
  CUDA_VISIBLE_DEVICES=0 python3 -m rlplat.bench.learner --configs "${CONFIGS:-compile_fused@32768,compile_fused_flex@32768}" \
    --profile "${PROFILE:-compile_fused_flex@32768}" --time-limit 420 2>&1 | tee "$out/learner.log" \
    | grep -v -E "Warning|warn" | tail -70
  ;;
esac
