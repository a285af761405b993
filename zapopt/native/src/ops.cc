// The ai.zapopt custom-op library for onnxruntime's CPU execution provider:
// ZeroSkipConv (a Conv that skips zero inputs) and ZapConv (docs/zap_op.md).
//
// Registered with SessionOptions.register_custom_ops_library(path); onnxruntime hands over its
// API table in RegisterCustomOps, so nothing here links against libonnxruntime. Each kernel
// keeps that table, its packed weights and its attributes; nothing is global and mutable.
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "dispatch.h"
#include "ort_helpers.h"
#include "sparse_conv.h"
#include "zap_conv.h"

#define ZAPOPT_EXPORT extern "C" __attribute__((visibility("default")))

namespace zapopt {
namespace {

constexpr const char* kDomain = "ai.zapopt";
enum class OpKind { kZeroSkipConv, kZapConv };

// ZapConv inputs: X W B PW1 PB1 PW2 PB2 Skip; ZeroSkipConv inputs: X W B Skip.
constexpr size_t kZapInputs = 8, kZeroSkipInputs = 4;

// Scratch memory from the session's CPU allocator (its arena keeps the blocks between runs);
// the heap if onnxruntime has none to give.
class OrtScratch final : public Scratch {
 public:
  OrtScratch(const OrtApi* api, const OrtKernelContext* context, const OrtMemoryInfo* info) : api_(api) {
    if (info == nullptr) return;
#if defined(__SANITIZE_ADDRESS__)
    return;  // the sanitizer build keeps the heap: an overrun inside an arena block goes unseen
#endif
    if (OrtStatus* status = api->KernelContext_GetAllocator(context, info, &allocator_)) {
      api->ReleaseStatus(status);
      allocator_ = nullptr;
    }
  }
  OrtScratch(const OrtScratch&) = delete;
  OrtScratch& operator=(const OrtScratch&) = delete;
  ~OrtScratch() {
    if (allocator_ != nullptr) api_->ReleaseAllocator(allocator_);
  }
  void* allocate(size_t bytes) const override {
    if (allocator_ == nullptr) return heap_.allocate(bytes);
    void* p = allocator_->Alloc(allocator_, bytes);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void release(void* p) const noexcept override {
    if (allocator_ == nullptr) {
      heap_.release(p);
    } else {
      allocator_->Free(allocator_, p);
    }
  }

 private:
  const OrtApi* api_;
  OrtAllocator* allocator_ = nullptr;
  HeapScratch heap_;
};

struct MemoryInfoDeleter {
  const OrtApi* api;
  void operator()(OrtMemoryInfo* info) const { api->ReleaseMemoryInfo(info); }
};

struct Kernel {
  const OrtApi* api = nullptr;
  std::unique_ptr<OrtMemoryInfo, MemoryInfoDeleter> cpu_memory{nullptr, MemoryInfoDeleter{nullptr}};
  OpKind kind = OpKind::kZeroSkipConv;
  std::string label;  // "ZeroSkipConv node 'name'"
  std::unique_ptr<PackedConv> conv;
  bool relu = true;
  float clip_max = INFINITY;
  ZapParams zap;
  size_t skip_index = 3;
};

const char* op_name(OpKind kind) { return kind == OpKind::kZapConv ? "ZapConv" : "ZeroSkipConv"; }

std::vector<int64_t> checked_ints(const KernelInfoReader& r, const char* name, std::vector<int64_t> fallback,
                                  size_t length, int64_t minimum) {
  std::vector<int64_t> v = r.ints_attribute(name, fallback);
  bool ok = v.size() == length;
  for (int64_t x : v) ok = ok && x >= minimum;
  if (!ok) {
    throw OpError{std::string("attribute ") + name + " must be " + std::to_string(length) + " ints >= " +
                  std::to_string(minimum) + " (2-D convolutions, explicit pads)"};
  }
  return v;
}

float checked_clip_max(const KernelInfoReader& r) {
  const float clip = r.float_attribute("clip_max", INFINITY);
  if (std::isnan(clip) || clip <= 0) throw OpError{"attribute clip_max must be > 0 (+inf for ReLU)"};
  return clip;
}

std::vector<float> constant_floats(const KernelInfoReader& r, size_t index, const char* label,
                                   const std::vector<int64_t>& shape) {
  TensorView v = r.constant_input(index, label);
  if (v.shape != shape) {
    std::string want = "[";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    throw OpError{std::string("input ") + label + " must have shape " + want + "]"};
  }
  const float* data = static_cast<const float*>(v.data);
  return std::vector<float>(data, data + v.elements());
}

std::unique_ptr<Kernel> create_kernel(OpKind kind, const OrtApi* api, const OrtKernelInfo* info) {
  KernelInfoReader r(api, info);
  auto kernel = std::make_unique<Kernel>();
  kernel->api = api;
  kernel->kind = kind;
  kernel->label = std::string(op_name(kind)) + " node '" + r.node_name() + "'";
  kernel->skip_index = kind == OpKind::kZapConv ? kZapInputs - 1 : kZeroSkipInputs - 1;

  const std::string auto_pad = r.string_attribute("auto_pad", "NOTSET");
  if (auto_pad != "NOTSET") throw OpError{"auto_pad is not supported: give explicit pads [top, left, bottom, right]"};
  ConvGeometry geo;
  TensorView w = r.constant_input(1, "W");
  if (w.shape.size() != 4 || w.elements() == 0) {
    throw OpError{"input W must be a non-empty 4-D tensor [C_out, C_in/group, kH, kW]"};
  }
  geo.group = r.int_attribute("group", 1);
  if (geo.group < 1) throw OpError{"attribute group must be >= 1"};
  if (w.shape[0] % geo.group != 0) throw OpError{"C_out (W's first dimension) must be divisible by group"};
  geo.c_out = w.shape[0];
  geo.c_in = w.shape[1] * geo.group;
  geo.kh = w.shape[2];
  geo.kw = w.shape[3];
  const auto strides = checked_ints(r, "strides", {1, 1}, 2, 1);
  const auto dilations = checked_ints(r, "dilations", {1, 1}, 2, 1);
  const auto pads = checked_ints(r, "pads", {0, 0, 0, 0}, 4, 0);
  geo.stride_h = strides[0], geo.stride_w = strides[1];
  geo.dilation_h = dilations[0], geo.dilation_w = dilations[1];
  geo.pad_top = pads[0], geo.pad_left = pads[1], geo.pad_bottom = pads[2], geo.pad_right = pads[3];

  std::vector<float> bias;
  if (r.has_input(2)) bias = constant_floats(r, 2, "B", {geo.c_out});

  kernel->clip_max = checked_clip_max(r);
  if (kind == OpKind::kZeroSkipConv) {
    const std::string activation = r.string_attribute("activation", "relu");
    if (activation != "relu" && activation != "none") {
      throw OpError{"attribute activation must be \"relu\" or \"none\", got \"" + activation + "\""};
    }
    kernel->relu = activation == "relu";
    if (!kernel->relu && std::isfinite(kernel->clip_max)) {
      throw OpError{"attribute clip_max applies only to activation \"relu\"; drop it or set activation=\"relu\""};
    }
  } else {
    ZapParams& z = kernel->zap;
    if (!r.has_attribute("pattern") || !r.has_attribute("pattern_shape") || !r.has_attribute("threshold")) {
      throw OpError{"ZapConv needs the attributes pattern, pattern_shape and threshold"};
    }
    const auto shape = checked_ints(r, "pattern_shape", {}, 2, 1);
    const auto tile = r.ints_attribute("pattern", {});
    if (static_cast<int64_t>(tile.size()) != shape[0] * shape[1]) {
      throw OpError{"attribute pattern must have pattern_shape[0] * pattern_shape[1] entries"};
    }
    bool any = false;
    for (int64_t v : tile) {
      if (v != 0 && v != 1) throw OpError{"attribute pattern entries must be 0 or 1"};
      any = any || v == 1;
      z.tile.push_back(static_cast<uint8_t>(v));
    }
    if (!any) throw OpError{"attribute pattern must mark at least one position computed (1)"};
    z.tile_h = shape[0], z.tile_w = shape[1];
    z.threshold = r.float_attribute("threshold", 0.0f);
    if (std::isnan(z.threshold)) throw OpError{"attribute threshold must be a number or +-inf, not NaN"};
    const std::string input = r.string_attribute("predictor_input", "activation");
    if (input != "activation" && input != "preactivation") {
      throw OpError{"attribute predictor_input must be \"activation\" or \"preactivation\", got \"" + input + "\""};
    }
    z.preactivation = input == "preactivation";
    z.pw1 = constant_floats(r, 3, "PW1", {geo.c_out, 1, 3, 3});
    z.pb1 = constant_floats(r, 4, "PB1", {geo.c_out});
    z.pw2 = constant_floats(r, 5, "PW2", {geo.c_out, 1, 3, 3});
    z.pb2 = constant_floats(r, 6, "PB2", {geo.c_out});
  }

  KernelPath path;
  std::string error;
  if (!select_path(&path, &error)) throw OpError{error};
  kernel->conv = PackedConv::create(geo, static_cast<const float*>(w.data), bias.empty() ? nullptr : bias.data(),
                                    path, &error);
  if (!kernel->conv) throw OpError{error};
  OrtMemoryInfo* cpu_memory = nullptr;
  check(api, api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &cpu_memory), "describing CPU memory");
  kernel->cpu_memory = std::unique_ptr<OrtMemoryInfo, MemoryInfoDeleter>(cpu_memory, MemoryInfoDeleter{api});
  return kernel;
}

struct ParallelCall {
  const std::function<void(size_t)>* body;
  std::atomic<bool> failed{false};
};

void parallel_trampoline(void* data, size_t index) {
  auto* call = static_cast<ParallelCall*>(data);
  if (call->failed.load(std::memory_order_relaxed)) return;
  try {
    (*call->body)(index);
  } catch (...) {
    call->failed.store(true);
  }
}

std::string dims_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void compute(const Kernel& k, OrtKernelContext* context) {
  const OrtApi* api = k.api;
  const ConvGeometry& geo = k.conv->geometry();
  const OrtValue* x_value = nullptr;
  check(api, api->KernelContext_GetInput(context, 0, &x_value), "reading input X");
  if (x_value == nullptr) throw OpError{"input X is missing"};
  const TensorView x = view_of(api, x_value);
  if (x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) throw OpError{"input X must be float32"};
  if (x.shape.size() != 4) throw OpError{"input X must be 4-D [N, C, H, W], got shape " + dims_text(x.shape)};
  for (int64_t d : x.shape) {
    if (d < 1) throw OpError{"input X must not be empty, got shape " + dims_text(x.shape)};
  }
  const int64_t n = x.shape[0], h = x.shape[2], w = x.shape[3];
  if (x.shape[1] != geo.c_in) {
    throw OpError{"input X has " + std::to_string(x.shape[1]) + " channels but W and group expect " +
                  std::to_string(geo.c_in)};
  }
  const int64_t ho = geo.out_h(h), wo = geo.out_w(w);
  if (ho < 1 || wo < 1) {
    throw OpError{"the output would be empty for input " + dims_text(x.shape) +
                  " with this kernel size, strides, pads and dilations"};
  }
  if (ho * wo > INT32_MAX / 2 || n * geo.c_out * ho * wo > (int64_t{1} << 40) || n * x.shape[1] * h * w > (int64_t{1} << 40)) {
    throw OpError{"input X " + dims_text(x.shape) + " is too large for this kernel"};
  }
  const std::vector<int64_t> out_shape = {n, geo.c_out, ho, wo};

  Epilogue ep;
  ep.relu = k.relu;
  ep.clip_max = k.clip_max;
  size_t input_count = 0;
  check(api, api->KernelContext_GetInputCount(context, &input_count), "counting inputs");
  if (k.skip_index < input_count) {
    const OrtValue* skip_value = nullptr;
    check(api, api->KernelContext_GetInput(context, k.skip_index, &skip_value), "reading input Skip");
    if (skip_value != nullptr) {
      const TensorView skip = view_of(api, skip_value);
      if (skip.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) throw OpError{"input Skip must be float32"};
      bool ok = skip.shape.size() <= 4;
      for (size_t i = 0; ok && i < skip.shape.size(); ++i) {
        const int64_t d = skip.shape[skip.shape.size() - 1 - i], target = out_shape[3 - i];
        ok = d == 1 || d == target;
      }
      if (!ok) {
        throw OpError{"input Skip of shape " + dims_text(skip.shape) + " does not broadcast to the output " +
                      dims_text(out_shape)};
      }
      int64_t stride = 1;
      for (size_t i = 0; i < 4; ++i) {
        const size_t axis = 3 - i;
        const int64_t d = i < skip.shape.size() ? skip.shape[skip.shape.size() - 1 - i] : 1;
        ep.skip_strides[axis] = d == 1 ? 0 : stride;
        stride *= d;
      }
      ep.skip = static_cast<const float*>(skip.data);
    }
  }

  OrtValue* y_value = nullptr;
  check(api, api->KernelContext_GetOutput(context, 0, out_shape.data(), out_shape.size(), &y_value), "creating output Y");
  void* y_data = nullptr;
  check(api, api->GetTensorMutableData(y_value, &y_data), "writing output Y");
  float* y = static_cast<float*>(y_data);

  ParallelFor parallel_for = [api, context](size_t total, const std::function<void(size_t)>& body) {
    if (total == 0) return true;
    ParallelCall call;
    call.body = &body;
    if (total == 1) {
      parallel_trampoline(&call, 0);
    } else {
      OrtStatus* status = api->KernelContext_ParallelFor(context, parallel_trampoline, total, 0, &call);
      if (status != nullptr) {
        api->ReleaseStatus(status);
        return false;
      }
    }
    return !call.failed.load();
  };

  const OrtScratch scratch(api, context, k.cpu_memory.get());
  std::string error;
  bool ok = true;
  const float* xd = static_cast<const float*>(x.data);
  if (k.kind == OpKind::kZeroSkipConv) {
    std::vector<int32_t> all(static_cast<size_t>(ho * wo));
    for (size_t p = 0; p < all.size(); ++p) all[p] = static_cast<int32_t>(p);
    std::vector<const std::vector<int32_t>*> positions(static_cast<size_t>(n), &all);
    ep.y = y;
    ok = k.conv->run(xd, n, h, w, positions, ep, parallel_for, scratch, &error);
  } else {
    bool* computed = nullptr;
    size_t output_count = 0;
    check(api, api->KernelContext_GetOutputCount(context, &output_count), "counting outputs");
    if (output_count > 1) {
      OrtValue* c_value = nullptr;
      check(api, api->KernelContext_GetOutput(context, 1, out_shape.data(), out_shape.size(), &c_value),
            "creating output Computed");
      if (c_value != nullptr) {
        void* c_data = nullptr;
        check(api, api->GetTensorMutableData(c_value, &c_data), "writing output Computed");
        computed = static_cast<bool*>(c_data);
      }
    }
    ok = run_zap_conv(*k.conv, k.zap, xd, n, h, w, ep, y, computed, parallel_for, scratch, &error);
  }
  if (!ok) throw OpError{error};
}

// --- the OrtCustomOp tables (immutable after their thread-safe static initialization) ---

template <OpKind kKind>
struct OpTable {
  static OrtStatus* create(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info, void** kernel) {
    *kernel = nullptr;
    try {
      *kernel = create_kernel(kKind, api, info).release();
      return nullptr;
    } catch (const OpError& e) {
      KernelInfoReader r(api, info);
      const std::string message = std::string(op_name(kKind)) + " node '" + r.node_name() + "': " + e.message;
      return api->CreateStatus(ORT_INVALID_ARGUMENT, message.c_str());
    } catch (const std::exception& e) {
      return api->CreateStatus(ORT_FAIL, (std::string(op_name(kKind)) + ": " + e.what()).c_str());
    }
  }
  static OrtStatus* run(void* kernel, OrtKernelContext* context) {
    const Kernel& k = *static_cast<const Kernel*>(kernel);
    try {
      compute(k, context);
      return nullptr;
    } catch (const OpError& e) {
      return k.api->CreateStatus(ORT_INVALID_ARGUMENT, (k.label + ": " + e.message).c_str());
    } catch (const std::exception& e) {
      return k.api->CreateStatus(ORT_FAIL, (k.label + ": " + e.what()).c_str());
    }
  }
  static void destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }
  static const char* name(const OrtCustomOp*) { return op_name(kKind); }
  static const char* provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
  static size_t input_count(const OrtCustomOp*) { return kKind == OpKind::kZapConv ? kZapInputs : kZeroSkipInputs; }
  static size_t output_count(const OrtCustomOp*) { return kKind == OpKind::kZapConv ? 2 : 1; }
  static ONNXTensorElementDataType input_type(const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static ONNXTensorElementDataType output_type(const OrtCustomOp*, size_t index) {
    return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  static OrtCustomOpInputOutputCharacteristic input_kind(const OrtCustomOp*, size_t index) {
    const bool optional = index == 2 || index == input_count(nullptr) - 1;  // B and Skip
    return optional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  static OrtCustomOpInputOutputCharacteristic output_kind(const OrtCustomOp*, size_t index) {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  static OrtMemType memory_type(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
  static int one(const OrtCustomOp*) { return 1; }

  static const OrtCustomOp* get() {
    static const OrtCustomOp op = [] {
      OrtCustomOp o;
      std::memset(&o, 0, sizeof(o));
      o.version = ORT_API_VERSION;
      o.GetName = name;
      o.GetExecutionProviderType = provider;
      o.GetInputType = input_type;
      o.GetInputTypeCount = input_count;
      o.GetOutputType = output_type;
      o.GetOutputTypeCount = output_count;
      o.KernelDestroy = destroy;
      o.GetInputCharacteristic = input_kind;
      o.GetOutputCharacteristic = output_kind;
      o.GetInputMemoryType = memory_type;
      o.GetVariadicInputMinArity = one;
      o.GetVariadicInputHomogeneity = one;
      o.GetVariadicOutputMinArity = one;
      o.GetVariadicOutputHomogeneity = one;
      o.CreateKernelV2 = create;
      o.KernelComputeV2 = run;
      o.GetStartVersion = one;
      o.GetEndVersion = one;
      return o;
    }();
    return &op;
  }
};

}  // namespace
}  // namespace zapopt

using zapopt::KernelPath;

// Called by onnxruntime's register_custom_ops_library. The domain object must outlive every
// session that uses it, so it is deliberately never released (a few bytes per registration).
ZAPOPT_EXPORT OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // cannot even report: onnxruntime older than the headers
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* status = api->CreateCustomOpDomain(zapopt::kDomain, &domain)) return status;
  if (OrtStatus* status = api->CustomOpDomain_Add(domain, zapopt::OpTable<zapopt::OpKind::kZeroSkipConv>::get())) return status;
  if (OrtStatus* status = api->CustomOpDomain_Add(domain, zapopt::OpTable<zapopt::OpKind::kZapConv>::get())) return status;
  return api->AddCustomOpDomain(options, domain);
}

// Comma-separated instruction-set paths this CPU can run, best first.
ZAPOPT_EXPORT const char* zapopt_kernel_paths() {
  const bool avx512 = zapopt::cpu_has(KernelPath::kAvx512), avx2 = zapopt::cpu_has(KernelPath::kAvx2);
  if (avx512 && avx2) return "avx512,avx2,portable";
  if (avx512) return "avx512,portable";
  if (avx2) return "avx2,portable";
  return "portable";
}

// The path a kernel created now would use (honours ZAPOPT_KERNEL_PATH); "" if that variable
// names a path this CPU lacks or an unknown one.
ZAPOPT_EXPORT const char* zapopt_selected_path() {
  KernelPath path;
  std::string error;
  if (!zapopt::select_path(&path, &error)) return "";
  return zapopt::path_name(path);
}
