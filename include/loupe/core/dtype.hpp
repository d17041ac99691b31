// Element types and the scalar fp16 / bf16 conversions.
// Type ids are ggml's (GGML_TYPE_*), so GGUF files need no translation table.
#pragma once
#include <cstdint>
#include <cctype>
#include <cstring>
#include <string>
#include <string_view>

#include "error.hpp"

namespace loupe {

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  Q4_K = 12,    // reserved: recognised by name, not yet computed with
  IQ4_NL = 20,  // reserved
  I8 = 24,      // integer types: carried by readers (e.g. position_ids buffers), not computed with
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

struct DTypeInfo {
  const char* name;
  int block;       // elements per block (1 for plain floats)
  int block_bytes; // bytes per block
  bool supported;  // loupe can read and compute with it
};

inline DTypeInfo dtype_info(DType t) {
  switch (t) {
    case DType::F32: return {"F32", 1, 4, true};
    case DType::F16: return {"F16", 1, 2, true};
    case DType::BF16: return {"BF16", 1, 2, true};
    case DType::Q8_0: return {"Q8_0", 32, 34, true};
    case DType::Q4_0: return {"Q4_0", 32, 18, true};
    case DType::Q4_K: return {"Q4_K", 256, 144, false};
    case DType::IQ4_NL: return {"IQ4_NL", 32, 18, false};
    case DType::I8: return {"I8", 1, 1, false};
    case DType::I16: return {"I16", 1, 2, false};
    case DType::I32: return {"I32", 1, 4, false};
    case DType::I64: return {"I64", 1, 8, false};
    case DType::F64: return {"F64", 1, 8, false};
  }
  return {nullptr, 0, 0, false};
}

inline bool dtype_known(uint32_t id) { return dtype_info(DType(id)).name != nullptr; }
inline const char* dtype_name(DType t) {
  const char* n = dtype_info(t).name;
  return n ? n : "unknown";
}
inline bool is_quantized(DType t) { return dtype_info(t).block > 1; }

// Bytes taken by one row of n elements; n must be a multiple of the block size.
inline size_t row_bytes(DType t, int64_t n) {
  DTypeInfo i = dtype_info(t);
  return size_t(n / i.block) * size_t(i.block_bytes);
}

inline DType dtype_from_name(std::string_view s) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    std::string n = dtype_name(t);
    if (s.size() == n.size()) {
      bool eq = true;
      for (size_t k = 0; k < s.size(); ++k) eq &= (std::tolower(s[k]) == std::tolower(n[k]));
      if (eq) return t;
    }
  }
  fail("unknown type '", s, "' (expected f32, f16, bf16, q8_0 or q4_0)");
}

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16 -> binary32, exact (subnormals, inf, NaN included).
inline float fp16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);
    float v = float(man) * (1.0f / 16777216.0f);  // man * 2^-24
    return (h & 0x8000) ? -v : v;
  }
  return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

// binary32 -> binary16 with round-to-nearest-even, overflow to inf, NaN kept quiet.
inline uint16_t f32_to_fp16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00 | ((a >> 13) & 0x3ff));  // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {
    // Result is subnormal (or zero): value / 2^-24 rounded to nearest even.
    if (a < 0x33000000u) return sign;  // < 2^-25: rounds to 0
    uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000;
    int shift = 126 - int(e);  // m * 2^(e-150) / 2^-24 = m >> (126 - e)
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return uint16_t(sign | q);
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1);  // round mantissa to 10 bits, ties to even
  return uint16_t(sign | ((r - 0x38000000u) >> 13));
}

// bf16 is the top half of an f32; round to nearest even, NaN made quiet (as ggml does).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 64);
  return uint16_t((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}
inline float bf16_to_f32(uint16_t b) { return bits_f32(uint32_t(b) << 16); }

}  // namespace loupe
