// OutputFiles: files that appear together, whole, or not at all.
//
// create(path) opens a temporary file beside `path` under a random name with
// O_CREAT|O_EXCL, so a file or symlink planted at a name an attacker can guess
// is never followed or reused. commit() fsyncs every file, renames them onto
// their paths back to back and fsyncs their folders. An OutputFiles destroyed
// without commit() removes its temporary files and the folders create() made:
// a failed run leaves the output folder as it was, earlier results included.
//
// Temporary paths alive in the process are also listed in a fixed table that a
// signal handler may read: remove_temp_outputs() is async-signal-safe. The
// library installs no handler; a program that wants its temporaries gone on
// SIGINT/SIGTERM/SIGHUP calls remove_temp_outputs() from its own handler
// (loupe-convert does).
#pragma once
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "../core/error.hpp"

namespace loupe {

namespace output_detail {

// The table a signal handler reads: plain char arrays (no allocation, no locks),
// a slot's state saying whether its path is complete. 16 slots: a conversion
// writes at most a few files at once.
constexpr int kSlots = 16;
constexpr size_t kPathMax = 4096;
enum : int { kFree = 0, kBusy = 1, kLive = 2 };
inline std::atomic<int> slot_state[kSlots]{};
inline char slot_path[kSlots][kPathMax];
inline bool slot_folder[kSlots];  // a folder create() made, not a file

// Lists `path`; returns its slot, or -1 when the table is full (the file is
// then still removed on failure, only not by a signal handler).
inline int add(const std::string& path, bool folder = false) {
  if (path.size() >= kPathMax) return -1;
  for (int i = 0; i < kSlots; ++i) {
    int expected = kFree;
    if (!slot_state[i].compare_exchange_strong(expected, kBusy)) continue;
    std::memcpy(slot_path[i], path.c_str(), path.size() + 1);
    slot_folder[i] = folder;
    slot_state[i].store(kLive);
    return i;
  }
  return -1;
}

inline void drop(int slot) {
  if (slot >= 0) slot_state[slot].store(kFree);
}

// Holds SIGINT, SIGTERM and SIGHUP back on this thread for its lifetime, so a
// handler never sees a file half listed or a set half renamed; a signal that
// arrives meanwhile is delivered when it ends.
class SignalsHeld {
 public:
  SignalsHeld() {
    sigset_t s;
    sigemptyset(&s);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&s, sig);
    pthread_sigmask(SIG_BLOCK, &s, &old_);
  }
  ~SignalsHeld() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  SignalsHeld(const SignalsHeld&) = delete;
  SignalsHeld& operator=(const SignalsHeld&) = delete;

 private:
  sigset_t old_;
};

// fsync a folder so the renames in it survive a crash; best effort, as some
// file systems refuse fsync on a folder, and the files are in place by now.
inline void sync_folder(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace output_detail

// Removes every temporary output file of this process, then the folders made
// for them (unlink and rmdir only: async-signal-safe). For a program's
// SIGINT/SIGTERM/SIGHUP handler.
inline void remove_temp_outputs() noexcept {
  using namespace output_detail;
  for (int i = 0; i < kSlots; ++i)
    if (slot_state[i].load() == kLive && !slot_folder[i]) ::unlink(slot_path[i]);
  // Innermost first: a pass removes the folders that are empty by now.
  for (int pass = 0; pass < kSlots; ++pass)
    for (int i = 0; i < kSlots; ++i)
      if (slot_state[i].load() == kLive && slot_folder[i]) ::rmdir(slot_path[i]);
}

class OutputFiles {
 public:
  // One file being written; write() fails naming the file.
  class File {
   public:
    const std::string& path() const { return path_; }
    void write(const void* data, size_t n) {
      const char* p = static_cast<const char*>(data);
      while (n > 0) {
        const ssize_t k = ::write(fd_, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) fail(path_, ": write failed (", k < 0 ? std::strerror(errno) : "no progress", ")");
        p += k, n -= size_t(k);
      }
    }

   private:
    friend class OutputFiles;
    std::string path_, tmp_;
    int fd_ = -1, slot_ = -1;
    bool renamed_ = false;
  };

  OutputFiles() = default;
  OutputFiles(const OutputFiles&) = delete;
  OutputFiles& operator=(const OutputFiles&) = delete;
  ~OutputFiles() { discard(); }

  // A new temporary file that replaces `path` at commit(). Creates the folder
  // if needed (and removes it again if the set is not committed).
  File& create(const std::string& path) {
    namespace fs = std::filesystem;
    for (const auto& f : files_)
      if (f->path_ == path) fail(path, ": two outputs of one conversion have this name");
    std::error_code ec;
    if (fs::is_directory(path, ec)) fail(path, ": is a folder, cannot write the output there");
    const fs::path dir = fs::path(path).parent_path();
    make_folders(dir);
    auto f = std::make_unique<File>();
    f->path_ = path;
    std::random_device rd;
    std::mt19937_64 rng((uint64_t(rd()) << 32) ^ rd());
    static const char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (int attempt = 0; f->fd_ < 0; ++attempt) {
      std::string suffix;
      for (int i = 0; i < 10; ++i) suffix += kChars[rng() % 36];
      f->tmp_ = path + "." + suffix + ".tmp";
      output_detail::SignalsHeld hold;  // listed and created as one step
      f->slot_ = output_detail::add(f->tmp_);
      f->fd_ = ::open(f->tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (f->fd_ >= 0) break;
      const int err = errno;
      output_detail::drop(f->slot_);
      f->slot_ = -1;
      if (err != EEXIST || attempt == 100)
        fail(path, ": cannot create a temporary file in ", dir.empty() ? "." : dir.string(), ": ", std::strerror(err));
    }
    files_.push_back(std::move(f));
    return *files_.back();
  }

  // Puts every file in place: data on disk first, then the renames back to
  // back (signals held, so an interrupt never leaves half of a set), then the
  // folders synced. A rename that fails leaves the ones before it done.
  void commit() {
    for (const auto& f : files_) {
      if (::fsync(f->fd_) != 0) fail(f->path_, ": write failed (", std::strerror(errno), ")");
      const int rc = ::close(f->fd_);
      f->fd_ = -1;
      if (rc != 0) fail(f->path_, ": write failed (", std::strerror(errno), ")");
    }
    {
      output_detail::SignalsHeld hold;
      for (const auto& f : files_) {
        if (::rename(f->tmp_.c_str(), f->path_.c_str()) != 0)
          fail(f->path_, ": cannot rename ", f->tmp_, " into place: ", std::strerror(errno));
        f->renamed_ = true;
        output_detail::drop(f->slot_);
        f->slot_ = -1;
      }
    }
    std::vector<std::filesystem::path> synced;
    for (const auto& f : files_) {
      const std::filesystem::path dir = std::filesystem::path(f->path_).parent_path();
      if (std::find(synced.begin(), synced.end(), dir) != synced.end()) continue;
      output_detail::sync_folder(dir);
      synced.push_back(dir);
    }
    if (!made_.empty()) output_detail::sync_folder(made_.front().path.parent_path());
    for (const Made& m : made_) output_detail::drop(m.slot);
    made_.clear();  // they hold the outputs now
  }

 private:
  // Creates `dir` and its missing parents, remembering them (outermost first).
  void make_folders(const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    std::vector<fs::path> missing;
    std::error_code ec;
    for (fs::path d = dir; !d.empty() && !fs::exists(d, ec); d = d.parent_path()) {
      missing.push_back(d);
      if (d == d.parent_path()) break;
    }
    for (auto d = missing.rbegin(); d != missing.rend(); ++d) {
      output_detail::SignalsHeld hold;  // made and listed as one step
      if (fs::create_directory(*d, ec)) made_.push_back({*d, output_detail::add(d->string(), true)});
      else if (ec) fail(d->string(), ": cannot create the folder: ", ec.message());
    }
  }

  // Removes what an uncommitted set wrote: its temporary files and the folders it made.
  void discard() noexcept {
    for (const auto& f : files_) {
      if (f->fd_ >= 0) ::close(f->fd_);
      if (!f->renamed_) ::unlink(f->tmp_.c_str());
      output_detail::drop(f->slot_);
    }
    files_.clear();
    std::error_code ec;
    for (auto d = made_.rbegin(); d != made_.rend(); ++d) {
      std::filesystem::remove(d->path, ec);  // only if empty
      output_detail::drop(d->slot);
    }
    made_.clear();
  }

  struct Made {
    std::filesystem::path path;
    int slot;  // in the signal handler's table
  };
  std::vector<std::unique_ptr<File>> files_;
  std::vector<Made> made_;  // folders create() made, outermost first
};

}  // namespace loupe
