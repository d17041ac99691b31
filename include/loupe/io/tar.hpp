// Read-only tar archives (POSIX.1-2001 pax / ustar, and GNU long names), the
// container of WebDataset shards (img2dataset writes them with Python's
// tarfile): the member list, each member's bytes read in place from the mapped
// file. Every header's checksum and every size is checked against the file.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "file.hpp"

namespace loupe {

struct TarMember {
  std::string name;     // the full path inside the archive
  size_t offset = 0;    // where its bytes start in the file
  size_t size = 0;
};

struct TarFile {
  Blob blob;
  std::vector<TarMember> members;  // regular files, in archive order

  static TarFile open(const std::string& path) { return parse(Blob::open(path)); }
  static TarFile parse(Blob b);
  std::string_view data(const TarMember& m) const { return {reinterpret_cast<const char*>(blob.data) + m.offset, m.size}; }
  const std::string& name() const { return blob.name; }
};

namespace tar_detail {

// A numeric header field: octal text (NUL/space padded), or GNU's base-256 for
// large values. False when the field is neither.
inline bool parse_number(const uint8_t* f, size_t n, uint64_t* out) {
  uint64_t v = 0;
  if (f[0] & 0x80) {
    v = f[0] & 0x7f;
    for (size_t i = 1; i < n; ++i) {
      if (v >> 55) return false;
      v = (v << 8) | f[i];
    }
    return *out = v, true;
  }
  size_t i = 0;
  while (i < n && f[i] == ' ') ++i;
  for (; i < n && f[i] >= '0' && f[i] <= '7'; ++i) {
    if (v >> 60) return false;
    v = v * 8 + uint64_t(f[i] - '0');
  }
  for (; i < n; ++i)
    if (f[i] != 0 && f[i] != ' ') return false;
  return *out = v, true;
}
inline uint64_t number(const uint8_t* f, size_t n, const std::string& where) {
  uint64_t v = 0;
  if (!parse_number(f, n, &v)) fail(where, ": a numeric field is not an octal or base-256 number");
  return v;
}

inline std::string field(const uint8_t* f, size_t n) { return std::string(reinterpret_cast<const char*>(f), strnlen(reinterpret_cast<const char*>(f), n)); }

// pax records "LEN key=value\n": the path, if one is given.
inline std::string pax_path(std::string_view rec, const std::string& where) {
  std::string path;
  while (!rec.empty()) {
    size_t sp = rec.find(' ');
    if (sp == std::string_view::npos || sp == 0) fail(where, ": malformed pax record");
    size_t len = 0;
    for (size_t i = 0; i < sp; ++i) {
      if (rec[i] < '0' || rec[i] > '9' || len > rec.size()) fail(where, ": malformed pax record length");
      len = len * 10 + size_t(rec[i] - '0');
    }
    if (len <= sp + 1 || len > rec.size() || rec[len - 1] != '\n') fail(where, ": malformed pax record");
    const std::string_view kv = rec.substr(sp + 1, len - sp - 2);
    const size_t eq = kv.find('=');
    if (eq != std::string_view::npos && kv.substr(0, eq) == "path") path = std::string(kv.substr(eq + 1));
    rec.remove_prefix(len);
  }
  return path;
}

}  // namespace tar_detail

inline TarFile TarFile::parse(Blob b) {
  using namespace tar_detail;
  TarFile t;
  t.blob = std::move(b);
  const uint8_t* d = t.blob.data;
  const size_t n = t.blob.size;
  std::string long_name;  // from a GNU 'L' or pax 'x' header, for the next member
  size_t at = 0;
  while (at + 512 <= n) {
    const uint8_t* h = d + at;
    const std::string where = t.blob.name + ": offset " + std::to_string(at);
    bool zero = true;
    for (int i = 0; i < 512 && zero; ++i) zero = h[i] == 0;
    if (zero) break;  // the end-of-archive blocks
    uint64_t sum = 0;
    for (int i = 0; i < 512; ++i) sum += (i >= 148 && i < 156) ? uint8_t(' ') : h[i];
    uint64_t stored = 0;
    if (!parse_number(h + 148, 8, &stored) || stored != sum) fail(where, ": header checksum mismatch (not a tar file, or corrupt)");
    const uint64_t size = number(h + 124, 12, where);
    if (size > n - at - 512) fail(where, ": a member of ", size, " bytes runs past the end of the file (", n, " bytes): truncated?");
    const char type = char(h[156]);
    const size_t data = at + 512;
    const std::string_view body(reinterpret_cast<const char*>(d + data), size_t(size));
    if (type == 'L') {
      long_name = std::string(body.substr(0, body.find('\0')));
    } else if (type == 'x') {
      long_name = pax_path(body, where);
    } else if (type == '0' || type == '\0' || type == '7') {
      std::string name = long_name;
      if (name.empty()) {
        name = field(h, 100);
        const std::string prefix = std::memcmp(h + 257, "ustar", 5) == 0 ? field(h + 345, 155) : std::string();
        if (!prefix.empty()) name = prefix + "/" + name;
      }
      if (name.empty()) fail(where, ": a member without a name");
      t.members.push_back({name, data, size_t(size)});
      long_name.clear();
    } else {
      long_name.clear();  // directories, links, global pax headers: nothing to read
    }
    at = data + (size_t(size) + 511) / 512 * 512;
  }
  if (at + 512 > n && at < n) fail(t.blob.name, ": offset ", at, ": ", n - at, " bytes left, less than a tar header: truncated?");
  return t;
}

}  // namespace loupe
