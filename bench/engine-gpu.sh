#!/usr/bin/env bash
# The GPU engine benchmarks in one go on a GPU host: builds the drivers (bench/engine-gpu.cpp, bench/tp-gpu.cpp)
# against the CUDA engine build (native/cuda/test/build.sh --backend, built first when missing), then
#   single GPU (GPU 0): Hugging Face generate (bench/engine-gpu-hf.py) and bench/engine-gpu
#                       -> bench/results/engine-gpu-<card>.json
#   several GPUs:       bench/tp-gpu at TP 1/2/4 -> bench/results/tp-gpu-<card>x<N>.json
# Logs and a copy of every JSON go to $FLASHLAB_OUT (default bench/out/). Each part has its own time limit
# (FLASHLAB_ENGINE_BENCH_TIMEOUT, FLASHLAB_TP_BENCH_TIMEOUT, FLASHLAB_HF_TIMEOUT seconds), so a hang in one
# does not lose the others; the drivers write partial results as they go.
# usage: bench/engine-gpu.sh [--single] [--tp] [--quick] [--skip-chatglm2]   (neither --single nor --tp: both)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${FLASHLAB_OUT:-bench/out}"
mkdir -p "$out" bench/results
single=0 tp=0 quick=() glm=()
for a in "$@"; do
  case "$a" in
    --single) single=1 ;;
    --tp) tp=1 ;;
    --quick) quick=(--quick) ;;
    --skip-chatglm2) glm=(--skip-chatglm2) ;;
    *) echo "usage: bench/engine-gpu.sh [--single] [--tp] [--quick] [--skip-chatglm2]" >&2; exit 2 ;;
  esac
done
[ $single = 0 ] && [ $tp = 0 ] && single=1 tp=1
export NCCL_NVLS_ENABLE=0

lib=native/build-cuda
if [ ! -f "$lib/libflashlab_cuda.a" ] || [ ! -f "$lib/obj/cpp_engine.o" ]; then
  bash native/cuda/test/build.sh --backend || { echo "engine-gpu: CUDA engine build failed" >&2; exit 1; }
fi
nvcc="${NVCC:-nvcc}"
cuda_inc="$(dirname "$(readlink -f "$(command -v "$nvcc")")")/../include"
o="$lib/obj"
core=("$o/cpp_engine.o" "$o/cpp_model.o" "$o/cpp_sampler.o" "$o/cpp_backend.o")
for src in native/src/cpu/*.cpp; do core+=("$o/cpp_$(basename "${src%.cpp}").o"); done
build_driver() {  # name
  g++ -std=c++17 -O2 -march=native -fopenmp -Wall -DFLASHLAB_WITH_CUDA -I"$cuda_inc" -I/usr/local/cuda/include \
    -c "bench/$1.cpp" -o "$o/bench_$1.o" &&
    "$nvcc" -o "$lib/$1" "$o/bench_$1.o" "${core[@]}" -L"$lib" -lflashlab_cuda -lcublasLt -lnccl -Xcompiler -fopenmp
}
build_driver engine-gpu && build_driver tp-gpu || { echo "engine-gpu: driver build failed" >&2; exit 1; }

card=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 | head -1)
slug=$(echo "$card" | sed -e 's/^NVIDIA //' | tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9]\+/-/g' -e 's/-$//')
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
env_json="$out/engine-gpu-env.json"
python3 - "$env_json" <<'EOF'
import datetime, json, os, platform, subprocess, sys
def q(fields, i=0):
    r = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", str(i)],
                       capture_output=True, text=True, timeout=30).stdout.strip()
    return [x.strip() for x in r.split(",")]
names = subprocess.run(["nvidia-smi", "--query-gpu=name,uuid", "--format=csv,noheader"], capture_output=True,
                       text=True, timeout=30).stdout.strip().splitlines()
name, uuid, driver, sm, mem, temp, total = q("name,uuid,driver_version,clocks.sm,clocks.mem,temperature.gpu,memory.total")
nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()
env = {"gpu": name, "uuid": uuid, "driver": driver, "smClockMHz": float(sm), "memClockMHz": float(mem),
       "temperatureC": float(temp), "memoryBytes": int(float(total)) * 1024 * 1024,
       "gpus": [n.strip() for n in names], "cuda": nvcc[-1] if nvcc else "",
       "host": platform.node(), "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
       "gitCommit": os.environ.get("FLASHLAB_GIT_COMMIT", ""),
       "ncclNvlsEnable": os.environ.get("NCCL_NVLS_ENABLE", ""),
       "startedAt": datetime.datetime.now(datetime.timezone.utc).isoformat()}
json.dump(env, open(sys.argv[1], "w"), indent=1)
EOF
status=0
if [ $single = 1 ]; then
  hf_json="$out/engine-gpu-hf.json"
  CUDA_VISIBLE_DEVICES=0 timeout -k 10 "${FLASHLAB_HF_TIMEOUT:-150}" python3 bench/engine-gpu-hf.py --out "$hf_json" \
    --prompt 128 --new 256 2>&1 | tee "$out/engine-gpu-hf.log"
  hf_args=()
  [ -s "$hf_json" ] && hf_args=(--hf "$hf_json")
  # Written straight into $out (partial results survive a time limit), then kept under bench/results/.
  result="$out/engine-gpu-$slug.json"
  CUDA_VISIBLE_DEVICES=0 timeout -k 10 "${FLASHLAB_ENGINE_BENCH_TIMEOUT:-600}" "$lib/engine-gpu" --out "$result" \
    --env "$env_json" "${hf_args[@]}" "${quick[@]}" "${glm[@]}" 2>&1 | tee "$out/engine-gpu.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  [ -f "$result" ] && cp "$result" bench/results/
fi
if [ $tp = 1 ]; then
  if [ "$gpus" -ge 2 ]; then
    n=$((gpus >= 4 ? 4 : 2))
    result="$out/tp-gpu-${slug}x$n.json"
    timeout -k 10 "${FLASHLAB_TP_BENCH_TIMEOUT:-600}" "$lib/tp-gpu" --out "$result" --env "$env_json" --max-tp "$n" \
      "${quick[@]}" 2>&1 | tee "$out/tp-gpu.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    [ -f "$result" ] && cp "$result" bench/results/
  else
    echo "tp-gpu: one GPU visible, tensor-parallel benchmarks skipped" | tee "$out/tp-gpu.log"
  fi
fi
grep -h "^TARGET\|^SUMMARY" "$out/engine-gpu.log" "$out/tp-gpu.log" 2>/dev/null
exit $status
