// loupe/vision/preprocess.hpp: Pillow-exact bicubic resize and LLaVA / CLIPImageProcessor
// preprocessing against reference/preprocess_ref.py (Pillow 9.4 + numpy).
#include "test_util.hpp"

#include <loupe/io/npy.hpp>
#include <loupe/vision/preprocess.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>

#include <sys/resource.h>

namespace {
namespace fs = std::filesystem;

loupe::Image random_image(int w, int h, uint32_t seed) {
  std::mt19937 rng(seed);
  loupe::Image im(w, h);
  // Mix smooth gradients with noise and saturated runs, so clipping and
  // negative lobes are exercised.
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        const uint32_t r = rng();
        int v = (r & 3) == 0 ? int((r >> 8) & 0xff) : (x * 7 + y * 13 + c * 50) & 0xff;
        if ((r & 31) == 1) v = (r >> 16) & 1 ? 255 : 0;
        im.at(x, y)[c] = uint8_t(v);
      }
  return im;
}

void save_image_npy(const loupe::Image& im, const fs::path& p) {
  std::vector<float> f(im.rgb.begin(), im.rgb.end());
  loupe::write_npy(p.string(), f.data(), {im.height, im.width, 3});
}

loupe::Image image_from_npy(const fs::path& p) {
  loupe::Tensor t = loupe::read_npy(p.string());
  REQUIRE(t.shape.size() == 3);
  REQUIRE(t.shape[2] == 3);
  loupe::Image im(int(t.shape[1]), int(t.shape[0]));
  for (size_t i = 0; i < im.rgb.size(); ++i) im.rgb[i] = uint8_t(std::lround(t.f32()[i]));
  return im;
}

// max |a - b| over a [3, H, W] pixel_values tensor and a reference .npy.
float max_abs_diff(const loupe::Tensor& a, const fs::path& ref_path) {
  loupe::Tensor ref = loupe::read_npy(ref_path.string());
  REQUIRE(ref.shape == a.shape);
  float m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::fabs(a.f32()[i] - ref.f32()[i]));
  return m;
}

struct Case {
  int in_w, in_h, out_w, out_h;
};

}  // namespace

TEST_CASE("pad colour, expand_to_square, output size and center crop follow LLaVA / HF") {
  loupe::PreprocessConfig cfg;
  const auto bg = loupe::pad_color(cfg.mean);
  CHECK(int(bg[0]) == 122);
  CHECK(int(bg[1]) == 116);
  CHECK(int(bg[2]) == 104);
  CHECK(int(loupe::pad_color({0.5, 1.0, 0.0})[0]) == 127);  // int(127.5) truncates
  CHECK(int(loupe::pad_color({0.5, 1.0, 0.0})[1]) == 255);

  // Portrait 3x6 -> 6x6, pasted at x = (6 - 3) // 2 = 1.
  loupe::Image p = random_image(3, 6, 1);
  loupe::Image sq = loupe::expand_to_square(p, bg);
  REQUIRE(sq.width == 6);
  REQUIRE(sq.height == 6);
  CHECK(sq.at(0, 0)[0] == 122);
  CHECK(sq.at(1, 2)[1] == p.at(0, 2)[1]);
  CHECK(sq.at(3, 5)[2] == p.at(2, 5)[2]);
  CHECK(sq.at(4, 5)[2] == 104);
  // Landscape 7x2 -> 7x7 pasted at y = (7 - 2) // 2 = 2.
  loupe::Image l = random_image(7, 2, 2);
  loupe::Image sq2 = loupe::expand_to_square(l, bg);
  CHECK(sq2.at(6, 2)[0] == l.at(6, 0)[0]);
  CHECK(sq2.at(6, 3)[0] == l.at(6, 1)[0]);
  CHECK(sq2.at(6, 4)[1] == 116);
  CHECK(sq2.at(0, 1)[1] == 116);

  // HF get_resize_output_image_size(default_to_square=False): int(336 * long / short).
  CHECK(loupe::shortest_edge_size(440, 777, 336) == std::array<int, 2>{336, 593});
  CHECK(loupe::shortest_edge_size(640, 427, 336) == std::array<int, 2>{503, 336});
  CHECK(loupe::shortest_edge_size(451, 300, 336) == std::array<int, 2>{505, 336});
  CHECK(loupe::shortest_edge_size(300, 300, 336) == std::array<int, 2>{336, 336});
  CHECK(loupe::shortest_edge_size(3, 500, 336) == std::array<int, 2>{336, 56000});

  // center_crop: larger image -> window at ((W - cw) // 2, (H - ch) // 2).
  loupe::Image big = random_image(9, 8, 3);
  loupe::Image c = loupe::center_crop(big, 4, 5);
  REQUIRE(c.width == 4);
  REQUIRE(c.height == 5);
  CHECK(c.at(0, 0)[0] == big.at(2, 1)[0]);
  CHECK(c.at(3, 4)[2] == big.at(5, 5)[2]);
  // Smaller in one dimension: zero padding, ceil((ch - H) / 2) rows above.
  loupe::Image small = random_image(5, 2, 4);
  loupe::Image c2 = loupe::center_crop(small, 3, 5);  // top = (2 - 5) // 2 = -2, left = 1
  REQUIRE(c2.width == 3);
  REQUIRE(c2.height == 5);
  CHECK(c2.at(0, 0)[0] == 0);
  CHECK(c2.at(0, 1)[0] == 0);
  CHECK(c2.at(0, 2)[0] == small.at(1, 0)[0]);
  CHECK(c2.at(2, 3)[1] == small.at(3, 1)[1]);
  CHECK(c2.at(2, 4)[1] == 0);

  CHECK_THROWS_AS(loupe::resize_bicubic(p, 0, 3), loupe::Error);
  CHECK_THROWS_AS(loupe::center_crop(p, 3, 0), loupe::Error);
  CHECK_THROWS_AS(loupe::preprocess(loupe::Image(), cfg), loupe::Error);
}

TEST_CASE("resize_bicubic is bit-exact with PIL Image.resize(BICUBIC)") {
  const fs::path dir = loupe_test::scratch("resize_exact");
  const std::vector<Case> cases = {
      {7, 5, 23, 17},      // upscale
      {16, 16, 32, 32},    // exact 2x upscale (dyadic weights)
      {99, 63, 33, 21},    // downscale by 3
      {125, 75, 25, 15},   // downscale by 5
      {100, 100, 33, 33},  // non-integer downscale
      {101, 37, 7, 9},     // strong, anisotropic
      {50, 20, 31, 20},    // horizontal pass only
      {20, 50, 20, 31},    // vertical pass only
      {1, 1, 5, 7},        // single pixel
      {1, 9, 1, 3},        // 1-wide column
      {13, 1, 4, 1},       // 1-high row
      {13, 1, 40, 3},      // 1-high row, upscaled both ways
      {2, 3, 1, 1},        // to a single pixel
      {3, 500, 33, 5500},  // thin, huge upscale of one side
      {777, 777, 336, 336},  // the padded painting's size
      {640, 427, 503, 336},  // the rocket's unpadded size
      {337, 335, 336, 336},  // near-identity
  };
  std::string lines;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string in = (dir / ("in" + std::to_string(i) + ".npy")).string();
    const std::string out = (dir / ("out" + std::to_string(i) + ".npy")).string();
    save_image_npy(random_image(c.in_w, c.in_h, uint32_t(100 + i)), in);
    lines += in + " " + out + " " + std::to_string(c.out_w) + " " + std::to_string(c.out_h) + "\n";
  }
  std::ofstream(dir / "cases.txt") << lines;
  loupe_test::run_python("preprocess_ref.py", "--resize-cases " + loupe_test::quote((dir / "cases.txt").string()));
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    CAPTURE(i);
    CAPTURE(c.in_w);
    CAPTURE(c.in_h);
    CAPTURE(c.out_w);
    CAPTURE(c.out_h);
    const loupe::Image got = loupe::resize_bicubic(random_image(c.in_w, c.in_h, uint32_t(100 + i)), c.out_w, c.out_h);
    const loupe::Image want = image_from_npy(dir / ("out" + std::to_string(i) + ".npy"));
    REQUIRE(got.width == want.width);
    REQUIRE(got.height == want.height);
    int64_t bad = 0;
    for (size_t k = 0; k < got.rgb.size(); ++k) bad += got.rgb[k] != want.rgb[k];
    CHECK(bad == 0);
  }
}

TEST_CASE("pixel_values match the LLaVA / CLIPImageProcessor reference on the shared images") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("preprocess_shared");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(loupe_test::shared_dir() / "images")) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 5);
  // Pass 1: PIL decodes and preprocesses each file (and dumps its decoded RGB).
  std::string batch;
  for (const auto& f : files)
    for (bool pad : {true, false}) {
      const std::string stem = f.filename().string() + (pad ? ".pad" : ".nopad");
      batch += "--image " + loupe_test::quote(f.string()) + (pad ? "" : " --no-pad") + " --out " +
               loupe_test::quote((dir / (stem + ".npy")).string()) + " --decoded-out " +
               loupe_test::quote((dir / (f.filename().string() + ".rgb.npy")).string()) + "\n";
    }
  std::ofstream(dir / "batch.txt") << batch;
  loupe_test::run_python("preprocess_ref.py", "--batch " + loupe_test::quote((dir / "batch.txt").string()));

  for (const auto& f : files)
    for (bool pad : {true, false}) {
      const std::string stem = f.filename().string() + (pad ? ".pad" : ".nopad");
      CAPTURE(stem);
      loupe::PreprocessConfig cfg;
      cfg.pad_to_square = pad;
      // loupe end to end (its own decoder).
      const loupe::Tensor mine = loupe::preprocess(loupe::load_image(f.string()), cfg);
      REQUIRE(mine.shape == std::vector<int64_t>{3, 336, 336});
      const float d = max_abs_diff(mine, dir / (stem + ".npy"));
      // loupe's resize + preprocess fed PIL's decoded pixels: isolates the resampler.
      const loupe::Tensor same_pixels = loupe::preprocess(image_from_npy(dir / (f.filename().string() + ".rgb.npy")), cfg);
      const float d_pil = max_abs_diff(same_pixels, dir / (stem + ".npy"));
      CHECK(d_pil <= 1e-5f);
      if (f.extension() == ".jpg") {
        // Decoder differences (stb vs libjpeg-turbo, max 3 levels on these files)
        // survive the resize: measured max ~2 levels = 2 / 255 / 0.26 ~= 0.03.
        MESSAGE(stem << ": max |loupe - reference| = " << d << " (JPEG decoder difference); with PIL's pixels: " << d_pil);
        CHECK(d <= 0.06f);
      } else {
        MESSAGE(stem << ": max |loupe - reference| = " << d);
        CHECK(d <= 1e-5f);
      }
    }
}

TEST_CASE("tiny and odd-shaped images go through the whole pipeline like the reference") {
  const fs::path dir = loupe_test::scratch("preprocess_tiny");
  struct T {
    int w, h;
    bool pad;
    int size, crop;
    bool resize;
  };
  const std::vector<T> cases = {
      {1, 1, true, 336, 336, true},   {1, 1, false, 336, 336, true},  {3, 500, true, 336, 336, true},
      {3, 500, false, 336, 336, true}, {500, 3, false, 336, 336, true}, {2, 1, true, 336, 336, true},
      {5, 7, false, 8, 6, true},       {9, 4, false, 8, 6, false},     {3, 2, false, 8, 6, false},
      {17, 11, true, 9, 5, true},
  };
  std::string batch;
  for (size_t i = 0; i < cases.size(); ++i) {
    const T& c = cases[i];
    const fs::path in = dir / ("in" + std::to_string(i) + ".npy");
    save_image_npy(random_image(c.w, c.h, uint32_t(7 + i)), in);
    batch += "--decoded-in " + loupe_test::quote(in.string()) + (c.pad ? "" : " --no-pad") +
             (c.resize ? "" : " --no-resize") + " --size " + std::to_string(c.size) + " --crop " +
             std::to_string(c.crop) + " --out " + loupe_test::quote((dir / ("out" + std::to_string(i) + ".npy")).string()) +
             "\n";
  }
  std::ofstream(dir / "batch.txt") << batch;
  loupe_test::run_python("preprocess_ref.py", "--batch " + loupe_test::quote((dir / "batch.txt").string()));
  for (size_t i = 0; i < cases.size(); ++i) {
    const T& c = cases[i];
    CAPTURE(i);
    loupe::PreprocessConfig cfg;
    cfg.pad_to_square = c.pad;
    cfg.shortest_edge = c.size;
    cfg.crop_width = cfg.crop_height = c.crop;
    cfg.do_resize = c.resize;
    const loupe::Tensor t = loupe::preprocess(random_image(c.w, c.h, uint32_t(7 + i)), cfg);
    REQUIRE(t.shape == std::vector<int64_t>{3, c.crop, c.crop});
    CHECK(max_abs_diff(t, dir / ("out" + std::to_string(i) + ".npy")) <= 1e-5f);
  }
}

namespace {
// The call must throw loupe::Error containing every one of `parts`.
template <class F>
void check_error(F&& f, std::initializer_list<const char*> parts) {
  const std::string msg = loupe_test::error_of(f);
  INFO("message: " << msg);
  REQUIRE(!msg.empty());
  for (const char* p : parts) CHECK(msg.find(p) != std::string::npos);
}
}  // namespace

TEST_CASE("preprocess: a padded square past the pixel limit is refused before it is allocated") {
  loupe::PreprocessConfig cfg;  // pad_to_square, 336
  const long rss0 = loupe_test::peak_rss_mb();  // the process's peak so far (earlier cases, sanitizer shadow)
  // 100000 x 1 passes the limit (100000 pixels); its square, 10^10 pixels, is 30 GB.
  const loupe::Image wide(100000, 1);
  check_error([&] { loupe::preprocess(wide, cfg, "wide.png"); },
              {"wide.png: padding the 100000x1 image to a square", "100000x100000 = 10000000000 pixels",
               "more than the limit of 178956970", "LOUPE_MAX_IMAGE_PIXELS"});
  const loupe::Image tall(3, 70000);  // 4.9e9 pixels padded
  check_error([&] { loupe::expand_to_square(tall, {1, 2, 3}, "tall.gif"); }, {"tall.gif: padding the 3x70000", "4900000000 pixels"});
  MESSAGE("peak RSS " << rss0 << " MB before, " << loupe_test::peak_rss_mb() << " MB after");
  CHECK(loupe_test::peak_rss_mb() < rss0 + 100);

  // At the limit exactly the square is made; one pixel of side more, it is not.
  ::setenv("LOUPE_MAX_IMAGE_PIXELS", "10000", 1);
  cfg.shortest_edge = cfg.crop_width = cfg.crop_height = 64;  // the resize target (64 x 64) within the limit too
  const loupe::Tensor t = loupe::preprocess(loupe::Image(100, 1), cfg, "ok.png");
  CHECK(t.shape == std::vector<int64_t>{3, 64, 64});
  check_error([&] { loupe::preprocess(loupe::Image(101, 1), cfg, "big.png"); }, {"big.png", "101x101 = 10201 pixels", "limit of 10000"});
  ::unsetenv("LOUPE_MAX_IMAGE_PIXELS");
}

TEST_CASE("preprocess: a resize whose long side passes int or the pixel limit is refused, not converted") {
  loupe::PreprocessConfig cfg;
  cfg.pad_to_square = false;
  const long rss0 = loupe_test::peak_rss_mb();
  // 1 x 100000, shortest edge 336: 336 x 33600000 = 11289600000 pixels.
  check_error([&] { loupe::preprocess(loupe::Image(1, 100000), cfg, "needle.png"); },
              {"needle.png: resizing 1x100000 to shortest edge 336 gives 336x33600000 pixels", "more than the limit"});
  // 336 * 2^30 = 360777252864 does not fit int.
  check_error([&] { loupe::shortest_edge_size(1, 1 << 30, 336); }, {"shortest_edge_size", "too many"});
  CHECK(loupe_test::peak_rss_mb() < rss0 + 100);
}
