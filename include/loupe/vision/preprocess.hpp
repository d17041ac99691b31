// CLIP image preprocessing as LLaVA-1.5 / ShareGPT4V run it:
//   image = expand2square(image, tuple(int(x * 255) for x in image_mean))   # if pad
//   pixel_values = CLIPImageProcessor.preprocess(image)["pixel_values"][0]
// where CLIPImageProcessor (the numpy one, transformers <= 4.4x "slow" processor)
// does: resize shortest edge with PIL bicubic, center crop, rescale, normalize, CHW.
//
// resize_bicubic is bit-exact with Pillow's Image.resize(size, Image.BICUBIC) on
// 8-bit RGB (libImaging/Resample.c): separable, horizontal pass first, each pass
// rounded to uint8; filter support widened by the scale when downscaling
// (antialiasing); coefficients normalised in double then quantised to 22-bit
// fixed point. Pillow computes the coefficients without FMA; the project builds
// with -ffp-contract=off to do the same (with -ffp-contract=fast the 58 M taps of
// 1..1200 -> 14 common sizes still came out identical, but that is luck, not law).
//
// Values computed in double where the reference does (HF multiplies uint8 by the
// rescale factor in float64, Python computes the pad colour in float64), and
// the normalisation in float32 as numpy does ((x - mean32) / std32).
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "image.hpp"
#include "../core/tensor.hpp"

namespace loupe {

// Values come from the model's preprocessor_config.json; defaults are CLIP
// ViT-L/14-336's. mean / std / rescale_factor are double because the JSON values
// are used as Python floats (float64) before HF casts mean / std to float32.
struct PreprocessConfig {
  bool pad_to_square = true;  // LLaVA image_aspect_ratio == "pad"
  int shortest_edge = 336;
  int crop_height = 336, crop_width = 336;
  bool do_resize = true, do_center_crop = true, do_rescale = true, do_normalize = true;
  double rescale_factor = 1.0 / 255.0;
  std::array<double, 3> mean = {0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> std = {0.26862954, 0.26130258, 0.27577711};
};

// LLaVA's pad colour: tuple(int(x * 255) for x in image_mean), Python int()
// truncates toward zero; CLIP's mean gives (122, 116, 104).
inline std::array<uint8_t, 3> pad_color(const std::array<double, 3>& mean) {
  std::array<uint8_t, 3> c{};
  for (size_t i = 0; i < 3; ++i) {
    const double v = std::trunc(mean[i] * 255.0);
    c[i] = uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
  }
  return c;
}

// LLaVA / ShareGPT4V expand2square: paste onto a max(W, H) square filled with
// `bg`, at ((side - W) // 2, (side - H) // 2) (one of the two offsets is 0).
// The square is held to the decoded image's pixel limit before it is allocated:
// a 65535 x 2730 GIF passes that limit, its square (12.9 GB) must not.
// `name` (the image's file) starts the error message.
inline Image expand_to_square(const Image& im, std::array<uint8_t, 3> bg, const std::string& name = "expand_to_square") {
  if (im.width == im.height) return im;
  const int side = std::max(im.width, im.height);
  const uint64_t px = uint64_t(side) * uint64_t(side);  // side < 2^31
  if (px > max_image_pixels())
    fail(name, ": padding the ", im.width, "x", im.height, " image to a square (LLaVA's pad) gives ", side, "x", side,
         " = ", px, " pixels, ", image_pixel_limit_text());
  Image out(side, side);
  for (size_t i = 0; i < out.rgb.size(); i += 3) out.rgb[i] = bg[0], out.rgb[i + 1] = bg[1], out.rgb[i + 2] = bg[2];
  const int ox = (side - im.width) / 2, oy = (side - im.height) / 2;
  for (int y = 0; y < im.height; ++y)
    std::copy(im.at(0, y), im.at(0, y) + size_t(im.width) * 3, out.at(ox, y + oy));
  return out;
}

namespace detail {

// Pillow's bicubic kernel, a = -0.5 (Resample.c bicubic_filter).
inline double bicubic_kernel(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Fixed-point taps of one resampling pass (Resample.c precompute_coeffs +
// normalize_coeffs_8bpc): output i reads inputs [start[i], start[i] + count[i])
// with weights k[i * ksize + j] in units of 2^-22.
struct ResampleTaps {
  static constexpr int kPrecisionBits = 32 - 8 - 2;  // 8 bits result, 2 bits headroom
  int ksize = 0;
  std::vector<int> start, count;
  std::vector<int32_t> k;
};

inline ResampleTaps resample_taps(int in_size, int out_size) {
  const double support_1 = 2.0;  // bicubic
  // Pillow passes the box as float: in1 - in0 is a float difference (exact here).
  const float in0 = 0.0f, in1 = float(in_size);
  const double scale = double(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;  // widen the kernel when downscaling
  const double support = support_1 * filterscale;
  ResampleTaps t;
  t.ksize = int(std::ceil(support)) * 2 + 1;
  t.start.resize(size_t(out_size));
  t.count.resize(size_t(out_size));
  t.k.assign(size_t(out_size) * size_t(t.ksize), 0);
  std::vector<double> w(size_t(t.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // (int) truncates toward zero, as in C: that is Pillow's "round".
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double v = bicubic_kernel((x + xmin - center + 0.5) * ss);
      w[size_t(x)] = v;
      ww += v;
    }
    int32_t* k = &t.k[size_t(xx) * size_t(t.ksize)];
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[size_t(x)] / ww : w[size_t(x)];
      const double f = v * double(1 << ResampleTaps::kPrecisionBits);
      k[x] = v < 0 ? int32_t(-0.5 + f) : int32_t(0.5 + f);
    }
    t.start[size_t(xx)] = xmin;
    t.count[size_t(xx)] = xmax;
  }
  return t;
}

// Round a 22-bit fixed-point sum to uint8 (Resample.c clip8: arithmetic shift, clamp).
inline uint8_t clip8(int32_t s) {
  const int32_t v = s >> ResampleTaps::kPrecisionBits;
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

}  // namespace detail

// Pillow Image.resize((w, h), Image.BICUBIC) on 8-bit RGB, bit-exact.
inline Image resize_bicubic(const Image& in, int w, int h) {
  if (w < 1 || h < 1) fail("resize_bicubic: target size ", w, "x", h, " must be at least 1x1");
  if (in.width < 1 || in.height < 1) fail("resize_bicubic: empty input image (", in.width, "x", in.height, ")");
  if (uint64_t(w) * uint64_t(h) > max_image_pixels())
    fail("resize_bicubic: target size ", w, "x", h, " is ", image_pixel_limit_text());
  using detail::clip8;
  constexpr int32_t half = 1 << (detail::ResampleTaps::kPrecisionBits - 1);
  const bool need_h = w != in.width, need_v = h != in.height;
  if (!need_h && !need_v) return in;

  // Vertical taps first: they tell which source rows the horizontal pass must produce.
  const detail::ResampleTaps tv = detail::resample_taps(in.height, h);
  const int y_first = need_v ? tv.start[0] : 0;
  const int y_last = need_v ? tv.start[size_t(h) - 1] + tv.count[size_t(h) - 1] : in.height;

  Image tmp;
  const Image* src = &in;
  int row0 = 0;  // source row held by src's row 0
  if (need_h) {
    const detail::ResampleTaps th = detail::resample_taps(in.width, w);
    tmp = Image(w, y_last - y_first);
    for (int y = 0; y < tmp.height; ++y) {
      const uint8_t* row = in.at(0, y + y_first);
      uint8_t* out = tmp.at(0, y);
      for (int xx = 0; xx < w; ++xx) {
        const int32_t* k = &th.k[size_t(xx) * size_t(th.ksize)];
        const uint8_t* p = row + size_t(th.start[size_t(xx)]) * 3;
        int32_t s0 = half, s1 = half, s2 = half;
        for (int x = 0; x < th.count[size_t(xx)]; ++x, p += 3) {
          s0 += p[0] * k[x];
          s1 += p[1] * k[x];
          s2 += p[2] * k[x];
        }
        out[xx * 3] = clip8(s0), out[xx * 3 + 1] = clip8(s1), out[xx * 3 + 2] = clip8(s2);
      }
    }
    src = &tmp;
    row0 = y_first;
  }
  if (!need_v) return tmp;

  Image out(w, h);
  const size_t row_len = size_t(w) * 3;
  std::vector<int32_t> acc(row_len);
  for (int yy = 0; yy < h; ++yy) {
    const int32_t* k = &tv.k[size_t(yy) * size_t(tv.ksize)];
    std::fill(acc.begin(), acc.end(), half);
    for (int y = 0; y < tv.count[size_t(yy)]; ++y) {
      const uint8_t* row = src->at(0, tv.start[size_t(yy)] + y - row0);
      const int32_t ky = k[y];
      for (size_t i = 0; i < row_len; ++i) acc[i] += row[i] * ky;
    }
    uint8_t* o = out.at(0, yy);
    for (size_t i = 0; i < row_len; ++i) o[i] = clip8(acc[i]);
  }
  return out;
}

// HF get_resize_output_image_size(size=shortest_edge, default_to_square=False):
// short side -> shortest_edge, long side -> int(shortest_edge * long / short)
// (Python true division in float64, truncated). Returns {width, height}.
inline std::array<int, 2> shortest_edge_size(int width, int height, int shortest_edge) {
  const bool portrait = width <= height;
  const int s = portrait ? width : height, l = portrait ? height : width;
  const double v = double(shortest_edge) * double(l) / double(s);
  if (!(v < 2147483648.0))  // converting it to int would be undefined
    fail("shortest_edge_size: resizing ", width, "x", height, " to shortest edge ", shortest_edge, " gives a long side of ",
         v, " pixels, too many");
  const int new_long = int(v);
  return portrait ? std::array<int, 2>{shortest_edge, new_long} : std::array<int, 2>{new_long, shortest_edge};
}

// HF image_transforms.center_crop: top = (H - ch) // 2, left = (W - cw) // 2
// (floor division); an image smaller than the crop is zero-padded, centred with
// ceil((ch - H) / 2) rows / ceil((cw - W) / 2) columns before it, so the result is
// always ch x cw.
inline Image center_crop(const Image& in, int crop_w, int crop_h) {
  if (crop_w < 1 || crop_h < 1) fail("center_crop: crop size ", crop_w, "x", crop_h, " must be at least 1x1");
  auto floordiv2 = [](int a) { return a >= 0 ? a / 2 : -((-a + 1) / 2); };
  const int top = floordiv2(in.height - crop_h), left = floordiv2(in.width - crop_w);
  Image out(crop_w, crop_h);  // zeros
  // Output pixel (x, y) is input (x + left, y + top) when inside the input, else 0:
  // with padding, pad_top = -top exactly, so the same mapping holds.
  for (int y = 0; y < crop_h; ++y) {
    const int sy = y + top;
    if (sy < 0 || sy >= in.height) continue;
    const int x_lo = std::max(0, -left), x_hi = std::min(crop_w, in.width - left);
    if (x_lo < x_hi) std::copy(in.at(x_lo + left, sy), in.at(x_hi + left, sy), out.at(x_lo, y));
  }
  return out;
}

// CLIPImageProcessor pixel_values for one image: F32 [3, H, W] (CHW). `name`
// (the image's file) starts the error messages.
inline Tensor preprocess(const Image& image, const PreprocessConfig& cfg, const std::string& name = "preprocess") {
  if (image.width < 1 || image.height < 1) fail(name, ": empty image (", image.width, "x", image.height, ")");
  Image im = cfg.pad_to_square ? expand_to_square(image, pad_color(cfg.mean), name) : image;
  if (cfg.do_resize) {
    if (cfg.shortest_edge < 1) fail(name, ": shortest_edge ", cfg.shortest_edge, " must be positive");
    // The long side, as shortest_edge_size computes it, checked before it becomes an int.
    const double new_long = double(cfg.shortest_edge) * double(std::max(im.width, im.height)) / double(std::min(im.width, im.height));
    if (!(std::trunc(new_long) * double(cfg.shortest_edge) <= double(max_image_pixels()))) {
      const std::string l = new_long < 1e18 ? std::to_string(uint64_t(new_long)) : "over 10^18";
      const std::string e = std::to_string(cfg.shortest_edge);
      fail(name, ": resizing ", im.width, "x", im.height, " to shortest edge ", e, " gives ",
           im.width <= im.height ? e + "x" + l : l + "x" + e, " pixels, ", image_pixel_limit_text());
    }
    const auto sz = shortest_edge_size(im.width, im.height, cfg.shortest_edge);
    im = resize_bicubic(im, sz[0], sz[1]);
  }
  if (cfg.do_center_crop) im = center_crop(im, cfg.crop_width, cfg.crop_height);

  const int W = im.width, H = im.height;
  Tensor t(DType::F32, {3, H, W});
  float* o = t.f32();
  std::array<float, 3> mean{}, stdv{};
  for (size_t c = 0; c < 3; ++c) mean[c] = float(cfg.mean[c]), stdv[c] = float(cfg.std[c]);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const uint8_t u = im.at(x, y)[c];
        // HF rescale: uint8 -> float64 * factor -> float32; normalize: float32 (x - mean) / std.
        float v = cfg.do_rescale ? float(double(u) * cfg.rescale_factor) : float(u);
        if (cfg.do_normalize) v = (v - mean[size_t(c)]) / stdv[size_t(c)];
        o[(size_t(c) * size_t(H) + size_t(y)) * size_t(W) + size_t(x)] = v;
      }
  return t;
}

}  // namespace loupe
