// Small wrappers over onnxruntime's C API: statuses, attributes, tensor shapes.
// The API table arrives at registration and is kept per kernel: no global state.
#pragma once
#define ORT_API_MANUAL_INIT
#include <onnxruntime_c_api.h>

#include <cstdint>
#include <string>
#include <vector>

namespace zapopt {

// Thrown inside this library only; converted to an OrtStatus at the C API boundary.
struct OpError {
  std::string message;
};

// Throws OpError with onnxruntime's message if status is an error (and releases it).
void check(const OrtApi* api, OrtStatus* status, const std::string& context);

struct TensorView {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  int64_t elements() const;
};

TensorView view_of(const OrtApi* api, const OrtValue* value);

class KernelInfoReader {
 public:
  KernelInfoReader(const OrtApi* api, const OrtKernelInfo* info) : api_(api), info_(info) {}

  std::string node_name() const;
  bool has_input(size_t index) const;  // present and not the empty name
  // A constant (initializer) float tensor; throws if it is not constant.
  TensorView constant_input(size_t index, const char* label) const;

  bool has_attribute(const char* name) const;
  int64_t int_attribute(const char* name, int64_t fallback) const;
  float float_attribute(const char* name, float fallback) const;
  std::string string_attribute(const char* name, const std::string& fallback) const;
  std::vector<int64_t> ints_attribute(const char* name, const std::vector<int64_t>& fallback) const;

 private:
  const OrtApi* api_;
  const OrtKernelInfo* info_;
};

}  // namespace zapopt
