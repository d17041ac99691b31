// Blob: read-only bytes of a file, mmapped natively or held in memory (WASM,
// tests); Reader: a bounds-checked cursor over a Blob whose errors name the
// file and the offset. Nothing read from a file is trusted before it is checked
// against the bytes that are really there.
#pragma once
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"

#include <sys/stat.h>
#if !defined(_WIN32) && !defined(__EMSCRIPTEN__)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#define LOUPE_HAVE_MMAP 1
#endif

namespace loupe {

namespace detail {
// Only regular files are read: a FIFO would block the open or the read for ever,
// /dev/zero would never end. Empty when `mode` is a regular file, else what it is.
inline const char* not_regular_file(unsigned mode) {
  switch (mode & S_IFMT) {
    case S_IFREG: return "";
    case S_IFDIR: return "a directory";
#ifdef S_IFIFO
    case S_IFIFO: return "a FIFO (named pipe)";
#endif
#ifdef S_IFCHR
    case S_IFCHR: return "a character device";
#endif
#ifdef S_IFBLK
    case S_IFBLK: return "a block device";
#endif
#ifdef S_IFSOCK
    case S_IFSOCK: return "a socket";
#endif
    default: return "not a regular file";
  }
}
}  // namespace detail

struct Blob {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::string name;             // file name for messages
  std::shared_ptr<void> owner;  // keeps the mapping or buffer alive
  bool mapped = false;          // data is a read-only file mapping (release() may drop its pages)

  // Map (or read) a whole file.
  static Blob open(const std::string& path) {
#ifdef LOUPE_HAVE_MMAP
    // O_NONBLOCK: opening a FIFO without a writer returns at once (then refused below).
    int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (fstat(fd, &st) != 0) {
      ::close(fd);
      fail(path, ": cannot stat: ", std::strerror(errno));
    }
    if (const char* what = detail::not_regular_file(unsigned(st.st_mode)); *what) {
      ::close(fd);
      fail(path, ": is ", what, ", expected a regular file");
    }
    Blob b;
    b.name = path;
    b.size = size_t(st.st_size);
    if (b.size == 0) {
      ::close(fd);
      b.owner = std::make_shared<int>(0);
      return b;
    }
    void* p = ::mmap(nullptr, b.size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) fail(path, ": cannot mmap: ", std::strerror(errno));
    size_t n = b.size;
    b.owner = std::shared_ptr<void>(p, [n](void* q) { ::munmap(q, n); });
    b.data = static_cast<const uint8_t*>(p);
    b.mapped = true;
    return b;
#else
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) fail(path, ": cannot open: ", std::strerror(errno));
    if (const char* what = detail::not_regular_file(unsigned(st.st_mode)); *what)
      fail(path, ": is ", what, ", expected a regular file");
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail(path, ": cannot open");
    std::vector<uint8_t> buf;
    uint8_t chunk[1 << 16];
    size_t got;
    while ((got = std::fread(chunk, 1, sizeof chunk, f)) > 0) buf.insert(buf.end(), chunk, chunk + got);
    bool err = std::ferror(f);
    std::fclose(f);
    if (err) fail(path, ": read error");
    return from_bytes(std::move(buf), path);
#endif
  }

  // Take ownership of bytes already in memory.
  static Blob from_bytes(std::vector<uint8_t> bytes, std::string name) {
    auto v = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
    Blob b;
    b.data = v->data();
    b.size = v->size();
    b.name = std::move(name);
    b.owner = v;
    return b;
  }

  // A sub-range sharing the owner (e.g. an entry stored in a zip archive).
  Blob slice(size_t offset, size_t n, std::string sub_name) const {
    if (offset > size || n > size - offset)
      fail(name, ": range [", offset, ", ", offset + n, ") past end of file (", size, " bytes)");
    Blob b = *this;
    b.data = data + offset;
    b.size = n;
    b.name = std::move(sub_name);
    return b;
  }

  std::string_view view() const { return {reinterpret_cast<const char*>(data), size}; }

  // Bytes [p, p + n) of this blob will not be read for a while: a mapping drops
  // the whole pages among them from this process's memory (they are read from
  // the file again if they are; madvise(MADV_DONTNEED) on a private read-only
  // mapping loses nothing). Bytes held in memory stay.
  void release(const void* p, size_t n) const {
#ifdef LOUPE_HAVE_MMAP
    if (!mapped || !data) return;
    const auto page = uintptr_t(::sysconf(_SC_PAGESIZE));
    const uintptr_t a = (uintptr_t(p) + page - 1) / page * page, e = (uintptr_t(p) + n) / page * page;
    if (uintptr_t(p) < uintptr_t(data) || uintptr_t(p) + n > uintptr_t(data) + size || e <= a) return;
    ::madvise(reinterpret_cast<void*>(a), e - a, MADV_DONTNEED);
#else
    (void)p, (void)n;
#endif
  }
};

// Little-endian cursor with checked reads.
struct Reader {
  const Blob& blob;
  size_t pos = 0;

  explicit Reader(const Blob& b, size_t start = 0) : blob(b), pos(start) {}

  size_t left() const { return blob.size - pos; }
  void need(size_t n, std::string_view what) const {
    if (pos > blob.size || n > blob.size - pos)
      fail(blob.name, ": truncated at offset ", pos, ": ", what, " needs ", n, " bytes, ", blob.size - std::min(pos, blob.size), " left");
  }
  template <class T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, blob.data + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  const uint8_t* bytes(size_t n, std::string_view what) {
    need(n, what);
    const uint8_t* p = blob.data + pos;
    pos += n;
    return p;
  }
  std::string string(size_t n, std::string_view what) {
    const uint8_t* p = bytes(n, what);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  void seek(size_t p, std::string_view what) {
    if (p > blob.size) fail(blob.name, ": ", what, " at offset ", p, " is past end of file (", blob.size, " bytes)");
    pos = p;
  }
};

// Read a whole small text file (config.json, index files).
inline std::string read_text_file(const std::string& path) {
  Blob b = Blob::open(path);
  return std::string(b.view());
}

}  // namespace loupe
