#include "test_util.hpp"

#include <loupe/text/tokenizer.hpp>

#include <chrono>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>

#ifdef LOUPE_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

// References: libsentencepiece (the library LLaMA's tokenizer comes from) loading
// the same files, and llama.cpp's own tokenizer test vectors and vocab GGUF.

namespace {
namespace fs = std::filesystem;
using loupe::Tokenizer;
using Ids = std::vector<int>;
using loupe_test::error_of;

fs::path llama_model() { return loupe_test::shared_dir() / "tokenizers/llama2.model"; }
fs::path stories_model() { return loupe_test::shared_dir() / "models/stories260K-hf/tokenizer.model"; }

Ids as_int(const std::vector<int32_t>& v) { return Ids(v.begin(), v.end()); }
std::vector<int32_t> as_i32(const Ids& v) { return std::vector<int32_t>(v.begin(), v.end()); }

std::string show(const std::string& s) {
  std::ostringstream o;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\')
      o << c;
    else
      o << "\\x" << "0123456789abcdef"[c >> 4] << "0123456789abcdef"[c & 15];
  }
  return o.str();
}

// Strict UTF-8 check written independently of the tokenizer's: decode each
// code point and reject overlongs, surrogates and values past U+10FFFF.
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    size_t n;
    uint32_t cp, min;
    if (c < 0x80) { ++i; continue; }
    if ((c >> 5) == 6) n = 2, cp = c & 0x1f, min = 0x80;
    else if ((c >> 4) == 14) n = 3, cp = c & 0x0f, min = 0x800;
    else if ((c >> 3) == 30) n = 4, cp = c & 0x07, min = 0x10000;
    else return false;
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const unsigned char t = s[i + k];
      if ((t >> 6) != 2) return false;
      cp = cp << 6 | (t & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) return false;
    i += n;
  }
  return true;
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) s += char(cp);
  else if (cp < 0x800) s += char(0xc0 | cp >> 6), s += char(0x80 | (cp & 0x3f));
  else if (cp < 0x10000) s += char(0xe0 | cp >> 12), s += char(0x80 | (cp >> 6 & 0x3f)), s += char(0x80 | (cp & 0x3f));
  else
    s += char(0xf0 | cp >> 18), s += char(0x80 | (cp >> 12 & 0x3f)), s += char(0x80 | (cp >> 6 & 0x3f)),
        s += char(0x80 | (cp & 0x3f));
  return s;
}

// Random text mixing everything a tokenizer trips over. `vocab` supplies real
// pieces (with ▁ turned back into spaces) so that long merges happen too.
std::string random_text(std::mt19937& rng, const std::vector<std::string>& vocab, bool invalid_bytes) {
  static const char* const words[] = {"Hello", "world", "the", "The", "a", "of", "LLaVA", "image", "Lietuva",
                                      "žmogus", "teisės", "123", "3.14", "don't", "e-mail", "<s>", "</s>", "<unk>",
                                      "<0x41>", "▁", "▁▁", "http://x.y/z?q=1", "...", "!!!", "a  b", "\u00e9"};
  static const char* const spaces[] = {" ", "  ", "   ", "    ", "\t", "\n", "\n\n", "\r\n", " \t ", "\t\t", " \n "};
  static const char* const lith[] = {"ą", "č", "ę", "ė", "į", "š", "ų", "ū", "ž", "Ą", "Č", "Ę", "Ė", "Į", "Š", "Ų", "Ū", "Ž"};
  std::uniform_int_distribution<int> len_d(0, 14);
  const int n = len_d(rng);
  std::string s;
  for (int k = 0; k < n; ++k) {
    switch (std::uniform_int_distribution<int>(0, invalid_bytes ? 10 : 9)(rng)) {
      case 0: s += words[rng() % (sizeof words / sizeof *words)]; break;
      case 1: s += spaces[rng() % (sizeof spaces / sizeof *spaces)]; break;
      case 2: s += lith[rng() % (sizeof lith / sizeof *lith)]; break;
      case 3: s += utf8(0x4e00 + rng() % (0x9fff - 0x4e00)); break;                 // CJK
      case 4: {                                                                         // emoji, ZWJ, VS16
        s += utf8(0x1f300 + rng() % 0x700);
        if (rng() % 3 == 0) s += utf8(0x200d), s += utf8(0x1f300 + rng() % 0x300);
        if (rng() % 3 == 0) s += utf8(0xfe0f);
        break;
      }
      case 5: {  // any scalar value, mostly outside the vocabulary
        uint32_t cp;
        do cp = 0x80 + rng() % (0x110000 - 0x80);
        while (cp >= 0xd800 && cp < 0xe000);
        s += utf8(cp);
        break;
      }
      case 6: s += char(0x21 + rng() % 94); break;  // printable ASCII
      case 7: s += char(rng() % 0x20 + (rng() % 2 ? 1 : 0)); break;  // control chars (no NUL)
      case 8:
      case 9: {
        std::string p = vocab[3 + rng() % (vocab.size() - 3)];
        if (p.size() == 6 && p.compare(0, 3, "<0x") == 0) break;
        for (size_t i = p.find("\xe2\x96\x81"); i != std::string::npos; i = p.find("\xe2\x96\x81"))
          p.replace(i, 3, " ");
        s += p;
        break;
      }
      default: {  // malformed UTF-8: stray continuation, truncated, surrogate, overlong, 0xFF
        static const char* const bad[] = {"\x80", "\xbf", "\xc3", "\xe2\x96", "\xf0\x9f\x98", "\xed\xa0\x80",
                                          "\xc0\xaf", "\xff", "\xf4\x90\x80\x80", "\xe0\x80\xaf", "\xef\xbf\xbd"};
        s += bad[rng() % (sizeof bad / sizeof *bad)];
      }
    }
  }
  return s;
}

// llama.cpp's test-tokenizer-0 format: inputs separated by "\n__ggml_vocab_test__\n",
// one output line of space-separated ids per input.
std::vector<std::pair<std::string, Ids>> ggml_vectors() {
  const fs::path base = loupe_test::shared_dir() / "tokenizers/ggml-vocab-llama-spm.gguf";
  const std::string raw = loupe_test::slurp(base.string() + ".inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0; pos < raw.size();) {
    const size_t next = raw.find(sep, pos);
    if (next == std::string::npos) {
      inputs.push_back(raw.substr(pos));
      break;
    }
    inputs.push_back(raw.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::istringstream out(loupe_test::slurp(base.string() + ".out"));
  std::vector<std::pair<std::string, Ids>> tests;
  std::string line;
  for (size_t i = 0; std::getline(out, line); ++i) {
    REQUIRE(i < inputs.size());
    Ids ids;
    std::istringstream l(line);
    for (int id; l >> id;) ids.push_back(id);
    tests.emplace_back(inputs[i], ids);
  }
  REQUIRE(tests.size() == inputs.size());
  return tests;
}

// Just enough GGUF to read the tokenizer.* metadata of llama.cpp's vocab file.
// Returns an empty reason on success, else why the file could not be read.
struct GgufVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  int64_t bos = -1, eos = -1, unk = -1;
  bool add_bos = false, add_space_prefix = true;
  std::string model;
};

struct GgufParse {
  struct Bad {};
  const std::string& d;
  size_t p = 0;
  const char* take(size_t n) {
    if (n > d.size() - p) throw Bad{};
    const char* r = d.data() + p;
    p += n;
    return r;
  }
  uint32_t u32() { uint32_t v; std::memcpy(&v, take(4), 4); return v; }
  uint64_t u64() { uint64_t v; std::memcpy(&v, take(8), 8); return v; }
  std::string str() { const uint64_t n = u64(); return std::string(take(n), n); }
  int64_t scalar(uint32_t t) {
    static const size_t size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (t > 12 || size[t] == 0) throw Bad{};
    int64_t v = 0;
    std::memcpy(&v, take(size[t]), size[t]);  // little-endian; only small ids are used
    return v;
  }
};

std::string read_gguf_vocab(const fs::path& path, GgufVocab& g) {
  const std::string d = loupe_test::slurp(path);
  GgufParse r{d};
  try {
    if (std::string(r.take(4), 4) != "GGUF") return "bad magic";
    if (r.u32() < 2) return "old version";
    r.u64();  // tensor count
    const uint64_t nkv = r.u64();
    for (uint64_t i = 0; i < nkv; ++i) {
      const std::string key = r.str();
      const uint32_t t = r.u32();
      if (t == 9) {
        const uint32_t et = r.u32();
        const uint64_t n = r.u64();
        for (uint64_t k = 0; k < n; ++k) {
          if (et == 8) {
            std::string s = r.str();
            if (key == "tokenizer.ggml.tokens") g.tokens.push_back(std::move(s));
          } else if (et == 6 && key == "tokenizer.ggml.scores") {
            float f;
            std::memcpy(&f, r.take(4), 4);
            g.scores.push_back(f);
          } else {
            const int64_t v = r.scalar(et);
            if (key == "tokenizer.ggml.token_type") g.types.push_back(int32_t(v));
          }
        }
      } else if (t == 8) {
        const std::string s = r.str();
        if (key == "tokenizer.ggml.model") g.model = s;
      } else {
        const int64_t v = r.scalar(t);
        if (key == "tokenizer.ggml.bos_token_id") g.bos = v;
        if (key == "tokenizer.ggml.eos_token_id") g.eos = v;
        if (key == "tokenizer.ggml.unknown_token_id") g.unk = v;
        if (key == "tokenizer.ggml.add_bos_token") g.add_bos = v != 0;
        if (key == "tokenizer.ggml.add_space_prefix") g.add_space_prefix = v != 0;
      }
    }
  } catch (const GgufParse::Bad&) {
    return "malformed at offset " + std::to_string(r.p);
  }
  return "";
}

// Serialize a ModelProto (the inverse of loupe's reader) so libsentencepiece
// can load variants of LLaMA's model: user-defined and unused pieces, no byte
// fallback, other normalizer flags.
struct ProtoWriter {
  std::string out;
  void varint(uint64_t v) {
    while (v >= 0x80) out += char(0x80 | (v & 0x7f)), v >>= 7;
    out += char(v);
  }
  void key(uint32_t field, uint32_t wire) { varint(uint64_t(field) << 3 | wire); }
  void vint(uint32_t field, int64_t v) { key(field, 0), varint(uint64_t(v)); }
  void bytes(uint32_t field, const std::string& s) { key(field, 2), varint(s.size()), out += s; }
  void f32(uint32_t field, float f) {
    key(field, 5);
    char b[4];
    std::memcpy(b, &f, 4);
    out.append(b, 4);
  }
};

std::string serialize(const loupe::SentencePieceModel& m) {
  ProtoWriter w;
  for (const auto& p : m.pieces) {
    ProtoWriter q;
    q.bytes(1, p.piece);
    q.f32(2, p.score);
    q.vint(3, p.type);
    w.bytes(1, q.out);
  }
  ProtoWriter t;
  t.vint(3, m.trainer.model_type);
  t.vint(24, m.trainer.treat_whitespace_as_suffix);
  t.vint(35, m.trainer.byte_fallback);
  t.vint(40, m.trainer.unk_id);
  t.vint(41, m.trainer.bos_id);
  t.vint(42, m.trainer.eos_id);
  t.vint(43, m.trainer.pad_id);
  w.bytes(2, t.out);
  ProtoWriter n;
  n.bytes(1, m.normalizer.name);
  n.vint(3, m.normalizer.add_dummy_prefix);
  n.vint(4, m.normalizer.remove_extra_whitespaces);
  n.vint(5, m.normalizer.escape_whitespaces);
  w.bytes(3, n.out);
  return w.out;
}

}  // namespace

TEST_CASE("tokenizer: reads LLaMA-2's tokenizer.model") {
  LOUPE_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(llama_model().string());
  CHECK(tok.size() == 32000);
  CHECK(tok.bos() == 1);
  CHECK(tok.eos() == 2);
  CHECK(tok.unk() == 0);
  CHECK(tok.pad() == -1);
  CHECK(tok.piece(1) == "<s>");
  CHECK(tok.piece(3) == "<0x00>");
  CHECK(tok.piece_id("▁Hello") == 15043);
  CHECK(tok.piece_id("no such piece") == -1);
  CHECK(tok.settings().byte_fallback);
  CHECK(tok.settings().add_dummy_prefix);
  CHECK_FALSE(tok.settings().remove_extra_whitespaces);
  CHECK(tok.type(0) == loupe::PieceType::unknown);
  CHECK(tok.type(2) == loupe::PieceType::control);
  CHECK(tok.type(258) == loupe::PieceType::byte);
  CHECK(tok.byte_value(258) == 255);
  CHECK(tok.normalize("Hello world") == "▁Hello▁world");
  CHECK(tok.encode("", true) == std::vector<int32_t>{1});
  CHECK(tok.encode("", false).empty());
  CHECK_THROWS_AS(tok.piece(32000), loupe::Error);
  CHECK_THROWS_AS(tok.decode({5, -1}), loupe::Error);

#ifdef LOUPE_HAVE_SENTENCEPIECE
  sentencepiece::SentencePieceProcessor sp;
  REQUIRE(sp.Load(llama_model().string()).ok());
  REQUIRE(sp.GetPieceSize() == int(tok.size()));
  CHECK(sp.bos_id() == tok.bos());
  CHECK(sp.eos_id() == tok.eos());
  CHECK(sp.unk_id() == tok.unk());
  for (int i = 0; i < sp.GetPieceSize(); ++i) {
    if (sp.IdToPiece(i) != tok.piece(i) || sp.GetScore(i) != tok.score(i) ||
        sp.IsControl(i) != tok.is_control(i) || sp.IsByte(i) != tok.is_byte(i) ||
        sp.IsUnknown(i) != (tok.type(i) == loupe::PieceType::unknown) || sp.PieceToId(tok.piece(i)) != i) {
      FAIL("piece " << i << " differs from sentencepiece's: " << show(tok.piece(i)));
    }
  }
#endif
}

#ifdef LOUPE_HAVE_SENTENCEPIECE

TEST_CASE("tokenizer: Lithuanian UDHR matches sentencepiece line by line and whole") {
  LOUPE_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(llama_model().string());
  sentencepiece::SentencePieceProcessor sp;
  REQUIRE(sp.Load(llama_model().string()).ok());
  const std::string text = loupe_test::slurp(loupe_test::shared_dir() / "text/udhr_lit.txt");
  REQUIRE(text.size() > 5000);

  std::istringstream lines(text);
  int n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    Ids ref;
    REQUIRE(sp.Encode(line, &ref).ok());
    const auto ids = tok.encode(line, false);
    INFO("line " << n << ": " << line);
    REQUIRE(as_int(ids) == ref);
    std::string ref_text;
    REQUIRE(sp.Decode(ref, &ref_text).ok());
    CHECK(tok.decode(ids) == ref_text);
    CHECK(tok.decode(ids) == line);  // identity normalizer: lossless
  }
  CHECK(n > 50);

  Ids ref;
  REQUIRE(sp.Encode(text, &ref).ok());
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok.encode(text, true);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("encoded " << text.size() << " bytes into " << ids.size() << " tokens in " << ms << " ms");
  CHECK(ms < 200);  // a few ms in practice; this only catches a quadratic blow-up
  REQUIRE(ids.size() == ref.size() + 1);
  CHECK(ids[0] == 1);
  CHECK(Ids(ids.begin() + 1, ids.end()) == ref);
  std::string ref_text;
  REQUIRE(sp.Decode(ref, &ref_text).ok());
  CHECK(tok.decode(ids) == ref_text);
}

TEST_CASE("tokenizer: random Unicode strings match sentencepiece (LLaMA-2 and stories260K)") {
  LOUPE_REQUIRE_SHARED();
  for (const fs::path& model : {llama_model(), stories_model()}) {
    const Tokenizer tok = Tokenizer::load(model.string());
    sentencepiece::SentencePieceProcessor sp;
    REQUIRE(sp.Load(model.string()).ok());
    std::mt19937 rng(1234);
    const int count = 3000;
    for (int i = 0; i < count; ++i) {
      const std::string s = random_text(rng, tok.pieces(), i % 4 == 3);
      Ids ref;
      REQUIRE(sp.Encode(s, &ref).ok());
      const auto ids = tok.encode(s, false);
      INFO(model.filename() << " string " << i << ": \"" << show(s) << "\"");
      REQUIRE(as_int(ids) == ref);
      std::string ref_text;
      REQUIRE(sp.Decode(ref, &ref_text).ok());
      REQUIRE(tok.decode(ids) == ref_text);
      const auto with_bos = tok.encode(s, true);
      REQUIRE(with_bos.size() == ids.size() + 1);
      CHECK(with_bos[0] == sp.bos_id());
    }
  }
}

TEST_CASE("tokenizer: random id sequences decode like sentencepiece; streaming decoder agrees") {
  LOUPE_REQUIRE_SHARED();
  for (const fs::path& model : {llama_model(), stories_model()}) {
    const Tokenizer tok = Tokenizer::load(model.string());
    sentencepiece::SentencePieceProcessor sp;
    REQUIRE(sp.Load(model.string()).ok());
    const int n = int(tok.size());
    const int space = tok.piece_id("▁");
    std::mt19937 rng(99);
    for (int i = 0; i < 4000; ++i) {
      std::vector<int32_t> ids(rng() % 16);
      for (auto& id : ids) {
        switch (rng() % 6) {
          case 0:
          case 1: id = 3 + int32_t(rng() % 256); break;  // byte pieces: broken and whole UTF-8
          case 2: id = int32_t(rng() % 3); break;        // <unk> <s> </s>
          case 3: id = space >= 0 ? space : 259; break;
          default: id = int32_t(rng() % uint32_t(n));
        }
      }
      // some well-formed multi-byte characters written as byte pieces
      if (rng() % 3 == 0) {
        const std::string c = utf8(rng() % 2 ? 0x1f999 : 0x105);
        auto at = ids.begin() + (ids.empty() ? 0 : long(rng() % ids.size()));
        for (auto it = c.rbegin(); it != c.rend(); ++it) at = ids.insert(at, 3 + int32_t((unsigned char)*it));
      }
      std::string ref;
      REQUIRE(sp.Decode(as_int(ids), &ref).ok());
      const std::string got = tok.decode(ids);
      std::ostringstream desc;
      for (auto id : ids) desc << id << ' ';
      INFO(model.filename() << " ids: " << desc.str());
      REQUIRE(got == ref);

      loupe::StreamDecoder stream(tok);
      std::string joined;
      for (auto id : ids) {
        const std::string part = stream.push(id);
        REQUIRE(valid_utf8(part));
        joined += part;
      }
      const std::string rest = stream.flush();
      CHECK(valid_utf8(rest));
      joined += rest;
      REQUIRE(joined == ref);
    }
  }
}

TEST_CASE("tokenizer: streaming decoder on real text never splits a character") {
  LOUPE_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(stories_model().string());  // 512 pieces: byte fallback everywhere
  const std::string text = loupe_test::slurp(loupe_test::shared_dir() / "text/udhr_lit.txt") + " 🦙 日本語 ąčęėįšųūž";
  const auto ids = tok.encode(text, true);
  loupe::StreamDecoder stream(tok);
  std::string joined;
  size_t held = 0;
  for (auto id : ids) {
    const std::string part = stream.push(id);
    REQUIRE(valid_utf8(part));
    held = std::max(held, stream.pending());
    joined += part;
  }
  joined += stream.flush();
  CHECK(held > 0);  // multi-byte characters really were held back
  CHECK(joined == tok.decode(ids));

  // Continuing after a prompt keeps the leading space of the first new piece.
  const Tokenizer llama = Tokenizer::load(llama_model().string());
  const int32_t hello = llama.encode("Hello", false).at(0);
  loupe::StreamDecoder cont(llama, false);
  CHECK(cont.push(hello) == " Hello");
  loupe::StreamDecoder fresh(llama);
  CHECK(fresh.push(llama.bos()) == "");
  CHECK(fresh.push(hello) == "Hello");
  CHECK(fresh.push(hello) == " Hello");
}

TEST_CASE("tokenizer: model variants (user-defined, unused, no byte fallback, other normalizer flags)") {
  LOUPE_REQUIRE_SHARED();
  const auto base = loupe::SentencePieceModel::load(llama_model().string());
  struct Variant {
    const char* name;
    bool user_defined, unused, byte_fallback, remove_extra_ws, dummy_prefix, suffix;
  };
  const Variant variants[] = {
      {"user-defined + unused pieces", true, true, true, false, true, false},
      {"no byte fallback (runs of <unk>)", false, false, false, false, true, false},
      {"remove_extra_whitespaces, user-defined", true, false, true, true, true, false},
      {"no dummy prefix, unused", false, true, true, false, false, false},
      {"whitespace as suffix, no byte fallback", false, false, false, true, true, true},
  };
  for (const auto& v : variants) {
    auto m = base;
    m.file = std::string("variant ") + v.name;
    std::mt19937 pick(7);
    if (v.user_defined) {
      for (const char* p : {"<image>", "ąč", "▁the", "ing", "Hello", "<0x41>x", "日本"}) {
        loupe::SentencePieceModel::Piece up;
        up.piece = p;
        up.type = int32_t(loupe::PieceType::user_defined);
        const int32_t existing = [&] {
          for (size_t i = 0; i < m.pieces.size(); ++i)
            if (m.pieces[i].piece == p) return int32_t(i);
          return int32_t(-1);
        }();
        if (existing >= 0)
          m.pieces[size_t(existing)].type = up.type;
        else
          m.pieces.push_back(up);
      }
    }
    if (v.unused)
      for (auto& p : m.pieces)
        if (p.type == int32_t(loupe::PieceType::normal) && p.piece.size() > 2 && pick() % 20 == 0)
          p.type = int32_t(loupe::PieceType::unused);
    if (!v.byte_fallback)
      for (auto& p : m.pieces)
        if (p.type == int32_t(loupe::PieceType::byte)) p.type = int32_t(loupe::PieceType::control);
    m.trainer.byte_fallback = v.byte_fallback;
    m.normalizer.remove_extra_whitespaces = v.remove_extra_ws;
    m.normalizer.add_dummy_prefix = v.dummy_prefix;
    m.trainer.treat_whitespace_as_suffix = v.suffix;

    const std::string bytes = serialize(m);
    sentencepiece::SentencePieceProcessor sp;
    REQUIRE(sp.LoadFromSerializedProto(bytes).ok());
    const Tokenizer tok = Tokenizer::from_model(loupe::Blob::from_bytes({bytes.begin(), bytes.end()}, m.file));
    std::mt19937 rng(4321);
    for (int i = 0; i < 800; ++i) {
      std::string s = random_text(rng, tok.pieces(), i % 4 == 3);
      if (v.user_defined && i % 3 == 0) s += " <image>ąčing日本 Hello<0x41>x";
      Ids ref;
      REQUIRE(sp.Encode(s, &ref).ok());
      INFO(v.name << ": \"" << show(s) << "\"");
      REQUIRE(as_int(tok.encode(s, false)) == ref);
      std::string ref_text;
      REQUIRE(sp.Decode(ref, &ref_text).ok());
      REQUIRE(tok.decode(as_i32(ref)) == ref_text);
    }
  }
}

#endif  // LOUPE_HAVE_SENTENCEPIECE

TEST_CASE("tokenizer: llama.cpp test vectors (test-tokenizer-0, llama-spm)") {
  LOUPE_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(llama_model().string());
  const auto tests = ggml_vectors();
  CHECK(tests.size() == 46);
  for (const auto& test : tests) {
    const auto& [text, expected] = test;
    INFO("input \"" << show(test.first) << "\"");  // (clang 14: INFO's lambda cannot capture a structured binding)
    CHECK(as_int(tok.encode(text, false)) == expected);  // test-tokenizer-0 adds no BOS
  }
}

TEST_CASE("tokenizer: from_vocab (GGUF-style arrays) tokenizes like the model file") {
  LOUPE_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(llama_model().string());
  const std::string lit = loupe_test::slurp(loupe_test::shared_dir() / "text/udhr_lit.txt");

  // Export is lossless: a tokenizer rebuilt from its own arrays (what a GGUF
  // writer stores: tokens, scores, token_type, special ids, add_space_prefix)
  // encodes and decodes identically.
  const Tokenizer v = Tokenizer::from_vocab(tok.pieces(), tok.scores(), tok.types(), tok.special_ids(),
                                            tok.settings().add_dummy_prefix);
  CHECK(v.settings().byte_fallback);  // detected from the 256 byte pieces
  CHECK(v.bos() == 1);
  CHECK(v.eos() == 2);
  CHECK(v.unk() == 0);
  for (const auto& test : ggml_vectors()) {
    const auto& [text, expected] = test;
    INFO("input \"" << show(test.first) << "\"");
    CHECK(as_int(v.encode(text, false)) == expected);
    const auto ids = v.encode(text, true);
    CHECK(v.decode(ids) == tok.decode(ids));
  }
  CHECK(v.encode(lit, true) == tok.encode(lit, true));
  const Tokenizer again = Tokenizer::from_vocab(tok.pieces(), tok.scores(), tok.types(), tok.special_ids(), tok.settings());
  CHECK(again.encode(lit, true) == tok.encode(lit, true));

  // llama.cpp's converter output for the same tokenizer holds the same arrays.
  GgufVocab g;
  const fs::path gguf = loupe_test::shared_dir() / "tokenizers/ggml-vocab-llama-spm.gguf";
  const std::string why = read_gguf_vocab(gguf, g);
  if (!why.empty()) {
    MESSAGE("skipped the GGUF comparison: " << gguf.string() << " is unreadable (" << why
            << "); the copy in ../shared has its binary bytes replaced by U+FFFD");
    return;
  }
  CHECK(g.model == "llama");
  REQUIRE(g.tokens == tok.pieces());
  REQUIRE(g.scores.size() == tok.size());
  CHECK(std::memcmp(g.scores.data(), tok.scores().data(), g.scores.size() * 4) == 0);
  CHECK(g.types == tok.types());
  CHECK(g.bos == tok.bos());
  CHECK(g.eos == tok.eos());
  CHECK(g.unk == tok.unk());
}

TEST_CASE("tokenizer: malformed files give clear errors naming the file") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = loupe_test::scratch("tokenizer_malformed");
  const std::string good = loupe_test::slurp(llama_model());
  auto write = [&](const std::string& name, const std::string& bytes) {
    const fs::path p = dir / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  };

  for (size_t cut : {size_t(1), size_t(5), size_t(100), good.size() / 2, good.size() - 1}) {
    const std::string path = write("truncated_" + std::to_string(cut) + ".model", good.substr(0, cut));
    const std::string err = error_of([&] { Tokenizer::load(path); });
    INFO("cut at " << cut << ": " << err);
    CHECK(err.find(path) != std::string::npos);
  }
  // Mid-file truncation is reported as such, with the offset.
  {
    const std::string path = write("half.model", good.substr(0, good.size() / 2));
    const std::string err = error_of([&] { Tokenizer::load(path); });
    INFO(err);
    CHECK(err.find("truncated") != std::string::npos);
    CHECK(err.find("offset") != std::string::npos);
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 20; ++i) {
    std::string junk(1 + rng() % 5000, '\0');
    for (auto& c : junk) c = char(rng());
    const std::string path = write("random_" + std::to_string(i) + ".model", junk);
    const std::string err = error_of([&] { Tokenizer::load(path); });
    INFO(err);
    CHECK(err.find(path) != std::string::npos);
  }
  CHECK(error_of([&] { Tokenizer::load(write("empty.model", "")); }).find("empty") != std::string::npos);
  CHECK(error_of([&] { Tokenizer::load((dir / "missing.model").string()); }).find("missing.model") != std::string::npos);

  // A unigram model is refused rather than mis-tokenized.
  auto m = loupe::SentencePieceModel::load(llama_model().string());
  m.trainer.model_type = 1;
  const std::string uni = serialize(m);
  const std::string err = error_of([&] { Tokenizer::from_model(loupe::Blob::from_bytes({uni.begin(), uni.end()}, "uni.model")); });
  CHECK(err.find("uni.model") != std::string::npos);
  CHECK(err.find("UNIGRAM") != std::string::npos);

  // Vocabulary checks.
  CHECK_THROWS_AS(Tokenizer::from_vocab({"<unk>", "a", "a"}, {0, 0, 0}, {2, 1, 1}, {}, true), loupe::Error);
  CHECK_THROWS_AS(Tokenizer::from_vocab({"<unk>", "a"}, {0}, {2, 1}, {}, true), loupe::Error);
  CHECK_THROWS_AS(Tokenizer::from_vocab({"a", "b"}, {0, 0}, {1, 1}, {}, true), loupe::Error);  // no unknown
}
