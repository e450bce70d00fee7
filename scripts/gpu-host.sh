#!/usr/bin/env bash
# The one script for a GPU host: builds the CUDA kernels, runs their correctness tests, runs the quick test
# suite under compute-sanitizer memcheck, and benchmarks attention against PyTorch on this card, in one go.
# Logs go to $FLASHLAB_OUT (default bench/out/); the benchmark's JSON lands in bench/results/ (and a copy in
# $FLASHLAB_OUT). Needs nvcc and Python 3 with PyTorch (CUDA); compute-sanitizer when present.
# The engine check times GPT-2 and (without --quick) ChatGLM2-6B with random weights on the GPU; the one-launch GPT-2
# decode step has its own tests (decode-step) and memcheck run (decode-step-memcheck).
# --profile adds an Nsight Compute report of one fa2 launch (chatglm2 8k) as $FLASHLAB_OUT/ncu.log.
# --engine-bench runs the engine benchmarks of bench/engine-gpu.sh on GPU 0 (decode with and without CUDA graphs,
# Hugging Face generate, the study's experiments); --tp-bench its tensor-parallel part on every GPU (TP 1/2/4).
# --no-attention-bench leaves out bench/attention.py, --no-variants the fa2 tuning builds, --no-kernel-tests the
# kernel and backend harnesses (the engine's end-to-end test still runs).
# The fused decode GEMV kernels (native/cuda/gemv.cu) always get their tests and their timing against cuBLASLt
# (steps gemv, gemv-bench; gemv-memcheck with the sanitizer); --no-gemv leaves them out.
# Each step has its own time limit: FLASHLAB_STEP_TIMEOUT (seconds, default 1800), or FLASHLAB_TIMEOUT_<STEP>
# for one step (e.g. FLASHLAB_TIMEOUT_ENGINE=120).
# usage: scripts/gpu-host.sh [--quick] [--no-bench] [--no-sanitizer] [--profile] [--engine-bench] [--tp-bench]
#                            [--no-attention-bench] [--no-variants] [--no-kernel-tests] [--no-gemv]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${FLASHLAB_OUT:-bench/out}"
mkdir -p "$out"
quick="" bench=1 sanitizer=1 profile=0 engine_args="--chatglm2" engine_bench=0 tp_bench=0 variants=--variants
kernel_tests=1 gemv=1
for a in "$@"; do
  case "$a" in
    --quick) quick="--quick" engine_args="" ;;
    --no-bench) bench=0 ;;
    --no-attention-bench) bench=0 ;;
    --no-sanitizer) sanitizer=0 ;;
    --profile) profile=1 ;;
    --engine-bench) engine_bench=1 ;;
    --tp-bench) tp_bench=1 ;;
    --no-variants) variants="" ;;
    --no-kernel-tests) kernel_tests=0 ;;
    --no-gemv) gemv=0 ;;
    *)
      echo "usage: scripts/gpu-host.sh [--quick] [--no-bench] [--no-sanitizer] [--profile] [--engine-bench] [--tp-bench]" \
        "[--no-attention-bench] [--no-variants] [--no-kernel-tests] [--no-gemv]" >&2
      exit 2
      ;;
  esac
done
# The engine benchmarks time the engine themselves: the end-to-end test then only checks.
[ $engine_bench = 1 ] && engine_args="--no-timing"
export NCCL_NVLS_ENABLE=0  # NVLink multicast off, always: on shared hosts it can take GPUs out of service
export PYTHONUNBUFFERED=1
# A tree that differs from its checkout's commit is labelled <commit>-dirty.
if [ -z "${FLASHLAB_GIT_COMMIT:-}" ] && FLASHLAB_GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null); then
  [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && FLASHLAB_GIT_COMMIT="$FLASHLAB_GIT_COMMIT-dirty"
fi
export FLASHLAB_GIT_COMMIT="${FLASHLAB_GIT_COMMIT:-}"
declare -a summary
# A hung kernel must not hang the host: each step gets at most this many seconds.
step_timeout="${FLASHLAB_STEP_TIMEOUT:-1800}"
step() {  # name command...: runs it, logs to $out/<name>.log, records pass/fail and seconds
  local name=$1; shift
  local t0=$SECONDS
  local limit_var="FLASHLAB_TIMEOUT_${name^^}"
  limit_var="${limit_var//-/_}"
  local limit="${!limit_var:-$step_timeout}"
  echo "== $name ($limit s at most): $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  summary+=("$(printf '%-12s %-4s %4ss' "$name" "$([ "$rc" = 0 ] && echo ok || echo FAIL)" $((SECONDS - t0)))")
  return "$rc"
}

nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.sm,temperature.gpu --format=csv | tee "$out/gpu.csv"
status=0
# shellcheck disable=SC2086
if step build bash native/cuda/test/build.sh $variants --backend; then
  lib=native/build-cuda
  step engine "$lib/engine_cuda_vs_cpu" $engine_args || status=1
  if [ $engine_bench = 1 ]; then
    step engine-bench bash bench/engine-gpu.sh --single $quick || status=1
  fi
  if [ $tp_bench = 1 ]; then
    step tp-bench bash bench/engine-gpu.sh --tp $quick || status=1
  fi
  if [ $kernel_tests = 1 ]; then
    step tests "$lib/kernel_tests" || status=1
    # The one-launch GPT-2 decode step against its CPU reference (GPT-2 124M's shapes included, timed).
    step decode-step "$lib/decode_step_tests" || status=1
    step backend "$lib/backend_vs_cpu" || status=1
    # The peer-to-peer all-reduce on 2 and 4 GPUs (SKIP lines where fewer are visible) and its latency against
    # NCCL (TIME lines). A broken handshake gives up after 2 s per call instead of hanging: a short limit.
    : "${FLASHLAB_TIMEOUT_ALLREDUCE:=600}"
    step allreduce "$lib/allreduce_tests" || status=1
  fi
  if [ $gemv = 1 ]; then
    # Short steps: their own default limits, overridable like every step's.
    : "${FLASHLAB_TIMEOUT_GEMV:=600}" "${FLASHLAB_TIMEOUT_GEMV_BENCH:=300}" "${FLASHLAB_TIMEOUT_GEMV_MEMCHECK:=900}"
    step gemv "$lib/gemv_tests" || status=1
    if [ -x "$lib/gemv_tests_lt" ]; then
      step gemv-bench "$lib/gemv_tests_lt" --bench --compare-cublaslt || status=1
    else
      step gemv-bench "$lib/gemv_tests" --bench || status=1
    fi
    if [ $sanitizer = 1 ] && command -v compute-sanitizer >/dev/null; then
      step gemv-memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$lib/gemv_tests" --quick || status=1
    fi
  fi
  if [ $sanitizer = 1 ]; then
    if command -v compute-sanitizer >/dev/null; then
      step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$lib/kernel_tests" --quick || status=1
      step decode-step-memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$lib/decode_step_tests" \
        --no-timing || status=1
    else
      echo "compute-sanitizer not found: memcheck skipped" | tee "$out/memcheck.log"
      summary+=("memcheck     n/a")
    fi
  fi
  variant_args=()
  for v in "$lib"/libflashlab_kernels_fa2_*.so; do
    [ -e "$v" ] || continue
    label=$(basename "$v" .so)
    variant_args+=(--variant "${label#libflashlab_kernels_}=$v")
  done
  if [ $bench = 1 ]; then
    step bench python3 bench/attention.py --lib "$lib/libflashlab_kernels.so" "${variant_args[@]}" $quick || status=1
    cp bench/results/cuda-attention-*.json "$out/" 2>/dev/null || true
  fi
  if [ $profile = 1 ]; then
    # Leave the clocks as they are (--clock-control none): the card is shared.
    step profile ncu --clock-control none -k regex:fa2Kernel -c 1 --section SpeedOfLight --section Occupancy \
      --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      --section SchedulerStats --section LaunchStats python3 bench/attention.py --lib "$lib/libflashlab_kernels.so" \
      --profile-one fa2 || true
  fi
else
  status=1
fi
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
grep -h "^FAIL" "$out"/tests.log "$out"/backend.log "$out"/allreduce.log "$out"/engine.log "$out"/memcheck.log "$out"/gemv.log \
  "$out"/gemv-memcheck.log "$out"/decode-step.log "$out"/decode-step-memcheck.log 2>/dev/null | head -20
grep -h "^TIMING\|^IN A ROW" "$out"/decode-step.log 2>/dev/null
grep -h "linear layers per token" "$out"/gemv-bench.log 2>/dev/null
grep -h "^TIMING" "$out"/engine.log 2>/dev/null
grep -h "^TIME\|^SKIP" "$out"/allreduce.log 2>/dev/null
grep -h "^TARGET\|^SUMMARY" "$out"/engine-bench.log "$out"/tp-bench.log 2>/dev/null
grep -h "ERROR SUMMARY" "$out"/memcheck.log "$out"/decode-step-memcheck.log 2>/dev/null
exit $status
