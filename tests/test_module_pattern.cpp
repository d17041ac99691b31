// ModulePattern (include/loupe/text/module_pattern.hpp), the matcher for the
// regular expressions of PEFT's adapter_config.json: Python's re.fullmatch
// answers on a table, linear time on the pattern that makes a backtracking
// engine run for ever, and clear errors (never a crash) for what is too deep,
// too big or outside the subset (issue #18).
#include "test_util.hpp"

#include <loupe/text/module_pattern.hpp>

#include <chrono>

using loupe::ModulePattern;

namespace {

// One pattern: for each of kSubjects, '1' if re.fullmatch(pattern, subject)
// matches, '0' if not; "error" if Python's re.compile rejects the pattern.
struct PyRow {
  const char* pattern;
  const char* expected;
};

// Generated once by /usr/bin/python3 (Python 3.11.2) with
// re.compile(p, re.ASCII).fullmatch(s) (warnings ignored), not by loupe: the
// reference's own answers. re.ASCII because loupe's \d \w \s are ASCII (see
// module_pattern.hpp); it changes nothing else, and nothing on ASCII names.
const char* const kSubjects[] = {
    "model.layers.0.self_attn.q_proj",
    "model.layers.11.mlp.down_proj",
    "lm_head",
    "q_proj",
    "",
    "a",
    "aaa",
    "ab",
    "abab",
    "a.b",
    "a\n",
    "a\nb",
    "x{1}",
    "{",
    "a{",
    "a{}",
    "a]b",
    "-",
    "a-",
    "\t",
    "_9",
    "\xc3\xa9""",
    "a\xc3\xa9""",
    "a\xc3\xa9""b",
    "model.layers.10.self_attn.v_proj",
};
const PyRow kPythonTable[] = {
    {"", "0000100000000000000000000"},
    {"a", "0000010000000000000000000"},
    {"a*", "0000111000000000000000000"},
    {"a+", "0000011000000000000000000"},
    {"a?", "0000110000000000000000000"},
    {"(ab)*", "0000100110000000000000000"},
    {"(?:ab)+", "0000000110000000000000000"},
    {"a|b", "0000010000000000000000000"},
    {"a|", "0000110000000000000000000"},
    {"|a", "0000110000000000000000000"},
    {"(a|)+", "0000111000000000000000000"},
    {"((a*)*)*", "0000111000000000000000000"},
    {"(a*)*b", "0000000100000000000000000"},
    {".*", "1111111111001111111111111"},
    {".+", "1111011111001111111111111"},
    {".", "0000010000000100010101000"},
    {"a.b", "0000000001000000100000010"},
    {"\\.", "0000000000000000000000000"},
    {"a\\.b", "0000000001000000000000000"},
    {"\\w+", "0011011110000000000010000"},
    {"\\W", "0000000000000100010101000"},
    {"\\d+", "0000000000000000000000000"},
    {"\\D+", "0011011111110111111101110"},
    {"\\s", "0000000000000000000100000"},
    {"\\S+", "1111011111001111111011111"},
    {"[a-z]+", "0000011110000000000000000"},
    {"[^a-z]+", "0000000000000100010111000"},
    {"[^.]+", "0011011110111111111111110"},
    {"[]a]+", "0000011000000000000000000"},
    {"[^]a]+", "0001000000001100010111000"},
    {"[a-]+", "0000011000000000011000000"},
    {"[-a]+", "0000011000000000011000000"},
    {"[\\w.]+", "1111011111000000000010001"},
    {"[\\d\\s]+", "0000000000000000000100000"},
    {"[\\D]+", "0011011111110111111101110"},
    {"[a\\-z]+", "0000011000000000011000000"},
    {"[\\]]", "0000000000000000000000000"},
    {"\\{", "0000000000000100000000000"},
    {"x\\{1\\}", "0000000000001000000000000"},
    {"x{1}", "0000000000000000000000000"},
    {"a{2}", "0000000000000000000000000"},
    {"a{2,}", "0000001000000000000000000"},
    {"a{,2}", "0000110000000000000000000"},
    {"a{1,2}", "0000010000000000000000000"},
    {"a{0}", "0000100000000000000000000"},
    {"a{0,0}", "0000100000000000000000000"},
    {"(ab){1,2}", "0000000110000000000000000"},
    {"a{", "0000000000000010000000000"},
    {"a{}", "0000000000000001000000000"},
    {"a{,}", "0000111000000000000000000"},
    {"a{x}", "0000000000000000000000000"},
    {"a{1", "0000000000000000000000000"},
    {"{", "0000000000000100000000000"},
    {"a]b", "0000000000000000100000000"},
    {"a}", "0000000000000000000000000"},
    {"a*?", "0000111000000000000000000"},
    {"a+?", "0000011000000000000000000"},
    {"a??", "0000110000000000000000000"},
    {"a{1,2}?", "0000010000000000000000000"},
    {"^a$", "0000010000000000000000000"},
    {"^a", "0000010000000000000000000"},
    {"a$", "0000010000000000000000000"},
    {"a$\\n", "0000000000100000000000000"},
    {"\\Aa\\Z", "0000010000000000000000000"},
    {"a\\Z", "0000010000000000000000000"},
    {"a^", "0000000000000000000000000"},
    {"$a", "0000000000000000000000000"},
    {"(^a|b)", "0000010000000000000000000"},
    {"\\t", "0000000000000000000100000"},
    {"\\x41", "0000000000000000000000000"},
    {"\\u00e9", "0000000000000000000001000"},
    {"a\\u00e9b", "0000000000000000000000010"},
    {"[\\u00e0-\\u00ff]", "0000000000000000000001000"},
    {"a.b", "0000000001000000100000010"},
    {"\xc3\xa9""", "0000000000000000000001000"},
    {"\\\xc3\xa9""", "0000000000000000000001000"},
    {"model\\.layers\\.\\d+\\.self_attn\\.(q|k|v)_proj", "1000000000000000000000001"},
    {".*\\.(q_proj|v_proj)", "1000000000000000000000001"},
    {".*(q_proj|v_proj)$", "1001000000000000000000001"},
    {"(?P<x>q)_proj", "0001000000000000000000000"},
    {"model\\.layers\\.([0-9]|1[01])\\.mlp\\..*", "0100000000000000000000000"},
    {".*\\.layers\\.(0|1)\\..*", "1000000000000000000000000"},
    {"(.*\\.)?(q_proj)", "1001000000000000000000000"},
    {"(.*\\.)?(layers\\.0\\.self_attn\\.q_proj)", "1000000000000000000000000"},
    {"(.*\\.)?(model.layers.1.mlp.down_proj)", "0000000000000000000000000"},
    {"(.*\\.)?(lm_head)", "0010000000000000000000000"},
    {"(.*\\.)?(a)|(b)", "0000010000000000000000000"},
    {"[a-c-e]+", "0000011110000000011000000"},
    {"[\\w-]+", "0011011110000000011010000"},
    {"[.]", "0000000000000000000000000"},
    {"(a)(b)", "0000000100000000000000000"},
    {"((a))", "0000010000000000000000000"},
    {"(a|b)*c", "0000000000000000000000000"},
    {"(a+)+$", "0000011000000000000000000"},
    {"\\_", "0000000000000000000000000"},
    {"\\-", "0000000000000000010000000"},
    {"\\ ", "0000000000000000000000000"},
    {"a\\*", "0000000000000000000000000"},
    {"*a", "error"},
    {"a**", "error"},
    {"a{2}{3}", "error"},
    {"(a", "error"},
    {"a)", "error"},
    {"[a", "error"},
    {"[z-a]", "error"},
    {"\\q", "error"},
    {"\\1", "error"},
    {"a\\\\", "0000000000000000000000000"},
    {"\\\\", "0000000000000000000000000"},
    {"^*", "error"},
    {"a{3,1}", "error"},
    {"(?P=x)", "error"},
    {"[\\d-z]", "error"},
    {"[\\b]", "0000000000000000000000000"},
    {"a\\x", "error"},
    {"\\U0001F600", "0000000000000000000000000"},
    {"(?:)", "0000100000000000000000000"},
    {"()", "0000100000000000000000000"},
    {"(|)*", "0000100000000000000000000"},
    {"(?P<1>a)", "error"},
    {"(?P<>a)", "error"},
    {"x|y|z", "0000000000000000000000000"},
    {"(x|y|z)+\\.(a|b)", "0000000000000000000000000"},
};

std::string show(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '\n' ? std::string("\\n") : c == '\t' ? std::string("\\t") : std::string(1, c);
  return o;
}

}  // namespace

TEST_CASE("module_pattern: agrees with Python's re.fullmatch on every (pattern, name) of a table from Python 3's re") {
  const size_t n_subjects = sizeof kSubjects / sizeof kSubjects[0];
  size_t compared = 0;
  for (const PyRow& row : kPythonTable) {
    const std::string expected = row.expected;
    INFO("pattern: " << show(row.pattern));
    if (expected == "error") {
      const std::string e = loupe_test::error_of([&] { ModulePattern(row.pattern, "test"); });
      CHECK(e.rfind("test: ", 0) == 0);
      ++compared;
      continue;
    }
    REQUIRE(expected.size() == n_subjects);
    const ModulePattern p(row.pattern, "test");
    for (size_t i = 0; i < n_subjects; ++i) {
      INFO("name: '" << show(kSubjects[i]) << "'");
      CHECK(p.fullmatch(kSubjects[i]) == (expected[i] == '1'));
      ++compared;
    }
  }
  CHECK(compared > 2500);
}

TEST_CASE("module_pattern: ((\\w|\\.)*)*Z on a 10000-character name is false in under 100 ms (no backtracking)") {
  const ModulePattern p(R"(((\w|\.)*)*Z)", "test");
  std::string name;
  for (int i = 0; i < 2000; ++i) name += "ab.c_";
  REQUIRE(name.size() == 10000);
  const auto t0 = std::chrono::steady_clock::now();
  const bool m = p.fullmatch(name);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("fullmatch took " << ms << " ms over " << p.states() << " NFA states");
  CHECK(!m);
  CHECK(ms < 100);
  CHECK(p.fullmatch(name + "Z"));  // and it does match when it should
  // Another classic: (a+)+b, (a|a)*b, nested counted groups.
  const std::string as(10000, 'a');
  const auto t1 = std::chrono::steady_clock::now();
  CHECK(!ModulePattern("(a+)+b", "test").fullmatch(as));
  CHECK(!ModulePattern("(a|a)*b", "test").fullmatch(as));
  CHECK(!ModulePattern("((a?){20}){20}b", "test").fullmatch(as));
  CHECK(ModulePattern("(a|aa)*", "test").fullmatch(as));
  CHECK(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count() < 400);
}

TEST_CASE("module_pattern: 20000 nested parentheses are a clear error, not a stack overflow; depth and size are capped") {
  const std::string deep = std::string(20000, '(') + "a" + std::string(20000, ')');
  std::string e = loupe_test::error_of([&] { ModulePattern(deep, "cfg.json: target_modules"); });
  MESSAGE(e.substr(0, 200));
  CHECK(e.find("cfg.json: target_modules: the pattern is 40001 bytes long, more than the 4096") == 0);
  // Within the length limit, the nesting limit (an explicit count in the parser).
  const std::string d65 = std::string(65, '(') + "a" + std::string(65, ')');
  e = loupe_test::error_of([&] { ModulePattern(d65, "test"); });
  CHECK(e.find("groups nested more than 64 deep") != std::string::npos);
  const std::string d64 = std::string(64, '(') + "a" + std::string(64, ')');
  CHECK(ModulePattern(d64, "test").fullmatch("a"));
  CHECK(loupe_test::error_of([&] { ModulePattern(std::string(2000, '('), "test"); }).find("nested more than 64") !=
        std::string::npos);
  // {m,n} expansion: the NFA state cap, reached quickly (the work is bounded by it too).
  e = loupe_test::error_of([&] { ModulePattern("(a{1000}){1000}", "test"); });
  CHECK(e.find("more than 65536 NFA states") != std::string::npos);
  e = loupe_test::error_of([&] { ModulePattern("((((){1000}){1000}){1000}){1000}", "test"); });
  CHECK(e.find("more than 65536 NFA states") != std::string::npos);
  e = loupe_test::error_of([&] { ModulePattern("a{1001}", "test"); });
  CHECK(e.find("repeat count 1001 is over the 1000") != std::string::npos);
  e = loupe_test::error_of([&] { ModulePattern("a{99999999999999999999999}", "test"); });
  CHECK(e.find("repeat count") != std::string::npos);
  CHECK(ModulePattern("a{1000}", "test").fullmatch(std::string(1000, 'a')));
  CHECK(!ModulePattern("a{1000}", "test").fullmatch(std::string(999, 'a')));
  // A long alternation of module names (the shape of a generated target_modules) is fine.
  std::string alt;
  for (int i = 0; i < 100; ++i) alt += (i ? "|" : "") + std::string("model\\.layers\\.") + std::to_string(i) + "\\.mlp\\.up_proj";
  CHECK(ModulePattern(alt, "test").fullmatch("model.layers.57.mlp.up_proj"));
  CHECK(!ModulePattern(alt, "test").fullmatch("model.layers.100.mlp.up_proj"));
}

TEST_CASE("module_pattern: syntax outside the subset is a clear error naming the construct and the pattern") {
  // All valid in Python's re, with meanings loupe does not implement.
  const std::pair<const char*, const char*> cases[] = {
      {R"(^(?!.*lm_head).*)", "lookahead assertions"},
      {R"((?=a)a)", "lookahead assertions"},
      {R"((?<=a)b)", "lookbehind assertions"},
      {R"((?<!a)b)", "lookbehind assertions"},
      {R"((a)\1)", "backreferences"},
      {R"((?P<x>a)(?P=x))", "backreferences (?P=name)"},
      {R"((?i)q_proj)", "inline flags"},
      {R"((?x)a)", "inline flags"},
      {R"((?>a))", "atomic groups"},
      {R"(a*+)", "possessive quantifiers"},
      {R"(a++)", "possessive quantifiers"},
      {R"(\bq_proj)", "word boundaries"},
      {R"(a\B)", "word boundaries"},
      {R"((?#comment)a)", "comments"},
      {R"((?(1)a|b))", "conditional groups"},
      {R"(\0)", "octal escapes"},
      {R"([\1])", "octal escapes"},
      {R"(\N{DIGIT ONE})", "named characters"},
  };
  for (const auto& c : cases) {
    const std::string pattern = c.first, what = c.second;  // (clang 14: lambdas cannot capture structured bindings)
    const std::string e = loupe_test::error_of([&] { ModulePattern(pattern, "dir/adapter_config.json: rank_pattern 'k'"); });
    INFO("pattern: " << pattern << "  error: " << e);
    CHECK(e.rfind("dir/adapter_config.json: rank_pattern 'k': ", 0) == 0);
    CHECK(e.find(what) != std::string::npos);
    CHECK(e.find("not supported") != std::string::npos);
    CHECK(e.find(std::string("of the pattern '") + pattern + "'") != std::string::npos);
  }
  // Lazy quantifiers are accepted and mean the same under fullmatch.
  CHECK(ModulePattern(".*?\\.q_proj", "test").fullmatch("model.layers.0.self_attn.q_proj"));
  CHECK(ModulePattern("a{2,3}?", "test").fullmatch("aaa"));
  // A long pattern is quoted cut short.
  const std::string e = loupe_test::error_of([&] { ModulePattern(std::string(3000, 'a') + "(?=b)", "test"); });
  CHECK(e.size() < 300);
}

TEST_CASE("module_pattern: names are matched as UTF-8 characters, as Python matches str") {
  CHECK(ModulePattern("a.b", "test").fullmatch("a\xc3\xa9" "b"));            // '.' is one character, é
  CHECK(ModulePattern("[^x]", "test").fullmatch("\xe2\x82\xac"));            // €
  CHECK(!ModulePattern("..", "test").fullmatch("\xe2\x82\xac"));
  CHECK(ModulePattern("\\u20ac", "test").fullmatch("\xe2\x82\xac"));
  CHECK(!ModulePattern("a.b", "test").fullmatch("a\xff" "\xfe" "b"));        // two undecodable bytes: two characters
  CHECK(ModulePattern("a..b", "test").fullmatch("a\xff" "\xfe" "b"));
  // \w is ASCII (re.ASCII's): Python's str patterns would also take é (documented; module names are ASCII).
  CHECK(!ModulePattern("\\w", "test").fullmatch("\xc3\xa9"));
  CHECK(ModulePattern("\\W", "test").fullmatch("\xc3\xa9"));
}
