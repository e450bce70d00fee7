#!/usr/bin/env bash
# Builds the CUDA kernels (native/cuda/*.cu) for Hopper into native/build-cuda/ (its own folder: native/build/ belongs to the engine build):
#   libflashlab_kernels.so   every kernel + the C ABI of capi.h (what bench/attention.py loads)
#   kernel_tests             the correctness harness (test/kernel_tests.cu)
#   gemv_tests               the fused decode GEMV kernels' tests and --bench timings (test/gemv_tests.cu)
#   decode_step_tests        the one-launch GPT-2 decode step against a CPU reference (test/decode_step_tests.cu)
#   ifetch_probe             straight-line code against small loops: the instruction-fetch cost (test/ifetch_probe.cu)
#   libflashlab_kernels_fa2_<label>.so   with --variants: the same library with fa2 built at another block
#                                        shape (see attention_fa2.cu), timed beside the default by the benchmark
#   with --backend (needs cuBLAS, NCCL and an OpenMP-capable g++):
#   libflashlab_cuda.a       kernels + the CUDA backend (native/cuda/backend): what the engine links
#   backend_vs_cpu           the CUDA backend against the CPU backend (native/src), op by op
#   engine_cuda_vs_cpu       the engine end to end on both backends, and timings of GPT-2 / ChatGLM2-6B
#   allreduce_tests          the peer-to-peer all-reduce (allreduce_p2p.cu) on 2 and 4 GPUs, exact, in graphs;
#                            its latency against NCCL (backend/test/allreduce_tests.cu)
#   gemv_tests_lt            gemv_tests with --compare-cublaslt (times the backend's cuBLASLt path beside ours)
# Usage: native/cuda/test/build.sh [--variants] [--backend]. Needs nvcc (CUDA 12.4+); NVCC, CXX and CUDA_ARCH override.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/../build-cuda"
nvcc="${NVCC:-nvcc}"
arch="${CUDA_ARCH:--gencode=arch=compute_90a,code=sm_90a}"
if ! command -v "$nvcc" >/dev/null; then
  echo "build.sh: nvcc not found (set NVCC or put the CUDA toolkit's bin on PATH)" >&2
  exit 1
fi
mkdir -p "$out/obj"
flags=(-std=c++17 -O3 $arch -lineinfo -Xcompiler -fPIC -Xcompiler -Wall -I"$here")

compile() {  # src obj [extra flags]
  local src=$1 obj=$2
  shift 2
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find "$here" -maxdepth 1 \( -name '*.h' -o -name '*.cuh' \) -newer "$obj")" ]; then
    "$nvcc" "${flags[@]}" "$@" -c "$src" -o "$obj"
  fi
}

pids=()
objs=()
for src in "$here"/*.cu; do
  obj="$out/obj/$(basename "${src%.cu}").o"
  objs+=("$obj")
  compile "$src" "$obj" & pids+=($!)
done
compile "$here/test/kernel_tests.cu" "$out/obj/kernel_tests.o" & pids+=($!)
compile "$here/test/gemv_tests.cu" "$out/obj/gemv_tests.o" & pids+=($!)
compile "$here/test/decode_step_tests.cu" "$out/obj/decode_step_tests.o" & pids+=($!)
compile "$here/test/ifetch_probe.cu" "$out/obj/ifetch_probe.o" & pids+=($!)
want_variants=0 want_backend=0
for a in "$@"; do
  case "$a" in
    --variants) want_variants=1 ;;
    --backend) want_backend=1 ;;
    *) echo "usage: build.sh [--variants] [--backend]" >&2; exit 2 ;;
  esac
done

# label -> extra flags of fa2 tuning variants
declare -A variants=(
  [m256w8]="-DFLASHLAB_FA2_BLOCK_M=256 -DFLASHLAB_FA2_WARPS=8"
  [hfirst]="-DFLASHLAB_FA2_HEADS_INNER=0"
  [dec32]="-DFLASHLAB_DECODE_BLOCK_N=32 -DFLASHLAB_DECODE_CTAS_PER_SM=6"
)
if [ $want_variants = 1 ]; then
  for label in "${!variants[@]}"; do
    # shellcheck disable=SC2086
    # a variant rebuilds the kernel file its flags concern
    case "$label" in dec*) vsrc=attention_decode ;; *) vsrc=attention_fa2 ;; esac
    compile "$here/$vsrc.cu" "$out/obj/${vsrc}_$label.o" ${variants[$label]} & pids+=($!)
  done
fi
cxx="${CXX:-g++}"
src_root="$here/../src"
backend_objs=()
if [ $want_backend = 1 ]; then
  for src in "$here"/backend/*.cu; do
    obj="$out/obj/backend_$(basename "${src%.cu}").o"
    backend_objs+=("$obj")
    compile "$src" "$obj" & pids+=($!)
  done
  compile "$here/test/gemv_tests.cu" "$out/obj/gemv_tests_lt.o" -DFLASHLAB_GEMV_CUBLASLT & pids+=($!)
  compile "$here/backend/test/allreduce_tests.cu" "$out/obj/allreduce_tests.o" & pids+=($!)
  # The engine core (with its CUDA hook on) and the CPU backend, the reference the CUDA backend is held to.
  for src in "$src_root"/*.cpp "$src_root"/cpu/*.cpp "$here"/backend/test/*.cpp; do
    obj="$out/obj/cpp_$(basename "${src%.cpp}").o"
    "$cxx" -std=c++17 -O2 -march=native -fopenmp -fPIC -Wall -Wno-unknown-pragmas -DFLASHLAB_WITH_CUDA \
      -I"$(dirname "$(readlink -f "$(command -v "$nvcc")")")/../include" -I/usr/local/cuda/include \
      -c "$src" -o "$obj" & pids+=($!)
  done
fi
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ $status = 0 ] || { echo "build.sh: compilation failed" >&2; exit 1; }

"$nvcc" $arch -shared -o "$out/libflashlab_kernels.so" "${objs[@]}"
kernel_objs=()
for o in "${objs[@]}"; do [ "$(basename "$o")" = capi.o ] || kernel_objs+=("$o"); done
"$nvcc" $arch -o "$out/kernel_tests" "$out/obj/kernel_tests.o" "${kernel_objs[@]}"
"$nvcc" $arch -o "$out/gemv_tests" "$out/obj/gemv_tests.o" "$out/obj/gemv.o"
"$nvcc" $arch -o "$out/decode_step_tests" "$out/obj/decode_step_tests.o" "$out/obj/decode_step.o"
"$nvcc" $arch -o "$out/ifetch_probe" "$out/obj/ifetch_probe.o"
if [ $want_backend = 1 ]; then
  # What an engine build links for its CUDA backend: every kernel and the backend (define FLASHLAB_WITH_CUDA for
  # native/src, link this archive with -lcublasLt -lnccl -lcudart).
  rm -f "$out/libflashlab_cuda.a"
  ar rcs "$out/libflashlab_cuda.a" "${backend_objs[@]}" "${kernel_objs[@]}"
  o="$out/obj"
  cpu_objs=("$o/cpp_backend.o")
  for src in "$src_root"/cpu/*.cpp; do cpu_objs+=("$o/cpp_$(basename "${src%.cpp}").o"); done
  libs=(-L"$out" -lflashlab_cuda -lcublasLt -lnccl -Xcompiler -fopenmp)
  "$nvcc" $arch -o "$out/backend_vs_cpu" "$o/cpp_backend_vs_cpu.o" "${cpu_objs[@]}" "${libs[@]}"
  "$nvcc" $arch -o "$out/engine_cuda_vs_cpu" "$o/cpp_engine_cuda_vs_cpu.o" "$o/cpp_engine.o" "$o/cpp_model.o" \
    "$o/cpp_sampler.o" "${cpu_objs[@]}" "${libs[@]}"
  "$nvcc" $arch -o "$out/gemv_tests_lt" "$o/gemv_tests_lt.o" "$o/backend_gemm_lt.o" "$o/gemv.o" -lcublasLt
  "$nvcc" $arch -o "$out/allreduce_tests" "$o/allreduce_tests.o" "$o/allreduce_p2p.o" -lnccl -lpthread
fi
if [ $want_variants = 1 ]; then
  for label in "${!variants[@]}"; do
    variant_objs=()
    for o in "${objs[@]}"; do
      case "$label" in dec*) vsrc=attention_decode ;; *) vsrc=attention_fa2 ;; esac
      if [ "$(basename "$o")" = "$vsrc.o" ]; then variant_objs+=("$out/obj/${vsrc}_$label.o"); else variant_objs+=("$o"); fi
    done
    "$nvcc" $arch -shared -o "$out/libflashlab_kernels_fa2_$label.so" "${variant_objs[@]}"
  done
fi
echo "built $out"
