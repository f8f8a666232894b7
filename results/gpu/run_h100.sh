#!/usr/bin/env bash
# Every GPU measurement kept in results/gpu/, in one run on one GPU machine (the device
# machine lent to a session: one H100 SXM, no network). From the repository root:
#     bash results/gpu/run_h100.sh OUTDIR
# Each step is independent: a failing one is logged and the others still run.
set -u
D=${1:?usage: run_h100.sh OUTDIR}
mkdir -p "$D"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
LOG=$D/run.log
step() {  # step NAME TIMEOUT_S CMD...: run, log, keep going
  local name=$1 limit=$2; shift 2
  # STEPS=a,b runs only those steps (e.g. to redo one that failed)
  [ -n "${STEPS:-}" ] && [[ ",$STEPS," != *",$name,"* ]] && return 0
  echo "=== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$D/$name.out" 2>&1
  local rc=$?
  tail -n 4 "$D/$name.out" | tee -a "$LOG"
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
  # ARCHIVE=path.tar.gz keeps a copy of everything so far, in case a later step hangs
  [ -n "${ARCHIVE:-}" ] && tar czf "$ARCHIVE" -C "$D" . 2>/dev/null
  return 0
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit \
    --format=csv; python3 -c 'import torch; print("torch", torch.__version__, "cuda",
torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "nccl", torch.cuda.nccl.version(),
torch.cuda.get_device_name())'; } >"$D/env.txt" 2>&1
cat "$D/env.txt" | tee -a "$LOG"
# megatron-core is not on the GPU image: MEGATRON_WHEELS=dir installs its wheel first
[ -n "${MEGATRON_WHEELS:-}" ] && python3 -m pip install -q --no-index --no-deps --target \
  /tmp/mcore "$MEGATRON_WHEELS"/megatron_core-*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/mcore
step pytest_gpu 300 python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider
step nccl 240 torchrun --standalone --nproc-per-node=1 -m bench all -b 8 -e 1G -f 4 -n 20 -w 5 \
  --backend nccl -d float32,bfloat16 -o "$D/nccl_h100_1gpu.jsonl"
step gemm 300 python3 -m bench.gemm --precision bf16,fp8 -o "$D/gemm_h100.csv" \
  --layer-output "$D/layer_h100_s2048.csv"
step gemm_moe 120 python3 -m bench.gemm --precision bf16,fp8 --hidden "" --tp "" --tokens "" \
  --shapes 128x4096x3072,256x4096x3072,512x4096x3072,1024x4096x3072,2048x4096x3072,4096x4096x3072,8192x4096x3072,128x1536x4096,256x1536x4096,512x1536x4096,1024x1536x4096,2048x1536x4096,4096x1536x4096,8192x1536x4096,2048x4096x128,8192x4096x128 \
  -o "$D/gemm_moe_h100.csv"
step layer_s8192 240 python3 -m bench.gemm --hidden 4096,8192,16384 --tp 1,8 --tokens 8192 \
  -o "$D/gemm_s8192_h100.csv" --layer-output "$D/layer_h100_s8192.csv"
step layer_llama 240 python3 -m bench.gemm --hidden "" --tp 1,2,4,8 --tokens "" --layer-seq 8192 \
  --layer-specs 4096/32/8/14336/swiglu,8192/64/8/28672/swiglu,16384/128/8/53248/swiglu \
  -o "$D/gemm_none.csv" --layer-output "$D/layer_llama_h100_s8192.csv"
step step_8b 180 python3 -m bench.step -o "$D/step_h100_8b_l4.csv"
step step_8b_ga4 180 python3 -m bench.step --micro-batches 4 -o "$D/step_h100_8b_l4_ga4.csv"
step step_70b 180 python3 -m bench.step --layers 2 --hidden 8192 --heads 64 --kv-heads 8 \
  --ffn 28672 --vocab 32000 -o "$D/step_h100_70b_l2.csv"
step megatron_8b 240 python3 -m bench.megatron_step --model llama3-8b --layers 2 \
  -o "$D/megatron_h100_llama3-8b_l2.csv"
step megatron_gpt3 240 python3 -m bench.megatron_step --model gpt3-175b --layers 2 \
  -o "$D/megatron_h100_gpt3-175b_l2.csv"
step megatron_layer 420 python3 -m bench.megatron_layer --layers 1,5 --iters 20 --warmup 5 \
  --tokens 512,1024,2048,3072,4096,6144,8192 -o "$D/megatron_moe_layer_h100.csv"
step megatron_dense 240 python3 -m bench.megatron_layer --model llama3-8b --layers 1,5 \
  --iters 20 --warmup 5 --tokens 256,512,1024,2048,4096,8192 -o "$D/megatron_dense_layer_h100.csv"
step attention 240 python3 -m bench.kernels attention --backends flash,cudnn,efficient \
  -o "$D/attention_h100.csv"
step elementwise 120 python3 -m bench.kernels elementwise -o "$D/elementwise_h100.csv"
step grouped 180 python3 -m bench.kernels grouped -o "$D/grouped_h100.csv"
nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >>"$D/env.txt"
echo "done" | tee -a "$LOG"
[ -n "${ARCHIVE:-}" ] && tar czf "$ARCHIVE" -C "$D" .
exit 0
