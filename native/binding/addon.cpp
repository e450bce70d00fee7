// Node-API binding: converts JavaScript values to the core's plain structs and back. Long work (engine
// creation, weight conversion, generate) runs off the main thread and settles a Promise; generated tokens
// stream back through a thread-safe function. No model or device logic here.
#include <napi.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <string>

#include "../src/engine.h"

#ifndef FLASHLAB_VERSION
#define FLASHLAB_VERSION "0.1.0"
#endif

namespace {

using flashlab::Engine;

struct AddonData {
  Napi::FunctionReference engineCtor;
};

Napi::Error makeError(Napi::Env env, const std::string& message, bool aborted) {
  Napi::Error e = Napi::Error::New(env, message);
  if (aborted) e.Set("name", Napi::String::New(env, "AbortError"));
  return e;
}

// ---- argument reading: every malformed value is a TypeError naming the field
int readInt(const Napi::Object& o, const char* key, int fallback, int min, int max) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(key) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || d < min || d > max)
    throw Napi::TypeError::New(o.Env(), std::string(key) + " must be an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "], got " + v.ToString().Utf8Value());
  return static_cast<int>(d);
}

double readNumber(const Napi::Object& o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue()))
    throw Napi::TypeError::New(o.Env(), std::string(key) + " must be a finite number");
  return v.As<Napi::Number>().DoubleValue();
}

bool readBool(const Napi::Object& o, const char* key, bool fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsBoolean()) throw Napi::TypeError::New(o.Env(), std::string(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string readString(const Napi::Object& o, const char* key, const std::string& fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsString()) throw Napi::TypeError::New(o.Env(), std::string(key) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

flashlab::DType parseDtype(Napi::Env env, const std::string& s) {
  if (s == "fp32" || s == "F32") return flashlab::DType::F32;
  if (s == "fp16" || s == "F16") return flashlab::DType::F16;
  if (s == "bf16" || s == "BF16") return flashlab::DType::BF16;
  throw Napi::TypeError::New(env, "unknown dtype '" + s + "'");
}

flashlab::ModelConfig parseConfig(const Napi::Object& c) {
  flashlab::ModelConfig m;
  std::string family = readString(c, "family", "");
  if (family == "gpt2") m.family = flashlab::Family::GPT2;
  else if (family == "chatglm2") m.family = flashlab::Family::ChatGLM2;
  else throw Napi::TypeError::New(c.Env(), "config.family must be 'gpt2' or 'chatglm2', got '" + family + "'");
  m.name = readString(c, "name", family);
  const int big = 1 << 30;
  m.vocabSize = readInt(c, "vocabSize", 0, 1, big);
  m.hiddenSize = readInt(c, "hiddenSize", 0, 1, big);
  m.numLayers = readInt(c, "numLayers", 0, 1, big);
  m.numHeads = readInt(c, "numHeads", 0, 1, big);
  m.numKvHeads = readInt(c, "numKvHeads", 0, 1, big);
  m.headDim = readInt(c, "headDim", 0, 1, big);
  m.ffnHiddenSize = readInt(c, "ffnHiddenSize", 0, 1, big);
  m.maxPositions = readInt(c, "maxPositions", 0, 1, big);
  m.normEps = readNumber(c, "normEps", 1e-5);
  return m;
}

class CreateWorker : public Napi::AsyncWorker {
 public:
  CreateWorker(Napi::Env env, flashlab::EngineOptions o)
      : Napi::AsyncWorker(env, "flashlab.create"), deferred_(Napi::Promise::Deferred::New(env)), options_(std::move(o)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      engine_ = std::make_shared<Engine>(options_);
    } catch (const std::bad_alloc&) {
      SetError("out of host memory while creating the engine");
    } catch (const std::exception& e) {
      SetError(e.what());
    } catch (...) {
      // An exception escaping a worker thread would end the process; the caller gets an Error instead.
      SetError("creating the engine failed with an unknown native error");
    }
  }
  void OnOK() override;
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  flashlab::EngineOptions options_;
  std::shared_ptr<Engine> engine_;
};

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeEngine",
                       {InstanceMethod("setWeight", &EngineWrap::SetWeight),
                        InstanceMethod("finishLoading", &EngineWrap::FinishLoading),
                        InstanceMethod("generate", &EngineWrap::Generate),
                        InstanceMethod("cancel", &EngineWrap::Cancel),
                        InstanceMethod("memory", &EngineWrap::Memory),
                        InstanceMethod("dispose", &EngineWrap::Dispose),
                        InstanceAccessor("disposed", &EngineWrap::Disposed, nullptr)});
  }

  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw Napi::TypeError::New(info.Env(), "NativeEngine is created by createEngine(), not with new");
    engine_ = *info[0].As<Napi::External<std::shared_ptr<Engine>>>().Data();
  }

  // Settled by the generate worker: frees the engine for the next call.
  void release() { busy_ = false; }
  std::shared_ptr<std::atomic<bool>> cancelFlag() { return cancel_; }

 private:
  std::shared_ptr<Engine> live(Napi::Env env, const char* what) {
    if (!engine_) throw Napi::Error::New(env, std::string("engine is disposed: cannot ") + what);
    return engine_;
  }
  void claim(Napi::Env env, const char* what) {
    if (busy_)
      throw Napi::Error::New(env, std::string("engine is busy with another call: cannot ") + what +
                                      " until it finishes (one generate per engine at a time)");
    busy_ = true;
  }

  Napi::Value SetWeight(const Napi::CallbackInfo& info);
  Napi::Value FinishLoading(const Napi::CallbackInfo& info) {
    auto e = live(info.Env(), "finish loading");
    if (busy_) throw Napi::Error::New(info.Env(), "engine is busy: cannot finish loading while a call runs");
    try {
      e->finishLoading();
    } catch (const std::exception& ex) {
      throw Napi::Error::New(info.Env(), ex.what());
    } catch (...) {
      throw Napi::Error::New(info.Env(), "finishing the weights failed with an unknown native error");
    }
    return info.Env().Undefined();
  }
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    cancel_->store(true);
    return info.Env().Undefined();
  }
  Napi::Value Memory(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    // A running generate keeps its own reference and sees the cancel flag; memory goes when it ends.
    cancel_->store(true);
    engine_.reset();
    return info.Env().Undefined();
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !engine_); }

  std::shared_ptr<Engine> engine_;
  std::shared_ptr<std::atomic<bool>> cancel_ = std::make_shared<std::atomic<bool>>(false);
  bool busy_ = false;
  friend class GenerateWorker;
  friend class SetWeightWorker;
};

void CreateWorker::OnOK() {
  Napi::Env env = Env();
  auto* data = env.GetInstanceData<AddonData>();
  auto holder = std::make_unique<std::shared_ptr<Engine>>(engine_);
  Napi::Object obj = data->engineCtor.New({Napi::External<std::shared_ptr<Engine>>::New(env, holder.get())});
  deferred_.Resolve(obj);
}

class SetWeightWorker : public Napi::AsyncWorker {
 public:
  SetWeightWorker(Napi::Env env, EngineWrap* wrap, Napi::Object self, std::shared_ptr<Engine> engine, std::string name,
                  flashlab::DType dtype, std::vector<int64_t> shape, Napi::Buffer<uint8_t> buf)
      : Napi::AsyncWorker(env, "flashlab.setWeight"),
        deferred_(Napi::Promise::Deferred::New(env)),
        wrap_(wrap),
        engine_(std::move(engine)),
        name_(std::move(name)),
        dtype_(dtype),
        shape_(std::move(shape)),
        data_(buf.Data()),
        bytes_(buf.Length()) {
    bufRef_ = Napi::Persistent(buf.As<Napi::Object>());  // keeps the bytes alive while the worker reads them
    selfRef_ = Napi::Persistent(self);
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      used_ = engine_->setWeight(name_, dtype_, shape_, data_, bytes_);
    } catch (const std::bad_alloc&) {
      SetError("out of host memory while loading weight '" + name_ + "'");
    } catch (const std::exception& e) {
      SetError(e.what());
    } catch (...) {
      SetError("loading weight '" + name_ + "' failed with an unknown native error");
    }
  }
  void OnOK() override {
    wrap_->release();
    deferred_.Resolve(Napi::Boolean::New(Env(), used_));
  }
  void OnError(const Napi::Error& e) override {
    wrap_->release();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  EngineWrap* wrap_;
  Napi::ObjectReference bufRef_, selfRef_;
  std::shared_ptr<Engine> engine_;
  std::string name_;
  flashlab::DType dtype_;
  std::vector<int64_t> shape_;
  const uint8_t* data_;
  size_t bytes_;
  bool used_ = false;
};

Napi::Value EngineWrap::SetWeight(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto e = live(env, "set a weight");
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsString() || !info[2].IsArray() || !info[3].IsBuffer())
    throw Napi::TypeError::New(env, "setWeight(name: string, dtype: 'F32'|'F16'|'BF16', shape: number[], data: Buffer)");
  std::string name = info[0].As<Napi::String>().Utf8Value();
  std::string dt = info[1].As<Napi::String>().Utf8Value();
  if (dt != "F32" && dt != "F16" && dt != "BF16")
    throw Napi::TypeError::New(env, "tensor '" + name + "' has dtype '" + dt + "'; the engine reads F32, F16 and BF16");
  Napi::Array arr = info[2].As<Napi::Array>();
  std::vector<int64_t> shape;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value d = arr.Get(i);
    double v = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (!(v >= 0) || v != std::floor(v) || v > 9.0e15)
      throw Napi::TypeError::New(env, "tensor '" + name + "' has an invalid shape entry");
    shape.push_back(static_cast<int64_t>(v));
  }
  claim(env, "set a weight");
  auto* w = new SetWeightWorker(env, this, info.This().As<Napi::Object>(), e, name, parseDtype(env, dt), shape,
                                info[3].As<Napi::Buffer<uint8_t>>());
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Object memoryObject(Napi::Env env, const flashlab::MemoryFigures& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("peakBytes", m.peakBytes);
  o.Set("weightsBytes", m.weightsBytes);
  o.Set("kvCacheBytes", m.kvCacheBytes);
  o.Set("activationsPeakBytes", m.activationsPeakBytes);
  return o;
}

Napi::Value EngineWrap::Memory(const Napi::CallbackInfo& info) {
  return memoryObject(info.Env(), live(info.Env(), "report memory")->memory());
}

// What the generate worker hands to the finaliser of its thread-safe function, which settles the Promise
// only after every queued token callback has run.
struct GenerateOutcome {
  explicit GenerateOutcome(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise::Deferred deferred;
  Napi::ObjectReference self;
  EngineWrap* wrap = nullptr;
  bool ok = false, aborted = false;
  std::string error;
  flashlab::GenerateResult result;
};

Napi::Value resultObject(Napi::Env env, const flashlab::GenerateResult& r, bool dumpLogits) {
  auto rows = [&](const std::vector<std::vector<int32_t>>& v) {
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      Napi::Array row = Napi::Array::New(env, v[i].size());
      for (size_t j = 0; j < v[i].size(); ++j) row.Set(static_cast<uint32_t>(j), v[i][j]);
      a.Set(static_cast<uint32_t>(i), row);
    }
    return a;
  };
  auto f32 = [&](const std::vector<float>& v) {
    Napi::Float32Array a = Napi::Float32Array::New(env, v.size());
    std::copy(v.begin(), v.end(), a.Data());
    return a;
  };
  Napi::Object o = Napi::Object::New(env);
  o.Set("tokens", rows(r.tokens));
  o.Set("newTokens", rows(r.newTokens));
  Napi::Object t = Napi::Object::New(env);
  t.Set("prefillMs", r.prefillMs);
  Napi::Array d = Napi::Array::New(env, r.decodeMs.size());
  for (size_t i = 0; i < r.decodeMs.size(); ++i) d.Set(static_cast<uint32_t>(i), r.decodeMs[i]);
  t.Set("decodeMs", d);
  t.Set("totalMs", r.totalMs);
  t.Set("tpotMs", r.tpotMs);
  t.Set("tokensPerSec", r.tokensPerSec);
  o.Set("timings", t);
  o.Set("memory", memoryObject(env, r.memory));
  o.Set("peakMemBytes", r.memory.peakBytes);
  o.Set("stoppedBy", r.stoppedByStopToken ? "stop" : "maxTokens");
  o.Set("decodeGraphs", r.decodeGraphs);
  o.Set("decodeOneLaunch", r.decodeOneLaunch);
  if (r.stepBreakdown) {
    Napi::Object st = Napi::Object::New(env);
    st.Set("stepMs", r.stepBreakdown->stepMs);
    Napi::Array ar = Napi::Array::New(env, r.stepBreakdown->allReduceMs.size());
    for (size_t i = 0; i < r.stepBreakdown->allReduceMs.size(); ++i)
      ar.Set(static_cast<uint32_t>(i), r.stepBreakdown->allReduceMs[i]);
    st.Set("allReduceMs", ar);
    o.Set("stepTiming", st);
  }
  if (dumpLogits) {
    Napi::Array last = Napi::Array::New(env, r.logitsLast.size());
    for (size_t b = 0; b < r.logitsLast.size(); ++b) last.Set(static_cast<uint32_t>(b), f32(r.logitsLast[b]));
    o.Set("logitsLast", last);
    Napi::Array steps = Napi::Array::New(env, r.logitsSteps.size());
    for (size_t b = 0; b < r.logitsSteps.size(); ++b) {
      Napi::Array row = Napi::Array::New(env, r.logitsSteps[b].size());
      for (size_t s = 0; s < r.logitsSteps[b].size(); ++s) row.Set(static_cast<uint32_t>(s), f32(r.logitsSteps[b][s]));
      steps.Set(static_cast<uint32_t>(b), row);
    }
    o.Set("logitsSteps", steps);
  }
  return o;
}

class GenerateWorker : public Napi::AsyncWorker {
 public:
  GenerateWorker(Napi::Env env, std::shared_ptr<Engine> engine, flashlab::GenerateRequest req,
                 std::shared_ptr<std::atomic<bool>> cancel, Napi::ThreadSafeFunction tsfn,
                 std::shared_ptr<GenerateOutcome> outcome)
      : Napi::AsyncWorker(env, "flashlab.generate"),
        engine_(std::move(engine)),
        req_(std::move(req)),
        cancel_(std::move(cancel)),
        tsfn_(tsfn),
        outcome_(std::move(outcome)) {}

  void Execute() override {
    try {
      auto onTokens = [this](int step, const std::vector<int32_t>& tokens) {
        // A failed call means the environment is shutting down; the generate still finishes normally.
        tsfn_.BlockingCall([step, tokens](Napi::Env env, Napi::Function cb) {
          Napi::Array a = Napi::Array::New(env, tokens.size());
          for (size_t i = 0; i < tokens.size(); ++i) a.Set(static_cast<uint32_t>(i), tokens[i]);
          try {
            cb.Call({Napi::Number::New(env, step), a});
          } catch (const Napi::Error&) {
            // The wrapper's callback never throws; a raw caller's exception must not take the process down.
          }
        });
      };
      outcome_->result = engine_->generate(req_, onTokens, *cancel_);
      outcome_->ok = true;
    } catch (const flashlab::Cancelled& e) {
      outcome_->aborted = true;
      outcome_->error = e.what();
    } catch (const std::bad_alloc&) {
      outcome_->error = "out of memory during generate";
    } catch (const std::exception& e) {
      outcome_->error = e.what();
    } catch (...) {
      outcome_->error = "generate failed with an unknown native error";
    }
    engine_.reset();
  }
  // Settling happens in the thread-safe function's finaliser, after the queued token callbacks.
  void OnOK() override { tsfn_.Release(); }
  void OnError(const Napi::Error&) override { tsfn_.Release(); }

 private:
  std::shared_ptr<Engine> engine_;
  flashlab::GenerateRequest req_;
  std::shared_ptr<std::atomic<bool>> cancel_;
  Napi::ThreadSafeFunction tsfn_;
  std::shared_ptr<GenerateOutcome> outcome_;
};

flashlab::GenerateRequest parseRequest(Napi::Env env, const Napi::Object& o, int vocab) {
  flashlab::GenerateRequest r;
  Napi::Value ids = o.Get("inputIds");
  if (!ids.IsArray()) throw Napi::TypeError::New(env, "inputIds must be an array of token-id arrays");
  Napi::Array rows = ids.As<Napi::Array>();
  for (uint32_t i = 0; i < rows.Length(); ++i) {
    Napi::Value row = rows.Get(i);
    if (!row.IsArray()) throw Napi::TypeError::New(env, "inputIds[" + std::to_string(i) + "] must be an array");
    Napi::Array a = row.As<Napi::Array>();
    std::vector<int32_t> v;
    v.reserve(a.Length());
    for (uint32_t j = 0; j < a.Length(); ++j) {
      Napi::Value t = a.Get(j);
      double d = t.IsNumber() ? t.As<Napi::Number>().DoubleValue() : -1;
      if (!(d >= 0) || d != std::floor(d) || d >= vocab)
        throw Napi::TypeError::New(env, "inputIds[" + std::to_string(i) + "][" + std::to_string(j) + "] = " + t.ToString().Utf8Value() +
                                            " is not a token id of the vocabulary (0.." + std::to_string(vocab - 1) + ")");
      v.push_back(static_cast<int32_t>(d));
    }
    r.inputIds.push_back(std::move(v));
  }
  r.maxNewTokens = readInt(o, "maxNewTokens", 1, 1, 1 << 20);
  std::string att = readString(o, "attention", "fa2");
  if (att == "naive") r.attention = flashlab::AttentionMethod::Naive;
  else if (att == "fa1") r.attention = flashlab::AttentionMethod::FA1;
  else if (att == "fa2") r.attention = flashlab::AttentionMethod::FA2;
  else throw Napi::TypeError::New(env, "attention must be 'naive', 'fa1' or 'fa2', got '" + att + "'");
  r.kvCache = readBool(o, "kvCache", true);
  r.dumpLogits = readBool(o, "dumpLogits", false);
  r.cudaGraphs = readBool(o, "cudaGraphs", true);
  r.stepBreakdown = readBool(o, "stepBreakdown", false);
  Napi::Value sv = o.Get("sampling");
  if (sv.IsObject()) {
    Napi::Object s = sv.As<Napi::Object>();
    r.sampling.greedy = readBool(s, "greedy", true);
    r.sampling.temperature = static_cast<float>(readNumber(s, "temperature", 1.0));
    r.sampling.topK = readInt(s, "topK", 0, 0, 1 << 30);
    r.sampling.topP = static_cast<float>(readNumber(s, "topP", 1.0));
    r.sampling.repetitionPenalty = static_cast<float>(readNumber(s, "repetitionPenalty", 1.0));
    double seed = readNumber(s, "seed", 0);
    if (seed < 0 || seed != std::floor(seed)) throw Napi::TypeError::New(env, "sampling.seed must be a non-negative integer");
    r.sampling.seed = static_cast<uint64_t>(seed);
    Napi::Value st = s.Get("stopTokens");
    if (st.IsArray()) {
      Napi::Array a = st.As<Napi::Array>();
      for (uint32_t j = 0; j < a.Length(); ++j) {
        Napi::Value t = a.Get(j);
        if (!t.IsNumber()) throw Napi::TypeError::New(env, "sampling.stopTokens must hold token ids");
        r.sampling.stopTokens.push_back(t.As<Napi::Number>().Int32Value());
      }
    } else if (!st.IsUndefined() && !st.IsNull()) {
      throw Napi::TypeError::New(env, "sampling.stopTokens must be an array");
    }
  } else if (!sv.IsUndefined() && !sv.IsNull()) {
    throw Napi::TypeError::New(env, "sampling must be an object");
  }
  return r;
}

Napi::Value EngineWrap::Generate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto engine = live(env, "generate");
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction())
    throw Napi::TypeError::New(env, "generate(request: object, onTokens: (step, tokens) => void)");
  if (!engine->ready()) throw Napi::Error::New(env, "weights are not loaded yet: finish loading before generate");
  flashlab::GenerateRequest req = parseRequest(env, info[0].As<Napi::Object>(), engine->config().vocabSize);
  const bool dump = req.dumpLogits;
  claim(env, "generate");
  cancel_->store(false);
  struct Unclaim {  // until the worker owns the call, a throw must give the engine back
    EngineWrap* w;
    bool armed = true;
    ~Unclaim() {
      if (armed) w->release();
    }
  } unclaim{this};
  auto outcome = std::make_shared<GenerateOutcome>(env);
  outcome->self = Napi::Persistent(info.This().As<Napi::Object>());
  outcome->wrap = this;
  Napi::Promise promise = outcome->deferred.Promise();
  Napi::ThreadSafeFunction tsfn = Napi::ThreadSafeFunction::New(
      env, info[1].As<Napi::Function>(), "flashlab.tokens", 0, 1, [outcome, dump](Napi::Env env) {
        // Runs on the main thread once every queued token callback has run, or while the environment shuts
        // down; a failing Node-API call must not escape from here.
        try {
          Napi::HandleScope scope(env);
          outcome->wrap->release();
          if (outcome->ok) {
            try {
              outcome->deferred.Resolve(resultObject(env, outcome->result, dump));
            } catch (const Napi::Error& e) {
              outcome->deferred.Reject(e.Value());
            }
          } else {
            outcome->deferred.Reject(makeError(env, outcome->error, outcome->aborted).Value());
          }
          outcome->self.Reset();
        } catch (...) {
        }
      });
  try {
    auto* w = new GenerateWorker(env, engine, std::move(req), cancel_, tsfn, outcome);
    w->Queue();
  } catch (...) {
    tsfn.Release();  // its finaliser releases the engine and rejects
    unclaim.armed = false;
    throw;
  }
  unclaim.armed = false;
  return promise;
}

Napi::Value CreateEngine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "createEngine(options: object)");
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Value cfg = o.Get("config");
  if (!cfg.IsObject()) throw Napi::TypeError::New(env, "options.config must be a model config object");
  flashlab::EngineOptions eo;
  eo.config = parseConfig(cfg.As<Napi::Object>());
  std::string weights = readString(o, "weights", "random");
  if (weights != "random" && weights != "load") throw Napi::TypeError::New(env, "options.weights must be 'random' or 'load'");
  eo.randomWeights = weights == "random";
  double seed = readNumber(o, "seed", 0);
  if (seed < 0 || seed != std::floor(seed)) throw Napi::TypeError::New(env, "seed must be a non-negative integer");
  eo.seed = static_cast<uint64_t>(seed);
  eo.dtype = parseDtype(env, readString(o, "dtype", "fp32"));
  eo.device = readString(o, "device", "cpu");
  eo.tp = readInt(o, "tp", 1, 1, 1024);
  eo.maxBatch = readInt(o, "maxBatch", 8, 1, 1 << 20);
  eo.maxSeqLen = readInt(o, "maxSeqLen", 0, 0, 1 << 30);
  eo.threads = readInt(o, "threads", 0, 0, 4096);
  auto* w = new CreateWorker(env, std::move(eo));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", FLASHLAB_VERSION);
  o.Set("build", Engine::buildInfo());
  auto b = Engine::backends();
  Napi::Array a = Napi::Array::New(env, b.size());
  for (size_t i = 0; i < b.size(); ++i) a.Set(static_cast<uint32_t>(i), b[i]);
  o.Set("backends", a);
  return o;
}

Napi::Value MeasureCopyBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double bytes = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 256.0 * (1 << 20);
  int reps = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 5;
  int threads = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 0;
  if (!(bytes >= 4096 && bytes <= 16.0 * (1ull << 30)) || reps < 1)
    throw Napi::RangeError::New(env, "measureCopyBandwidth(bytes in [4 KiB, 16 GiB], repeats >= 1, threads)");
  return Napi::Number::New(env, flashlab::measureCopyBandwidth(static_cast<size_t>(bytes), reps, threads));
}

Napi::Value MeasureReadBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double bytes = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 256.0 * (1 << 20);
  int reps = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 5;
  int threads = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 0;
  if (!(bytes >= 4096 && bytes <= 16.0 * (1ull << 30)) || reps < 1)
    throw Napi::RangeError::New(env, "measureReadBandwidth(bytes in [4 KiB, 16 GiB], repeats >= 1, threads)");
  return Napi::Number::New(env, flashlab::measureReadBandwidth(static_cast<size_t>(bytes), reps, threads));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->engineCtor = Napi::Persistent(EngineWrap::Define(env));
  env.SetInstanceData(data);
  exports.Set("createEngine", Napi::Function::New(env, CreateEngine));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("measureCopyBandwidth", Napi::Function::New(env, MeasureCopyBandwidth));
  exports.Set("measureReadBandwidth", Napi::Function::New(env, MeasureReadBandwidth));
  return exports;
}

}  // namespace

NODE_API_MODULE(flashlab_engine, Init)
