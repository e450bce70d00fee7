// allreduce_tests: the one-shot peer-to-peer all-reduce (native/cuda/allreduce_p2p.h) on 2 and 4 GPUs of this
// host, one host thread per rank as the engine's shards run it. Every result must equal, bit for bit and on every
// rank, the host's fp32 sum of the ranks' parts in rank order rounded once to the element type. Checks: sizes 1,
// 7, 768, 4096, 4097, 65536 (and an unaligned part) in fp32/fp16/bf16; 1000 back-to-back calls of varying sizes;
// calls recorded into a CUDA graph per rank (each on its own thread) replayed 100 times with new inputs, eager
// calls of other sizes in between; the bounded wait (a missing peer gives a clear error, no hang). Then it times
// NCCL against the peer-to-peer kernel for 8 KB and 64 KB messages inside graphs (TIME lines).
// One PASS/FAIL line per check; exit status 1 when any failed. A TP degree with too few GPUs is skipped with
// a SKIP line that says so. usage: allreduce_tests [--no-timing]
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../../allreduce_p2p.h"

using flashlab::cuda::ElemType;
using flashlab::cuda::P2PAllReduce;

namespace {

int g_failed = 0, g_checks = 0;

void report(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) ++g_failed;
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  std::fflush(stdout);
}

// Expressions (not statements), so that two checks may share a line with a comma.
void ck(cudaError_t e, const char* what, int line) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e) + " at line " + std::to_string(line));
}
void nk(ncclResult_t r, const char* what, int line) {
  if (r != ncclSuccess)
    throw std::runtime_error(std::string(what) + ": " + ncclGetErrorString(r) + " at line " + std::to_string(line));
}
#define CK(expr) ck((expr), #expr, __LINE__)
#define NK(expr) nk((expr), #expr, __LINE__)

size_t esz(ElemType t) { return t == ElemType::F32 ? 4 : 2; }

// Host rounding to the element type, the same round-to-nearest-even the kernel's conversions do; the value
// comes back as the element's bits (fp16/bf16: 2 bytes, fp32: 4).
void storeElem(ElemType t, float v, unsigned char* dst) {
  if (t == ElemType::F32) {
    std::memcpy(dst, &v, 4);
  } else if (t == ElemType::F16) {
    const __half h = __float2half_rn(v);
    std::memcpy(dst, &h, 2);
  } else {
    const __nv_bfloat16 b = __float2bfloat16_rn(v);
    std::memcpy(dst, &b, 2);
  }
}
float loadElem(ElemType t, const unsigned char* src) {
  if (t == ElemType::F32) {
    float v;
    std::memcpy(&v, src, 4);
    return v;
  }
  if (t == ElemType::F16) {
    __half h;
    std::memcpy(&h, src, 2);
    return __half2float(h);
  }
  __nv_bfloat16 b;
  std::memcpy(&b, src, 2);
  return __bfloat162float(b);
}

// Random parts (values in [-4, 4), already in the element type) and their reference sum.
struct Parts {
  std::vector<std::vector<unsigned char>> in;  // per rank
  std::vector<unsigned char> expect;
};
Parts makeParts(ElemType t, int ranks, int64_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-4.f, 4.f);
  Parts p;
  const size_t bytes = static_cast<size_t>(count) * esz(t);
  p.in.assign(ranks, std::vector<unsigned char>(bytes));
  for (auto& v : p.in)
    for (int64_t i = 0; i < count; ++i) storeElem(t, dist(rng), v.data() + i * esz(t));
  p.expect.resize(bytes);
  for (int64_t i = 0; i < count; ++i) {
    float acc = 0.f;  // the kernel's order: 0, then rank 0, rank 1, ...
    for (int r = 0; r < ranks; ++r) acc += loadElem(t, p.in[r].data() + i * esz(t));
    storeElem(t, acc, p.expect.data() + i * esz(t));
  }
  return p;
}

// First differing element as text, or "" when equal.
std::string firstDiff(ElemType t, const std::vector<unsigned char>& got, const std::vector<unsigned char>& want) {
  for (size_t i = 0; i < want.size(); i += esz(t))
    if (std::memcmp(got.data() + i, want.data() + i, esz(t)) != 0)
      return "element " + std::to_string(i / esz(t)) + ": got " + std::to_string(loadElem(t, got.data() + i)) +
             ", want " + std::to_string(loadElem(t, want.data() + i));
  return "";
}

// fn(rank) on one thread per rank, as the engine's shards; the first exception is rethrown after all joined.
void onRanks(int ranks, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  std::exception_ptr first;
  std::mutex m;
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        std::lock_guard<std::mutex> lock(m);
        if (!first) first = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

struct Rank {
  int device = 0;
  cudaStream_t stream = nullptr;
};

// Runs a check body; an exception is that check's FAIL with its message.
void guarded(const std::string& name, const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& e) {
    report(false, name + ": " + e.what());
  }
}

const ElemType kTypes[] = {ElemType::F32, ElemType::F16, ElemType::BF16};

void testSizes(P2PAllReduce& g, std::vector<Rank>& rk, std::mt19937& rng) {
  const int R = g.ranks();
  const int64_t sizes[] = {1, 7, 768, 4096, 4097, 65536};
  for (ElemType t : kTypes)
    for (int64_t count : sizes)
      for (int offset : {0, 1}) {
        if (offset && count != 4097) continue;  // one part that starts off a 16-byte boundary
        const std::string name = "tp=" + std::to_string(R) + " " + flashlab::cuda::elemTypeName(t) + " " +
                                 std::to_string(count) + " elements" + (offset ? " (unaligned part)" : "") +
                                 ": every rank equals the rank-order fp32 sum, bit for bit";
        guarded(name, [&] {
          if (!g.fits(t, count)) throw std::runtime_error("the group's maximum does not take this size");
          const Parts p = makeParts(t, R, count, rng);
          const size_t bytes = p.expect.size(), off = offset * esz(t);
          std::vector<std::vector<unsigned char>> got(R, std::vector<unsigned char>(bytes));
          onRanks(R, [&](int r) {
            CK(cudaSetDevice(rk[r].device));
            unsigned char* d = nullptr;
            CK(cudaMalloc(&d, bytes + 16));
            CK(cudaMemcpy(d + off, p.in[r].data(), bytes, cudaMemcpyHostToDevice));
            g.allReduce(r, t, d + off, count, rk[r].stream);
            CK(cudaStreamSynchronize(rk[r].stream));
            g.checkError(r);
            CK(cudaMemcpy(got[r].data(), d + off, bytes, cudaMemcpyDeviceToHost));
            CK(cudaFree(d));
          });
          std::string why;
          for (int r = 0; r < R && why.empty(); ++r) {
            why = firstDiff(t, got[r], p.expect);
            if (!why.empty()) why = "rank " + std::to_string(r) + " " + why;
          }
          report(why.empty(), name + (why.empty() ? "" : ": " + why));
        });
      }
  // Past the maximum: refused with an error, nothing launched.
  guarded("tp=" + std::to_string(R) + " a message past the maximum is refused", [&] {
    bool threw = false;
    try {
      g.allReduce(0, ElemType::F16, reinterpret_cast<void*>(256), static_cast<int64_t>(g.maxBytes() / 2 + 1),
                  rk[0].stream);
    } catch (const std::exception&) {
      threw = true;
    }
    report(threw, "tp=" + std::to_string(R) + " a message past the maximum is refused");
  });
}

// The fused residual add (addTo) and the programmatic launch: resid = round(resid + round(sum)) on every rank,
// bit for bit, the part left as it was; twice in a row on the stream, so the second call's early launch waits
// for the first.
void testAddTo(P2PAllReduce& g, std::vector<Rank>& rk, std::mt19937& rng) {
  const int R = g.ranks();
  for (ElemType t : kTypes)
    for (int64_t count : {int64_t{4096}, int64_t{4097}, int64_t{13}})
      for (bool pdl : {false, true}) {
        const int offset = count == 4097 ? 1 : 0;  // an unaligned residual and part
        const std::string name = "tp=" + std::to_string(R) + " " + flashlab::cuda::elemTypeName(t) + " " +
                                 std::to_string(count) + " elements added into a residual" +
                                 (offset ? " (unaligned)" : "") + (pdl ? ", programmatic launch" : "") +
                                 ", twice: every rank's residual as the separate add would leave it";
        guarded(name, [&] {
          const Parts p1 = makeParts(t, R, count, rng), p2 = makeParts(t, R, count, rng);
          const Parts base = makeParts(t, 1, count, rng);  // the residual, the same on every rank
          const size_t bytes = p1.expect.size(), off = offset * esz(t);
          std::vector<unsigned char> want = base.in[0];
          for (const Parts* p : {&p1, &p2})
            for (int64_t i = 0; i < count; ++i)
              storeElem(t, loadElem(t, want.data() + i * esz(t)) + loadElem(t, p->expect.data() + i * esz(t)),
                        want.data() + i * esz(t));
          std::vector<std::vector<unsigned char>> got(R, std::vector<unsigned char>(bytes)), part(R, got[0]);
          onRanks(R, [&](int r) {
            CK(cudaSetDevice(rk[r].device));
            unsigned char *d1 = nullptr, *d2 = nullptr, *res = nullptr;
            CK(cudaMalloc(&d1, bytes + 16)), CK(cudaMalloc(&d2, bytes + 16)), CK(cudaMalloc(&res, bytes + 16));
            CK(cudaMemcpy(d1 + off, p1.in[r].data(), bytes, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(d2 + off, p2.in[r].data(), bytes, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(res + off, base.in[0].data(), bytes, cudaMemcpyHostToDevice));
            g.allReduce(r, t, d1 + off, count, rk[r].stream, res + off, pdl);
            g.allReduce(r, t, d2 + off, count, rk[r].stream, res + off, pdl);
            CK(cudaStreamSynchronize(rk[r].stream));
            g.checkError(r);
            CK(cudaMemcpy(got[r].data(), res + off, bytes, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(part[r].data(), d1 + off, bytes, cudaMemcpyDeviceToHost));
            CK(cudaFree(d1)), CK(cudaFree(d2)), CK(cudaFree(res));
          });
          std::string why;
          for (int r = 0; r < R && why.empty(); ++r) {
            why = firstDiff(t, got[r], want);
            if (!why.empty()) why = "rank " + std::to_string(r) + " residual " + why;
            if (why.empty() && part[r] != p1.in[r]) why = "rank " + std::to_string(r) + "'s part was changed";
          }
          report(why.empty(), name + (why.empty() ? "" : ": " + why));
        });
      }
}

void testBackToBack(P2PAllReduce& g, std::vector<Rank>& rk, std::mt19937& rng) {
  const int R = g.ranks();
  const std::string name = "tp=" + std::to_string(R) +
                           " 1000 back-to-back fp16 calls of varying sizes (1..8192 elements, 1..8 CTAs): all exact";
  guarded(name, [&] {
    const int calls = 1000;
    const int64_t slice = 8192;
    const ElemType t = ElemType::F16;
    std::vector<int64_t> counts(calls);
    for (int i = 0; i < calls; ++i) counts[i] = 1 + static_cast<int64_t>((i * 2654435761u) % slice);
    const Parts p = makeParts(t, R, slice * calls, rng);  // one reference: a prefix of each slice is used
    std::vector<std::vector<unsigned char>> got(R, std::vector<unsigned char>(p.expect.size()));
    onRanks(R, [&](int r) {
      CK(cudaSetDevice(rk[r].device));
      unsigned char* d = nullptr;
      CK(cudaMalloc(&d, p.expect.size()));
      CK(cudaMemcpy(d, p.in[r].data(), p.expect.size(), cudaMemcpyHostToDevice));
      for (int i = 0; i < calls; ++i) g.allReduce(r, t, d + i * slice * 2, counts[i], rk[r].stream);
      CK(cudaStreamSynchronize(rk[r].stream));
      g.checkError(r);
      CK(cudaMemcpy(got[r].data(), d, p.expect.size(), cudaMemcpyDeviceToHost));
      CK(cudaFree(d));
    });
    std::string why;
    for (int r = 0; r < R && why.empty(); ++r)
      for (int i = 0; i < calls && why.empty(); ++i) {
        const size_t b = i * slice * 2, n = counts[i] * 2;
        // Reduced prefix: the sum; the rest of the slice: the rank's own input, untouched.
        std::vector<unsigned char> head(got[r].begin() + b, got[r].begin() + b + n);
        std::vector<unsigned char> want(p.expect.begin() + b, p.expect.begin() + b + n);
        why = firstDiff(t, head, want);
        if (why.empty() && std::memcmp(got[r].data() + b + n, p.in[r].data() + b + n, slice * 2 - n) != 0)
          why = "wrote past its " + std::to_string(counts[i]) + " elements";
        if (!why.empty()) why = "rank " + std::to_string(r) + " call " + std::to_string(i) + " " + why;
      }
    report(why.empty(), name + (why.empty() ? "" : ": " + why));
  });
}

// Each rank records: copy staging A -> work A, all-reduce A (768), copy staging B -> work B, all-reduce B (4097),
// on its own thread; then 100 replays with new staging inputs, and an eager call of another size on work C
// between replays (every other iteration, cycling through 1, 7, 4096, 65536 elements where they fit).
void testGraphs(P2PAllReduce& g, std::vector<Rank>& rk, std::mt19937& rng) {
  const int R = g.ranks();
  for (ElemType t : kTypes) {
    const std::string name = "tp=" + std::to_string(R) + " " + flashlab::cuda::elemTypeName(t) +
                             " CUDA graph per rank (2 all-reduces) x 100 replays with new inputs, eager calls "
                             "between: all exact";
    guarded(name, [&] {
      const int64_t nA = 768, nB = 4097, eagerSizes[] = {1, 7, 4096, 65536};
      const size_t e = esz(t), maxC = 65536 * e;
      struct Bufs {
        unsigned char *stA, *stB, *wA, *wB, *wC;
        cudaGraphExec_t exec = nullptr;
      };
      std::vector<Bufs> b(R);
      onRanks(R, [&](int r) {
        CK(cudaSetDevice(rk[r].device));
        CK(cudaMalloc(&b[r].stA, nA * e)), CK(cudaMalloc(&b[r].stB, nB * e));
        CK(cudaMalloc(&b[r].wA, nA * e)), CK(cudaMalloc(&b[r].wB, nB * e)), CK(cudaMalloc(&b[r].wC, maxC));
        cudaGraph_t graph = nullptr;
        CK(cudaStreamBeginCapture(rk[r].stream, cudaStreamCaptureModeThreadLocal));
        CK(cudaMemcpyAsync(b[r].wA, b[r].stA, nA * e, cudaMemcpyDeviceToDevice, rk[r].stream));
        g.allReduce(r, t, b[r].wA, nA, rk[r].stream);
        CK(cudaMemcpyAsync(b[r].wB, b[r].stB, nB * e, cudaMemcpyDeviceToDevice, rk[r].stream));
        g.allReduce(r, t, b[r].wB, nB, rk[r].stream);
        CK(cudaStreamEndCapture(rk[r].stream, &graph));
        CK(cudaGraphInstantiate(&b[r].exec, graph, 0));
        CK(cudaGraphDestroy(graph));
      });
      std::string why;
      int eagerCalls = 0;
      for (int it = 0; it < 100 && why.empty(); ++it) {
        const Parts pa = makeParts(t, R, nA, rng), pb = makeParts(t, R, nB, rng);
        int64_t nC = 0;
        if (it % 2 == 1) {
          nC = eagerSizes[(it / 2) % 4];
          if (!g.fits(t, nC)) nC = 4097;
        }
        const Parts pc = makeParts(t, R, std::max<int64_t>(nC, 1), rng);
        std::vector<std::vector<unsigned char>> gotA(R), gotB(R), gotC(R);
        onRanks(R, [&](int r) {
          CK(cudaSetDevice(rk[r].device));
          CK(cudaMemcpy(b[r].stA, pa.in[r].data(), nA * e, cudaMemcpyHostToDevice));
          CK(cudaMemcpy(b[r].stB, pb.in[r].data(), nB * e, cudaMemcpyHostToDevice));
          CK(cudaGraphLaunch(b[r].exec, rk[r].stream));
          if (nC > 0) {
            CK(cudaMemcpyAsync(b[r].wC, pc.in[r].data(), nC * e, cudaMemcpyHostToDevice, rk[r].stream));
            g.allReduce(r, t, b[r].wC, nC, rk[r].stream);
          }
          CK(cudaStreamSynchronize(rk[r].stream));
          g.checkError(r);
          gotA[r].resize(nA * e), gotB[r].resize(nB * e), gotC[r].resize(nC * e);
          CK(cudaMemcpy(gotA[r].data(), b[r].wA, nA * e, cudaMemcpyDeviceToHost));
          CK(cudaMemcpy(gotB[r].data(), b[r].wB, nB * e, cudaMemcpyDeviceToHost));
          if (nC > 0) CK(cudaMemcpy(gotC[r].data(), b[r].wC, nC * e, cudaMemcpyDeviceToHost));
        });
        if (nC > 0) ++eagerCalls;
        for (int r = 0; r < R && why.empty(); ++r) {
          std::string d = firstDiff(t, gotA[r], pa.expect);
          if (d.empty()) d = firstDiff(t, gotB[r], pb.expect);
          if (d.empty() && nC > 0) d = firstDiff(t, gotC[r], pc.expect);
          if (!d.empty()) why = "replay " + std::to_string(it) + " rank " + std::to_string(r) + " " + d;
        }
      }
      for (int r = 0; r < R; ++r) {
        cudaSetDevice(rk[r].device);
        cudaGraphExecDestroy(b[r].exec);
        cudaFree(b[r].stA), cudaFree(b[r].stB), cudaFree(b[r].wA), cudaFree(b[r].wB), cudaFree(b[r].wC);
      }
      report(why.empty() && eagerCalls == 50,
             name + (why.empty() ? " (" + std::to_string(eagerCalls) + " eager calls)" : ": " + why));
    });
  }
}

// A group of its own with a short bound: only rank 0 calls, so its kernel must give up and say which shard it
// waited for; the group then refuses further calls.
void testTimeout(const std::vector<int>& devices, std::vector<Rank>& rk) {
  const int R = static_cast<int>(devices.size());
  const std::string name = "tp=" + std::to_string(R) + " a missing peer ends the wait after 200 ms with a clear error";
  guarded(name, [&] {
    P2PAllReduce g(devices, flashlab::cuda::kP2PAllReduceMaxBytes, 200);
    CK(cudaSetDevice(rk[0].device));
    void* d = nullptr;
    CK(cudaMalloc(&d, 4096 * 2));
    CK(cudaMemset(d, 0, 4096 * 2));
    const auto t0 = std::chrono::steady_clock::now();
    g.allReduce(0, ElemType::F16, d, 4096, rk[0].stream);
    CK(cudaStreamSynchronize(rk[0].stream));
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::string msg;
    try {
      g.checkError(0);
    } catch (const std::exception& e) {
      msg = e.what();
    }
    bool refused = false;
    try {
      g.allReduce(0, ElemType::F16, d, 4096, rk[0].stream);
    } catch (const std::exception&) {
      refused = true;
    }
    CK(cudaFree(d));
    const int peer = g.timedOutPeer(0);
    const bool ok = msg.find("peer-to-peer all-reduce timed out waiting for shard ") != std::string::npos &&
                    peer >= 1 && peer < R && ms >= 150 && ms < 5000 && refused;
    report(ok, name + " (" + std::to_string(static_cast<int>(ms)) + " ms: \"" + msg + "\"" +
                   (refused ? ", later calls refused)" : ", a later call was NOT refused)"));
  });
}

// Median per-call latency of `calls` all-reduces of `bytes` (fp16) recorded in one graph per rank, replayed
// from every rank's thread at once; device time on rank 0 (events around its replay) divided by the calls.
double timeInGraphs(int R, std::vector<Rank>& rk, size_t bytes, const std::function<void(int, void*, int64_t)>& call) {
  const int calls = 200, reps = 11;
  const int64_t count = static_cast<int64_t>(bytes / 2);
  std::vector<void*> buf(R);
  std::vector<cudaGraphExec_t> exec(R);
  std::vector<cudaEvent_t> ev(2);
  onRanks(R, [&](int r) {
    CK(cudaSetDevice(rk[r].device));
    CK(cudaMalloc(&buf[r], bytes));
    CK(cudaMemset(buf[r], 0, bytes));  // zeros stay zeros: no infinities however often they are summed
    CK(cudaStreamSynchronize(rk[r].stream));
    cudaGraph_t graph = nullptr;
    CK(cudaStreamBeginCapture(rk[r].stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < calls; ++i) call(r, buf[r], count);
    CK(cudaStreamEndCapture(rk[r].stream, &graph));
    CK(cudaGraphInstantiate(&exec[r], graph, 0));
    CK(cudaGraphDestroy(graph));
  });
  CK(cudaSetDevice(rk[0].device));
  CK(cudaEventCreate(&ev[0])), CK(cudaEventCreate(&ev[1]));
  std::vector<double> us;
  for (int rep = 0; rep < reps + 2; ++rep) {
    float ms = 0;
    onRanks(R, [&](int r) {
      CK(cudaSetDevice(rk[r].device));
      if (r == 0) CK(cudaEventRecord(ev[0], rk[r].stream));
      CK(cudaGraphLaunch(exec[r], rk[r].stream));
      if (r == 0) CK(cudaEventRecord(ev[1], rk[r].stream));
      CK(cudaStreamSynchronize(rk[r].stream));
    });
    CK(cudaSetDevice(rk[0].device));
    CK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
    if (rep >= 2) us.push_back(1000.0 * ms / calls);  // the first two replays warm up
  }
  for (int r = 0; r < R; ++r) {
    cudaSetDevice(rk[r].device);
    cudaGraphExecDestroy(exec[r]);
    cudaFree(buf[r]);
  }
  cudaSetDevice(rk[0].device);
  cudaEventDestroy(ev[0]), cudaEventDestroy(ev[1]);
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

void testTiming(P2PAllReduce& g, const std::vector<int>& devices, std::vector<Rank>& rk) {
  const int R = g.ranks();
  guarded("tp=" + std::to_string(R) + " timing", [&] {
    std::vector<ncclComm_t> comms(R);
    NK(ncclCommInitAll(comms.data(), R, devices.data()));
    try {
      {  // NCCL loads and connects what it needs once, eagerly, before anything is recorded
        std::vector<void*> w(R);
        for (int r = 0; r < R; ++r) CK(cudaSetDevice(rk[r].device)), CK(cudaMalloc(&w[r], 64 << 10));
        NK(ncclGroupStart());
        for (int r = 0; r < R; ++r)
          CK(cudaSetDevice(rk[r].device)), NK(ncclAllReduce(w[r], w[r], 32 << 10, ncclFloat16, ncclSum, comms[r], rk[r].stream));
        NK(ncclGroupEnd());
        for (int r = 0; r < R; ++r)
          CK(cudaSetDevice(rk[r].device)), CK(cudaStreamSynchronize(rk[r].stream)), CK(cudaFree(w[r]));
      }
      for (size_t bytes : {size_t{8} << 10, size_t{64} << 10}) {
        const double nccl = timeInGraphs(R, rk, bytes, [&](int r, void* p, int64_t n) {
          NK(ncclAllReduce(p, p, static_cast<size_t>(n), ncclFloat16, ncclSum, comms[r], rk[r].stream));
        });
        const double p2p = timeInGraphs(R, rk, bytes, [&](int r, void* p, int64_t n) {
          g.allReduce(r, ElemType::F16, p, n, rk[r].stream);
        });
        for (int r = 0; r < R; ++r) g.checkError(r);
        std::printf("TIME tp=%d fp16 %zu KB all-reduce in CUDA graphs (200 a graph, median of 11): nccl %.2f us, "
                    "p2p %.2f us (%.2fx)\n",
                    R, bytes >> 10, nccl, p2p, nccl / p2p);
        std::fflush(stdout);
      }
    } catch (...) {
      for (ncclComm_t c : comms) ncclCommDestroy(c);
      throw;
    }
    for (ncclComm_t c : comms) ncclCommDestroy(c);
  });
}

}  // namespace

int main(int argc, char** argv) {
  bool timing = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-timing") == 0) {
      timing = false;
    } else {
      std::fprintf(stderr, "usage: allreduce_tests [--no-timing]\n");
      return 2;
    }
  }
  setenv("NCCL_NVLS_ENABLE", "0", 0);     // as the engine: no NVLink multicast
  setenv("NCCL_RUNTIME_CONNECT", "0", 0);  // connections at init, not inside the first recorded call
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::printf("FAIL no CUDA device is visible (%s)\n", err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 1;
  }
  std::mt19937 rng(20261126);
  for (int tp : {2, 4}) {
    if (count < tp) {
      std::printf("SKIP tp=%d: only %d GPU(s) visible, %d needed\n", tp, count, tp);
      continue;
    }
    std::vector<int> devices(tp);
    for (int d = 0; d < tp; ++d) devices[d] = d;
    std::string why;
    if (!flashlab::cuda::p2pAllReducePossible(devices, &why)) {
      report(false, "tp=" + std::to_string(tp) + " peer access between every pair of GPUs: " + why);
      continue;
    }
    std::vector<Rank> rk(tp);
    for (int r = 0; r < tp; ++r) {
      rk[r].device = r;
      CK(cudaSetDevice(r));
      CK(cudaStreamCreateWithFlags(&rk[r].stream, cudaStreamNonBlocking));
    }
    guarded("tp=" + std::to_string(tp) + " group", [&] {
      // Two groups alive at once (two engines in one process): each keeps its own buffers and epochs.
      P2PAllReduce g(devices);
      P2PAllReduce other(devices);
      testSizes(g, rk, rng);
      testAddTo(g, rk, rng);
      testBackToBack(g, rk, rng);
      testSizes(other, rk, rng);
      testGraphs(g, rk, rng);
      testBackToBack(other, rk, rng);
      if (timing) testTiming(g, devices, rk);
    });
    testTimeout(devices, rk);
    for (int r = 0; r < tp; ++r) {
      cudaSetDevice(r);
      cudaStreamDestroy(rk[r].stream);
    }
  }
  std::printf("allreduce_tests: %d checks, %d failed\n", g_checks, g_failed);
  return g_failed == 0 ? 0 : 1;
}
