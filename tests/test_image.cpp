// loupe/vision/image.hpp: decoding to RGB8 against Pillow's Image.open(f).convert('RGB')
// (reference/preprocess_ref.py, Debian python3-pil 9.4).
#include "test_util.hpp"

#include <loupe/vision/image.hpp>
#include <loupe/io/npy.hpp>

#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

namespace {
namespace fs = std::filesystem;

struct Diff {
  int max = 0;
  int64_t count = 0;  // channel values that differ
  double mean = 0;    // mean absolute difference over all values
};

// PIL's decoded pixels (float32 [H, W, 3] .npy) vs a loupe Image.
Diff compare(const loupe::Image& im, const fs::path& npy) {
  loupe::Tensor ref = loupe::read_npy(npy.string());
  REQUIRE(ref.shape.size() == 3);
  REQUIRE(ref.shape[0] == im.height);
  REQUIRE(ref.shape[1] == im.width);
  REQUIRE(ref.shape[2] == 3);
  Diff d;
  double sum = 0;
  for (size_t i = 0; i < im.rgb.size(); ++i) {
    const int e = std::abs(int(im.rgb[i]) - int(ref.f32()[i]));
    d.max = std::max(d.max, e);
    d.count += e != 0;
    sum += e;
  }
  d.mean = sum / double(im.rgb.size());
  return d;
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// The call must throw loupe::Error whose message names `name` and contains `what`.
template <class F>
void check_fails(F&& f, const std::string& name, const std::string& what) {
  std::string msg;
  try {
    f();
  } catch (const loupe::Error& e) {
    msg = e.what();
  }
  INFO("message: " << msg);
  CHECK(!msg.empty());
  CHECK(msg.find(name) != std::string::npos);
  CHECK(msg.find(what) != std::string::npos);
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

}  // namespace

TEST_CASE("synthetic PNG / BMP / GIF variants decode exactly as PIL's convert('RGB')") {
  const fs::path dir = loupe_test::scratch("image_variants");
  loupe_test::run_python("preprocess_ref.py", "--make-variants " + loupe_test::quote(dir.string()));
  std::istringstream names(loupe_test::slurp(dir / "list.txt"));
  int n_exact = 0, n_jpeg = 0;
  std::string name;
  while (names >> name) {
    CAPTURE(name);
    const loupe::Image im = loupe::load_image((dir / name).string());
    const Diff d = compare(im, dir / (name + ".npy"));
    if (ends_with(name, ".jpg")) {
      // stb's IDCT / upsampling are not libjpeg-turbo's (see the shared-image case);
      // measured max 2 (RGB 4:2:0, 4:4:4, progressive, EXIF), 1 (grey, CMYK).
      MESSAGE(name << ": max |stb - PIL| = " << d.max << ", mean " << d.mean);
      CHECK(d.max <= 4);
      CHECK(d.mean < 0.5);
      ++n_jpeg;
    } else {
      CHECK(d.max == 0);
      CHECK(d.count == 0);
      ++n_exact;
    }
  }
  CHECK(n_exact >= 25);  // PNG: 8/16-bit, grey, LA, RGBA, palette, tRNS, interlaced; BMP; GIF
  CHECK(n_jpeg == 6);  // incl. exif_rotated.jpg: same size as stored, orientation not applied
}

TEST_CASE("shared images: PNG exact, JPEG within the measured decoder difference") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("image_shared");
  std::string args = "--decode";
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(loupe_test::shared_dir() / "images")) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 5);
  for (const auto& f : files)
    args += " " + loupe_test::quote(f.string()) + " " + loupe_test::quote((dir / (f.filename().string() + ".npy")).string());
  loupe_test::run_python("preprocess_ref.py", args);
  for (const auto& f : files) {
    CAPTURE(f);
    const loupe::Image im = loupe::load_image(f.string());
    const Diff d = compare(im, dir / (f.filename().string() + ".npy"));
    if (f.extension() == ".jpg") {
      // Measured (stb_image 2.27 vs Pillow 9.4's libjpeg-turbo): bouguereau max 3,
      // 4.8 % of values differ, mean 0.064; rocket max 2, 0.96 % differ, mean 0.0099.
      MESSAGE(f.filename().string() << " " << im.width << "x" << im.height << ": max |stb - PIL| = " << d.max
                                    << ", differing values " << d.count << " / " << im.rgb.size() << ", mean " << d.mean);
      CHECK(d.max <= 4);
      CHECK(d.mean < 0.1);
    } else {
      CHECK(d.max == 0);
    }
  }
}

TEST_CASE("malformed inputs fail with messages naming the file") {
  const fs::path dir = loupe_test::scratch("image_errors");

  const std::string missing = (dir / "missing.png").string();
  check_fails([&] { loupe::load_image(missing); }, missing, "cannot open");

  const std::string empty = (dir / "empty.jpg").string();
  write_file(empty, "");
  check_fails([&] { loupe::load_image(empty); }, empty, "empty file");

  const std::string random = (dir / "random.bin").string();
  {
    std::mt19937 rng(7);
    std::string b(4096, '\0');
    for (char& c : b) c = char(rng() & 0xff);
    b[0] = 'x';  // not accidentally a signature
    write_file(random, b);
  }
  check_fails([&] { loupe::load_image(random); }, random, "not a JPEG, PNG, BMP or GIF");

  const std::string text = (dir / "text.png").string();
  write_file(text, "hello, I am not a picture\n");
  check_fails([&] { loupe::load_image(text); }, text, "unrecognised file signature");

  const std::string webp = (dir / "photo.webp").string();
  write_file(webp, std::string("RIFF\x10\0\0\0WEBPVP8 ", 16) + std::string(32, '\0'));
  check_fails([&] { loupe::load_image(webp); }, webp, "WebP images are not supported");

  // Truncated files, cut from valid ones written by PIL.
  const fs::path src = loupe_test::scratch("image_errors_src");
  loupe_test::run_python("preprocess_ref.py", "--make-variants " + loupe_test::quote(src.string()));
  for (const char* n : {"rgb.png", "palette.gif", "q90.jpg", "progressive.jpg", "rgb.bmp"}) {
    const std::string whole = loupe_test::slurp(src / n);
    REQUIRE(whole.size() > 200);
    for (double frac : {0.5, 0.9}) {
      const std::string cut = (dir / ("cut_" + std::to_string(int(frac * 100)) + "_" + n)).string();
      write_file(cut, whole.substr(0, size_t(double(whole.size()) * frac)));
      CAPTURE(cut);
      check_fails([&] { loupe::load_image(cut); }, cut, "");
    }
  }
  // Bytes after the JPEG end-of-image marker are ignored (PIL too), a missing EOI is not.
  {
    const std::string jpg = loupe_test::slurp(src / "q90.jpg");
    const loupe::Image want = loupe::load_image((src / "q90.jpg").string());
    const std::string trailing = (dir / "trailing.jpg").string();
    write_file(trailing, jpg + std::string("junk\xff\xda\x00\x02more", 12));
    CHECK(loupe::load_image(trailing).rgb == want.rgb);
    REQUIRE(jpg.substr(jpg.size() - 2) == "\xff\xd9");
    const std::string no_eoi = (dir / "no_eoi.jpg").string();
    write_file(no_eoi, jpg.substr(0, jpg.size() - 2));
    check_fails([&] { loupe::load_image(no_eoi); }, no_eoi, "truncated JPEG");
    // A Huffman table with more than 256 codes (stb 2.27 would overrun its arrays).
    std::string bad = jpg;
    const size_t dht = bad.find("\xff\xc4");
    REQUIRE(dht != std::string::npos);
    for (size_t i = 0; i < 16; ++i) bad[dht + 5 + i] = char(0x20);
    const std::string bad_dht = (dir / "bad_dht.jpg").string();
    write_file(bad_dht, bad);
    check_fails([&] { loupe::load_image(bad_dht); }, bad_dht, "corrupt JPEG");
  }
  // Header only: nothing but the signature.
  const std::string sig = (dir / "sig_only.png").string();
  write_file(sig, "\x89PNG\r\n\x1a\n");
  check_fails([&] { loupe::load_image(sig); }, sig, "PNG");

  // Absurd dimensions are refused from the header, before allocating.
  auto be32 = [](uint32_t v) {
    return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
  };
  const std::string huge_png = (dir / "huge.png").string();
  // IHDR 100000 x 100000, 8-bit RGB (CRC is not checked by the header probe).
  write_file(huge_png, std::string("\x89PNG\r\n\x1a\n", 8) + be32(13) + "IHDR" + be32(100000) + be32(100000) +
                           std::string("\x08\x02\x00\x00\x00", 5) + be32(0));
  check_fails([&] { loupe::load_image(huge_png); }, huge_png, "more than the limit");

  const std::string huge_gif = (dir / "huge.gif").string();
  write_file(huge_gif, std::string("GIF89a\xff\xff\xff\xff\x00\x00\x00,\0\0\0\0\xff\xff\xff\xff\x00\x08", 24));
  check_fails([&] { loupe::load_image(huge_gif); }, huge_gif, "more than the limit");

  const std::string zero_gif = (dir / "zero.gif").string();
  write_file(zero_gif, std::string("GIF89a\0\0\0\0\x00\x00\x00,\0\0\0\0\0\0\0\0\x00\x08\x02\x4c\x01\x00;", 29));
  check_fails([&] { loupe::load_image(zero_gif); }, zero_gif, "zero size");

  const std::string zero_png = (dir / "zero.png").string();
  write_file(zero_png, std::string("\x89PNG\r\n\x1a\n", 8) + be32(13) + "IHDR" + be32(0) + be32(5) +
                           std::string("\x08\x02\x00\x00\x00", 5) + be32(0));
  check_fails([&] { loupe::load_image(zero_png); }, zero_png, "PNG");

  const std::string no_image_gif = (dir / "noimage.gif").string();
  write_file(no_image_gif, std::string("GIF89a\x04\0\x04\0\x00\x00\x00;", 14));
  check_fails([&] { loupe::load_image(no_image_gif); }, no_image_gif, "no image");

  // In-memory decoding uses the given name.
  const std::string bytes = loupe_test::slurp(src / "rgb.png");
  const loupe::Image ok = loupe::decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "mem.png");
  CHECK(ok.width == 37);
  CHECK(ok.height == 23);
  check_fails([&] { loupe::decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), 100, "upload #3"); },
              "upload #3", "PNG");
  check_fails([&] { loupe::decode_image(nullptr, 0, "upload #4"); }, "upload #4", "empty");
}

TEST_CASE("corrupted files either decode or throw loupe::Error, never crash") {
  const fs::path src = loupe_test::scratch("image_fuzz_src");
  loupe_test::run_python("preprocess_ref.py", "--make-variants " + loupe_test::quote(src.string()));
  std::istringstream names(loupe_test::slurp(src / "list.txt"));
  std::mt19937 rng(42);
  std::string name;
  int decoded = 0, rejected = 0;
  while (names >> name) {
    const std::string whole = loupe_test::slurp(src / name);
    for (int iter = 0; iter < 40; ++iter) {
      std::string b = whole;
      const int flips = 1 + int(rng() % 8);
      for (int k = 0; k < flips; ++k) b[rng() % b.size()] = char(rng() & 0xff);
      if (iter % 4 == 3) b.resize(rng() % b.size());
      try {
        const loupe::Image im = loupe::decode_image(reinterpret_cast<const uint8_t*>(b.data()), b.size(), name);
        CHECK(im.rgb.size() == size_t(im.width) * size_t(im.height) * 3);
        ++decoded;
      } catch (const loupe::Error& e) {
        CHECK(std::string(e.what()).find(name) != std::string::npos);
        ++rejected;
      }
    }
  }
  MESSAGE("mutated files: " << decoded << " decoded, " << rejected << " rejected");
}
