// Image decoding to 8-bit RGB, matching what LLaVA's reference does:
// `PIL.Image.open(f).convert('RGB')` (Pillow 9.4).
//
// JPEG, PNG and BMP go through stb_image; GIF (first frame) has its own small
// decoder because stb composites transparency and PIL does not. Where PIL's
// conversion to RGB differs from stb's default it is reproduced here:
//   - alpha is dropped, never composited (LA, RGBA, palette+tRNS, GIF transparency);
//   - grey is replicated to R = G = B;
//   - 16-bit RGB / RGBA / grey+alpha PNGs keep the high byte (PIL's "RGB;16B"
//     unpackers), but 16-bit grey PNGs open as PIL mode "I" and `convert('RGB')`
//     clips each value to [0, 255] (v >= 255 -> 255), it does not take the high byte;
//   - GIF: PIL keeps palette indices (mode P), so a transparent pixel becomes its
//     palette colour, and canvas pixels outside the first frame are index
//     `transparency` (if the frame has one) or 0.
// EXIF orientation is NOT applied: Image.open + convert('RGB') ignores it, so a
// rotated phone photo reaches the model exactly as stored.
//
// Known gaps with PIL (documented, not hidden):
//   - JPEG: stb's IDCT and chroma upsampling are not libjpeg-turbo's; decoded
//     pixels differ by a few levels (tests/test_image.cpp measures it on the
//     shared JPEGs). CMYK/YCCK JPEGs are converted with slightly different rounding.
//   - 16-bit-per-pixel BMPs (5/6/5 bits): stb replicates bits, PIL scales by
//     255/31 with truncation: values can differ by 1. RLE-compressed BMPs are
//     rejected (PIL reads them).
//   - WebP, TIFF and other formats PIL reads are rejected with a clear message.
//   - stb does not verify PNG chunk CRCs (PIL rejects a bad IHDR/PLTE CRC).
// Robustness: sizes are checked from the header against PIL's decompression-bomb
// limit before anything is allocated (size arithmetic in uint64, never trusting
// a header to fit); truncated JPEG / BMP / GIF files are refused as PIL refuses
// them; JPEG Huffman tables are validated before stb 2.27 (Debian's) parses
// them, since it overruns its arrays on > 256 codes, and a JPEG frame must have
// a scan (stb would hand back pixels it never decoded); stb's allocations are
// zeroed, so what a corrupt scan leaves undecoded is defined. On corrupt JPEG
// coefficients stb's integer IDCT overflows `int`: src/loupe.cpp is compiled
// with -fwrapv (CMakeLists.txt) so that wraps, defined.
// Fuzzed (mutated files, ASan + UBSan).
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../io/file.hpp"
#include "../io/limits.hpp"

namespace loupe {

// 8-bit RGB, row-major, HWC: pixel (x, y) channel c is rgb[(y * width + x) * 3 + c].
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;

  Image() = default;
  Image(int w, int h) : width(w), height(h), rgb(bytes_for(w, h)) {}  // black
  Image(int w, int h, std::vector<uint8_t> pixels) : width(w), height(h), rgb(std::move(pixels)) {
    if (w < 0 || h < 0 || rgb.size() != size_t(w) * size_t(h) * 3)
      fail("Image: ", rgb.size(), " bytes given for ", w, "x", h, " RGB (needs ", int64_t(w) * h * 3, ")");
  }
  uint8_t* at(int x, int y) { return rgb.data() + (size_t(y) * size_t(width) + size_t(x)) * 3; }
  const uint8_t* at(int x, int y) const { return rgb.data() + (size_t(y) * size_t(width) + size_t(x)) * 3; }

 private:
  // w * h * 3, refused where it would not fit size_t (32-bit WASM) rather than wrap to a short buffer.
  static size_t bytes_for(int w, int h) {
    if (w < 0 || h < 0) fail("Image: negative size ", w, "x", h);
    const uint64_t n = uint64_t(w) * uint64_t(h);  // < 2^62
    if (n > uint64_t(SIZE_MAX) / 3) fail("Image: ", w, "x", h, " RGB does not fit in this machine's memory");
    return size_t(n * 3);
  }
};

// PIL raises DecompressionBombError above 2 * Image.MAX_IMAGE_PIXELS; so do we
// (before any pixel memory is allocated): for the decoded image, LLaVA's padded
// square and every resize target. As PIL's Image.MAX_IMAGE_PIXELS, the limit can
// be raised for a legitimate image: LOUPE_MAX_IMAGE_PIXELS (the pixel count
// refused above; kMaxImagePixels by default).
constexpr int64_t kMaxImagePixels = 2 * int64_t(89478485);
inline constexpr ReadLimit kImagePixelLimit{"LOUPE_MAX_IMAGE_PIXELS", uint64_t(kMaxImagePixels), 1, "pixels"};

// a * b, saturating at UINT64_MAX: sizes from a file are compared with limits, never wrapped.
inline uint64_t mul_sat(uint64_t a, uint64_t b) { return a != 0 && b > UINT64_MAX / a ? UINT64_MAX : a * b; }

// The pixel limit in force, and the end of a message that refuses an image over it.
inline uint64_t max_image_pixels() { return kImagePixelLimit.value(); }
inline std::string image_pixel_limit_text() {
  const std::string v = std::to_string(max_image_pixels());
  return "more than the limit of " + v + " (PIL's decompression-bomb limit; LOUPE_MAX_IMAGE_PIXELS=" + v +
         ", set it higher if the image is legitimate)";
}

// FNV-1a, never 0: tells "the same image again" (a cached encoding) from another one.
inline uint64_t bytes_hash(const uint8_t* p, size_t n, uint64_t h = 1469598103934665603ull) {
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h | 1;
}
inline uint64_t image_hash(const Image& img) {
  const uint64_t size[2] = {uint64_t(img.width), uint64_t(img.height)};
  return bytes_hash(img.rgb.data(), img.rgb.size(), bytes_hash(reinterpret_cast<const uint8_t*>(size), sizeof size));
}

// Decode an image file held in memory; `name` is used in error messages.
Image decode_image(const uint8_t* data, size_t n, const std::string& name);

// Read and decode an image file.
Image load_image(const std::string& path);

}  // namespace loupe

// stb_image, with internal linkage (STB_IMAGE_STATIC) so it cannot clash with
// the application's own copy, behind the few functions loupe::stb exports.
// Only the formats used; no SIMD so that native and WASM decode identically.
// Corrupt JPEG coefficients overflow int in stb's IDCT and DC prediction, so
// stb wants -fwrapv: the library build compiles it alone in src/stb_image.cpp
// (LOUPE_STB_IMPLEMENTATION) with that flag, leaving the kernels' translation
// unit (LOUPE_STB_SEPARATE) without it; a header-only build compiles it in its
// LOUPE_IMPLEMENTATION unit.
#if (defined(LOUPE_IMPLEMENTATION) && !defined(LOUPE_STB_SEPARATE)) || defined(LOUPE_STB_IMPLEMENTATION)
#ifdef STBI_INCLUDE_STB_IMAGE_H
#error "loupe/vision/image.hpp builds its own static copy of stb_image: include it instead of stb_image.h in this file"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#define STBI_NO_SIMD
// Zeroed allocations: whatever a corrupt file leaves undecoded (a component no
// JPEG scan names, a progressive refinement before its first scan, a scan stb
// ends early at a missing restart marker) is then zeros, not uninitialised memory.
#define STBI_MALLOC(sz) calloc(1, (sz))
#define STBI_REALLOC(p, sz) realloc((p), (sz))
#define STBI_FREE(p) free(p)
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#pragma GCC diagnostic ignored "-Wcast-qual"
#pragma GCC diagnostic ignored "-Wold-style-cast"
#endif
#include <stb_image.h>
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic pop
#endif
#ifdef LOUPE_STB_IMPLEMENTATION
#define LOUPE_STB_API
#else
#define LOUPE_STB_API inline
#endif
namespace loupe::stb {
LOUPE_STB_API int info(const uint8_t* d, int n, int* w, int* h, int* c) { return stbi_info_from_memory(d, n, w, h, c); }
LOUPE_STB_API int is_16_bit(const uint8_t* d, int n) { return stbi_is_16_bit_from_memory(d, n); }
LOUPE_STB_API uint8_t* load_8(const uint8_t* d, int n, int* w, int* h, int* c, int want) {
  return stbi_load_from_memory(d, n, w, h, c, want);
}
LOUPE_STB_API uint16_t* load_16(const uint8_t* d, int n, int* w, int* h, int* c, int want) {
  return stbi_load_16_from_memory(d, n, w, h, c, want);
}
LOUPE_STB_API void release(void* p) { stbi_image_free(p); }
LOUPE_STB_API const char* failure_reason() { return stbi_failure_reason(); }
}  // namespace loupe::stb
#undef LOUPE_STB_API
#elif defined(LOUPE_IMPLEMENTATION)
namespace loupe::stb {  // defined in src/stb_image.cpp
int info(const uint8_t* d, int n, int* w, int* h, int* c);
int is_16_bit(const uint8_t* d, int n);
uint8_t* load_8(const uint8_t* d, int n, int* w, int* h, int* c, int want);
uint16_t* load_16(const uint8_t* d, int n, int* w, int* h, int* c, int want);
void release(void* p);
const char* failure_reason();
}  // namespace loupe::stb
#endif

#ifdef LOUPE_IMPLEMENTATION
namespace loupe {

namespace detail {

// w and h as the header gives them (PNG: up to 2^32 - 1 each, so w * h needs uint64).
inline void check_image_size(const std::string& name, const char* fmt, int64_t w, int64_t h) {
  if (w <= 0 || h <= 0) fail(name, ": ", fmt, " image has zero size (", w, "x", h, ")");
  const uint64_t px = mul_sat(uint64_t(w), uint64_t(h));
  if (px > max_image_pixels())
    fail(name, ": ", fmt, " image is ", w, "x", h, " = ", px, " pixels, ", image_pixel_limit_text());
  // Only with a raised limit: an Image is int-sized and its bytes must fit size_t (32-bit WASM).
  if (w > INT32_MAX || h > INT32_MAX || mul_sat(px, 3) > uint64_t(SIZE_MAX))
    fail(name, ": ", fmt, " image is ", w, "x", h, " pixels, too large for this machine");
}

// --- GIF, first frame, Pillow 9.4 GifImagePlugin semantics -------------------

// Reads the data sub-blocks of one GIF block sequence as a bit stream, LSB first.
struct GifBits {
  const uint8_t* p;
  size_t n, pos;
  size_t block_left = 0;
  bool ended = false;  // reached the zero-length terminator block
  uint32_t acc = 0;
  int nacc = 0;

  // Returns false when the sub-blocks end (terminator or end of file).
  bool next_byte(uint8_t& b) {
    while (block_left == 0) {
      if (ended || pos >= n) return false;
      block_left = p[pos++];
      if (block_left == 0) {
        ended = true;
        return false;
      }
    }
    if (pos >= n) return false;
    b = p[pos++];
    --block_left;
    return true;
  }
  bool code(int bits, int& out) {
    while (nacc < bits) {
      uint8_t b;
      if (!next_byte(b)) return false;
      acc |= uint32_t(b) << nacc;
      nacc += 8;
    }
    out = int(acc & ((1u << bits) - 1));
    acc >>= bits;
    nacc -= bits;
    return true;
  }
};

inline Image decode_gif(const uint8_t* d, size_t n, const std::string& name) {
  auto u16 = [&](size_t o) { return int(d[o]) | (int(d[o + 1]) << 8); };
  if (n < 13) fail(name, ": truncated GIF header (", n, " bytes)");
  int screen_w = u16(6), screen_h = u16(8);
  const uint8_t sflags = d[10];
  size_t pos = 13;
  const uint8_t* global_pal = nullptr;
  int global_n = 0;
  if (sflags & 0x80) {
    global_n = 1 << ((sflags & 7) + 1);
    if (pos + size_t(global_n) * 3 > n) fail(name, ": truncated GIF global colour table");
    global_pal = d + pos;
    pos += size_t(global_n) * 3;
  }
  auto skip_sub_blocks = [&]() {
    while (true) {
      if (pos >= n) fail(name, ": truncated GIF extension block at offset ", pos);
      size_t len = d[pos++];
      if (len == 0) return;
      if (pos + len > n) fail(name, ": truncated GIF extension block at offset ", pos);
      pos += len;
    }
  };
  int transparency = -1;
  while (true) {
    if (pos >= n || d[pos] == 0x3b) fail(name, ": GIF holds no image");
    const uint8_t tag = d[pos++];
    if (tag == 0x21) {  // extension: only the graphic control extension matters (transparency index)
      if (pos >= n) fail(name, ": truncated GIF extension at offset ", pos);
      const uint8_t label = d[pos++];
      // As PIL: a later control block without the flag keeps an earlier index.
      if (label == 0xf9 && pos < n && d[pos] >= 4 && pos + 5 <= n && (d[pos + 1] & 1)) transparency = d[pos + 4];
      skip_sub_blocks();
    } else if (tag == 0x2c) {
      break;
    }  // PIL ignores any other byte between blocks; so do we.
  }
  if (pos + 9 > n) fail(name, ": truncated GIF image descriptor");
  const int x0 = u16(pos), y0 = u16(pos + 2), fw = u16(pos + 4), fh = u16(pos + 6);
  const uint8_t iflags = d[pos + 8];
  pos += 9;
  const uint8_t* pal = global_pal;
  int pal_n = global_n;
  if (iflags & 0x80) {
    pal_n = 1 << ((iflags & 7) + 1);
    if (pos + size_t(pal_n) * 3 > n) fail(name, ": truncated GIF local colour table");
    pal = d + pos;
    pos += size_t(pal_n) * 3;
  }
  if (pos >= n) fail(name, ": truncated GIF image data");
  const int min_bits = d[pos++];
  if (min_bits < 1 || min_bits > 11) fail(name, ": bad GIF LZW minimum code size ", min_bits);

  // PIL grows the canvas to hold a frame that sticks out of the logical screen.
  const int W = std::max(screen_w, x0 + fw), H = std::max(screen_h, y0 + fh);
  check_image_size(name, "GIF", W, H);
  std::vector<uint8_t> idx(size_t(W) * size_t(H), uint8_t(transparency >= 0 ? transparency : 0));

  // Row order of an interlaced frame: rows 0,8,16.. then 4,12.. then 2,6.. then 1,3..
  std::vector<int> rows;
  rows.reserve(size_t(fh));
  if (iflags & 0x40) {
    for (int y = 0; y < fh; y += 8) rows.push_back(y);
    for (int y = 4; y < fh; y += 8) rows.push_back(y);
    for (int y = 2; y < fh; y += 4) rows.push_back(y);
    for (int y = 1; y < fh; y += 2) rows.push_back(y);
  } else {
    for (int y = 0; y < fh; ++y) rows.push_back(y);
  }

  // LZW: table entries are (prefix code, last byte, length); strings are written backwards.
  const int clear = 1 << min_bits, eoi = clear + 1;
  std::vector<int16_t> prefix(4096, -1);
  std::vector<uint8_t> suffix(4096), first(4096);
  std::vector<uint16_t> length(4096, 1);
  for (int c = 0; c < clear; ++c) suffix[size_t(c)] = first[size_t(c)] = uint8_t(c);
  std::vector<uint8_t> str(4096);
  const int64_t total = int64_t(fw) * fh;
  int64_t done = 0;
  auto emit = [&](int code) {
    const int len = length[size_t(code)];
    for (int i = len - 1, c = code; i >= 0; --i, c = prefix[size_t(c)]) str[size_t(i)] = suffix[size_t(c)];
    for (int i = 0; i < len && done < total; ++i, ++done) {
      const int fx = int(done % fw), fy = rows[size_t(done / fw)];
      idx[size_t(y0 + fy) * size_t(W) + size_t(x0 + fx)] = str[size_t(i)];
    }
  };
  GifBits bits{d, n, pos};
  int code_size = min_bits + 1, next = clear + 2, prev = -1, code = 0;
  bool saw_eoi = false;
  while (done < total) {
    if (!bits.code(code_size, code)) break;
    if (code == clear) {
      code_size = min_bits + 1;
      next = clear + 2;
      prev = -1;
      continue;
    }
    if (code == eoi) {
      saw_eoi = true;
      break;
    }
    if (prev < 0) {
      if (code >= clear) fail(name, ": corrupt GIF data (LZW code ", code, " before any string)");
      emit(code);
      prev = code;
      continue;
    }
    if (code > next || (code == next && next >= 4096)) fail(name, ": corrupt GIF data (LZW code ", code, " > next ", next, ")");
    if (next < 4096) {  // new entry = string(prev) + first byte of string(code), or of string(prev) when code is new
      prefix[size_t(next)] = int16_t(prev);
      first[size_t(next)] = first[size_t(prev)];
      suffix[size_t(next)] = code == next ? first[size_t(prev)] : first[size_t(code)];
      length[size_t(next)] = uint16_t(length[size_t(prev)] + 1);
      ++next;
      if (next == (1 << code_size) && code_size < 12) ++code_size;
    }
    emit(code);
    prev = code;
  }
  if (done < total && !saw_eoi)
    fail(name, ": truncated GIF image data (", done, " of ", total, " pixels decoded)");

  // Palette lookup. PIL: no palette, or a palette that is the identity grey ramp,
  // gives mode L (value = index); indices past a short palette read PIL's default
  // ramp (i, i, i) too.
  Image img(W, H);
  for (size_t i = 0; i < idx.size(); ++i) {
    const int v = idx[i];
    uint8_t* o = img.rgb.data() + i * 3;
    if (pal && v < pal_n) {
      o[0] = pal[v * 3], o[1] = pal[v * 3 + 1], o[2] = pal[v * 3 + 2];
    } else {
      o[0] = o[1] = o[2] = uint8_t(v);
    }
  }
  return img;
}

// Walks a JPEG's marker segments (skipping entropy-coded data) before stb sees
// it, for what stb_image 2.27 gets wrong:
//   - a truncated file decodes in stb (the missing part comes out grey) while PIL
//     raises "image file is truncated": we require the EOI marker;
//   - a DHT table whose 16 code counts add up to more than 256 makes stb write
//     past its Huffman arrays (fixed in stb 2.28); libjpeg rejects it too;
//   - a frame with no scan (a progressive header alone) "decodes" in stb, to
//     buffers it never wrote, where PIL refuses the file: we require one frame
//     header, then at least one scan, each naming components of the frame
//     (PIL refuses a bad selector too). A scan that leaves a component out is
//     decoded, as libjpeg does: stb's buffers are zeroed (STBI_MALLOC above).
// Returns an empty string when the structure is sound, else what is wrong.
inline std::string jpeg_structure_error(const uint8_t* d, size_t n) {
  int frame = 0;        // SOF marker seen (0: none yet)
  int ncomp = 0;        // components in the frame
  uint8_t ids[4] = {};  // their ids
  int scans = 0;
  size_t p = 2;  // after SOI
  while (true) {
    while (p < n && d[p] != 0xff) ++p;  // libjpeg skips extraneous bytes before a marker
    while (p < n && d[p] == 0xff) ++p;  // fill bytes
    if (p >= n) return "truncated JPEG (no end-of-image marker)";
    const uint8_t m = d[p++];
    if (m == 0xd9) {  // EOI
      if (!frame) return "corrupt JPEG (no frame header before the end-of-image marker)";
      if (!scans) return "corrupt JPEG (frame header but no scan: no image data)";
      return "";
    }
    if (m == 0x00 || m == 0x01 || (m >= 0xd0 && m <= 0xd8)) continue;  // no length field
    if (p + 2 > n) return "truncated JPEG (marker segment cut short)";
    const size_t len = size_t(d[p]) << 8 | d[p + 1];
    if (len < 2 || p + len > n) return "truncated JPEG (marker segment cut short)";
    if (m == 0xc4) {  // DHT: one or more tables of (class/id, 16 counts, symbols)
      for (size_t q = p + 2; q < p + len;) {
        if (q + 17 > p + len) return "corrupt JPEG (bad Huffman table length)";
        size_t codes = 0;
        for (size_t i = 1; i <= 16; ++i) codes += d[q + i];
        if (codes > 256) return "corrupt JPEG (Huffman table with more than 256 codes)";
        q += 17 + codes;
        if (q > p + len) return "corrupt JPEG (bad Huffman table length)";
      }
    }
    if (m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc) {  // SOFn: P, Y, X, Nf, Nf x (id, HV, Tq)
      if (frame) return "corrupt JPEG (more than one frame header)";
      if (len < 8) return "corrupt JPEG (frame header cut short)";
      ncomp = d[p + 7];
      if (ncomp < 1 || ncomp > 4 || len != 8 + 3 * size_t(ncomp))
        return "corrupt JPEG (frame header with " + std::to_string(ncomp) + " components, length " + std::to_string(len) + ")";
      for (int c = 0; c < ncomp; ++c) {
        ids[c] = d[p + 8 + 3 * size_t(c)];
        for (int e = 0; e < c; ++e)
          if (ids[e] == ids[c]) return "corrupt JPEG (component id " + std::to_string(ids[c]) + " twice in the frame header)";
      }
      frame = m;
    }
    if (m == 0xda) {  // SOS: Ns, Ns x (selector, tables), Ss, Se, Ah/Al
      if (!frame) return "corrupt JPEG (scan before the frame header)";
      if (len < 3) return "corrupt JPEG (scan header cut short)";
      const int ns = d[p + 2];
      if (ns < 1 || ns > ncomp || len != 6 + 2 * size_t(ns))
        return "corrupt JPEG (scan header with " + std::to_string(ns) + " components, length " + std::to_string(len) + ")";
      bool in_scan[4] = {};
      for (int i = 0; i < ns; ++i) {
        const uint8_t id = d[p + 3 + 2 * size_t(i)];
        int c = 0;
        while (c < ncomp && ids[c] != id) ++c;
        if (c == ncomp) return "corrupt JPEG (scan names component " + std::to_string(id) + ", not in the frame)";
        if (in_scan[c]) return "corrupt JPEG (scan names component " + std::to_string(id) + " twice)";
        in_scan[c] = true;
      }
      ++scans;
    }
    p += len;
    if (m == 0xda) {  // scan data runs to the next marker that is not a restart (0xFF is stuffed as FF 00)
      while (p + 1 < n && !(d[p] == 0xff && d[p + 1] != 0x00 && d[p + 1] != 0xff && (d[p + 1] < 0xd0 || d[p + 1] > 0xd7)))
        ++p;
      if (p + 1 >= n) return "truncated JPEG (scan data cut short, no end-of-image marker)";
    }
  }
}

inline const char* sniff_format(const uint8_t* d, size_t n) {
  auto starts = [&](const char* m, size_t k, size_t at = 0) { return n >= at + k && std::memcmp(d + at, m, k) == 0; };
  if (starts("\x89PNG\r\n\x1a\n", 8)) return "PNG";
  if (starts("\xff\xd8\xff", 3)) return "JPEG";
  if (starts("GIF87a", 6) || starts("GIF89a", 6)) return "GIF";
  if (starts("BM", 2)) return "BMP";
  if (starts("RIFF", 4) && starts("WEBP", 4, 8)) return "WebP";
  if (starts("II*\0", 4) || starts("MM\0*", 4)) return "TIFF";
  if (starts("ftyp", 4, 4)) return "HEIF/AVIF";
  return nullptr;
}

}  // namespace detail

Image decode_image(const uint8_t* data, size_t n, const std::string& name) {
  if (n == 0 || data == nullptr) fail(name, ": empty file (0 bytes), expected a JPEG, PNG, BMP or GIF image");
  const char* fmt = detail::sniff_format(data, n);
  if (!fmt) fail(name, ": not a JPEG, PNG, BMP or GIF image (unrecognised file signature)");
  const std::string f = fmt;
  if (f == "GIF") return detail::decode_gif(data, n, name);
  if (f != "PNG" && f != "JPEG" && f != "BMP") fail(name, ": ", f, " images are not supported (use JPEG, PNG, BMP or GIF)");
  if (n > size_t(INT32_MAX)) fail(name, ": file too large for the image decoder (", n, " bytes)");

  const int len = int(n);
  const uint8_t* d = data;
  auto be32 = [&](size_t o) { return int64_t(d[o]) << 24 | int64_t(d[o + 1]) << 16 | int64_t(d[o + 2]) << 8 | d[o + 3]; };
  auto le16 = [&](size_t o) { return int64_t(d[o]) | int64_t(d[o + 1]) << 8; };
  auto le32 = [&](size_t o) { return int64_t(uint32_t(le16(o) | le16(o + 2) << 16)); };
  // Sizes are checked from the header before stb allocates anything.
  if (f == "PNG") {
    if (n < 33 || std::memcmp(d + 12, "IHDR", 4) != 0) fail(name, ": truncated or invalid PNG (no IHDR chunk)");
    detail::check_image_size(name, fmt, be32(16), be32(20));
  } else if (f == "BMP") {
    if (n < 30) fail(name, ": truncated BMP header (", n, " bytes)");
    const int64_t offset = le32(10), dib = le32(14);
    int64_t w, h, bpp, compression = 0;
    if (dib == 12) {  // OS/2 BITMAPCOREHEADER
      w = le16(18), h = le16(20), bpp = le16(24);
    } else {
      if (n < 34) fail(name, ": truncated BMP header (", n, " bytes)");
      w = int32_t(le32(18)), h = int32_t(le32(22)), bpp = le16(28), compression = le32(30);
    }
    if (h < 0) h = -h;  // top-down rows
    detail::check_image_size(name, fmt, w, h);
    if (compression == 1 || compression == 2)
      fail(name, ": RLE-compressed BMP is not supported (save it as PNG or uncompressed BMP)");
    // PIL refuses a BMP whose pixel rows are cut short ("image file is truncated");
    // stb would read zeros past the end.
    // uint64: w < 2^31 and bpp < 2^16 from the header, so w * bpp fits; times h it may not.
    const uint64_t stride = (uint64_t(w) * uint64_t(bpp) + 31) / 32 * 4;
    const uint64_t rows = mul_sat(stride, uint64_t(h));
    const uint64_t need = rows > UINT64_MAX - uint64_t(offset) ? UINT64_MAX : rows + uint64_t(offset);
    if ((compression == 0 || compression == 3 || compression == 6) && need > uint64_t(n))
      fail(name, ": truncated BMP (pixel data needs ", need == UINT64_MAX ? std::string("over 2^64") : std::to_string(need),
           " bytes, file has ", n, ")");
  } else if (f == "JPEG") {  // before stb parses any of it
    const std::string err = detail::jpeg_structure_error(data, n);
    if (!err.empty()) fail(name, ": ", err);
  }
  int w = 0, h = 0, comp = 0;
  if (stb::info(data, len, &w, &h, &comp)) {
    detail::check_image_size(name, fmt, w, h);
  } else {
    // stb's probe loses the reason (it tries every format); a load gives it.
    uint8_t* p = stb::load_8(data, len, &w, &h, &comp, 3);
    if (p) stb::release(p);
    fail(name, ": cannot decode ", f, " (corrupt or truncated): ", stb::failure_reason());
  }

  Image img;
  if (f == "PNG" && comp == 1 && stb::is_16_bit(data, len)) {
    // 16-bit grey: PIL mode "I", convert('RGB') clips to [0, 255].
    int x, y, c;
    uint16_t* p = stb::load_16(data, len, &x, &y, &c, 1);
    if (!p) fail(name, ": cannot decode PNG (corrupt or truncated): ", stb::failure_reason());
    img = Image(x, y);
    for (size_t i = 0; i < size_t(x) * size_t(y); ++i)
      img.rgb[i * 3] = img.rgb[i * 3 + 1] = img.rgb[i * 3 + 2] = uint8_t(std::min<int>(p[i], 255));
    stb::release(p);
    return img;
  }
  // Everything else: stb's 8-bit RGB output drops alpha without compositing,
  // replicates grey and takes the high byte of 16-bit samples, as PIL does.
  int x, y, c;
  uint8_t* p = stb::load_8(data, len, &x, &y, &c, 3);
  if (!p) fail(name, ": cannot decode ", f, " (corrupt or truncated): ", stb::failure_reason());
  img = Image(x, y);
  std::memcpy(img.rgb.data(), p, img.rgb.size());
  stb::release(p);
  return img;
}

Image load_image(const std::string& path) {
  Blob b = Blob::open(path);
  return decode_image(b.data, b.size, path);
}

}  // namespace loupe
#endif  // LOUPE_IMPLEMENTATION
