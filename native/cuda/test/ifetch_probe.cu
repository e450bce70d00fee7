// Instruction-fetch probe (not a kernel of the engine): does straight-line code run slower than the same work from a
// small cache? 132 CTAs of 256 threads (2 warps a scheduler, as decode_step.cu) run N independent FMAs each, fully
// unrolled (N x 16 bytes of code) or in loops, and print the cycles a warp takes per FMA (2 would be one FMA a cycle a
// scheduler). On an H100 (session 8): 2.97 at 4 KB of code, 3.27 at 8 KB, 4.2-4.4 at 32 KB (the same when the
// 32 KB block runs 4 times: not cold misses), 10.2 at 128 KB. The loop rows also compute their b + i * 1e-7 in the
// loop (more instructions than FMAs), so they are not the same work. Built by native/cuda/test/build.sh
// (native/build-cuda/ifetch_probe); needs an sm_90 GPU.
#include <cuda_runtime.h>

#include <cstdio>
#include <exception>

#include "common.cuh"

template <int N, int U>
__global__ void __launch_bounds__(256, 1) k(float a, float b, float* out, long long* cyc, int reps) {
  float acc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i] = threadIdx.x * 0.001f + i;
  __syncthreads();
  long long t0 = clock64();
  for (int r = 0; r < reps; ++r) {
#pragma unroll U
    for (int i = 0; i < N; ++i) acc[i % 8] = fmaf(acc[i % 8], a, b + i * 1e-7f);
  }
  long long t1 = clock64();
  float s = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) s += acc[i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x % 32 == 0) cyc[blockIdx.x * 8 + threadIdx.x / 32] = t1 - t0;
}
template <int N, int U>
void run(const char* name, int reps) {
  constexpr int kCtas = 132, kWarpsPerCta = 8;
  float* out;
  long long* cyc;
  FL_CUDA_CHECK(cudaMalloc(&out, kCtas * 256 * sizeof(float)));
  FL_CUDA_CHECK(cudaMalloc(&cyc, kCtas * kWarpsPerCta * sizeof(long long)));
  for (int i = 0; i < 2; ++i) {  // the second launch is the one read
    k<N, U><<<kCtas, 256>>>(1.0001f, 0.5f, out, cyc, reps);
    FL_CHECK_LAUNCH();
  }
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  long long h[kCtas * kWarpsPerCta];
  FL_CUDA_CHECK(cudaMemcpy(h, cyc, sizeof(h), cudaMemcpyDeviceToHost));
  double m = 0;
  for (long long v : h) m += v;
  m /= kCtas * kWarpsPerCta;
  printf("%-34s reps %d: %8.0f cycles a warp, %.2f cycles per FMA per warp (issue bound ~2.00)\n", name, reps, m,
         m / (double(N) * reps));
  FL_CUDA_CHECK(cudaFree(out));
  FL_CUDA_CHECK(cudaFree(cyc));
}
int main() {
  try {
    run<2048, 2048>("straight 2048 FMAs (32 KB code)", 1);
    run<2048, 2048>("straight 2048 FMAs (32 KB code)", 2);
    run<2048, 2048>("straight 2048 FMAs (32 KB code)", 4);
    run<512, 512>("straight 512 FMAs (8 KB code)", 4);
    run<256, 256>("straight 256 FMAs (4 KB code)", 8);
    run<2048, 64>("loop 32 x 64 FMAs", 1);
    run<2048, 8>("loop 256 x 8 FMAs", 1);
    run<8192, 8192>("straight 8192 FMAs (128 KB code)", 1);
    run<8192, 64>("loop 128 x 64 FMAs", 1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ifetch_probe: %s\n", e.what());
    return 1;
  }
  return 0;
}
