// A small, strict JSON (RFC 8259) reader for config.json, safetensors headers
// and shard indexes, and json_escape() for writers.
//
// Strict: no comments, trailing commas, leading zeros, NaN/Infinity, raw control
// characters, invalid UTF-8, unpaired surrogates or duplicate object keys. Objects
// keep their key order. Numbers are doubles; integer literals are also kept as
// exact int64 (a double loses digits past 2^53). Every error names the source and
// the byte offset.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <locale>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <vector>

#include "../core/error.hpp"
#include "file.hpp"

namespace loupe {

struct Json {
  enum class Type { Null, Bool, Number, String, Array, Object };

  Type type = Type::Null;
  size_t offset = 0;                     // where the value starts in the source text
  std::shared_ptr<const std::string> source;  // name for messages, shared by all nodes

  static constexpr int kMaxDepth = 128;  // nesting limit: the parser recurses

  static Json parse(std::string_view text, const std::string& source_name);
  static Json load(const std::string& path) { return parse(read_text_file(path), path); }

  bool is_null() const { return type == Type::Null; }
  bool is_bool() const { return type == Type::Bool; }
  bool is_number() const { return type == Type::Number; }
  bool is_string() const { return type == Type::String; }
  bool is_array() const { return type == Type::Array; }
  bool is_object() const { return type == Type::Object; }
  static const char* type_name(Type t) {
    const char* n[] = {"null", "boolean", "number", "string", "array", "object"};
    return n[int(t)];
  }

  bool boolean() const { expect(Type::Bool); return b_; }
  double number() const { expect(Type::Number); return num_; }
  // The exact integer value; fails for 1.5, 1e300 and anything not a number.
  int64_t integer() const {
    expect(Type::Number);
    if (exact_) return int_;
    // 2.0 or 1e3 are integers too, as long as the double holds them exactly.
    if (num_ == num_ && num_ >= -9007199254740992.0 && num_ <= 9007199254740992.0 && num_ == double(int64_t(num_)))
      return int64_t(num_);
    fail(where(), "expected an integer, got ", num_);
  }
  // True for a number written as an integer literal that fits int64 (exact in integer()).
  bool is_integer_literal() const { return type == Type::Number && exact_; }
  const std::string& str() const { expect(Type::String); return str_; }
  const std::vector<Json>& array() const { expect(Type::Array); return items_; }
  // Objects: keys()[i] names values()[i], in file order.
  const std::vector<std::string>& keys() const { expect(Type::Object); return keys_; }
  const std::vector<Json>& values() const { expect(Type::Object); return items_; }
  size_t size() const {
    if (type != Type::Array && type != Type::Object) fail(where(), "expected an array or object, got ", type_name(type));
    return items_.size();
  }

  // Object member or nullptr (fails if this is not an object).
  const Json* find(std::string_view key) const {
    expect(Type::Object);
    for (size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i] == key) return &items_[i];
    return nullptr;
  }
  const Json& at(std::string_view key) const {
    const Json* v = find(key);
    if (!v) fail(where(), "object has no key '", key, "'");
    return *v;
  }
  // Member converted to T (bool, an integer type, a floating type or std::string);
  // `def` when the key is absent or null, an error when it has the wrong type.
  template <class T>
  T get_or(std::string_view key, T def) const {
    const Json* v = find(key);
    if (!v || v->is_null()) return def;
    if constexpr (std::is_same_v<T, bool>) {
      return v->boolean();
    } else if constexpr (std::is_integral_v<T>) {
      int64_t i = v->integer();
      if (i < int64_t(std::numeric_limits<T>::min()) ||
          (i > 0 && uint64_t(i) > uint64_t(std::numeric_limits<T>::max())))
        fail(v->where(), "key '", key, "': ", i, " is out of range");
      return T(i);
    } else if constexpr (std::is_floating_point_v<T>) {
      return T(v->number());
    } else {
      static_assert(std::is_same_v<T, std::string>, "get_or: bool, integer, floating or std::string");
      return v->str();
    }
  }
  std::string get_or(std::string_view key, const char* def) const { return get_or(key, std::string(def)); }

  // "config.json: offset 12: " for messages about this value.
  std::string where() const {
    return (source ? *source : std::string("<json>")) + ": offset " + std::to_string(offset) + ": ";
  }

 private:
  bool b_ = false, exact_ = false;
  double num_ = 0;
  int64_t int_ = 0;
  std::string str_;
  std::vector<std::string> keys_;
  std::vector<Json> items_;

  void expect(Type t) const {
    if (type != t) fail(where(), "expected ", type_name(t), ", got ", type_name(type));
  }
  friend struct JsonParser;
};

struct JsonParser {
  std::string_view s;
  std::shared_ptr<const std::string> src;
  size_t p = 0;

  [[noreturn]] void error(size_t at, const std::string& what) const { fail(*src, ": offset ", at, ": ", what); }
  void ws() {
    while (p < s.size() && (s[p] == ' ' || s[p] == '\t' || s[p] == '\n' || s[p] == '\r')) ++p;
  }
  bool lit(const char* w) {
    size_t n = std::strlen(w);
    if (s.substr(p, n) != w) return false;
    p += n;
    return true;
  }

  Json value(int depth) {
    ws();
    if (p >= s.size()) error(p, "unexpected end of input, expected a value");
    if (depth > Json::kMaxDepth) error(p, "nesting deeper than " + std::to_string(Json::kMaxDepth));
    Json j;
    j.offset = p;
    j.source = src;
    char c = s[p];
    if (c == '{') {
      j.type = Json::Type::Object;
      ++p;
      ws();
      std::unordered_set<std::string> seen;
      if (p < s.size() && s[p] == '}') return ++p, j;
      for (;;) {
        ws();
        if (p >= s.size() || s[p] != '"') error(p, "expected a string key");
        size_t key_at = p;
        std::string k = string();
        if (!seen.insert(k).second) error(key_at, "duplicate key '" + k + "'");
        ws();
        if (p >= s.size() || s[p] != ':') error(p, "expected ':' after key '" + k + "'");
        ++p;
        j.keys_.push_back(std::move(k));
        j.items_.push_back(value(depth + 1));
        ws();
        if (p < s.size() && s[p] == ',') { ++p; continue; }
        if (p < s.size() && s[p] == '}') return ++p, j;
        error(p, "expected ',' or '}' in object");
      }
    }
    if (c == '[') {
      j.type = Json::Type::Array;
      ++p;
      ws();
      if (p < s.size() && s[p] == ']') return ++p, j;
      for (;;) {
        j.items_.push_back(value(depth + 1));
        ws();
        if (p < s.size() && s[p] == ',') { ++p; continue; }
        if (p < s.size() && s[p] == ']') return ++p, j;
        error(p, "expected ',' or ']' in array");
      }
    }
    if (c == '"') return j.type = Json::Type::String, j.str_ = string(), j;
    if (lit("true")) return j.type = Json::Type::Bool, j.b_ = true, j;
    if (lit("false")) return j.type = Json::Type::Bool, j;
    if (lit("null")) return j;
    if (c == '-' || (c >= '0' && c <= '9')) return number(j);
    error(p, std::string("unexpected character '") + c + "'");
  }

  // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  Json& number(Json& j) {
    size_t b = p;
    auto digits = [&] {
      size_t d = p;
      while (p < s.size() && s[p] >= '0' && s[p] <= '9') ++p;
      if (p == d) error(p, "malformed number: expected a digit");
    };
    if (s[p] == '-') ++p;
    if (p < s.size() && s[p] == '0') {
      ++p;
      if (p < s.size() && s[p] >= '0' && s[p] <= '9') error(b, "malformed number: leading zero");
    } else {
      digits();
    }
    bool is_int = true;
    if (p < s.size() && s[p] == '.') ++p, digits(), is_int = false;
    if (p < s.size() && (s[p] == 'e' || s[p] == 'E')) {
      ++p, is_int = false;
      if (p < s.size() && (s[p] == '+' || s[p] == '-')) ++p;
      digits();
    }
    std::string text(s.substr(b, p - b));
    j.type = Json::Type::Number;
    if (is_int) {  // exact int64 when it fits
      bool neg = text[0] == '-';
      uint64_t mag = 0, lim = neg ? uint64_t(1) << 63 : (uint64_t(1) << 63) - 1;
      bool fits = true;
      for (size_t k = neg; k < text.size() && fits; ++k) {
        uint64_t d = uint64_t(text[k] - '0');
        if (mag > (lim - d) / 10) fits = false;
        else mag = mag * 10 + d;
      }
      if (fits) {
        j.exact_ = true;
        j.int_ = neg ? int64_t(0 - mag) : int64_t(mag);  // two's complement wrap gives INT64_MIN
        j.num_ = double(j.int_);
        return j;
      }
    }
    std::istringstream in(text);  // classic locale: '.' whatever the global locale says
    in.imbue(std::locale::classic());
    in >> j.num_;  // the grammar is already checked; only range can go wrong
    // Overflow reads as +-max with failbit (libstdc++) or +-inf (libc++); underflow
    // gives 0 or a subnormal, as Python's float() does, and is accepted.
    if (!std::isfinite(j.num_) || (in.fail() && std::fabs(j.num_) >= std::numeric_limits<double>::max()))
      error(b, "number '" + text + "' is out of range");
    return j;
  }

  unsigned hex4() {
    if (s.size() - p < 4) error(p, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s[p++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') v |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= unsigned(c - 'A' + 10);
      else error(p - 1, "bad hex digit in \\u escape");
    }
    return v;
  }
  static void put_utf8(std::string& o, uint32_t cp) {
    if (cp < 0x80) {
      o += char(cp);
    } else if (cp < 0x800) {
      o += char(0xc0 | (cp >> 6)), o += char(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      o += char(0xe0 | (cp >> 12)), o += char(0x80 | ((cp >> 6) & 0x3f)), o += char(0x80 | (cp & 0x3f));
    } else {
      o += char(0xf0 | (cp >> 18)), o += char(0x80 | ((cp >> 12) & 0x3f));
      o += char(0x80 | ((cp >> 6) & 0x3f)), o += char(0x80 | (cp & 0x3f));
    }
  }
  // Length of the valid UTF-8 sequence at s[p] (RFC 3629: no overlongs, surrogates
  // or code points past U+10FFFF), 0 if invalid.
  size_t utf8_len() const {
    auto u = [&](size_t k) { return p + k < s.size() ? uint8_t(s[p + k]) : 0; };
    uint8_t c = u(0);
    auto cont = [&](size_t k) { return (u(k) & 0xc0) == 0x80; };
    if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
      uint8_t lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
      return u(1) >= lo && u(1) <= hi && cont(2) ? 3 : 0;
    }
    if (c >= 0xf0 && c <= 0xf4) {
      uint8_t lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
      return u(1) >= lo && u(1) <= hi && cont(2) && cont(3) ? 4 : 0;
    }
    return 0;
  }

  std::string string() {
    size_t b = p++;  // opening quote
    std::string o;
    for (;;) {
      if (p >= s.size()) error(b, "unterminated string");
      uint8_t c = uint8_t(s[p]);
      if (c == '"') return ++p, o;
      if (c < 0x20) error(p, "raw control character in string (must be escaped)");
      if (c >= 0x80) {
        size_t n = utf8_len();
        if (!n) error(p, "invalid UTF-8 in string");
        o.append(s.substr(p, n)), p += n;
        continue;
      }
      ++p;
      if (c != '\\') { o += char(c); continue; }
      if (p >= s.size()) error(b, "unterminated string");
      char e = s[p++];
      switch (e) {
        case '"': o += '"'; break;
        case '\\': o += '\\'; break;
        case '/': o += '/'; break;
        case 'b': o += '\b'; break;
        case 'f': o += '\f'; break;
        case 'n': o += '\n'; break;
        case 'r': o += '\r'; break;
        case 't': o += '\t'; break;
        case 'u': {
          size_t at = p - 2;
          uint32_t cp = hex4();
          if (cp >= 0xdc00 && cp <= 0xdfff) error(at, "unpaired low surrogate in \\u escape");
          if (cp >= 0xd800 && cp <= 0xdbff) {  // UTF-16 pair -> one code point
            if (s.substr(p, 2) != "\\u") error(at, "high surrogate not followed by a \\u low surrogate");
            p += 2;
            uint32_t lo = hex4();
            if (lo < 0xdc00 || lo > 0xdfff) error(at, "high surrogate not followed by a low surrogate");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          }
          put_utf8(o, cp);
          break;
        }
        default: error(p - 1, std::string("bad escape '\\") + e + "'");
      }
    }
  }
};

inline Json Json::parse(std::string_view text, const std::string& source_name) {
  JsonParser ps{text, std::make_shared<const std::string>(source_name)};
  Json j = ps.value(0);
  ps.ws();
  if (ps.p != text.size()) ps.error(ps.p, "unexpected data after the JSON value");
  return j;
}

// Escape a UTF-8 string for use between double quotes in JSON (quotes not added).
inline std::string json_escape(std::string_view in) {
  std::string o;
  o.reserve(in.size() + 2);
  for (char ch : in) {
    auto c = uint8_t(ch);
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      case '\b': o += "\\b"; break;
      case '\f': o += "\\f"; break;
      default:
        if (c < 0x20) {
          const char* hex = "0123456789abcdef";
          o += "\\u00", o += hex[c >> 4], o += hex[c & 15];
        } else {
          o += ch;
        }
    }
  }
  return o;
}

}  // namespace loupe
