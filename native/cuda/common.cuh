// Shared by every kernel file: error checking with file and line, the element types the kernels take, and the
// ONE place where runtime flags (dtype, head dim, booleans) become template parameters.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace flashlab::cuda {

// Element type of a kernel's tensors. Attention kernels take F16/BF16 (fp32 accumulation); element-wise
// kernels take all three.
enum class ElemType : int { F32 = 0, F16 = 1, BF16 = 2 };

inline const char* elemTypeName(ElemType t) {
  switch (t) {
    case ElemType::F32: return "fp32";
    case ElemType::F16: return "fp16";
    case ElemType::BF16: return "bf16";
  }
  return "unknown";
}

// A CUDA failure (including out of memory) or an unsupported request, with where it was raised.
struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void throwCudaError(cudaError_t err, const char* what, const char* file, int line) {
  throw KernelError(std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                    ") in " + what + " at " + file + ":" + std::to_string(line));
}

[[noreturn]] inline void throwUnsupported(const std::string& msg, const char* file, int line) {
  throw KernelError(msg + " (" + file + ":" + std::to_string(line) + ")");
}

}  // namespace flashlab::cuda

#define FL_CUDA_CHECK(expr)                                                        \
  do {                                                                             \
    cudaError_t fl_err_ = (expr);                                                  \
    if (fl_err_ != cudaSuccess) ::flashlab::cuda::throwCudaError(fl_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a launch: configuration errors surface here; asynchronous faults surface at the next checked call.
#define FL_CHECK_LAUNCH() FL_CUDA_CHECK(cudaGetLastError())

#define FL_REQUIRE(cond, msg)                                                       \
  do {                                                                              \
    if (!(cond)) ::flashlab::cuda::throwUnsupported(std::string(msg), __FILE__, __LINE__); \
  } while (0)

namespace flashlab::cuda {

// ---- the one switch helper: runtime value -> compile-time type/constant, then call f with it.
template <class F>
void dispatchElem(ElemType t, F&& f) {
  switch (t) {
    case ElemType::F32: f(float{}); return;
    case ElemType::F16: f(__half{}); return;
    case ElemType::BF16: f(__nv_bfloat16{}); return;
  }
  throw KernelError("unknown element type " + std::to_string(static_cast<int>(t)));
}

// Attention kernels run on the tensor cores in fp16/bf16 only.
template <class F>
void dispatchHalfElem(ElemType t, const char* kernel, F&& f) {
  switch (t) {
    case ElemType::F16: f(__half{}); return;
    case ElemType::BF16: f(__nv_bfloat16{}); return;
    default: break;
  }
  throw KernelError(std::string(kernel) + ": dtype " + elemTypeName(t) + " is not supported (fp16 or bf16)");
}

template <class F>
void dispatchHeadDim(int headDim, const char* kernel, F&& f) {
  switch (headDim) {
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 128: f(std::integral_constant<int, 128>{}); return;
    default: break;
  }
  throw KernelError(std::string(kernel) + ": head dim " + std::to_string(headDim) +
                    " is not supported (64 or 128)");
}

template <class F>
void dispatchBool(bool b, F&& f) {
  if (b) f(std::true_type{});
  else f(std::false_type{});
}

// ---- element conversions usable from templates
template <class T> __device__ __forceinline__ float toFloat(T v);
template <> __device__ __forceinline__ float toFloat<float>(float v) { return v; }
template <> __device__ __forceinline__ float toFloat<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float toFloat<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T fromFloat(float v);
template <> __device__ __forceinline__ float fromFloat<float>(float v) { return v; }
template <> __device__ __forceinline__ __half fromFloat<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Programmatic dependent launch (sm_90): a kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization
// may start while the previous kernel on the stream is finishing. Before pdlWait() it may only read what is
// immutable or was written two or more kernels earlier (every kernel here triggers its dependents only after its
// own pdlWait, so those have completed) and must write nothing; pdlWait() returns once the previous kernel has
// completed and its writes are visible. pdlLaunchDependents() lets the next kernel start early. Both are no-ops
// for a kernel launched without the attribute.
__device__ __forceinline__ void pdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdlLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...), with programmatic dependent launch when pdl.
template <class... Params, class... Args>
void launchMaybePdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                    Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  FL_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

__host__ __device__ inline int ceilDiv(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ inline int64_t ceilDiv64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Raises a kernel's dynamic shared-memory limit once per device (the call costs microseconds of host time,
// which decode steps cannot spare). The kernel is a template argument so that each kernel has its own flags.
template <auto kKernel>
void ensureDynamicSmem(int bytes) {
  static std::atomic<uint64_t> doneOnDevice{0};
  int dev = 0;
  FL_CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = dev < 64 ? (uint64_t{1} << dev) : 0;
  if (bit && (doneOnDevice.load(std::memory_order_acquire) & bit)) return;
  FL_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  doneOnDevice.fetch_or(bit, std::memory_order_acq_rel);
}

// Multiprocessor count of the current device (cheap: the runtime caches the attribute).
inline int multiprocessorCount() {
  int dev = 0, n = 0;
  FL_CUDA_CHECK(cudaGetDevice(&dev));
  FL_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

}  // namespace flashlab::cuda
