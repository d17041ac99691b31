// io/tar.hpp against Python's tarfile (reference/tar_fixture.py): the member
// names and bytes of USTAR, GNU and PAX archives (long and non-ASCII names,
// empty members, directories skipped); corrupt and truncated files are errors
// that name the file and the offset.
#include <loupe/io/tar.hpp>

#include "test_util.hpp"

using namespace loupe;
namespace fs = std::filesystem;

namespace {
std::string hex(std::string_view s) {
  static const char* digits = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) h += digits[c >> 4], h += digits[c & 15];
  return h;
}
}  // namespace

TEST_CASE("tar: members of USTAR, GNU and PAX archives equal what Python's tarfile wrote") {
  const fs::path dir = loupe_test::scratch("tar");
  loupe_test::run_python("tar_fixture.py", loupe_test::quote(dir.string()));
  for (const char* fmt : {"ustar", "gnu", "pax"}) {
    INFO(fmt);
    const TarFile t = TarFile::open((dir / (std::string(fmt) + ".tar")).string());
    const Json want = Json::load((dir / (std::string(fmt) + ".json")).string());
    REQUIRE(t.members.size() == want.array().size());
    for (size_t i = 0; i < t.members.size(); ++i) {
      CHECK(t.members[i].name == want.array()[i].at("name").str());
      CHECK(hex(t.data(t.members[i])) == want.array()[i].at("hex").str());
    }
  }
}

TEST_CASE("tar: a corrupt header, a truncated member and a truncated header are errors naming file and offset") {
  const fs::path dir = loupe_test::scratch("tar_bad");
  loupe_test::run_python("tar_fixture.py", loupe_test::quote(dir.string()));
  const std::string good = loupe_test::slurp(dir / "gnu.tar");
  auto write = [&](const std::string& name, const std::string& bytes) {
    const fs::path p = dir / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  };
  std::string bad = good;
  bad[512 + 10] ^= 0x55;  // the second header's name: its checksum no longer matches
  CHECK(loupe_test::error_of([&] { TarFile::open(write("bad.tar", bad)); }).find("bad.tar: offset 512: header checksum mismatch") !=
        std::string::npos);
  CHECK(loupe_test::error_of([&] { TarFile::open(write("cut.tar", good.substr(0, 512 + 512 + 100))); }).find("runs past the end") !=
        std::string::npos);
  CHECK(loupe_test::error_of([&] { TarFile::open(write("cut2.tar", good.substr(0, 512 + 512 + 1024 + 100))); }).find("truncated") !=
        std::string::npos);
  CHECK(loupe_test::error_of([&] { TarFile::open(write("text.tar", std::string(2048, 'a'))); }).find("checksum mismatch") !=
        std::string::npos);
}
