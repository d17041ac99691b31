// WebDataset tar shards (`loupe caption --input 'shard-{...}.tar'`): the ustar /
// GNU / pax reader and every member's bytes. Seeds: tests/fuzz/seeds/tar.
#include <loupe/io/tar.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return loupe_fuzz::guarded([&] {
    const loupe::TarFile t = loupe::TarFile::parse(loupe_fuzz::blob(data, size, "fuzz.tar"));
    size_t sum = 0;
    for (const auto& m : t.members) {
      const std::string_view bytes = t.data(m);
      for (size_t i = 0; i < bytes.size(); i += 4096) sum += uint8_t(bytes[i]);
    }
    (void)sum;
  });
}
