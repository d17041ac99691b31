// What the CPU we run on can do, for runtime kernel dispatch.
//
// x86-64: cpuid + xgetbv (the OS must save the ymm/zmm state too, or the
// instructions fault). Other targets: what the compiler was told (NEON on
// AArch64, SIMD128 on WebAssembly is a compile-time choice).
//
// LOUPE_CPU=scalar|avx2|avx512|neon|simd128 in the environment picks a lower
// supported level (benchmarks, tests, or to rule a kernel out when hunting a bug).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define LOUPE_X86 1
#if defined(__GNUC__)
#include <cpuid.h>
#endif
#endif

namespace loupe {

// Kernel levels, lowest first. Each level's kernels need every feature of the levels below.
enum class CpuLevel : int {
  Scalar = 0,  // portable C++ (the reference)
  Avx2 = 1,    // x86-64: AVX2 + FMA + F16C (Haswell, Zen 1 and later)
  Avx512 = 2,  // x86-64: AVX-512 F/BW/VL/DQ + VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later)
  Neon = 3,    // AArch64 Advanced SIMD (compile-time)
  Simd128 = 4, // WebAssembly SIMD128 (compile-time, em++ -msimd128)
};
constexpr CpuLevel kAllCpuLevels[] = {CpuLevel::Scalar, CpuLevel::Avx2, CpuLevel::Avx512, CpuLevel::Neon, CpuLevel::Simd128};

inline const char* cpu_level_name(CpuLevel l) {
  switch (l) {
    case CpuLevel::Scalar: return "scalar";
    case CpuLevel::Avx2: return "avx2";
    case CpuLevel::Avx512: return "avx512";
    case CpuLevel::Neon: return "neon";
    case CpuLevel::Simd128: return "simd128";
  }
  return "?";
}

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false, avxvnni = false;
  bool amx_int8 = false, amx_tile = false;  // detected for the record; no AMX kernels yet

  // The best level; on x86-64 every lower x86 level works too.
  CpuLevel level() const {
#if defined(__wasm_simd128__)
    return CpuLevel::Simd128;
#elif defined(__aarch64__) && defined(__ARM_NEON)
    return CpuLevel::Neon;
#else
    if (avx512f && avx512bw && avx512vl && avx512dq && avx512vnni && avx2 && fma && f16c) return CpuLevel::Avx512;
    if (avx2 && fma && f16c) return CpuLevel::Avx2;
    return CpuLevel::Scalar;
#endif
  }
  bool supports(CpuLevel l) const {
    const CpuLevel best = level();
    if (l == CpuLevel::Scalar || l == best) return true;
    return (best == CpuLevel::Avx512 && l == CpuLevel::Avx2);
  }
  std::string describe() const {
    std::string s;
    auto add = [&](bool on, const char* n) {
      if (on) s += (s.empty() ? "" : " ") + std::string(n);
    };
    add(avx2, "avx2"), add(fma, "fma"), add(f16c, "f16c"), add(avx512f, "avx512f"), add(avx512bw, "avx512bw");
    add(avx512vl, "avx512vl"), add(avx512dq, "avx512dq"), add(avx512vnni, "avx512vnni"), add(avx512bf16, "avx512bf16");
    add(avxvnni, "avxvnni"), add(amx_tile, "amx-tile"), add(amx_int8, "amx-int8");
    return s.empty() ? "none" : s;
  }
};

namespace detail {
#if defined(LOUPE_X86) && defined(__GNUC__)
inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) { __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]); }
inline uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}
#endif

inline CpuFeatures detect_cpu() {
  CpuFeatures f;
#if defined(LOUPE_X86) && defined(__GNUC__)
  uint32_t r[4];
  cpuid(0, 0, r);
  const uint32_t max_leaf = r[0];
  if (max_leaf < 7) return f;
  cpuid(1, 0, r);
  const bool osxsave = (r[2] >> 27) & 1;
  if (!osxsave) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_os = (xcr0 & 0x6) == 0x6;              // SSE + AVX state
  const bool zmm_os = ymm_os && (xcr0 & 0xe0) == 0xe0;  // opmask + upper zmm state
  const bool amx_os = (xcr0 & 0x60000) == 0x60000;      // XTILECFG + XTILEDATA
  const bool fma = (r[2] >> 12) & 1, f16c = (r[2] >> 29) & 1, avx = (r[2] >> 28) & 1;
  cpuid(7, 0, r);
  const uint32_t b7 = r[1], c7 = r[2], d7 = r[3];
  f.avx2 = ymm_os && avx && ((b7 >> 5) & 1);
  f.fma = ymm_os && fma;
  f.f16c = ymm_os && f16c;
  f.avx512f = zmm_os && ((b7 >> 16) & 1);
  f.avx512dq = zmm_os && ((b7 >> 17) & 1);
  f.avx512bw = zmm_os && ((b7 >> 30) & 1);
  f.avx512vl = zmm_os && ((b7 >> 31) & 1);
  f.avx512vnni = zmm_os && ((c7 >> 11) & 1);
  f.amx_tile = amx_os && ((d7 >> 24) & 1);
  f.amx_int8 = amx_os && ((d7 >> 25) & 1);
  cpuid(7, 1, r);
  f.avxvnni = ymm_os && ((r[0] >> 4) & 1);
  f.avx512bf16 = zmm_os && ((r[0] >> 5) & 1);
#endif
  return f;
}
}  // namespace detail

inline const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detail::detect_cpu();
  return f;
}

// The level kernels run at: the CPU's, capped by LOUPE_CPU if set.
inline CpuLevel cpu_level() {
  static const CpuLevel level = [] {
    CpuLevel l = cpu_features().level();
    if (const char* e = std::getenv("LOUPE_CPU")) {
      for (CpuLevel c : kAllCpuLevels)
        if (std::strcmp(e, cpu_level_name(c)) == 0 && cpu_features().supports(c)) l = c;
    }
    return l;
  }();
  return level;
}

}  // namespace loupe
