// A small, strict JSON (RFC 8259) reader for config.json, safetensors headers
// and shard indexes, and json_escape() for writers.
//
// Strict: no comments, trailing commas, leading zeros, NaN/Infinity, raw control
// characters, invalid UTF-8, unpaired surrogates or duplicate object keys. Objects
// keep their key order. Numbers are doubles; integer literals are also kept as
// exact int64 (a double loses digits past 2^53). Every error names the source and
// the byte offset. Files of a model directory are read through load() /
// parse_file_text(), which refuse a document past kJsonFileLimit (limits.hpp)
// before parsing it.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
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
#include "limits.hpp"

namespace loupe {

struct Json {
  enum class Type : uint8_t { Null, Bool, Number, String, Array, Object };

  Type type = Type::Null;                // read-only: set by the parser

 private:
  bool b_ = false, exact_ = false;  // here, beside `type`: a node is 64 bytes, not 72

 public:
  size_t offset = 0;                     // where the value starts in the source text
  std::shared_ptr<const std::string> source;  // name for messages, shared by all nodes

  static constexpr int kMaxDepth = 128;  // nesting limit: the parser recurses

  static Json parse(std::string_view text, const std::string& source_name);
  // A file from a model directory (config.json, adapter_config.json, an index),
  // refused past kJsonFileLimit before anything is parsed.
  static Json load(const std::string& path);
  // Text read from a file of a model directory (an index, a safetensors header):
  // the same limit as load(), then parse().
  static Json parse_file_text(std::string_view text, const std::string& source_name);

  Json() : int_(0) {}
  Json(const Json& o) : type(o.type), b_(o.b_), exact_(o.exact_), offset(o.offset), source(o.source) { copy_value(o); }
  Json(Json&& o) noexcept : type(o.type), b_(o.b_), exact_(o.exact_), offset(o.offset), source(std::move(o.source)) {
    move_value(std::move(o));
  }
  Json& operator=(const Json& o) {
    if (this != &o) {
      Json copy(o);
      *this = std::move(copy);
    }
    return *this;
  }
  Json& operator=(Json&& o) noexcept {
    if (this != &o) {
      destroy_value();
      type = o.type, offset = o.offset, source = std::move(o.source), b_ = o.b_, exact_ = o.exact_;
      move_value(std::move(o));
    }
    return *this;
  }
  ~Json() { destroy_value(); }

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
  double number() const { expect(Type::Number); return exact_ ? double(int_) : num_; }
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
  const std::vector<Json>& array() const { expect(Type::Array); return members_.items; }
  // Objects: keys()[i] names values()[i], in file order.
  const std::vector<std::string>& keys() const {
    expect(Type::Object);
    static const std::vector<std::string> none;
    return members_.keys ? *members_.keys : none;
  }
  const std::vector<Json>& values() const { expect(Type::Object); return members_.items; }
  size_t size() const {
    if (type != Type::Array && type != Type::Object) fail(where(), "expected an array or object, got ", type_name(type));
    return members_.items.size();
  }

  // Object member or nullptr (fails if this is not an object).
  const Json* find(std::string_view key) const {
    expect(Type::Object);
    const std::vector<std::string>& k = keys();
    for (size_t i = 0; i < k.size(); ++i)
      if (k[i] == key) return &members_.items[i];
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
  struct Members {
    std::unique_ptr<std::vector<std::string>> keys;  // objects with members only: 8 bytes in every node, not 24
    std::vector<Json> items;
    Members() = default;
    Members(Members&&) = default;
    Members(const Members& o)
        : keys(o.keys ? std::make_unique<std::vector<std::string>>(*o.keys) : nullptr), items(o.items) {}
  };
  // One value, chosen by `type` (and exact_ for numbers). A hostile document
  // makes one node per 2 bytes ("0,"), so a node's size is what a parse costs:
  // 64 bytes here, against 136 with a member per kind.
  union {
    int64_t int_;      // Number written as an integer literal that fits (exact_); Null, Bool: 0
    double num_;       // other Numbers
    std::string str_;  // String
    Members members_;  // Array (keys empty), Object
  };

  void expect(Type t) const {
    if (type != t) fail(where(), "expected ", type_name(t), ", got ", type_name(type));
  }
  void copy_value(const Json& o) {
    if (o.type == Type::String) new (&str_) std::string(o.str_);
    else if (o.type == Type::Array || o.type == Type::Object) new (&members_) Members(o.members_);
    else if (o.type == Type::Number && !o.exact_) num_ = o.num_;
    else int_ = o.int_;
  }
  void move_value(Json&& o) noexcept {
    if (o.type == Type::String) new (&str_) std::string(std::move(o.str_));
    else if (o.type == Type::Array || o.type == Type::Object) new (&members_) Members(std::move(o.members_));
    else if (o.type == Type::Number && !o.exact_) num_ = o.num_;
    else int_ = o.int_;
  }
  void destroy_value() noexcept {
    if (type == Type::String) str_.~basic_string();
    else if (type == Type::Array || type == Type::Object) members_.~Members();
    type = Type::Null, int_ = 0;
  }
  // The parser fills a Null node in once.
  void set_string(std::string s) { new (&str_) std::string(std::move(s)), type = Type::String; }
  void set_members(Type t, Members m) { new (&members_) Members(std::move(m)), type = t; }
  void set_number(double d) { num_ = d, exact_ = false, type = Type::Number; }
  void set_integer(int64_t i) { int_ = i, exact_ = true, type = Type::Number; }
  void set_bool(bool b) { int_ = 0, b_ = b, type = Type::Bool; }
  friend struct JsonParser;
};

struct JsonParser {
  std::string_view s;
  std::shared_ptr<const std::string> src;
  size_t p = 0;
  // Children of the containers being parsed, one level per nesting depth, in
  // deques (no doubling, so no unused capacity) that are emptied front to back
  // into an exactly sized vector when their container closes: the peak is about
  // one copy of the tree, where growing each vector by push_back can hold three.
  std::vector<std::deque<Json>> items_at;
  std::vector<std::deque<std::string>> keys_at;
  std::vector<std::deque<size_t>> key_offsets_at;

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

  // The scratch vectors of nesting level `depth`, empty.
  void level(int depth) {
    const size_t need = size_t(depth) + 1;
    if (items_at.size() < need) items_at.resize(need), keys_at.resize(need), key_offsets_at.resize(need);
  }
  Json::Members take(int depth) {
    Json::Members m;
    std::deque<Json>& items = items_at[size_t(depth)];
    m.items.reserve(items.size());
    for (; !items.empty(); items.pop_front()) m.items.push_back(std::move(items.front()));
    std::deque<std::string>& keys = keys_at[size_t(depth)];
    if (!keys.empty()) {
      m.keys = std::make_unique<std::vector<std::string>>();
      m.keys->reserve(keys.size());
      for (; !keys.empty(); keys.pop_front()) m.keys->push_back(std::move(keys.front()));
    }
    return m;
  }
  // Duplicate keys of the object being closed: the first repeat in file order is
  // the error. Sorting indices costs 4 bytes a key, where a set of the keys
  // would copy every one.
  void check_duplicates(int depth) {
    const std::deque<std::string>& keys = keys_at[size_t(depth)];
    if (keys.size() < 2) return;
    std::vector<uint32_t> order(keys.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = uint32_t(i);
    std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return keys[a] != keys[b] ? keys[a] < keys[b] : a < b; });
    size_t first_repeat = SIZE_MAX;
    for (size_t k = 1; k < order.size(); ++k)
      if (keys[order[k]] == keys[order[k - 1]]) first_repeat = std::min(first_repeat, size_t(order[k]));
    if (first_repeat != SIZE_MAX)
      error(key_offsets_at[size_t(depth)][first_repeat], "duplicate key '" + keys[first_repeat] + "'");
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
      ++p;
      ws();
      if (p < s.size() && s[p] == '}') return ++p, j.set_members(Json::Type::Object, {}), j;
      level(depth);
      for (;;) {
        ws();
        if (p >= s.size() || s[p] != '"') error(p, "expected a string key");
        size_t key_at = p;
        std::string k = string();
        ws();
        if (p >= s.size() || s[p] != ':') error(p, "expected ':' after key '" + k + "'");
        ++p;
        keys_at[size_t(depth)].push_back(std::move(k));
        key_offsets_at[size_t(depth)].push_back(key_at);
        Json v = value(depth + 1);
        items_at[size_t(depth)].push_back(std::move(v));
        ws();
        if (p < s.size() && s[p] == ',') { ++p; continue; }
        if (p < s.size() && s[p] == '}') {
          ++p;
          check_duplicates(depth);
          key_offsets_at[size_t(depth)].clear();
          j.set_members(Json::Type::Object, take(depth));
          return j;
        }
        error(p, "expected ',' or '}' in object");
      }
    }
    if (c == '[') {
      ++p;
      ws();
      if (p < s.size() && s[p] == ']') return ++p, j.set_members(Json::Type::Array, {}), j;
      level(depth);
      for (;;) {
        Json v = value(depth + 1);
        items_at[size_t(depth)].push_back(std::move(v));
        ws();
        if (p < s.size() && s[p] == ',') { ++p; continue; }
        if (p < s.size() && s[p] == ']') {
          ++p;
          j.set_members(Json::Type::Array, take(depth));
          return j;
        }
        error(p, "expected ',' or ']' in array");
      }
    }
    if (c == '"') return j.set_string(string()), j;
    if (lit("true")) return j.set_bool(true), j;
    if (lit("false")) return j.set_bool(false), j;
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
    const std::string_view text = s.substr(b, p - b);
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
        j.set_integer(neg ? int64_t(0 - mag) : int64_t(mag));  // two's complement wrap gives INT64_MIN
        return j;
      }
    }
    std::istringstream in{std::string(text)};  // classic locale: '.' whatever the global locale says
    in.imbue(std::locale::classic());
    double d = 0;
    in >> d;  // the grammar is already checked; only range can go wrong
    // Overflow reads as +-max with failbit (libstdc++) or +-inf (libc++); underflow
    // gives 0 or a subnormal, as Python's float() does, and is accepted.
    if (!std::isfinite(d) || (in.fail() && std::fabs(d) >= std::numeric_limits<double>::max()))
      error(b, "number '" + std::string(text) + "' is out of range");
    j.set_number(d);
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
  JsonParser ps{text, std::make_shared<const std::string>(source_name), 0, {}, {}, {}};
  Json j = ps.value(0);
  ps.ws();
  if (ps.p != text.size()) ps.error(ps.p, "unexpected data after the JSON value");
  return j;
}

inline Json Json::parse_file_text(std::string_view text, const std::string& source_name) {
  if (text.size() > kJsonFileLimit.value())
    fail(source_name, ": ", text.size(), " bytes of JSON is more than ", kJsonFileLimit.describe());
  return parse(text, source_name);
}

inline Json Json::load(const std::string& path) {
  Blob b = Blob::open(path);  // mapped: the limit is checked before anything is copied
  return parse_file_text(b.view(), path);
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
