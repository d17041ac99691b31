// NumPy .npy files (format 1.0/2.0, little-endian, C order): written by
// `--dump` for debugging and read by tests for the Python references' tensors.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "file.hpp"
#include "../core/tensor.hpp"

namespace loupe {

// Write an f32 (or int32) array of the given shape.
inline void write_npy(const std::string& path, const void* data, const std::vector<int64_t>& shape,
                      DType t = DType::F32) {
  const char* descr = t == DType::F32 ? "<f4" : t == DType::I32 ? "<i4" : nullptr;
  if (!descr) fail(path, ": write_npy supports f32 and i32, not ", dtype_name(t));
  std::string sh = "(";
  int64_t n = 1;
  for (int64_t d : shape) sh += std::to_string(d) + ",", n *= d;
  if (shape.size() > 1) sh.pop_back();
  sh += ")";
  std::string header = "{'descr': '" + std::string(descr) + "', 'fortran_order': False, 'shape': " + sh + ", }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail(path, ": cannot create");
  const uint16_t hlen = uint16_t(header.size());
  bool ok = std::fwrite("\x93NUMPY\x01\x00", 1, 8, f) == 8 && std::fwrite(&hlen, 2, 1, f) == 1 &&
            std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            std::fwrite(data, 4, size_t(n), f) == size_t(n);
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) fail(path, ": write failed");
}

// Read an .npy holding <f4, <f8, <i4, <i8 (converted to f32) into an owned f32 Tensor.
inline Tensor read_npy(const std::string& path) {
  Blob b = Blob::open(path);
  Reader r(b);
  std::string magic = r.string(6, "npy magic");
  if (magic != "\x93NUMPY") fail(path, ": not a .npy file");
  uint8_t major = r.read<uint8_t>("npy version");
  r.read<uint8_t>("npy version");
  size_t hlen = major == 1 ? r.read<uint16_t>("header length") : r.read<uint32_t>("header length");
  std::string h = r.string(hlen, "npy header");
  auto field = [&](const std::string& key) {
    size_t p = h.find("'" + key + "'");
    if (p == std::string::npos) fail(path, ": npy header lacks '", key, "'");
    return h.substr(h.find(':', p) + 1);
  };
  std::string descr = field("descr");
  descr = descr.substr(descr.find('\'') + 1, 3);
  if (field("fortran_order").find("True") < field("fortran_order").find(','))
    fail(path, ": fortran-order arrays are not supported");
  std::string sh = field("shape");
  sh = sh.substr(sh.find('(') + 1, sh.find(')') - sh.find('(') - 1);
  std::vector<int64_t> shape;
  for (size_t p = 0; p < sh.size();) {
    size_t q = sh.find(',', p);
    std::string tok = sh.substr(p, q == std::string::npos ? std::string::npos : q - p);
    if (tok.find_first_of("0123456789") != std::string::npos) shape.push_back(std::stoll(tok));
    if (q == std::string::npos) break;
    p = q + 1;
  }
  Tensor t(DType::F32, shape);
  const int64_t n = t.numel();
  int width = descr[2] - '0';
  char kind = descr[1];
  if (descr[0] != '<' && !(descr[0] == '|' && width == 1)) fail(path, ": only little-endian arrays are supported (", descr, ")");
  const uint8_t* p = r.bytes(size_t(n) * size_t(width), "npy data");
  float* out = t.f32();
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* e = p + i * width;
    if (kind == 'f' && width == 4) std::memcpy(&out[i], e, 4);
    else if (kind == 'f' && width == 8) { double d; std::memcpy(&d, e, 8); out[i] = float(d); }
    else if (kind == 'i' && width == 4) { int32_t v; std::memcpy(&v, e, 4); out[i] = float(v); }
    else if (kind == 'i' && width == 8) { int64_t v; std::memcpy(&v, e, 8); out[i] = float(v); }
    else fail(path, ": unsupported npy dtype ", descr);
  }
  return t;
}

}  // namespace loupe
