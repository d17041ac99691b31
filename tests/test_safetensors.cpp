#include "test_util.hpp"

#include "ckpt_util.hpp"

#include <loupe/io/safetensors.hpp>

using namespace ckpt_test;
using loupe::Blob;

namespace {

// A safetensors file from a header text and a data section.
Blob make_file(const std::string& header, size_t data_bytes, const std::string& name = "bad.safetensors") {
  std::vector<uint8_t> b(8 + header.size() + data_bytes, 0);
  uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  return Blob::from_bytes(std::move(b), name);
}

std::string read_error(const Blob& b) {
  return error_of([&] { loupe::read_safetensors(b); });
}

}  // namespace

TEST_CASE("safetensors: a file from a hand-written Python writer reads back as numpy has it") {
  auto dir = loupe_test::scratch("safetensors_fixture");
  loupe_test::run_python("ckpt_safetensors_fixture.py", loupe_test::quote(dir.string()));
  Blob file = Blob::open((dir / "fixture.safetensors").string());
  loupe::SafetensorsFile f = loupe::read_safetensors(file);
  loupe::Json manifest = loupe::Json::load((dir / "manifest.json").string());
  REQUIRE(f.tensors.size() == manifest.array().size());
  for (size_t i = 0; i < f.tensors.size(); ++i) {  // data-section order, not header order
    const loupe::Json& m = manifest.array()[i];
    const loupe::SourceTensor& t = f.tensors[i];
    CHECK(t.name == m.array()[0].str());
    CHECK(loupe::dtype_name(t.dtype) == m.array()[1].str());
    CHECK(t.shape == shape_of(m.array()[2]));
    check_values(t, (dir / m.array()[3].str()).string());
    if (t.numel() > 0) CHECK(inside(file, t.data.data));  // zero-copy
  }
  CHECK(f.tensors.back().name == "caf\xc3\xa9.\xe4\xb8\xad.\xf0\x9f\x98\x80");  // \u escapes, surrogate pair
  REQUIRE(f.metadata.size() == 2);
  CHECK(f.metadata[0] == std::make_pair(std::string("format"), std::string("pt")));
  CHECK(f.metadata[1] == std::make_pair(std::string("note"), std::string("tab\there \"quoted\"")));
  CHECK(loupe::is_safetensors(file));

  // Cut anywhere, the file is refused with a message naming it, never read past its end.
  for (size_t cut : {size_t(0), size_t(4), size_t(8), size_t(9), size_t(100), file.size / 2, file.size - 17, file.size - 1}) {
    std::vector<uint8_t> bytes(file.data, file.data + cut);
    std::string msg = read_error(Blob::from_bytes(bytes, "cut.safetensors"));
    INFO("cut at " << cut << ": " << msg);
    CHECK(msg.rfind("cut.safetensors", 0) == 0);
    CHECK((contains(msg, "truncated") || contains(msg, "larger than the file")));
  }
}

TEST_CASE("safetensors: malformed headers are refused with the tensor and the problem named") {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  CHECK(loupe::read_safetensors(make_file(ok, 24)).tensors.at(0).shape == std::vector<int64_t>{2, 3});

  struct Bad {
    std::string header;
    size_t data;
    std::string message;
  };
  const Bad bad[] = {
      {R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 24,
       "bad.safetensors: tensor 'w': data_offsets [0, 20) hold 20 bytes but shape [2, 3] of F32 needs 24"},
      {R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,24]}})", 24, "tensor 'w': data_offsets [0, 24) hold 24 bytes but shape [2, 3] of BF16 needs 12"},
      {R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}})", 16, "tensor 'w': size overflows 64 bits"},
      {R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]}})", 16, "tensor 'w': size overflows 64 bits"},
      {R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2, "tensor 'w': unsupported dtype 'F8_E4M3'"},
      {R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 2, "tensor 'w': unsupported dtype 'U8'"},
      {R"({"w":{"dtype":7,"shape":[2],"data_offsets":[0,2]}})", 2, "tensor 'w': unsupported dtype (not a string)"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4, "tensor 'w': data_offsets [0, 8) run past the end of the data section (4 bytes)"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, "tensor 'w': bad data_offsets [8, 0]"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-4,4]}})", 8, "tensor 'w': bad data_offsets"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8, "tensor 'w': data_offsets must be [begin, end]"},
      {R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "tensor 'w': shape has a bad dimension"},
      {R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8, "expected an integer, got 2.5"},
      {R"({"w":{"dtype":"F32","shape":[2]}})", 8, "tensor 'w': header entry needs dtype, shape and data_offsets"},
      {R"({"w":[1]})", 8, "tensor 'w': header entry is not an object"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8,
       "tensors 'w' and 'v' overlap"},
      {R"({"__metadata__":{"k":1}})", 0, "__metadata__ value for 'k' is not a string"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8,
       "duplicate key 'w'"},
      {R"({"w":{"dtype":"F32",)", 8, "bad.safetensors (safetensors header): offset 20: expected a string key"},
      {R"([1,2])", 8, "safetensors header does not start with '{'"},
  };
  for (const Bad& b : bad) {
    std::string msg = read_error(make_file(b.header, b.data));
    INFO("header " << b.header << "\n  got: " << msg);
    CHECK(msg.rfind("bad.safetensors", 0) == 0);
    CHECK(contains(msg, b.message));
  }

  // Header length larger than the file, larger than the 100 MiB limit.
  Blob f = make_file(ok, 24);
  std::vector<uint8_t> bytes(f.data, f.data + f.size);
  uint64_t big = f.size;
  std::memcpy(bytes.data(), &big, 8);
  CHECK(contains(read_error(Blob::from_bytes(bytes, "long.safetensors")),
                 "long.safetensors: safetensors header length " + std::to_string(big) + " is larger than the file"));
  big = uint64_t(1) << 62;
  std::memcpy(bytes.data(), &big, 8);
  CHECK(contains(read_error(Blob::from_bytes(bytes, "long.safetensors")), "is larger than the file"));
  CHECK_FALSE(loupe::is_safetensors(Blob::from_bytes(bytes, "long.safetensors")));
}

TEST_CASE("safetensors: empty and 0-dim tensors") {
  auto t = loupe::read_safetensors(make_file(
      R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"e":{"dtype":"F16","shape":[0,5],"data_offsets":[4,4]}})", 4, "x"));
  REQUIRE(t.tensors.size() == 2);
  CHECK(t.tensors[0].name == "s");
  CHECK(t.tensors[0].numel() == 1);
  CHECK(t.tensors[1].numel() == 0);
  CHECK(t.tensors[1].data.size == 0);
}
