// loupe::Error and fail(): every malformed input ends here, with a message
// that names the file, the place in it and what is wrong.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace loupe {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// fail("model.gguf: tensor ", name, ": offset ", off, " past end of file")
template <class... Args>
[[noreturn]] inline void fail(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  throw Error(s.str());
}

}  // namespace loupe
