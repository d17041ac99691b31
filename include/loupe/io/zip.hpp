// Read-only zip archive index (PKWARE APPNOTE 6.3): the end-of-central-directory
// record, its zip64 variant (archives and offsets past 4 GiB: a 7B shard is ~10 GB),
// central-directory entries with zip64 extra fields, and each entry's local header
// to find where its bytes start. torch.save stores entries uncompressed, so an
// entry's data is a zero-copy slice of the mmapped file; compressed or encrypted
// entries are refused when read. CRCs are not checked (that would read every byte).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "file.hpp"

namespace loupe {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;      // 0 = stored
  uint16_t flags = 0;       // general purpose bits (bit 0: encrypted)
  uint64_t data_offset = 0; // first byte of the (stored) data in the archive
  uint64_t size = 0;        // compressed size = bytes at data_offset
  uint64_t uncompressed_size = 0;
};

struct ZipArchive {
  Blob blob;
  std::vector<ZipEntry> entries;  // central-directory order

  static ZipArchive open(const Blob& b);
  static ZipArchive open(const std::string& path) { return open(Blob::open(path)); }

  const ZipEntry* find(std::string_view name) const {
    for (const ZipEntry& e : entries)
      if (e.name == name) return &e;
    return nullptr;
  }
  // The bytes of a stored entry, sharing the archive's mapping.
  Blob data(const ZipEntry& e) const {
    if (e.flags & 1) fail(blob.name, ": zip entry '", e.name, "' is encrypted");
    if (e.method != 0)
      fail(blob.name, ": zip entry '", e.name, "' is compressed (method ", e.method,
           "); only stored (uncompressed) entries are supported, as torch.save writes them");
    if (e.size != e.uncompressed_size)
      fail(blob.name, ": zip entry '", e.name, "' is stored but its sizes differ (", e.size, " vs ", e.uncompressed_size, ")");
    return blob.slice(size_t(e.data_offset), size_t(e.size), blob.name + ":" + e.name);
  }
};

inline bool is_zip(const Blob& b) {
  return b.size >= 4 && b.data[0] == 'P' && b.data[1] == 'K' &&
         ((b.data[2] == 3 && b.data[3] == 4) || (b.data[2] == 5 && b.data[3] == 6));
}

inline ZipArchive ZipArchive::open(const Blob& b) {
  const std::string& fn = b.name;
  constexpr uint32_t kEocd = 0x06054b50, kLoc64 = 0x07064b50, kEocd64 = 0x06064b50, kCentral = 0x02014b50,
                     kLocal = 0x04034b50;
  if (b.size < 22) fail(fn, ": not a zip archive (", b.size, " bytes is too short; truncated?)");
  // The EOCD record (22 bytes + comment) is the last thing in the file; search back
  // over the longest possible comment for a signature whose comment ends the file.
  auto u16 = [&](uint64_t at) { uint16_t v; std::memcpy(&v, b.data + at, 2); return v; };
  auto u32 = [&](uint64_t at) { uint32_t v; std::memcpy(&v, b.data + at, 4); return v; };
  uint64_t eocd = UINT64_MAX;
  uint64_t lowest = b.size >= 22 + 65535 ? b.size - 22 - 65535 : 0;
  for (uint64_t at = b.size - 22 + 1; at-- > lowest;)
    if (u32(at) == kEocd && at + 22 + u16(at + 20) == b.size) { eocd = at; break; }
  if (eocd == UINT64_MAX)
    fail(fn, ": zip end-of-central-directory record not found: file truncated or not a zip archive");

  Reader r(b, size_t(eocd) + 4);
  uint16_t disk = r.read<uint16_t>("EOCD disk number"), cd_disk = r.read<uint16_t>("EOCD central directory disk");
  uint64_t n_disk = r.read<uint16_t>("EOCD entries on disk"), n_total = r.read<uint16_t>("EOCD entries");
  uint64_t cd_size = r.read<uint32_t>("EOCD central directory size");
  uint64_t cd_off = r.read<uint32_t>("EOCD central directory offset");
  uint64_t cd_limit = eocd;  // the central directory ends before this
  // zip64: a locator right before the EOCD points at the zip64 EOCD record.
  if (eocd >= 20 && u32(eocd - 20) == kLoc64) {
    Reader l(b, size_t(eocd - 16));
    uint32_t z_disk = l.read<uint32_t>("zip64 locator disk");
    uint64_t z_off = l.read<uint64_t>("zip64 EOCD offset");
    uint32_t z_disks = l.read<uint32_t>("zip64 disk count");
    if (z_disk != 0 || z_disks > 1) fail(fn, ": multi-disk zip archives are not supported");
    if (z_off > eocd - 20 || eocd - 20 - z_off < 56)
      fail(fn, ": zip64 end-of-central-directory offset ", z_off, " is out of range: file truncated?");
    Reader z(b, size_t(z_off));
    if (z.read<uint32_t>("zip64 EOCD signature") != kEocd64)
      fail(fn, ": no zip64 end-of-central-directory record at offset ", z_off, ": file truncated or corrupt");
    z.read<uint64_t>("zip64 EOCD size");
    z.read<uint32_t>("zip64 EOCD versions");
    disk = uint16_t(z.read<uint32_t>("zip64 EOCD disk") != 0);
    cd_disk = uint16_t(z.read<uint32_t>("zip64 EOCD central directory disk") != 0);
    n_disk = z.read<uint64_t>("zip64 EOCD entries on disk");
    n_total = z.read<uint64_t>("zip64 EOCD entries");
    cd_size = z.read<uint64_t>("zip64 EOCD central directory size");
    cd_off = z.read<uint64_t>("zip64 EOCD central directory offset");
    cd_limit = z_off;
  } else if (n_total == 0xffff || cd_size == 0xffffffff || cd_off == 0xffffffff) {
    fail(fn, ": zip64 archive without a zip64 end-of-central-directory locator: file truncated or corrupt");
  }
  if (disk != 0 || cd_disk != 0 || n_disk != n_total) fail(fn, ": multi-disk zip archives are not supported");
  if (cd_off > cd_limit || cd_size > cd_limit - cd_off)
    fail(fn, ": zip central directory [", cd_off, ", +", cd_size, ") lies outside the archive: file truncated or corrupt");
  if (n_total > cd_size / 46) fail(fn, ": zip central directory claims ", n_total, " entries in ", cd_size, " bytes");

  ZipArchive a;
  a.blob = b;
  a.entries.reserve(size_t(n_total));
  Blob cd = b.slice(size_t(cd_off), size_t(cd_size), fn + " (zip central directory)");
  Reader c(cd);
  for (uint64_t i = 0; i < n_total; ++i) {
    size_t at = c.pos;
    if (c.read<uint32_t>("central directory entry signature") != kCentral)
      fail(fn, ": bad zip central directory entry ", i, " at offset ", cd_off + at);
    ZipEntry e;
    c.read<uint32_t>("central directory versions");
    e.flags = c.read<uint16_t>("central directory flags");
    e.method = c.read<uint16_t>("central directory method");
    c.read<uint32_t>("central directory time");
    c.read<uint32_t>("central directory crc");
    e.size = c.read<uint32_t>("central directory compressed size");
    e.uncompressed_size = c.read<uint32_t>("central directory size");
    uint16_t name_len = c.read<uint16_t>("central directory name length");
    uint16_t extra_len = c.read<uint16_t>("central directory extra length");
    uint16_t comment_len = c.read<uint16_t>("central directory comment length");
    uint32_t start_disk = c.read<uint16_t>("central directory disk");
    c.read<uint16_t>("central directory internal attributes");
    c.read<uint32_t>("central directory external attributes");
    uint64_t local = c.read<uint32_t>("central directory local header offset");
    e.name = c.string(name_len, "central directory file name");
    // zip64 extra field (id 1): the 64-bit values of exactly those fields that are
    // 0xffffffff (0xffff for the disk) above, in this order.
    Blob extra = cd.slice(c.pos, extra_len, fn + " (zip extra field of '" + e.name + "')");
    c.bytes(extra_len, "central directory extra field");
    c.bytes(comment_len, "central directory comment");
    for (Reader x(extra); x.left() >= 4;) {
      uint16_t id = x.read<uint16_t>("extra field id"), len = x.read<uint16_t>("extra field length");
      size_t end = x.pos + len;
      x.need(len, "extra field");
      if (id == 1) {
        if (e.uncompressed_size == 0xffffffff) e.uncompressed_size = x.read<uint64_t>("zip64 size");
        if (e.size == 0xffffffff) e.size = x.read<uint64_t>("zip64 compressed size");
        if (local == 0xffffffff) local = x.read<uint64_t>("zip64 local header offset");
        if (start_disk == 0xffff) start_disk = x.read<uint32_t>("zip64 disk");
      }
      x.pos = end;
    }
    if (start_disk != 0) fail(fn, ": zip entry '", e.name, "' is on another disk");
    // The local header repeats the name and may carry a different extra field
    // (torch pads it to align data to 64 bytes); its sizes may be zero when a
    // data descriptor follows, so sizes come from the central directory.
    if (local > cd_off || cd_off - local < 30)
      fail(fn, ": zip entry '", e.name, "': local header offset ", local, " is out of range");
    Reader h(b, size_t(local));
    if (h.read<uint32_t>("local header signature") != kLocal)
      fail(fn, ": zip entry '", e.name, "': no local header at offset ", local);
    h.pos += 22;
    uint16_t ln = h.read<uint16_t>("local name length"), le = h.read<uint16_t>("local extra length");
    if (h.string(ln, "local file name") != e.name)
      fail(fn, ": zip entry '", e.name, "': local header at offset ", local, " names a different file");
    e.data_offset = local + 30 + ln + le;
    if (e.data_offset > cd_off || e.size > cd_off - e.data_offset)
      fail(fn, ": zip entry '", e.name, "': data [", e.data_offset, ", +", e.size,
           ") runs into the central directory: file truncated or corrupt");
    a.entries.push_back(std::move(e));
  }
  return a;
}

}  // namespace loupe
