#include "test_util.hpp"

#include "ckpt_util.hpp"

#include <loupe/io/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

using loupe::Json;
using ckpt_test::error_of;

namespace {

std::string hex(std::string_view s) {
  std::string o;
  char b[3];
  for (char c : s) std::snprintf(b, sizeof b, "%02x", unsigned(uint8_t(c))), o += b;
  return o;
}
std::string bits(double d) {  // little-endian bytes, as Python's struct.pack("<d").hex()
  char b[8];
  std::memcpy(b, &d, 8);
  return hex(std::string_view(b, 8));
}

// Same flattening as reference/ckpt_json_cases.py.
void flatten(const Json& j, const std::string& path, std::ostringstream& o) {
  switch (j.type) {
    case Json::Type::Object:
      o << path << "\tobject\t" << j.size() << "\n";
      for (size_t i = 0; i < j.keys().size(); ++i) flatten(j.values()[i], path + "/" + hex(j.keys()[i]), o);
      break;
    case Json::Type::Array:
      o << path << "\tarray\t" << j.size() << "\n";
      for (size_t i = 0; i < j.array().size(); ++i) flatten(j.array()[i], path + "/" + std::to_string(i), o);
      break;
    case Json::Type::Bool: o << path << "\tbool\t" << int(j.boolean()) << "\n"; break;
    case Json::Type::Null: o << path << "\tnull\t\n"; break;
    case Json::Type::Number:
      if (j.is_integer_literal()) o << path << "\tint\t" << j.integer() << " " << bits(j.number()) << "\n";
      else o << path << "\tnum\t" << bits(j.number()) << "\n";
      break;
    case Json::Type::String: o << path << "\tstr\t" << hex(j.str()) << "\n"; break;
  }
}

}  // namespace

TEST_CASE("json: documents parse exactly as Python's json module reads them") {
  auto dir = loupe_test::scratch("json_cases");
  std::string extra;
  if (loupe_test::have_shared())
    extra = " " + loupe_test::quote((loupe_test::shared_dir() / "models/stories260K-hf/config.json").string()) + " " +
            loupe_test::quote((loupe_test::shared_dir() / "models/llama2xs-bf16-sharded/pytorch_model.bin.index.json").string());
  loupe_test::run_python("ckpt_json_cases.py", loupe_test::quote(dir.string()) + extra);
  int n = 0;
  for (;; ++n) {
    auto in = dir / (std::to_string(n) + ".json");
    if (!std::filesystem::exists(in)) break;
    std::ostringstream got;
    flatten(Json::parse(loupe_test::slurp(in), in.string()), "", got);
    INFO("case " << in.string() << ": " << loupe_test::slurp(in).substr(0, 200));
    CHECK(got.str() == loupe_test::slurp(dir / (std::to_string(n) + ".expect")));
  }
  CHECK(n >= 310);
}

TEST_CASE("json: strict grammar, errors name the source and byte offset") {
  struct Bad {
    std::string text, message;
  };
  const Bad bad[] = {
      {"", "doc.json: offset 0: unexpected end of input"},
      {"   ", "offset 3: unexpected end of input"},
      {"[1,]", "offset 3: unexpected character ']'"},
      {"{\"a\":1,}", "offset 7: expected a string key"},
      {"{\"a\" 1}", "offset 5: expected ':' after key 'a'"},
      {"[1 2]", "offset 3: expected ',' or ']'"},
      {"{\"a\":1 \"b\":2}", "offset 7: expected ',' or '}'"},
      {"01", "offset 0: malformed number: leading zero"},
      {"-01", "leading zero"},
      {"1.", "offset 2: malformed number: expected a digit"},
      {"1.e5", "expected a digit"},
      {"1e", "expected a digit"},
      {"-", "expected a digit"},
      {".5", "unexpected character '.'"},
      {"+1", "unexpected character '+'"},
      {"NaN", "unexpected character 'N'"},
      {"Infinity", "unexpected character 'I'"},
      {"tru", "unexpected character 't'"},
      {"nul", "unexpected character 'n'"},
      {"1e999", "offset 0: number '1e999' is out of range"},
      {"-1e999", "out of range"},
      {"\"abc", "offset 0: unterminated string"},
      {"\"a\\", "unterminated string"},
      {"\"\\x\"", "offset 2: bad escape '\\x'"},
      {"\"\\u12g4\"", "bad hex digit"},
      {"\"\\u12\"", "truncated \\u escape"},
      {"\"\\u12", "truncated \\u escape"},
      {"\"x\\ud800\"", "offset 2: high surrogate not followed"},
      {"\"\\ud800\\u0041\"", "high surrogate not followed by a low surrogate"},
      {"\"\\udc00\"", "unpaired low surrogate"},
      {"\"a\tb\"", "offset 2: raw control character"},
      {std::string("\"a\0b\"", 5), "raw control character"},
      {"\"\xff\"", "offset 1: invalid UTF-8"},
      {"\"\xc0\xaf\"", "invalid UTF-8"},          // overlong '/'
      {"\"\xe0\x80\xaf\"", "invalid UTF-8"},      // overlong, 3 bytes
      {"\"\xed\xa0\x80\"", "invalid UTF-8"},      // an encoded surrogate
      {"\"\xf4\x90\x80\x80\"", "invalid UTF-8"},  // past U+10FFFF
      {"\"\xe4\xb8\"", "invalid UTF-8"},          // truncated sequence
      {"{\"a\":1,\"a\":2}", "offset 7: duplicate key 'a'"},
      {"[1] 2", "offset 4: unexpected data after the JSON value"},
      {"{} {}", "unexpected data after"},
      {std::string(200, '[') + std::string(200, ']'), "nesting deeper than 128"},
  };
  for (const Bad& b : bad) {
    std::string msg = error_of([&] { Json::parse(b.text, "doc.json"); });
    INFO("input: " << b.text);
    CHECK(msg.rfind("doc.json: offset ", 0) == 0);
    CHECK(msg.find(b.message) != std::string::npos);
    if (msg.find(b.message) == std::string::npos) MESSAGE("got: " << msg);
  }
  // 128 levels are fine, 129 are not.
  CHECK_NOTHROW(Json::parse(std::string(129, '[') + std::string(129, ']'), "deep.json"));
  CHECK_THROWS_AS(Json::parse(std::string(130, '[') + std::string(130, ']'), "deep.json"), loupe::Error);
  // 1e-400 underflows to 0 (as Python reads it), it is not an error.
  CHECK(Json::parse("1e-400", "x").number() == 0.0);
}

TEST_CASE("json: accessors") {
  Json j = Json::parse(R"({"n": 7, "big": 9007199254740993, "f": 1.5, "two": 2.0, "e3": 1e3, "huge": 1e300,
                           "s": "hi", "b": true, "z": null, "a": [1, "x"], "o": {"k": -3}, "neg": -5,
                           "i64min": -9223372036854775808, "over": 18446744073709551616})",
                       "config.json");
  CHECK(j.is_object());
  CHECK(j.keys().front() == "n");
  CHECK(j.keys().back() == "over");
  CHECK(j.at("n").integer() == 7);
  CHECK(j.at("big").integer() == 9007199254740993LL);  // exact, though a double cannot hold it
  CHECK(j.at("big").number() == 9007199254740992.0);
  CHECK(j.at("two").integer() == 2);
  CHECK(j.at("e3").integer() == 1000);
  CHECK(j.at("i64min").integer() == INT64_MIN);
  CHECK(j.at("f").number() == 1.5);
  CHECK(j.at("s").str() == "hi");
  CHECK(j.at("b").boolean());
  CHECK(j.at("z").is_null());
  CHECK(j.at("a").array().size() == 2);
  CHECK(j.at("a").array()[1].str() == "x");
  CHECK(j.at("o").at("k").integer() == -3);
  CHECK(j.find("nope") == nullptr);

  CHECK(error_of([&] { j.at("f").integer(); }) == "config.json: offset 39: expected an integer, got 1.5");
  CHECK(error_of([&] { j.at("huge").integer(); }).find("expected an integer") != std::string::npos);
  CHECK(error_of([&] { j.at("over").integer(); }).find("expected an integer") != std::string::npos);
  CHECK(error_of([&] { j.at("hidden_size"); }) == "config.json: offset 0: object has no key 'hidden_size'");
  CHECK(error_of([&] { j.at("s").number(); }).find("expected number, got string") != std::string::npos);
  CHECK(error_of([&] { j.at("a").at("x"); }).find("expected object, got array") != std::string::npos);
  CHECK(error_of([&] { j.at("n").str(); }).find("config.json: offset") == 0);

  CHECK(j.get_or("n", 0) == 7);
  CHECK(j.get_or("missing", 42) == 42);
  CHECK(j.get_or("z", 5) == 5);  // null counts as absent
  CHECK(j.get_or("f", 0.0) == 1.5);
  CHECK(j.get_or("n", 0.0) == 7.0);
  CHECK(j.get_or("missing", 0.25f) == 0.25f);
  CHECK(j.get_or("s", "d") == "hi");
  CHECK(j.get_or("missing", "d") == "d");
  CHECK(j.get_or("missing", std::string("e")) == "e");
  CHECK(j.get_or("b", false) == true);
  CHECK(j.get_or("missing", true) == true);
  CHECK(j.get_or<int64_t>("big", 0) == 9007199254740993LL);
  CHECK(error_of([&] { j.get_or("s", 1); }).find("expected number, got string") != std::string::npos);
  CHECK(error_of([&] { j.get_or("b", 1.0); }).find("expected number, got boolean") != std::string::npos);
  CHECK(error_of([&] { j.get_or("big", 0); }).find("key 'big': 9007199254740993 is out of range") != std::string::npos);
  CHECK(error_of([&] { j.get_or("neg", 0u); }).find("out of range") != std::string::npos);
  CHECK(error_of([&] { j.get_or<uint8_t>("n", 0); }).empty());
}

TEST_CASE("json: json_escape output reads back in Python as the same strings") {
  std::vector<std::string> strs = {"", "plain", "quote \" backslash \\ slash /", "caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80",
                                   "\x7f del", "line\nbreak\r\ttab\b\f"};
  std::string all_ctrl;
  for (int c = 0; c < 32; ++c) all_ctrl += char(c);
  strs.push_back(all_ctrl);
  auto dir = loupe_test::scratch("json_escape");
  std::ofstream js(dir / "s.json", std::ios::binary), hx(dir / "s.hex");
  js << "[";
  for (size_t i = 0; i < strs.size(); ++i) {
    js << (i ? "," : "") << "\"" << loupe::json_escape(strs[i]) << "\"";
    hx << hex(strs[i]) << "\n";
    // and our own parser inverts it
    CHECK(Json::parse("\"" + loupe::json_escape(strs[i]) + "\"", "esc").str() == strs[i]);
  }
  js << "]";
  js.close(), hx.close();
  loupe_test::run_python("ckpt_json_cases.py", "--check-escape " + loupe_test::quote((dir / "s.json").string()) + " " +
                                                   loupe_test::quote((dir / "s.hex").string()));
  CHECK(loupe::json_escape(std::string(1, '\0')) == "\\u0000");
  CHECK(loupe::json_escape("\x1f") == "\\u001f");
}

TEST_CASE("json: load names the file") {
  LOUPE_REQUIRE_SHARED();
  auto path = (loupe_test::shared_dir() / "models/stories260K-hf/config.json").string();
  Json c = Json::load(path);
  CHECK(c.at("hidden_size").integer() == 64);
  CHECK(error_of([&] { c.at("no_such_key"); }).find(path) == 0);
}

TEST_CASE("json: a model-directory file past the size limit is refused before it is parsed; the limit can be raised") {
  const auto dir = loupe_test::scratch("json_limit");
  const std::string path = (dir / "config.json").string();
  {
    // 2 MiB of small numbers: the shape that costs the most memory per byte.
    std::ofstream f(path, std::ios::binary);
    f << "[0";
    for (int i = 0; i < (1 << 20); ++i) f << ",0";
    f << "]";
  }
  setenv("LOUPE_MAX_JSON_MB", "1", 1);
  CHECK(error_of([&] { Json::load(path); }) ==
        path + ": 2097155 bytes of JSON is more than the 1 MiB limit (LOUPE_MAX_JSON_MB=1; set LOUPE_MAX_JSON_MB higher "
               "if the file is legitimate)");
  setenv("LOUPE_MAX_JSON_MB", "3", 1);
  CHECK(Json::load(path).size() == (1 << 20) + 1);
  unsetenv("LOUPE_MAX_JSON_MB");
  // A node is what a hostile document multiplies (one per two bytes): keep it small.
  CHECK(sizeof(Json) <= 64);
}
