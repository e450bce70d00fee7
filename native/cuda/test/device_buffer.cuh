// A device allocation that frees itself, for the kernel test programs (gemv_tests.cu, decode_step_tests.cu).
#pragma once

#include <algorithm>
#include <cstddef>

#include "../common.cuh"

namespace flashlab::cuda {

struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t b) : bytes(b) { FL_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(b, 16))); }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  template <class U = void>
  U* at(size_t byteOffset = 0) const { return reinterpret_cast<U*>(static_cast<char*>(p) + byteOffset); }
};

}  // namespace flashlab::cuda
