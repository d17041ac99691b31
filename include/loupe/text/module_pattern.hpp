// ModulePattern: the regular expressions of PEFT's adapter_config.json
// (target_modules as a string, the keys of rank_pattern / alpha_pattern),
// matched in time linear in the name's length whatever the pattern.
//
// Why not std::regex: an adapter directory is untrusted input, and std::regex
// backtracks (`((\w|\.)*)*Z` on a long name never ends) and recurses per
// nesting level (20000 parentheses overflow the stack); it is slow to compile,
// too. Here the pattern is parsed by a recursive-descent parser whose depth is
// counted, compiled to a Thompson NFA, and run by a Pike / Thompson set
// simulation (every NFA state at most once per character, no backtracking).
//
// The syntax is the subset of Python's `re` (what PEFT uses) these configs
// need, with Python's meaning:
//   - literals; `\` before any ASCII punctuation or space (a literal); `\t \n
//     \r \f \v \a`, `\xhh`, `\uhhhh`, `\Uhhhhhhhh`;
//   - `.` (any character but `\n`), `\d \D \w \W \s \S` — ASCII only, as with
//     re.ASCII (Python's str patterns also count non-ASCII letters and digits;
//     module names are ASCII, so the two cannot differ on them);
//   - classes `[...]`: ranges, `^` negation, the escapes above (`\b` is a
//     backspace there), `]` first is a literal, `-` first or last a literal;
//   - groups `(...)`, `(?:...)`, `(?P<name>...)` (nothing is captured);
//   - alternation `|` (empty branches allowed);
//   - quantifiers `* + ?`, `{m}`, `{m,}`, `{,n}`, `{m,n}` (bounds ≤ 1000,
//     expanded into copies), and their lazy forms `*? +? ?? {m,n}?`, accepted
//     and run as greedy: whether a match exists does not depend on laziness.
//     A `{` that does not start a valid count is a literal, as in Python;
//   - anchors `^ \A` (start) and `$` (end, or before a final `\n`), `\Z` (end),
//     anywhere in the pattern.
// Not supported, each a loupe::Error naming it: backreferences (`\1`,
// `(?P=name)`), lookarounds, atomic groups and possessive quantifiers (they
// change what matches), inline flags `(?i)`, conditionals, comments, `\b \B`,
// octal escapes, `\N{...}`. Python's own syntax errors ("nothing to repeat",
// "multiple repeat", "bad escape", unbalanced parentheses, bad ranges) are
// errors here too.
//
// Limits, each a loupe::Error: the pattern is at most 4096 bytes, groups nest
// at most 64 deep, and the NFA (after {m,n} expansion) has at most 65536 states.
// Matching a name of n characters costs O(n · states).
#pragma once
#include <loupe/core/error.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace loupe {

class ModulePattern {
 public:
  static constexpr size_t kMaxPatternBytes = 4096;
  static constexpr int kMaxDepth = 64;
  static constexpr size_t kMaxStates = 65536;
  static constexpr int kMaxRepeat = 1000;

  // Compiles `pattern`; errors start with `what` (e.g. "dir/adapter_config.json:
  // rank_pattern key 'q_proj'"), then say what is wrong and where.
  ModulePattern(std::string_view pattern, std::string what);

  // Python's re.fullmatch(pattern, s) is not None.
  bool fullmatch(std::string_view s) const;

  const std::string& pattern() const { return pattern_; }
  size_t states() const { return prog_.size(); }

 private:
  using Ranges = std::vector<std::pair<char32_t, char32_t>>;  // inclusive, code points
  struct Set {
    Ranges ranges;
    bool negate = false;
    bool contains(char32_t c) const {
      bool in = false;
      for (const auto& r : ranges) in |= (c >= r.first && c <= r.second);
      return in != negate;
    }
  };
  enum class Anchor : uint8_t { Begin, EndOrFinalNewline, End };
  // The parse tree. Groups leave no node of their own: nothing is captured.
  struct Node {
    enum Kind : uint8_t { Empty, Char, Assert, Concat, Alt, Repeat } kind = Empty;
    int set = -1;  // Char: index in sets_
    Anchor anchor = Anchor::Begin;
    int min = 0, max = -1;  // Repeat; max -1: unbounded
    std::vector<Node> kids;
  };
  // NFA instructions (a Pike VM program): Char consumes one character of sets_[arg]
  // and goes to pc+1; Split tries x and y; Jump goes to x; Assert checks a
  // position and goes to pc+1; Match accepts.
  struct Inst {
    enum Op : uint8_t { Char, Split, Jump, Assert, Match } op = Match;
    Anchor anchor = Anchor::Begin;
    int32_t arg = 0, x = 0, y = 0;
  };

  std::string pattern_, what_;
  std::vector<Set> sets_;
  std::vector<Inst> prog_;

  // Parsing (over code points; p_ is the index of the next one).
  std::u32string src_;
  size_t p_ = 0;

  static std::u32string decode(std::string_view s);
  [[noreturn]] void error(const std::string& msg) const;
  bool eof() const { return p_ >= src_.size(); }
  char32_t peek() const { return src_[p_]; }

  Node parse_alt(int depth);
  Node parse_concat(int depth);
  Node parse_group(int depth);
  Node parse_class();
  Node parse_escape();
  bool parse_count(int& min, int& max);  // a valid {m,n} at p_: consumes it
  int add_set(Set s) {
    sets_.push_back(std::move(s));
    return int(sets_.size()) - 1;
  }
  Node char_node(Set s) {
    Node n;
    n.kind = Node::Char;
    n.set = add_set(std::move(s));
    return n;
  }
  // \d \w \s and their negations; false: `c` names none.
  static bool class_escape(char32_t c, Set& out);
  static int hex_value(char32_t c);
  char32_t parse_hex(int digits, char32_t esc);

  // Compiling.
  int emit(Inst i);
  void compile(const Node& n);

  // Matching.
  bool holds(Anchor a, const std::u32string& s, size_t pos) const;
  void add_state(std::vector<int32_t>& list, std::vector<uint32_t>& mark, uint32_t gen, std::vector<int32_t>& stack,
                 int32_t pc, const std::u32string& s, size_t pos) const;
};

// ---------------------------------------------------------------------------

inline ModulePattern::ModulePattern(std::string_view pattern, std::string what)
    : pattern_(pattern), what_(std::move(what)) {
  if (pattern.size() > kMaxPatternBytes)
    fail(what_, ": the pattern is ", pattern.size(), " bytes long, more than the ", kMaxPatternBytes, " loupe accepts");
  src_ = decode(pattern);
  Node root = parse_alt(0);
  if (!eof()) error("unbalanced parenthesis");  // parse_alt stops only at the end or at a ')'
  compile(root);
  emit({Inst::Match, Anchor::Begin, 0, 0, 0});
  src_.clear();
  src_.shrink_to_fit();
}

// UTF-8 to code points, so that `.` and classes see characters as Python does.
// A byte that starts no valid sequence becomes U+DC80..U+DCFF (Python's
// surrogateescape): it matches itself and never a real character.
inline std::u32string ModulePattern::decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    int len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    char32_t c = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    bool ok = len > 0 && i + size_t(len) <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const unsigned char t = static_cast<unsigned char>(s[i + size_t(k)]);
      ok = (t >> 6) == 2;
      c = (c << 6) | (t & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not characters.
    if (ok && ((len == 2 && c < 0x80) || (len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
               (c >= 0xD800 && c <= 0xDFFF)))
      ok = false;
    if (!ok) {
      out.push_back(0xDC00 + b);
      ++i;
    } else {
      out.push_back(c);
      i += size_t(len);
    }
  }
  return out;
}

inline void ModulePattern::error(const std::string& msg) const {
  // The pattern may be long (a hostile one is): quote its start only.
  std::string shown = pattern_.size() > 80 ? pattern_.substr(0, 80) + "..." : pattern_;
  fail(what_, ": ", msg, " at position ", p_, " of the pattern '", shown, "'");
}

// alternation: concat ('|' concat)*
inline ModulePattern::Node ModulePattern::parse_alt(int depth) {
  Node first = parse_concat(depth);
  if (eof() || peek() != U'|') return first;
  Node alt;
  alt.kind = Node::Alt;
  alt.kids.push_back(std::move(first));
  while (!eof() && peek() == U'|') {
    ++p_;
    alt.kids.push_back(parse_concat(depth));
  }
  return alt;
}

// concat: (atom quantifier?)*, up to '|', ')' or the end
inline ModulePattern::Node ModulePattern::parse_concat(int depth) {
  Node cat;
  cat.kind = Node::Concat;
  while (!eof() && peek() != U'|' && peek() != U')') {
    const char32_t c = peek();
    Node atom;
    int min = 0, max = 0;
    if (c == U'*' || c == U'+' || c == U'?' || (c == U'{' && parse_count(min, max))) {
      error("nothing to repeat");
    } else if (c == U'(') {
      atom = parse_group(depth);
    } else if (c == U'[') {
      atom = parse_class();
    } else if (c == U'\\') {
      atom = parse_escape();
    } else if (c == U'.') {
      ++p_;
      Set s;
      s.ranges = {{U'\n', U'\n'}};
      s.negate = true;
      atom = char_node(std::move(s));
    } else if (c == U'^' || c == U'$') {
      ++p_;
      atom.kind = Node::Assert;
      atom.anchor = c == U'^' ? Anchor::Begin : Anchor::EndOrFinalNewline;
    } else {
      ++p_;  // a literal (also a '{' that starts no count, and ']' / '}')
      Set s;
      s.ranges = {{c, c}};
      atom = char_node(std::move(s));
    }
    // At most one quantifier, optionally lazy (Python: "multiple repeat" otherwise).
    if (!eof()) {
      const char32_t q = peek();
      if (q == U'*' || q == U'+' || q == U'?' || q == U'{') {
        if (q != U'{') {
          ++p_;
          min = q == U'+' ? 1 : 0;
          max = q == U'?' ? 1 : -1;
        }
        if (q != U'{' || parse_count(min, max)) {
          if (atom.kind == Node::Assert) error("nothing to repeat");
          if (!eof() && peek() == U'?') ++p_;  // lazy: the same matches under fullmatch
          if (!eof() && peek() == U'+') error("possessive quantifiers are not supported");
          if (!eof() && (peek() == U'*' || peek() == U'+' || peek() == U'?')) error("multiple repeat");
          int m2 = 0, x2 = 0;
          if (!eof() && peek() == U'{' && parse_count(m2, x2)) error("multiple repeat");
          Node rep;
          rep.kind = Node::Repeat;
          rep.min = min, rep.max = max;
          rep.kids.push_back(std::move(atom));
          atom = std::move(rep);
        }
      }
    }
    cat.kids.push_back(std::move(atom));
  }
  if (cat.kids.size() == 1) return std::move(cat.kids[0]);
  if (cat.kids.empty()) return Node{};
  return cat;
}

// Python's {m}, {m,}, {,n}, {m,n} at p_ ('{'): consumed when valid, else p_ is
// left alone and the '{' is a literal.
inline bool ModulePattern::parse_count(int& min, int& max) {
  size_t q = p_ + 1;
  auto digits = [&](std::string& out) {
    while (q < src_.size() && src_[q] >= U'0' && src_[q] <= U'9') out += char(src_[q++]);
  };
  std::string lo, hi;
  digits(lo);
  bool comma = false;
  if (q < src_.size() && src_[q] == U',') {
    comma = true;
    ++q;
    digits(hi);
  } else {
    hi = lo;
  }
  if (q >= src_.size() || src_[q] != U'}' || (lo.empty() && !comma)) return false;  // "{}", "{x", "{1": literals
  auto value = [&](const std::string& d) {
    // Digits past the cap are an error whatever their count (no overflow).
    if (d.size() > 4 || std::stoi(d) > kMaxRepeat) {
      p_ = q;
      error("repeat count " + (d.size() > 12 ? d.substr(0, 12) + "..." : d) + " is over the " +
            std::to_string(kMaxRepeat) + " loupe accepts");
    }
    return std::stoi(d);
  };
  min = lo.empty() ? 0 : value(lo);
  max = hi.empty() ? -1 : value(hi);
  if (max >= 0 && max < min) error("min repeat greater than max repeat");
  p_ = q + 1;
  return true;
}

// '(' ... ')': plain, (?:...) and (?P<name>...) groups; other (?...) forms are errors.
inline ModulePattern::Node ModulePattern::parse_group(int depth) {
  // The explicit count that keeps this recursion (3 frames a level) bounded.
  if (depth + 1 > kMaxDepth) error("groups nested more than " + std::to_string(kMaxDepth) + " deep");
  ++p_;  // '('
  if (!eof() && peek() == U'?') {
    ++p_;
    const char32_t k = eof() ? 0 : peek();
    if (k == U':') {
      ++p_;
    } else if (k == U'P' && p_ + 1 < src_.size() && src_[p_ + 1] == U'<') {
      p_ += 2;
      const size_t start = p_;
      while (!eof() && peek() != U'>') {
        const char32_t c = peek();
        const bool ok = c == U'_' || (c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z') || c >= 0x80 ||
                        (p_ > start && c >= U'0' && c <= U'9');
        if (!ok) error("bad character in group name");
        ++p_;
      }
      if (eof()) error("missing >, unterminated name");
      if (p_ == start) error("missing group name");
      ++p_;  // '>'
    } else if (k == U'P' && p_ + 1 < src_.size() && src_[p_ + 1] == U'=') {
      error("backreferences (?P=name) are not supported");
    } else if (k == U'=' || k == U'!') {
      error("lookahead assertions (?= / (?! are not supported");
    } else if (k == U'<' && p_ + 1 < src_.size() && (src_[p_ + 1] == U'=' || src_[p_ + 1] == U'!')) {
      error("lookbehind assertions (?<= / (?<! are not supported");
    } else if (k == U'>') {
      error("atomic groups (?>...) are not supported");
    } else if (k == U'#') {
      error("comments (?#...) are not supported");
    } else if (k == U'(') {
      error("conditional groups (?(...)...) are not supported");
    } else if (k != U'P' && (k == U'-' || (k >= U'a' && k <= U'z') || (k >= U'A' && k <= U'Z'))) {
      error("inline flags (?aiLmsux) are not supported");
    } else {
      error("unknown extension (?" + (eof() ? std::string() : std::string(1, char(k < 0x80 ? k : '?'))));
    }
  }
  Node inner = parse_alt(depth + 1);
  if (eof()) error("missing ), unterminated subpattern");
  ++p_;  // ')'
  return inner;
}

inline bool ModulePattern::class_escape(char32_t c, Set& out) {
  static const Ranges digit = {{U'0', U'9'}};
  static const Ranges word = {{U'0', U'9'}, {U'A', U'Z'}, {U'_', U'_'}, {U'a', U'z'}};
  static const Ranges space = {{U'\t', U'\r'}, {U' ', U' '}};  // \t \n \v \f \r and space
  switch (c) {
    case U'd': out = {digit, false}; return true;
    case U'D': out = {digit, true}; return true;
    case U'w': out = {word, false}; return true;
    case U'W': out = {word, true}; return true;
    case U's': out = {space, false}; return true;
    case U'S': out = {space, true}; return true;
    default: return false;
  }
}

inline int ModulePattern::hex_value(char32_t c) {
  if (c >= U'0' && c <= U'9') return int(c - U'0');
  if (c >= U'a' && c <= U'f') return int(c - U'a') + 10;
  if (c >= U'A' && c <= U'F') return int(c - U'A') + 10;
  return -1;
}

// The code point of \x / \u / \U: exactly `digits` hex digits after p_.
inline char32_t ModulePattern::parse_hex(int digits, char32_t esc) {
  char32_t v = 0;
  for (int i = 0; i < digits; ++i) {
    const int h = eof() ? -1 : hex_value(peek());
    if (h < 0) error(std::string("incomplete escape \\") + char(esc));
    v = v * 16 + char32_t(h);
    ++p_;
  }
  if (v > 0x10FFFF) error(std::string("bad escape \\") + char(esc) + " (past U+10FFFF)");
  return v;
}

// An escape outside a class: a character, a class (\d...) or an anchor (\A \Z).
inline ModulePattern::Node ModulePattern::parse_escape() {
  ++p_;  // '\'
  if (eof()) error("bad escape (end of pattern)");
  const char32_t c = peek();
  ++p_;
  Set s;
  if (class_escape(c, s)) return char_node(std::move(s));
  Node n;
  switch (c) {
    case U'A': n.kind = Node::Assert, n.anchor = Anchor::Begin; return n;
    case U'Z': n.kind = Node::Assert, n.anchor = Anchor::End; return n;
    case U'b': case U'B': error("word boundaries \\b / \\B are not supported");
    default: break;
  }
  char32_t lit = c;
  switch (c) {
    case U'a': lit = 7; break;
    case U'f': lit = 12; break;
    case U'n': lit = 10; break;
    case U'r': lit = 13; break;
    case U't': lit = 9; break;
    case U'v': lit = 11; break;
    case U'x': lit = parse_hex(2, c); break;
    case U'u': lit = parse_hex(4, c); break;
    case U'U': lit = parse_hex(8, c); break;
    case U'N': error("named characters \\N{...} are not supported");
    default:
      if (c >= U'1' && c <= U'9') error("backreferences (\\1...) are not supported");
      if (c == U'0') error("octal escapes are not supported");
      if ((c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z')) error(std::string("bad escape \\") + char(c));
  }
  s.ranges = {{lit, lit}};
  return char_node(std::move(s));
}

// '[' ... ']' (Python's sre_parse rules for ']' first and '-' at the ends).
inline ModulePattern::Node ModulePattern::parse_class() {
  ++p_;  // '['
  Set set;
  if (!eof() && peek() == U'^') set.negate = true, ++p_;
  const size_t start = p_;
  // One member: a character (true, in c) or a class escape (false, merged into `set`).
  auto member = [&](char32_t& c) -> bool {
    if (eof()) error("unterminated character set");
    c = peek();
    ++p_;
    if (c != U'\\') return true;
    if (eof()) error("bad escape (end of pattern)");
    const char32_t e = peek();
    ++p_;
    Set sub;
    if (class_escape(e, sub)) {
      // \D \W \S inside a class: add their complement's ranges.
      if (sub.negate) {
        char32_t next = 0;
        for (const auto& r : sub.ranges) {
          if (r.first > next) set.ranges.push_back({next, r.first - 1});
          next = r.second + 1;
        }
        set.ranges.push_back({next, 0x10FFFF});
      } else {
        set.ranges.insert(set.ranges.end(), sub.ranges.begin(), sub.ranges.end());
      }
      return false;
    }
    switch (e) {
      case U'a': c = 7; return true;
      case U'b': c = 8; return true;  // backspace inside a class
      case U'f': c = 12; return true;
      case U'n': c = 10; return true;
      case U'r': c = 13; return true;
      case U't': c = 9; return true;
      case U'v': c = 11; return true;
      case U'x': c = parse_hex(2, e); return true;
      case U'u': c = parse_hex(4, e); return true;
      case U'U': c = parse_hex(8, e); return true;
      case U'N': error("named characters \\N{...} are not supported");
      default: break;
    }
    if (e >= U'0' && e <= U'9') error("octal escapes are not supported");
    if ((e >= U'a' && e <= U'z') || (e >= U'A' && e <= U'Z')) error(std::string("bad escape \\") + char(e));
    c = e;
    return true;
  };
  for (;;) {
    if (eof()) error("unterminated character set");
    if (peek() == U']' && p_ != start) {
      ++p_;
      break;
    }
    const size_t here = p_;
    char32_t lo = 0;
    const bool lo_char = member(lo);
    if (!eof() && peek() == U'-') {
      ++p_;
      if (eof()) error("unterminated character set");
      if (peek() == U']') {  // "a-]": '-' is a literal
        if (lo_char) set.ranges.push_back({lo, lo});
        set.ranges.push_back({U'-', U'-'});
        ++p_;
        break;
      }
      char32_t hi = 0;
      const bool hi_char = member(hi);
      if (!lo_char || !hi_char) {
        p_ = here;
        error("bad character range");
      }
      if (hi < lo) {
        p_ = here;
        error("bad character range");
      }
      set.ranges.push_back({lo, hi});
    } else if (lo_char) {
      set.ranges.push_back({lo, lo});
    }
  }
  return char_node(std::move(set));
}

inline int ModulePattern::emit(Inst i) {
  if (prog_.size() >= kMaxStates)
    error("the pattern needs more than " + std::to_string(kMaxStates) + " NFA states (after expanding {m,n} counts)");
  prog_.push_back(i);
  return int(prog_.size()) - 1;
}

// Thompson's construction as a program. Every call emits at least one
// instruction, so the work of expanding counts is bounded by kMaxStates too
// (an empty group repeated {1000} a thousand times over emits, and so stops).
inline void ModulePattern::compile(const Node& n) {
  switch (n.kind) {
    case Node::Empty: {
      const int j = emit({Inst::Jump});
      prog_[size_t(j)].x = j + 1;
      return;
    }
    case Node::Char:
      emit({Inst::Char, Anchor::Begin, n.set});
      return;
    case Node::Assert:
      emit({Inst::Assert, n.anchor});
      return;
    case Node::Concat:
      for (const Node& k : n.kids) compile(k);
      return;
    case Node::Alt: {
      // split L1, next; L1: kid; jmp end; next: split ...; last kid; end:
      std::vector<int> jumps;
      for (size_t i = 0; i + 1 < n.kids.size(); ++i) {
        const int split = emit({Inst::Split});
        prog_[size_t(split)].x = split + 1;
        compile(n.kids[i]);
        jumps.push_back(emit({Inst::Jump}));
        prog_[size_t(split)].y = int(prog_.size());
      }
      compile(n.kids.back());
      for (int j : jumps) prog_[size_t(j)].x = int(prog_.size());
      return;
    }
    case Node::Repeat: {
      const Node& k = n.kids[0];
      if (n.min == 0 && n.max == 0) {
        compile(Node{});
        return;
      }
      for (int i = 0; i < n.min - (n.max < 0 && n.min > 0 ? 1 : 0); ++i) compile(k);
      if (n.max < 0) {
        if (n.min > 0) {
          // the last required copy loops: L: k; split L, next
          const int l = int(prog_.size());
          compile(k);
          const int split = emit({Inst::Split});
          prog_[size_t(split)].x = l, prog_[size_t(split)].y = split + 1;
        } else {
          // L: split body, end; body: k; jmp L; end:
          const int split = emit({Inst::Split});
          prog_[size_t(split)].x = split + 1;
          compile(k);
          const int j = emit({Inst::Jump});
          prog_[size_t(j)].x = split;
          prog_[size_t(split)].y = int(prog_.size());
        }
        return;
      }
      // max − min optional copies: split body, end; body: k; ... end:
      std::vector<int> splits;
      for (int i = n.min; i < n.max; ++i) {
        const int split = emit({Inst::Split});
        prog_[size_t(split)].x = split + 1;
        splits.push_back(split);
        compile(k);
      }
      for (int s : splits) prog_[size_t(s)].y = int(prog_.size());
      return;
    }
  }
}

inline bool ModulePattern::holds(Anchor a, const std::u32string& s, size_t pos) const {
  switch (a) {
    case Anchor::Begin: return pos == 0;
    case Anchor::End: return pos == s.size();
    case Anchor::EndOrFinalNewline: return pos == s.size() || (pos + 1 == s.size() && s[pos] == U'\n');
  }
  return false;
}

// Adds pc and everything it reaches without consuming a character (at `pos`)
// to `list`: the Char and Match states. An explicit stack, not recursion (a
// chain of 65536 splits must not overflow the stack); `mark` holds each state
// once per step, which also ends empty loops such as (a*)*.
inline void ModulePattern::add_state(std::vector<int32_t>& list, std::vector<uint32_t>& mark, uint32_t gen,
                                     std::vector<int32_t>& stack, int32_t pc, const std::u32string& s, size_t pos) const {
  stack.push_back(pc);
  while (!stack.empty()) {
    const int32_t i = stack.back();
    stack.pop_back();
    if (mark[size_t(i)] == gen) continue;
    mark[size_t(i)] = gen;
    const Inst& in = prog_[size_t(i)];
    switch (in.op) {
      case Inst::Char:
      case Inst::Match: list.push_back(i); break;
      case Inst::Jump: stack.push_back(in.x); break;
      case Inst::Split: stack.push_back(in.y), stack.push_back(in.x); break;
      case Inst::Assert:
        if (holds(in.anchor, s, pos)) stack.push_back(i + 1);
        break;
    }
  }
}

inline bool ModulePattern::fullmatch(std::string_view text) const {
  const std::u32string s = decode(text);
  std::vector<uint32_t> mark(prog_.size(), 0);
  std::vector<int32_t> cur, next, stack;
  uint32_t gen = 1;
  add_state(cur, mark, gen, stack, 0, s, 0);
  for (size_t pos = 0; pos < s.size(); ++pos) {
    if (cur.empty()) return false;
    if (++gen == 0) std::fill(mark.begin(), mark.end(), 0), gen = 1;
    next.clear();
    for (int32_t pc : cur) {
      const Inst& in = prog_[size_t(pc)];
      if (in.op == Inst::Char && sets_[size_t(in.arg)].contains(s[pos])) add_state(next, mark, gen, stack, pc + 1, s, pos + 1);
    }
    std::swap(cur, next);
  }
  for (int32_t pc : cur)
    if (prog_[size_t(pc)].op == Inst::Match) return true;
  return false;
}

}  // namespace loupe
