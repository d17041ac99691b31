// Peak resident memory of this process (getrusage), for the CLI's timing line
// and the benchmarks.
#pragma once
#if defined(__unix__) || defined(__APPLE__)
#include <sys/resource.h>
#endif

namespace loupe_cli {

// Bytes; 0 where the platform does not say.
inline double peak_rss_bytes() {
#if defined(__unix__) || defined(__APPLE__)
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
#if defined(__APPLE__)
  return double(u.ru_maxrss);  // bytes on macOS
#else
  return double(u.ru_maxrss) * 1024.0;  // KiB on Linux
#endif
#else
  return 0;
#endif
}

}  // namespace loupe_cli
