#include "test_util.hpp"

#include <loupe/io/gguf.hpp>

#include <cstdlib>
#include <random>

#include <sys/resource.h>

using namespace loupe;
using loupe_test::error_of;

namespace {

Blob blob_of(std::vector<uint8_t> bytes, const std::string& name = "test.gguf") {
  return Blob::from_bytes(std::move(bytes), name);
}

GgufWriter sample_writer() {
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("llama"));
  w.set("u8", GgufValue::of(GgufType::U8, 200));
  w.set("i8", GgufValue::of(GgufType::I8, -100));
  w.set("u16", GgufValue::of(GgufType::U16, 60000));
  w.set("i16", GgufValue::of(GgufType::I16, -30000));
  w.set("u32", GgufValue::u32(4000000000u));
  w.set("i32", GgufValue::i32(-2000000000));
  w.set("u64", GgufValue::u64(18000000000000000000ull));
  w.set("i64", GgufValue::of(GgufType::I64, -9000000000000000000ll));
  w.set("f32", GgufValue::f32(0.1f));
  GgufValue f64;
  f64.type = GgufType::F64;
  f64.f = 0.1;
  w.set("f64", f64);
  w.set("bool", GgufValue::boolean(true));
  w.set("strs", GgufValue::array(GgufType::STRING, std::vector<std::string>{"a", "", "ž▁"}));
  w.set("floats", GgufValue::array(GgufType::F32, std::vector<float>{1.5f, -2.25f}));
  w.set("ints", GgufValue::array(GgufType::I32, std::vector<int32_t>{-1, 7}));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    Tensor f(DType::F32, {3, 64});
    for (int64_t i = 0; i < f.numel(); ++i) f.f32()[i] = nd(rng);
    w.add_tensor(std::string("t.") + dtype_name(t), convert(f.view(), t));
  }
  return w;
}

}  // namespace

TEST_CASE("gguf: every value type and dtype round-trips") {
  GgufWriter w = sample_writer();
  GgufFile g = GgufFile::parse(blob_of(w.to_bytes()));
  CHECK(g.version == 3);
  CHECK(g.get_str("general.architecture") == "llama");
  CHECK(g.get_int("u8") == 200);
  CHECK(g.get_int("i8") == -100);
  CHECK(g.get_int("u16") == 60000);
  CHECK(g.get_int("i16") == -30000);
  CHECK(g.get_int("u32") == 4000000000ll);
  CHECK(g.get_int("i32") == -2000000000);
  CHECK(g.at("u64").u == 18000000000000000000ull);
  CHECK(g.get_int("i64") == -9000000000000000000ll);
  CHECK(float(g.get_float("f32")) == 0.1f);
  CHECK(g.get_float("f64") == 0.1);
  CHECK(g.get_bool("bool", false));
  const GgufValue& s = g.get_array("strs", GgufType::STRING);
  REQUIRE(s.arr.size() == 3);
  CHECK(s.arr[2].s == "ž▁");
  CHECK(g.get_array("floats", GgufType::F32).arr[1].f == -2.25);
  CHECK(g.get_array("ints", GgufType::I32).arr[0].i == -1);
  REQUIRE(g.tensors.size() == 5);
  for (size_t k = 0; k < w.tensors.size(); ++k) {
    const GgufTensor& t = g.tensors[k];
    CHECK(t.name == w.tensors[k].name);
    CHECK(t.shape == std::vector<int64_t>{3, 64});
    CHECK(t.offset % 32 == 0);
    std::vector<uint8_t> want;
    w.tensors[k].produce(want);
    CHECK(std::memcmp(t.view.data, want.data(), want.size()) == 0);
  }
  // Writing what we read gives the same bytes.
  GgufWriter again;
  for (auto& [k, v] : g.kv) again.set(k, v);
  for (auto& t : g.tensors) {
    Tensor copy(t.dtype, t.shape);
    std::memcpy(copy.bytes.data(), t.view.data, copy.bytes.size());
    again.add_tensor(t.name, copy);
  }
  CHECK(again.to_bytes() == w.to_bytes());
}

TEST_CASE("gguf: general.alignment is honoured") {
  GgufWriter w = sample_writer();
  w.set("general.alignment", GgufValue::u32(64));
  GgufFile g = GgufFile::parse(blob_of(w.to_bytes()));
  CHECK(g.alignment == 64);
  CHECK(g.data_offset % 64 == 0);
  for (auto& t : g.tensors) CHECK(t.offset % 64 == 0);
}

TEST_CASE("gguf: llama.cpp's vocab file in ../shared is text-mangled and refused clearly") {
  // The shared copy of ggml-vocab-llama-spm.gguf went through a text conversion:
  // every byte >= 0x80 that was not valid UTF-8 became U+FFFD (ef bf bd). The
  // first casualty is the f32 llama.attention.layer_norm_rms_epsilon, which
  // shifts everything after it; the reader must say so instead of reading on.
  LOUPE_REQUIRE_SHARED();
  const std::string path = (loupe_test::shared_dir() / "tokenizers/ggml-vocab-llama-spm.gguf").string();
  Blob b = Blob::open(path);
  CHECK(std::string(b.view()).find("\xef\xbf\xbd\xef\xbf\xbd") != std::string::npos);
  std::string e = error_of([&] { GgufFile::parse(b); });
  CHECK(e.rfind(path + ": metadata key at offset 399 claims ", 0) == 0);
}

TEST_CASE("gguf: write_file is atomic") {
  auto dir = loupe_test::scratch("gguf_atomic");
  const std::string path = (dir / "m.gguf").string();
  GgufWriter w = sample_writer();
  w.write_file(path);
  CHECK(GgufFile::open(path).tensors.size() == 5);
  // A producer that fails half way leaves neither the file nor the temporary.
  GgufWriter bad = sample_writer();
  bad.add_tensor("broken", DType::F32, {4}, [](std::vector<uint8_t>&) { fail("source shard vanished"); });
  const std::string p2 = (dir / "bad.gguf").string();
  CHECK(error_of([&] { bad.write_file(p2); }) == "source shard vanished");
  std::vector<std::string> left;
  for (const auto& e : std::filesystem::directory_iterator(dir)) left.push_back(e.path().filename().string());
  CHECK(left == std::vector<std::string>{"m.gguf"});  // no bad.gguf, no temporary
  // A symlink planted where the temporary used to be named (path.tmp) points
  // nowhere it can write: temporaries get random names, created exclusively.
  const std::filesystem::path victim = dir / "victim.txt";
  std::ofstream(victim) << "precious";
  std::filesystem::create_symlink(victim, dir / "m.gguf.tmp");
  w.write_file(path);
  CHECK(loupe_test::slurp(victim) == "precious");
  CHECK(GgufFile::open(path).tensors.size() == 5);
  // A producer with the wrong size is refused.
  GgufWriter wrong;
  wrong.add_tensor("w", DType::F32, {4}, [](std::vector<uint8_t>& out) { out.resize(8); });
  CHECK(error_of([&] { wrong.to_bytes(); }).find("produced 8 bytes, expected 16") != std::string::npos);
}

TEST_CASE("gguf: malformed files are refused with a message naming the file and the problem") {
  std::vector<uint8_t> good = sample_writer().to_bytes();
  SUBCASE("truncated anywhere") {
    for (size_t cut : {size_t(0), size_t(3), size_t(10), size_t(30), size_t(100), good.size() / 2, good.size() - 25}) {
      std::vector<uint8_t> b(good.begin(), good.begin() + long(cut));
      std::string e = error_of([&] { GgufFile::parse(blob_of(b, "cut.gguf")); });
      INFO("cut at " << cut << ": " << e);
      CHECK(e.rfind("cut.gguf: ", 0) == 0);
      CHECK((e.find("truncated") != std::string::npos || e.find("bad magic") != std::string::npos ||
             e.find("past the end") != std::string::npos || e.find("cannot fit") != std::string::npos ||
             e.find("does not fit") != std::string::npos || e.find("claims") != std::string::npos));
    }
  }
  SUBCASE("bad magic and version") {
    std::vector<uint8_t> b = good;
    b[0] = 'X';
    CHECK(error_of([&] { GgufFile::parse(blob_of(b)); }) == "test.gguf: not a GGUF file (bad magic)");
    b = good;
    b[4] = 1;
    CHECK(error_of([&] { GgufFile::parse(blob_of(b)); }).find("version 1 is not supported") != std::string::npos);
  }
  // Build a file by hand with one tensor whose header we can corrupt.
  auto one_tensor = [](uint64_t dim0, uint32_t type, uint64_t offset, uint64_t str_len_bump = 0) {
    std::vector<uint8_t> b;
    auto put = [&](const void* p, size_t n) { b.insert(b.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
    auto u32 = [&](uint32_t x) { put(&x, 4); };
    auto u64 = [&](uint64_t x) { put(&x, 8); };
    put("GGUF", 4);
    u32(3);
    u64(1);
    u64(0);
    u64(1 + str_len_bump);
    put("w", 1);
    u32(1);
    u64(dim0);
    u32(type);
    u64(offset);
    b.resize(64 + 256, 0);
    return b;
  };
  CHECK(error_of([&] { GgufFile::parse(blob_of(one_tensor(64, 0, 0))); }).empty());
  CHECK(error_of([&] { GgufFile::parse(blob_of(one_tensor(uint64_t(1) << 62, 0, 0))); }) ==
        "test.gguf: tensor 'w' has an invalid dimension 4611686018427387904");
  CHECK(error_of([&] { GgufFile::parse(blob_of(one_tensor(64, 99, 0))); }) == "test.gguf: tensor 'w' has unknown type id 99");
  CHECK(error_of([&] { GgufFile::parse(blob_of(one_tensor(48, 2, 0))); }) ==
        "test.gguf: tensor 'w': row length 48 is not a multiple of Q4_0's block size 32");
  CHECK(error_of([&] { GgufFile::parse(blob_of(one_tensor(64, 0, 7))); }) ==
        "test.gguf: tensor 'w': offset 7 is not aligned to 32");
  CHECK(error_of([&] { GgufFile::parse(blob_of(one_tensor(1024, 0, 0))); })
            .find("test.gguf: tensor 'w' (F32 [1024], 4096 bytes at data offset 0) runs past the end of the file") == 0);
  CHECK(error_of([&] { GgufFile::parse(blob_of(one_tensor(64, 0, 0, uint64_t(1) << 60))); }).find("claims") != std::string::npos);
}

namespace {
// A GGUF by hand: one u8 array of `n` zeros under "big", no tensors.
std::vector<uint8_t> gguf_with_u8_array(uint64_t n) {
  std::vector<uint8_t> b;
  auto put = [&](const void* p, size_t k) { b.insert(b.end(), (const uint8_t*)p, (const uint8_t*)p + k); };
  auto u32 = [&](uint32_t x) { put(&x, 4); };
  auto u64 = [&](uint64_t x) { put(&x, 8); };
  put("GGUF", 4), u32(3), u64(0), u64(1);
  u64(3), put("big", 3), u32(uint32_t(GgufType::ARRAY)), u32(uint32_t(GgufType::U8)), u64(n);
  b.resize(b.size() + n, 0);
  return b;
}
}  // namespace

TEST_CASE("gguf: metadata that would balloon in memory is refused before it is allocated, under a limit the user can raise") {
  // 20 MB of u8 array would cost 20M parsed values (~1.7 GB): refused, and the
  // process grows by little more than the file's own 20 MB.
  unsetenv("LOUPE_MAX_GGUF_METADATA_MB");
  Blob big = blob_of(gguf_with_u8_array(20'000'000), "big.gguf");
  const long before = loupe_test::peak_rss_mb();
  const std::string e = error_of([&] { GgufFile::parse(big); });
  CHECK(e == "big.gguf: metadata 'big' would take more memory than the 256 MiB limit (LOUPE_MAX_GGUF_METADATA_MB=256; "
             "set LOUPE_MAX_GGUF_METADATA_MB higher if the file is legitimate)");
  CHECK(loupe_test::peak_rss_mb() - before < 64);
  // The limit is the variable's: 20000 values (~1.8 MB) pass at 4 MiB, not at 1.
  const Blob small = blob_of(gguf_with_u8_array(20000), "small.gguf");
  setenv("LOUPE_MAX_GGUF_METADATA_MB", "1", 1);
  CHECK(error_of([&] { GgufFile::parse(small); }).find("the 1 MiB limit") != std::string::npos);
  setenv("LOUPE_MAX_GGUF_METADATA_MB", "4", 1);
  CHECK(GgufFile::parse(small).get_array("big", GgufType::U8).arr.size() == 20000);
  setenv("LOUPE_MAX_GGUF_METADATA_MB", "lots", 1);
  CHECK(error_of([&] { GgufFile::parse(small); }) == "LOUPE_MAX_GGUF_METADATA_MB='lots' is not a positive whole number of MiB");
  unsetenv("LOUPE_MAX_GGUF_METADATA_MB");
}

TEST_CASE("gguf: general.alignment 1 is read, but a tensor it leaves misaligned for its loads is refused") {
  GgufWriter w;
  w.set("general.alignment", GgufValue::u32(1));
  w.set("pad", GgufValue::str("x"));  // makes the data start at an odd offset
  w.add_tensor("w", DType::F32, {8}, [](std::vector<uint8_t>& out) { out.assign(32, 0); });
  std::vector<uint8_t> bytes = w.to_bytes();
  const std::string e = error_of([&] { GgufFile::parse(blob_of(bytes)); });
  CHECK(e.rfind("test.gguf: tensor 'w' starts at file offset ", 0) == 0);
  CHECK(e.find("not a multiple of 4 (its element alignment; general.alignment is 1)") != std::string::npos);
  // Bytes (I8) need no alignment and load.
  GgufWriter ok;
  ok.set("general.alignment", GgufValue::u32(1));
  ok.set("pad", GgufValue::str("x"));
  ok.add_tensor("w", DType::I8, {8}, [](std::vector<uint8_t>& out) { out.assign(8, 7); });
  CHECK(GgufFile::parse(blob_of(ok.to_bytes())).get_tensor("w").view.nbytes() == 8);
}
