#!/usr/bin/env bash
# The GPU engine benchmarks in one go on a GPU host: builds the drivers (bench/engine-gpu.cpp, bench/tp-gpu.cpp)
# against the CUDA engine build (native/cuda/test/build.sh --backend, built first when missing), then
#   single GPU (GPU 0): Hugging Face generate (bench/engine-gpu-hf.py) and bench/engine-gpu
#                       -> bench/results/engine-gpu-<card>.json
#   several GPUs:       bench/tp-gpu at TP 1/2/4(/8 on 8 GPUs) -> bench/results/tp-gpu-<card>x<N>.json
# Logs and a copy of every JSON go to $FLASHLAB_OUT (default bench/out/). Each part has its own time limit
# (FLASHLAB_ENGINE_BENCH_TIMEOUT, FLASHLAB_TP_BENCH_TIMEOUT, FLASHLAB_HF_TIMEOUT seconds), so a hang in one
# does not lose the others; the drivers write partial results as they go.
# Every bundle carries "targets" (issues 5 and 6, met computed from the measurements) and "measurements" (every
# timed configuration with its JobConfig and each repeat's figures): `./bin/flashlab import bench/results/X.json`
# puts it into the dashboard's history (bench/README.md).
# Build flags: the drivers are host C++ (g++ -std=c++17 -O2 -march=native -fopenmp -DFLASHLAB_WITH_CUDA, CUDA
# include dirs) linked by nvcc against the engine objects, libflashlab_cuda.a, cuBLASLt and NCCL. Without a GPU or
# those libraries they still syntax-check: g++ -std=c++17 -fsyntax-only -DFLASHLAB_WITH_CUDA \
#   -I/usr/local/cuda/include bench/engine-gpu.cpp (and bench/tp-gpu.cpp); CI compiles their JSON writer
# (test/bench/bundle-writer.cpp) and imports what it writes.
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
def number(x):  # nvidia-smi prints "[N/A]" for a figure a card does not report
    try:
        return float(x)
    except ValueError:
        return None
fields = "name,uuid,driver_version,clocks.sm,clocks.mem,temperature.gpu,memory.total"
name, uuid, driver, sm, mem, temp, total = q(fields)
details = []
for i in range(len(names)):
    n, u, d, s, m, t, tot = q(fields, i)
    g = {"index": i, "name": n, "uuid": u, "memoryBytes": int(float(tot)) * 1024 * 1024, "driver": d,
         "smClockMHz": number(s), "memClockMHz": number(m), "temperatureC": number(t)}
    details.append({k: v for k, v in g.items() if v is not None})
nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None)
commit = os.environ.get("FLASHLAB_GIT_COMMIT", "")
if not commit:
    try:  # a copied work tree has no .git, and a bare host may have no git
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        # Files that differ from that commit (a tree copied over an older checkout, say): not that commit's code.
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True).stdout.strip()
        if commit and changed:
            commit += "-dirty"
    except OSError:
        commit = ""
commit = commit or None
env = {"gpu": name, "uuid": uuid, "driver": driver, "smClockMHz": number(sm), "memClockMHz": number(mem),
       "temperatureC": number(temp), "memoryBytes": int(float(total)) * 1024 * 1024,
       "gpus": [n.strip() for n in names], "gpuDetails": details, "cuda": nvcc[-1] if nvcc else "",
       "host": platform.node(), "cpu": cpu_model or platform.processor() or platform.machine(), "cpus": os.cpu_count(),
       "hostMemoryBytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
       "gitCommit": commit,
       "ncclNvlsEnable": os.environ.get("NCCL_NVLS_ENABLE", ""),
       "startedAt": datetime.datetime.now(datetime.timezone.utc).isoformat()}
env = {k: v for k, v in env.items() if v is not None}
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
