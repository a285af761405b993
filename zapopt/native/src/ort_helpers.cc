#include "ort_helpers.h"

namespace zapopt {

void check(const OrtApi* api, OrtStatus* status, const std::string& context) {
  if (status == nullptr) return;
  std::string message = context + ": " + api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  throw OpError{message};
}

int64_t TensorView::elements() const {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  return count;
}

TensorView view_of(const OrtApi* api, const OrtValue* value) {
  TensorView view;
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(api, api->GetTensorTypeAndShape(value, &info), "reading a tensor's shape");
  size_t rank = 0;
  OrtStatus* status = api->GetTensorElementType(info, &view.type);
  if (status == nullptr) status = api->GetDimensionsCount(info, &rank);
  if (status == nullptr) {
    view.shape.resize(rank);
    status = api->GetDimensions(info, view.shape.data(), rank);
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  check(api, status, "reading a tensor's shape");
  void* data = nullptr;
  check(api, api->GetTensorMutableData(const_cast<OrtValue*>(value), &data), "reading a tensor's data");
  view.data = data;
  return view;
}

std::string KernelInfoReader::node_name() const {
  size_t size = 0;
  OrtStatus* status = api_->KernelInfo_GetNodeName(info_, nullptr, &size);
  if (status != nullptr) {
    api_->ReleaseStatus(status);
    return "?";
  }
  std::string name(size, '\0');
  status = api_->KernelInfo_GetNodeName(info_, &name[0], &size);
  if (status != nullptr) {
    api_->ReleaseStatus(status);
    return "?";
  }
  if (!name.empty() && name.back() == '\0') name.pop_back();
  return name;
}

bool KernelInfoReader::has_input(size_t index) const {
  size_t count = 0;
  check(api_, api_->KernelInfo_GetInputCount(info_, &count), "counting inputs");
  if (index >= count) return false;
  size_t size = 0;
  OrtStatus* status = api_->KernelInfo_GetInputName(info_, index, nullptr, &size);
  if (status != nullptr) {
    api_->ReleaseStatus(status);
    return false;
  }
  return size > 1;  // size counts the terminating NUL
}

TensorView KernelInfoReader::constant_input(size_t index, const char* label) const {
  int is_constant = 0;
  const OrtValue* value = nullptr;
  check(api_, api_->KernelInfoGetConstantInput_tensor(info_, index, &is_constant, &value),
        std::string("reading input ") + label);
  if (!is_constant || value == nullptr) {
    throw OpError{std::string("input ") + label +
                  " must be a constant initializer (the kernel packs it once when the session is created)"};
  }
  TensorView view = view_of(api_, value);
  if (view.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) throw OpError{std::string("input ") + label + " must be float32"};
  return view;
}

bool KernelInfoReader::has_attribute(const char* name) const {
  // Every attribute type answers a size query for a string or an int; probe both.
  int64_t i = 0;
  OrtStatus* status = api_->KernelInfoGetAttribute_int64(info_, name, &i);
  if (status == nullptr) return true;
  api_->ReleaseStatus(status);
  float f = 0;
  status = api_->KernelInfoGetAttribute_float(info_, name, &f);
  if (status == nullptr) return true;
  api_->ReleaseStatus(status);
  size_t size = 0;
  status = api_->KernelInfoGetAttributeArray_int64(info_, name, nullptr, &size);
  if (status == nullptr) return true;
  api_->ReleaseStatus(status);
  status = api_->KernelInfoGetAttribute_string(info_, name, nullptr, &size);
  if (status == nullptr) return true;
  api_->ReleaseStatus(status);
  return false;
}

int64_t KernelInfoReader::int_attribute(const char* name, int64_t fallback) const {
  int64_t value = 0;
  OrtStatus* status = api_->KernelInfoGetAttribute_int64(info_, name, &value);
  if (status == nullptr) return value;
  api_->ReleaseStatus(status);
  if (has_attribute(name)) throw OpError{std::string("attribute ") + name + " must be an int"};
  return fallback;
}

float KernelInfoReader::float_attribute(const char* name, float fallback) const {
  float value = 0;
  OrtStatus* status = api_->KernelInfoGetAttribute_float(info_, name, &value);
  if (status == nullptr) return value;
  api_->ReleaseStatus(status);
  if (has_attribute(name)) throw OpError{std::string("attribute ") + name + " must be a float"};
  return fallback;
}

std::string KernelInfoReader::string_attribute(const char* name, const std::string& fallback) const {
  size_t size = 0;
  OrtStatus* status = api_->KernelInfoGetAttribute_string(info_, name, nullptr, &size);
  if (status != nullptr) {
    api_->ReleaseStatus(status);
    if (has_attribute(name)) throw OpError{std::string("attribute ") + name + " must be a string"};
    return fallback;
  }
  std::string value(size, '\0');
  check(api_, api_->KernelInfoGetAttribute_string(info_, name, &value[0], &size),
        std::string("reading attribute ") + name);
  while (!value.empty() && value.back() == '\0') value.pop_back();
  return value;
}

std::vector<int64_t> KernelInfoReader::ints_attribute(const char* name, const std::vector<int64_t>& fallback) const {
  size_t size = 0;
  OrtStatus* status = api_->KernelInfoGetAttributeArray_int64(info_, name, nullptr, &size);
  if (status != nullptr) {
    api_->ReleaseStatus(status);
    if (has_attribute(name)) throw OpError{std::string("attribute ") + name + " must be a list of ints"};
    return fallback;
  }
  std::vector<int64_t> values(size);
  if (size > 0) {
    check(api_, api_->KernelInfoGetAttributeArray_int64(info_, name, values.data(), &size),
          std::string("reading attribute ") + name);
  }
  return values;
}

}  // namespace zapopt
