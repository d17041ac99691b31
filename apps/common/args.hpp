// A tiny command-line parser shared by the frontends: flags with values,
// repeatable flags, booleans, and a clear error for anything unknown.
#pragma once
#include <cerrno>
#include <climits>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <loupe/core/error.hpp>

namespace loupe_cli {

struct Args {
  std::map<std::string, std::vector<std::string>> values;  // flag -> values (repeatable)
  std::vector<std::string> positional;

  // `with_value`: flags that take one argument; `with_two`: flags that take two; the rest are booleans.
  static Args parse(int argc, char** argv, int first, const std::vector<std::string>& with_value,
                    const std::vector<std::string>& booleans, const std::vector<std::string>& with_two = {}) {
    auto in = [](const std::vector<std::string>& v, const std::string& s) {
      for (auto& x : v)
        if (x == s) return true;
      return false;
    };
    Args a;
    for (int i = first; i < argc; ++i) {
      std::string f = argv[i];
      if (f.size() > 1 && f[0] == '-' && !(f.size() > 1 && (std::isdigit(static_cast<unsigned char>(f[1])) || f[1] == '.'))) {
        std::string val;
        if (size_t eq = f.find('='); eq != std::string::npos && f.rfind("--", 0) == 0) val = f.substr(eq + 1), f = f.substr(0, eq);
        if (in(with_value, f)) {
          if (val.empty()) {
            if (i + 1 >= argc) loupe::fail("option ", f, " needs a value");
            val = argv[++i];
          }
          a.values[f].push_back(val);
        } else if (in(with_two, f)) {
          if (i + 2 >= argc) loupe::fail("option ", f, " needs two values");
          a.values[f].push_back(argv[i + 1]);
          a.values[f].push_back(argv[i + 2]);
          i += 2;
        } else if (in(booleans, f)) {
          a.values[f].push_back("1");
        } else {
          loupe::fail("unknown option ", f, " (see --help)");
        }
      } else {
        a.positional.push_back(f);
      }
    }
    return a;
  }
  bool has(const std::string& f) const { return values.count(f) > 0; }
  // Last value of the first of `names` present.
  std::string get(std::initializer_list<const char*> names, const std::string& dflt = "") const {
    for (const char* n : names)
      if (auto it = values.find(n); it != values.end()) return it->second.back();
    return dflt;
  }
  std::vector<std::string> all(const std::string& f) const {
    auto it = values.find(f);
    return it == values.end() ? std::vector<std::string>{} : it->second;
  }
  double number(std::initializer_list<const char*> names, double dflt) const {
    std::string s = get(names);
    if (s.empty()) return dflt;
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (!end || *end || !std::isfinite(v)) loupe::fail("option ", *names.begin(), ": '", s, "' is not a number");
    return v;
  }
  float real(std::initializer_list<const char*> names, float dflt) const {
    const double v = number(names, dflt);
    if (std::fabs(v) > double(FLT_MAX)) loupe::fail("option ", *names.begin(), ": '", get(names), "' is out of range");
    return float(v);
  }
  // The range is checked before the conversion (out of range, it is undefined behaviour).
  int integer(std::initializer_list<const char*> names, int dflt) const {
    const double v = number(names, dflt);
    if (!(v >= double(INT_MIN) && v <= double(INT_MAX)) || v != std::floor(v))
      loupe::fail("option ", *names.begin(), ": expected an integer from ", INT_MIN, " to ", INT_MAX, ", got '", get(names), "'");
    return int(v);
  }
  // 0 .. 2^64-1, all of them exactly (a double holds only 53 bits).
  uint64_t unsigned64(std::initializer_list<const char*> names, uint64_t dflt) const {
    const std::string s = get(names);
    if (s.empty()) return dflt;
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
    if (s.find_first_not_of("0123456789") != std::string::npos || !end || *end || errno == ERANGE)
      loupe::fail("option ", *names.begin(), ": expected an integer from 0 to ", UINT64_MAX, ", got '", s, "'");
    return uint64_t(v);
  }
};

}  // namespace loupe_cli
