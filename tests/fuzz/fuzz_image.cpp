// Image decoding (JPEG, PNG, BMP, GIF through stb_image behind loupe's own
// header checks) and CLIP preprocessing as LLaVA / ShareGPT4V do it: pad to a
// square, resize, center crop, normalise. The first byte picks the geometry
// (336 with padding, as the 7B models; 224 without). Seeds: ../shared/images,
// demo/scenes.
//
// The pixel limit is lowered to 4 Mpx (unless LOUPE_MAX_IMAGE_PIXELS is set):
// at PIL's 179 Mpx a 30-byte GIF legitimately decodes 179M pixels, seconds
// under ASan, and the fuzzer then ran 47 inputs a second (1,403 in 30 s,
// 2026-12-07) instead of exploring the decoders. The limit's own arithmetic
// near 179 Mpx is proven by test_image and test_preprocess.
#include <cstdlib>

#include <loupe/vision/image.hpp>
#include <loupe/vision/preprocess.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int lowered = setenv("LOUPE_MAX_IMAGE_PIXELS", "4194304", /*overwrite=*/0);
  (void)lowered;
  if (size == 0) return 0;
  loupe::PreprocessConfig cfg;
  const bool pad = data[0] & 1;
  cfg.pad_to_square = pad;
  cfg.shortest_edge = cfg.crop_width = cfg.crop_height = pad ? 336 : 224;
  return loupe_fuzz::guarded([&] {
    const loupe::Image img = loupe::decode_image(data + 1, size - 1, "fuzz-image");
    (void)loupe::preprocess(img, cfg);
  });
}
