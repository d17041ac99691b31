// The unpickler (pickle.hpp), the zip reader (zip.hpp) and torch.save files
// (torch_checkpoint.hpp), against Python's pickle / zipfile / torch.
#include "test_util.hpp"

#include "ckpt_util.hpp"

#include <loupe/io/checkpoint.hpp>
#include <loupe/io/torch_checkpoint.hpp>

#include <cstdio>
#include <sstream>

using namespace ckpt_test;
using loupe::Blob;
using loupe::PyValue;

namespace {

std::string hex(std::string_view s) {
  std::string o;
  char b[3];
  for (char c : s) std::snprintf(b, sizeof b, "%02x", unsigned(uint8_t(c))), o += b;
  return o;
}

// Same flattening as reference/ckpt_pickle_cases.py.
void flatten(const PyValue& v, const std::string& path, std::ostringstream& o) {
  using K = PyValue::Kind;
  switch (v.kind) {
    case K::Dict:
      o << path << "\tdict\t" << v.dict.size() << "\n";
      for (size_t i = 0; i < v.dict.size(); ++i) {
        flatten(*v.dict[i].first, path + "/k" + std::to_string(i), o);
        flatten(*v.dict[i].second, path + "/v" + std::to_string(i), o);
      }
      break;
    case K::List: case K::Tuple:
      o << path << (v.kind == K::List ? "\tlist\t" : "\ttuple\t") << v.items.size() << "\n";
      for (size_t i = 0; i < v.items.size(); ++i) flatten(*v.items[i], path + "/" + std::to_string(i), o);
      break;
    case K::Bool: o << path << "\tbool\t" << v.i << "\n"; break;
    case K::None: o << path << "\tnone\t\n"; break;
    case K::Int: o << path << "\tint\t" << v.i << "\n"; break;
    case K::Float: {
      char b[8];
      std::memcpy(b, &v.f, 8);
      o << path << "\tfloat\t" << hex(std::string_view(b, 8)) << "\n";
      break;
    }
    case K::Bytes: o << path << "\tbytes\t" << hex(v.s) << "\n"; break;
    case K::Str: o << path << "\tstr\t" << hex(v.s) << "\n"; break;
    default: o << path << "\tunexpected " << v.kind_name() << "\n";
  }
}

bool allow_nothing(const std::string&) { return false; }

// The torch fixtures (reference/ckpt_torch_fixture.py), generated once per run:
// importing torch takes seconds.
const std::filesystem::path& torch_fixtures() {
  static const std::filesystem::path dir = [] {
    auto d = loupe_test::scratch("torch_fixture");
    loupe_test::run_python("ckpt_torch_fixture.py", loupe_test::quote(d.string()));
    return d;
  }();
  return dir;
}

std::string torch_error(const std::string& path) {
  return error_of([&] { loupe::read_torch_checkpoint(path); });
}

}  // namespace

TEST_CASE("pickle: plain values read as Python's pickle module wrote them (protocols 2-5)") {
  auto dir = loupe_test::scratch("pickle_cases");
  loupe_test::run_python("ckpt_pickle_cases.py", loupe_test::quote(dir.string()));
  int n = 0;
  for (;; ++n) {
    auto in = dir / (std::to_string(n) + ".pkl");
    if (!std::filesystem::exists(in)) break;
    std::ostringstream got;
    flatten(*loupe::unpickle(Blob::open(in.string()), allow_nothing), "", got);
    INFO("case " << in.string());
    CHECK(got.str() == loupe_test::slurp(dir / (std::to_string(n) + ".expect")));
  }
  CHECK(n == 37);

  auto bad = [&](const std::string& tag) {
    return error_of([&] { loupe::unpickle(Blob::open((dir / ("bad_" + tag + ".pkl")).string())); });
  };
  CHECK(contains(bad("recursive"), "bad_recursive.pkl: pickle offset "));
  CHECK(contains(bad("recursive"), "recursive structure"));
  CHECK(contains(bad("deep"), "nesting deeper than 64"));
  CHECK(contains(bad("bigint"), "integer does not fit in 64 bits"));
  CHECK(contains(bad("set"), "refusing global __builtin__.set"));
  CHECK(contains(bad("bytes_p2"), "refusing global _codecs.encode"));
  CHECK(contains(bad("proto0"), "unsupported pickle opcode"));
}

TEST_CASE("pickle: malformed input is an error, never a crash or an over-read") {
  auto mk = [](const std::string& s) { return Blob::from_bytes(std::vector<uint8_t>(s.begin(), s.end()), "t.pkl"); };
  auto err = [&](const std::string& s) { return error_of([&] { loupe::unpickle(mk(s)); }); };
  CHECK(err("") == "t.pkl: truncated at offset 0: pickle opcode (no STOP) needs 1 bytes, 0 left");
  CHECK(contains(err("\x80\x02]"), "truncated at offset 3"));
  CHECK(err("\x80\x02.") == "t.pkl: pickle offset 2: stack underflow");
  CHECK(err("\x80\x02h\x05.") == "t.pkl: pickle offset 2: memo key 5 was never stored");
  CHECK(err("\x80\x02(K\x01.") == "t.pkl: pickle offset 5: STOP with items left on the stack");  // inside a MARK
  CHECK(contains(err("\x80\x02K\x01K\x02."), "STOP with items left on the stack"));
  CHECK(contains(err("\x80\x02X\xff\xff\xff\x7f"), "length 2147483647 runs past the end of the pickle"));
  CHECK(contains(err("\x80\x02" "cos\nsystem\n"), "refusing global os.system (only torch state dicts are supported)"));
  CHECK(contains(err("\x80\x02" "cos\nsys"), "unterminated GLOBAL line"));
  CHECK(contains(err("\x80\x02K\x01K\x02R."), "REDUCE of a int"));
  CHECK(contains(err("\x80\x02K\x01]a."), "APPEND(S) on a int"));  // append to a non-list
  CHECK(contains(err(std::string("\x80\x02}K\x01s.", 7)), "stack underflow"));
  CHECK(contains(err("\x80\x09."), "unsupported pickle protocol 9"));
  CHECK(contains(err("\x80\x02" "c__builtin__\neval\n"), "refusing global __builtin__.eval"));
  std::string many = "\x80\x02N";
  for (size_t k = 0; k < loupe::Unpickler::kMaxObjects; ++k) many += "q\x01";
  CHECK(contains(err(many + "."), "more than 4194304 objects: not a state dict"));

  // Every prefix and many corruptions of a real torch pickle: loupe::Error or a value.
  LOUPE_REQUIRE_SHARED();
  auto zip = loupe::ZipArchive::open((loupe_test::shared_dir() / "models/stories260K-hf/pytorch_model.bin").string());
  Blob pkl = zip.data(*zip.find("pytorch_model/data.pkl"));
  std::vector<uint8_t> bytes(pkl.data, pkl.data + pkl.size);
  for (size_t cut = 0; cut < bytes.size(); ++cut)
    CHECK_THROWS_AS(loupe::unpickle(Blob::from_bytes({bytes.begin(), bytes.begin() + std::ptrdiff_t(cut)}, "cut.pkl")), loupe::Error);
  uint32_t seed = 12345;
  auto rnd = [&] { return seed = seed * 1664525u + 1013904223u, seed >> 8; };
  int parsed = 0;
  for (int k = 0; k < 3000; ++k) {
    std::vector<uint8_t> m = bytes;
    for (int f = 0; f < 3; ++f) m[rnd() % m.size()] = uint8_t(rnd());
    try {
      loupe::unpickle(Blob::from_bytes(std::move(m), "fuzz.pkl"));
      ++parsed;
    } catch (const loupe::Error&) {
    }
  }
  MESSAGE(parsed << " of 3000 corrupted pickles still parsed");
}

TEST_CASE("torch.save: views, shared storages and dtypes come out as torch has them") {
  const auto& dir = torch_fixtures();
  loupe::Json manifest = loupe::Json::load((dir / "manifest.json").string());

  for (const char* file : {"fixture.bin", "zip64.bin"}) {
    INFO("file " << file);
    Blob blob = Blob::open((dir / file).string());
    std::vector<loupe::SourceTensor> ts = loupe::read_torch_checkpoint(blob);
    REQUIRE(ts.size() == manifest.array().size());
    for (size_t i = 0; i < ts.size(); ++i) {
      const loupe::Json& m = manifest.array()[i];
      CHECK(ts[i].name == m.array()[0].str());
      CHECK(loupe::dtype_name(ts[i].dtype) == m.array()[1].str());
      CHECK(ts[i].shape == shape_of(m.array()[2]));
      check_values(ts[i], (dir / (ts[i].name + ".npy")).string());
    }
    // Contiguous tensors (row_slice has a storage offset) are slices of the mapping;
    // strided ones are owned copies.
    for (const auto& t : ts) {
      bool strided = t.name == "transposed" || t.name == "col_slice" || t.name == "shared_b" ||
                     t.name == "bf16_perm" || t.name == "expanded";
      if (t.numel() > 0) CHECK_MESSAGE(inside(blob, t.data.data) == !strided, t.name);
    }
  }

  auto one = [&](const char* file) {
    auto ts = loupe::read_torch_checkpoint((dir / file).string());
    REQUIRE(ts.size() == 1);
    return ts[0];
  };
  auto nested = one("nested.bin");  // {'model': {'w': t}, 'epoch': 3, 'note': 'x'}
  CHECK(nested.name == "model.w");
  check_values(nested, (dir / "nested_w.npy").string());
  auto param = one("param.bin");  // nn.Parameter: _rebuild_parameter around the tensor
  CHECK(param.name == "p");
  check_values(param, (dir / "p.npy").string());
  auto ok = one("bad_ok.bin");  // hand-pickled tensor that exactly fits its storage
  check_values(ok, (dir / "bad_ok.npy").string());
  check_values(one("bad_strided.bin"), (dir / "bad_strided.npy").string());
}

TEST_CASE("torch.save: refused inputs say which file and what is wrong") {
  const auto& dir = torch_fixtures();
  auto p = [&](const std::string& f) { return (dir / f).string(); };

  std::string msg = torch_error(p("deflate.bin"));
  CHECK(msg.rfind(p("deflate.bin") + ":", 0) == 0);
  CHECK(contains(msg, "is compressed (method 8); only stored (uncompressed) entries are supported"));
  CHECK(contains(torch_error(p("legacy.bin")), p("legacy.bin") + ": legacy (pre-1.6, non-zip) torch.save format is not supported"));

  // Pickles that would run code: refused at the GLOBAL, nothing executed.
  msg = torch_error(p("evil_system.bin"));
  CHECK(contains(msg, p("evil_system.bin") + ":archive/data.pkl: pickle offset 13: refusing global "));
  CHECK((contains(msg, "posix.system") || contains(msg, "nt.system")));
  CHECK(contains(torch_error(p("evil_eval.bin")), "refusing global __builtin__.eval (only torch state dicts are supported)"));
  CHECK_FALSE(std::filesystem::exists(dir / "PWNED"));

  struct Bad {
    const char* file;
    std::string message;
  };
  const Bad bad[] = {
      {"bad_bounds.bin", "tensor 'bad.bounds': shape [2, 4] at storage offset 3 reaches element 10 but its storage holds 10"},
      {"bad_stride_bounds.bin", "tensor 'bad.stride_bounds': shape [3, 2] at storage offset 0 reaches element 11 but its storage holds 10"},
      {"bad_numel.bin", "tensor 'bad.numel': storage '0' should hold 11 F32 elements (44 bytes) but its zip entry has 40 bytes"},
      {"bad_missing.bin", "tensor 'bad.missing': storage '7' is missing from the archive (no archive/data/7)"},
      {"bad_byte.bin", "tensor 'bad.byte': storage type torch.ByteStorage is not supported"},
      {"bad_huge.bin", "tensor 'bad.huge': size overflows 64 bits"},
      {"bad_huge_stride.bin", "tensor 'bad.huge_stride': size overflows 64 bits"},
      {"bad_rank.bin", "tensor 'bad.rank': size has 2 dims but stride has 1"},
      // A stride-0 view whose copy would be 2 GiB: refused before anything is allocated.
      {"bad_expand.bin", "tensor 'bad.expand': a strided view (shape [32768, 16384]) whose copy of 2147483648 bytes would take "
                         "the copies of this "},
  };
  for (const Bad& b : bad) {
    msg = torch_error(p(b.file));
    INFO(b.file << ": " << msg);
    CHECK(msg.rfind(p(b.file) + ": tensor", 0) == 0);
    CHECK(contains(msg, b.message));
  }

  CHECK(contains(torch_error(p("bad_expand.bin")), "past its size plus the 256 MiB limit (LOUPE_MAX_STRIDED_COPY_MB=256; "
                                                    "set LOUPE_MAX_STRIDED_COPY_MB higher if the file is legitimate)"));

  // Duplicate names: the reader hands both out, Checkpoint refuses them.
  CHECK(loupe::read_torch_checkpoint(p("bad_dup.bin")).size() == 2);
  CHECK(error_of([&] { loupe::Checkpoint::open(p("bad_dup.bin")); }) == p("bad_dup.bin") + ": tensor 'dup.a' appears twice");

  // A truncated archive (cut anywhere) is refused; the message names the file.
  Blob whole = Blob::open(p("fixture.bin"));
  for (size_t cut : {size_t(0), size_t(3), size_t(30), size_t(1000), whole.size / 2, whole.size - 100, whole.size - 22,
                     whole.size - 1}) {
    std::vector<uint8_t> bytes(whole.data, whole.data + cut);
    msg = error_of([&] { loupe::read_torch_checkpoint(Blob::from_bytes(bytes, "cut.bin")); });
    INFO("cut at " << cut << ": " << msg);
    CHECK(msg.rfind("cut.bin: ", 0) == 0);
    CHECK((contains(msg, "truncated") || contains(msg, "not a torch.save zip archive")));
  }
}

TEST_CASE("zip: zip64 records, bad central directories") {
  const auto& dir = torch_fixtures();
  auto z = loupe::ZipArchive::open((dir / "zip64.bin").string());
  auto plain = loupe::ZipArchive::open((dir / "fixture.bin").string());
  REQUIRE(z.entries.size() == plain.entries.size());
  for (size_t i = 0; i < z.entries.size(); ++i) {  // same bytes under the renamed prefix
    CHECK(z.entries[i].name == "archive" + plain.entries[i].name.substr(plain.entries[i].name.find('/')));
    CHECK(z.data(z.entries[i]).view() == plain.data(plain.entries[i]).view());
  }
  // torch aligns stored data to 64 bytes with padding in the local extra field.
  for (const auto& e : plain.entries)
    if (e.name.find("/data/") != std::string::npos) CHECK(e.data_offset % 64 == 0);

  // torch always writes zip64 end records; corrupt the central-directory offset and
  // the entry count there.
  Blob b = Blob::open((dir / "fixture.bin").string());
  std::vector<uint8_t> bytes(b.data, b.data + b.size);
  const size_t loc = bytes.size() - 22 - 20;
  uint32_t sig;
  std::memcpy(&sig, &bytes[loc], 4);
  REQUIRE(sig == 0x07064b50);
  uint64_t z64;
  std::memcpy(&z64, &bytes[loc + 8], 8);
  auto bad = bytes;
  uint64_t off = uint64_t(1) << 40;
  std::memcpy(&bad[size_t(z64) + 48], &off, 8);
  CHECK(contains(error_of([&] { loupe::ZipArchive::open(Blob::from_bytes(bad, "z.bin")); }),
                 "z.bin: zip central directory [1099511627776, +"));
  bad = bytes;
  uint64_t many = uint64_t(1) << 60;
  std::memcpy(&bad[size_t(z64) + 24], &many, 8), std::memcpy(&bad[size_t(z64) + 32], &many, 8);
  CHECK(contains(error_of([&] { loupe::ZipArchive::open(Blob::from_bytes(bad, "z.bin")); }),
                 "claims 1152921504606846976 entries"));
  bad = bytes;
  std::memcpy(&bad[loc + 8], &off, 8);  // locator pointing past the end
  CHECK(contains(error_of([&] { loupe::ZipArchive::open(Blob::from_bytes(bad, "z.bin")); }),
                 "zip64 end-of-central-directory offset 1099511627776 is out of range"));
}
