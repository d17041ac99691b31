// loupe/vision/image.hpp: decoding to RGB8 against Pillow's Image.open(f).convert('RGB')
// (reference/preprocess_ref.py, Debian python3-pil 9.4).
#include "test_util.hpp"

#include <loupe/vision/image.hpp>
#include <loupe/io/npy.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <random>
#include <sstream>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

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
  const std::string msg = loupe_test::error_of(f);
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

namespace {
// Crafted JPEGs, byte by byte (ITU T.81): 8x8, 8-bit, quantisation 1, and one
// Huffman table each for DC and AC holding a single 1-bit code for symbol 0x0F
// (DC: a 15-bit difference; AC: run 0, a 15-bit value).
std::string jpeg_segment(uint8_t marker, const std::string& body) {
  const size_t n = body.size() + 2;
  return std::string{char(0xff), char(marker), char(n >> 8), char(n & 0xff)} + body;
}
std::string jpeg_frame(uint8_t sof, std::initializer_list<int> ids) {
  std::string body{8, 0, 8, 0, 8, char(ids.size())};  // precision, height 8, width 8, components
  for (int id : ids) body += std::string{char(id), 0x11, 0};
  return jpeg_segment(sof, body);
}
std::string jpeg_tables() {
  const std::string counts = std::string(1, 1) + std::string(15, 0);
  return jpeg_segment(0xdb, std::string(1, 0) + std::string(64, 1)) +
         jpeg_segment(0xc4, std::string(1, 0x00) + counts + "\x0f") + jpeg_segment(0xc4, std::string(1, 0x10) + counts + "\x0f");
}
std::string jpeg_scan(std::initializer_list<int> ids) {
  std::string body{char(ids.size())};
  for (int id : ids) body += std::string{char(id), 0};
  return jpeg_segment(0xda, body + std::string{0, 63, 0});
}
// Every coefficient of one block at +32767 (code 0, then 15 one bits; 0xFF stuffed as FF 00).
std::string jpeg_max_coefficients() {
  std::string s;
  for (int i = 0; i < 64; ++i) s += std::string("\x7f\xff\x00", 3);
  return s;
}
const std::string kSoi("\xff\xd8", 2), kEoi("\xff\xd9", 2);

}  // namespace

TEST_CASE("image: a JPEG frame without a scan, or whose scan names no frame component, is refused as PIL refuses it") {
  const fs::path dir = loupe_test::scratch("image_jpeg_scans");
  // stb 2.27 "decodes" a progressive header with no scan into its coefficient buffer, never written.
  const std::string no_scan = (dir / "progressive_no_scan.jpg").string();
  write_file(no_scan, kSoi + jpeg_tables() + jpeg_frame(0xc2, {1}) + kEoi);
  check_fails([&] { loupe::load_image(no_scan); }, no_scan, "no scan");
  const std::string baseline_no_scan = (dir / "baseline_no_scan.jpg").string();
  write_file(baseline_no_scan, kSoi + jpeg_tables() + jpeg_frame(0xc0, {1, 2, 3}) + kEoi);
  check_fails([&] { loupe::load_image(baseline_no_scan); }, baseline_no_scan, "no scan");

  const std::string bad_selector = (dir / "bad_selector.jpg").string();
  write_file(bad_selector, kSoi + jpeg_tables() + jpeg_frame(0xc0, {1}) + jpeg_scan({7}) + jpeg_max_coefficients() + kEoi);
  check_fails([&] { loupe::load_image(bad_selector); }, bad_selector, "component 7, not in the frame");

  const std::string twice = (dir / "selector_twice.jpg").string();
  write_file(twice, kSoi + jpeg_tables() + jpeg_frame(0xc0, {1, 2}) + jpeg_scan({1, 1}) + jpeg_max_coefficients() + kEoi);
  check_fails([&] { loupe::load_image(twice); }, twice, "twice");

  const std::string scan_first = (dir / "scan_before_frame.jpg").string();
  write_file(scan_first, kSoi + jpeg_tables() + jpeg_scan({1}) + jpeg_max_coefficients() + jpeg_frame(0xc0, {1}) + kEoi);
  check_fails([&] { loupe::load_image(scan_first); }, scan_first, "scan before the frame header");

  const std::string two_frames = (dir / "two_frames.jpg").string();
  write_file(two_frames, kSoi + jpeg_tables() + jpeg_frame(0xc0, {1}) + jpeg_frame(0xc0, {1}) + jpeg_scan({1}) +
                             jpeg_max_coefficients() + kEoi);
  check_fails([&] { loupe::load_image(two_frames); }, two_frames, "more than one frame header");
}

TEST_CASE("image: JPEG coefficients that overflow stb's integer IDCT decode (wrapping, defined) as PIL decodes them") {
  // Without -fwrapv on src/loupe.cpp a UBSan build reports "signed integer overflow" in
  // stbi__idct_block here (the LOUPE_SANITIZE build runs this test).
  const std::string bytes = kSoi + jpeg_tables() + jpeg_frame(0xc0, {1}) + jpeg_scan({1}) + jpeg_max_coefficients() + kEoi;
  const loupe::Image a = loupe::decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "idct.jpg");
  CHECK(a.width == 8);
  CHECK(a.height == 8);
  // A scan that leaves two of three components out decodes too (libjpeg does), from
  // zeroed buffers: the same pixels every time, whatever the heap held before.
  const std::string partial = kSoi + jpeg_tables() + jpeg_frame(0xc0, {1, 2, 3}) + jpeg_scan({1}) + jpeg_max_coefficients() + kEoi;
  std::vector<uint8_t> junk(1 << 16, 0xa5);  // dirty the heap between the two decodes
  const loupe::Image b1 = loupe::decode_image(reinterpret_cast<const uint8_t*>(partial.data()), partial.size(), "partial.jpg");
  junk.assign(1 << 16, 0x5a);
  const loupe::Image b2 = loupe::decode_image(reinterpret_cast<const uint8_t*>(partial.data()), partial.size(), "partial.jpg");
  CHECK(b1.rgb == b2.rgb);
}

TEST_CASE("image: header sizes whose product overflows 64 bits are refused, the check itself does not overflow") {
  const fs::path dir = loupe_test::scratch("image_size_overflow");
  auto be32 = [](uint32_t v) { return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; };
  // (2^32 - 1)^2 = 18446744065119617025 pixels: past INT64_MAX, so int64 w * h was undefined.
  const std::string png = (dir / "max.png").string();
  write_file(png, std::string("\x89PNG\r\n\x1a\n", 8) + be32(13) + "IHDR" + be32(0xffffffffu) + be32(0xffffffffu) +
                      std::string("\x08\x02\x00\x00\x00", 5) + be32(0));
  check_fails([&] { loupe::load_image(png); }, png, "4294967295x4294967295 = 18446744065119617025 pixels, more than the limit");
  // BMP: rows of a 10000 x 10000 image at 65535 bits per pixel are 81918752 bytes
  // (655350000 bits rounded up to 32), 819187520054 bytes with the 54-byte header.
  auto le16 = [](uint32_t v) { return std::string{char(v), char(v >> 8)}; };
  auto le32 = [&](uint32_t v) { return le16(v & 0xffff) + le16(v >> 16); };
  auto bmp_header = [&](uint32_t w, uint32_t h) {
    return "BM" + le32(0) + le32(0) + le32(54) + le32(40) + le32(w) + le32(h) + le16(1) + le16(65535) + le32(0) +
           std::string(20, '\0');
  };
  const std::string bmp = (dir / "deep.bmp").string();
  write_file(bmp, bmp_header(10000, 10000));
  check_fails([&] { loupe::load_image(bmp); }, bmp, "needs 819187520054 bytes");
  // With the limit raised to 2^62, (2^31 - 1)^2 pixels pass it and their rows need ~3.8e22
  // bytes: past uint64 too, said so rather than wrapped.
  ::setenv("LOUPE_MAX_IMAGE_PIXELS", "4611686018427387904", 1);
  const std::string vast = (dir / "vast.bmp").string();
  write_file(vast, bmp_header(0x7fffffffu, 0x7fffffffu));
  check_fails([&] { loupe::load_image(vast); }, vast, "needs over 2^64 bytes");
  ::unsetenv("LOUPE_MAX_IMAGE_PIXELS");
}

TEST_CASE("image: the pixel limit is PIL's by default, raised or lowered with LOUPE_MAX_IMAGE_PIXELS, and the refusal says so") {
  const fs::path dir = loupe_test::scratch("image_pixel_limit");
  // A 300 x 200 GIF (60000 pixels): one pixel of LZW data, the rest background.
  const std::string gif = (dir / "g.gif").string();
  write_file(gif, std::string("GIF89a\x2c\x01\xc8\x00\x00\x00\x00,\0\0\0\0\x01\0\x01\0\x00\x02\x02\x44\x01\x00;", 29));
  CHECK(loupe::load_image(gif).width == 300);
  ::setenv("LOUPE_MAX_IMAGE_PIXELS", "59999", 1);
  check_fails([&] { loupe::load_image(gif); }, gif, "300x200 = 60000 pixels, more than the limit of 59999");
  check_fails([&] { loupe::load_image(gif); }, gif, "LOUPE_MAX_IMAGE_PIXELS=59999, set it higher");
  ::setenv("LOUPE_MAX_IMAGE_PIXELS", "60000", 1);
  CHECK(loupe::load_image(gif).height == 200);
  ::setenv("LOUPE_MAX_IMAGE_PIXELS", "lots", 1);
  check_fails([&] { loupe::load_image(gif); }, "LOUPE_MAX_IMAGE_PIXELS='lots'", "not a positive whole number");
  ::unsetenv("LOUPE_MAX_IMAGE_PIXELS");
  // PIL: DecompressionBombError above 2 * Image.MAX_IMAGE_PIXELS = 2 * 89478485.
  CHECK(loupe::max_image_pixels() == 178956970u);
}

TEST_CASE("image: a FIFO, a directory or a device given as an image is refused at once, never read for ever") {
  const fs::path dir = loupe_test::scratch("image_not_regular");
  const std::string fifo = (dir / "pipe.png").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Run it on a thread: should the open block (no writer), a writer that opens and
  // closes the FIFO releases it, and the test fails instead of hanging.
  auto result = std::async(std::launch::async, [&] {
    try {
      loupe::load_image(fifo);
    } catch (const loupe::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  });
  const bool in_time = result.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  if (!in_time) {
    const int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (w >= 0) ::close(w);
  }
  CHECK(in_time);
  const std::string msg = result.get();
  INFO("message: " << msg);
  CHECK(msg.find(fifo + ": is a FIFO (named pipe), expected a regular file") != std::string::npos);

  check_fails([&] { loupe::load_image(dir.string()); }, dir.string(), "is a directory, expected a regular file");
  if (fs::exists("/dev/zero"))
    check_fails([&] { loupe::load_image("/dev/zero"); }, "/dev/zero", "is a character device, expected a regular file");
}

TEST_CASE("image: a GIF inside the pixel limit is decoded within its own size (peak RSS)") {
  // 65535 x 100 (6.5 M pixels: 26 MB of index + RGB) whatever its padded square would be.
  const long rss0 = loupe_test::peak_rss_mb();
  const std::string gif = std::string("GIF89a\xff\xff\x64\x00\x00\x00\x00,\0\0\0\0\x01\0\x01\0\x00\x02\x02\x44\x01\x00;", 29);
  const loupe::Image im = loupe::decode_image(reinterpret_cast<const uint8_t*>(gif.data()), gif.size(), "wide.gif");
  CHECK(im.width == 65535);
  CHECK(im.height == 100);
  CHECK(loupe_test::peak_rss_mb() < rss0 + 100);
}
