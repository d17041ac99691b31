// Tokenizer: SentencePiece BPE (LLaMA's tokenizer.model or a GGUF vocabulary),
// giving the same ids as libsentencepiece's EncodeAsIds and the same text as
// its DecodeIds. StreamDecoder: decoding one generated id at a time without
// ever splitting a UTF-8 character.
//
// What "the same" means, step by step (sentencepiece 0.1.97):
//  * normalize: text is copied one UTF-8 character at a time (a malformed byte
//    becomes U+FFFD), ' ' becomes U+2581 "▁", and a "▁" is put in front
//    (add_dummy_prefix). Only the "identity" normalizer is implemented; models
//    with a precompiled charsmap (nmt_nfkc...) are refused when loaded.
//  * split into characters; user-defined pieces are matched first (longest)
//    and are never merged with neighbours.
//  * BPE: repeatedly merge the adjacent pair whose concatenation is a piece
//    with the highest score, the leftmost one on ties.
//  * a final symbol that is not a piece is <unk>: with byte_fallback it becomes
//    one <0xNN> piece per byte instead; without, a run of unknowns is one <unk>.
//  * decode: "▁" becomes ' ', the first piece loses its leading "▁", control
//    pieces print nothing, <unk> prints " ⁇ ", runs of byte pieces are joined
//    into UTF-8 with each malformed byte shown as U+FFFD.
// Standard C++ only (no OS calls), so it also runs under Emscripten.
#pragma once
#include <algorithm>
#include <cstdint>
#include <iterator>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../io/file.hpp"
#include "sentencepiece_model.hpp"

namespace loupe {

// Special token ids; -1 means the vocabulary has none.
struct SpecialIds {
  int32_t bos = -1;
  int32_t eos = -1;
  int32_t unk = -1;
  int32_t pad = -1;
};

// How text is normalized and how the model is meant to be used. Defaults are
// LLaMA's (and llama.cpp's for an SPM vocabulary).
struct TokenizerSettings {
  bool add_dummy_prefix = true;        // GGUF tokenizer.ggml.add_space_prefix
  bool remove_extra_whitespaces = false;
  bool escape_whitespaces = true;      // ' ' -> U+2581
  bool treat_whitespace_as_suffix = false;
  bool byte_fallback = false;          // unknown characters -> <0xNN> pieces
  bool add_bos = true;                 // what the model expects (GGUF tokenizer.ggml.add_bos_token)
  bool add_eos = false;                // GGUF tokenizer.ggml.add_eos_token
  std::string unk_surface = " \xE2\x81\x87 ";  // decode's text for <unk>
};

namespace detail {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";        // U+2581
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";    // U+FFFD

// Length of the well-formed UTF-8 character at p[0..n) (Unicode table 3-7:
// no overlongs, no surrogates, nothing above U+10FFFF), 0 if the bytes so far
// are a valid start but more are needed, -1 if p[0] cannot start one.
// Sentencepiece's DecodeUTF8 accepts exactly these sequences.
inline int utf8_char(const uint8_t* p, size_t n) {
  const uint8_t b = p[0];
  if (b < 0x80) return 1;
  int need;
  uint8_t lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (b >= 0xc2 && b <= 0xdf) need = 2;
  else if (b == 0xe0) need = 3, lo = 0xa0;
  else if (b == 0xed) need = 3, hi = 0x9f;
  else if (b >= 0xe1 && b <= 0xef) need = 3;
  else if (b == 0xf0) need = 4, lo = 0x90;
  else if (b == 0xf4) need = 4, hi = 0x8f;
  else if (b >= 0xf1 && b <= 0xf3) need = 4;
  else return -1;
  for (int i = 1; i < need; ++i) {
    if (size_t(i) >= n) return 0;
    const uint8_t c = p[i];
    if (i == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xbf)) return -1;
  }
  return need;
}

// Appends the complete characters of bytes[0..) to out and removes them; a
// malformed byte becomes U+FFFD. When `final`, a truncated character at the end
// is malformed too (one U+FFFD per byte, as sentencepiece does); otherwise it
// stays in `bytes` until more arrive.
inline void drain_utf8(std::string& bytes, std::string& out, bool final) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t i = 0;
  while (i < bytes.size()) {
    const int r = utf8_char(p + i, bytes.size() - i);
    if (r > 0) {
      out.append(bytes, i, size_t(r));
      i += size_t(r);
    } else if (r < 0 || final) {
      out += kReplacementChar;
      i += 1;
    } else {
      break;
    }
  }
  bytes.erase(0, i);
}

// Byte length of the UTF-8 character starting with b, judged by its first byte
// only (sentencepiece's OneCharLen).
inline size_t one_char_len(uint8_t b) { return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[b >> 4]; }

// Open-addressing hash table: piece string -> id, the strings themselves living
// in the tokenizer's piece vector (so copying a Tokenizer stays valid).
struct PieceIndex {
  std::vector<int32_t> slots;  // -1 = empty
  size_t mask = 0;

  static uint64_t hash(std::string_view s) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h ^ (h >> 29);
  }
  void reset(size_t count) {
    size_t cap = 16;
    while (cap < count * 2) cap *= 2;
    slots.assign(cap, -1);
    mask = cap - 1;
  }
  // false if the string is already there
  bool insert(const std::vector<std::string>& pieces, int32_t id) {
    size_t i = hash(pieces[size_t(id)]) & mask;
    while (slots[i] >= 0) {
      if (pieces[size_t(slots[i])] == pieces[size_t(id)]) return false;
      i = (i + 1) & mask;
    }
    slots[i] = id;
    return true;
  }
  int32_t find(const std::vector<std::string>& pieces, std::string_view s) const {
    if (slots.empty()) return -1;
    size_t i = hash(s) & mask;
    while (slots[i] >= 0) {
      if (pieces[size_t(slots[i])] == s) return slots[i];
      i = (i + 1) & mask;
    }
    return -1;
  }
};

}  // namespace detail

class Tokenizer {
 public:
  Tokenizer() = default;

  // A sentencepiece tokenizer.model file.
  static Tokenizer load(const std::string& path) { return from_model(SentencePieceModel::load(path)); }
  // The bytes of a tokenizer.model (e.g. fetched in the browser).
  static Tokenizer from_model(const Blob& blob) { return from_model(SentencePieceModel::parse(blob)); }

  static Tokenizer from_model(const SentencePieceModel& m) {
    const auto& t = m.trainer;
    const auto& n = m.normalizer;
    if (t.model_type != int32_t(SentencePieceModelType::bpe))
      fail(m.file, ": sentencepiece model_type is ", model_type_name(t.model_type), " (", t.model_type,
           "); only BPE (2) is implemented");
    if (!n.precompiled_charsmap.empty())
      fail(m.file, ": normalizer \"", n.name, "\" has a precompiled charsmap (", n.precompiled_charsmap.size(),
           " bytes); only the \"identity\" normalizer is implemented");
    if (m.has_denormalizer && !m.denormalizer.precompiled_charsmap.empty())
      fail(m.file, ": the model has a denormalizer (\"", m.denormalizer.name, "\"), which is not implemented");

    Tokenizer tok;
    tok.name_ = m.file;
    tok.pieces_.reserve(m.pieces.size());
    tok.scores_.reserve(m.pieces.size());
    tok.types_.reserve(m.pieces.size());
    int32_t unk = -1;
    for (size_t i = 0; i < m.pieces.size(); ++i) {
      const auto& p = m.pieces[i];
      tok.pieces_.push_back(p.piece);
      tok.scores_.push_back(p.score);
      tok.types_.push_back(p.type);
      if (p.type == int32_t(PieceType::unknown)) {
        if (unk >= 0) fail(m.file, ": two UNKNOWN pieces (ids ", unk, " and ", i, "); sentencepiece allows one");
        unk = int32_t(i);
      }
      if (p.type == int32_t(PieceType::byte) && !t.byte_fallback)
        fail(m.file, ": piece ", i, " \"", p.piece, "\" is a BYTE piece although byte_fallback is false");
    }
    if (unk < 0) fail(m.file, ": no UNKNOWN piece (<unk>) in the model");

    auto& s = tok.settings_;
    s.add_dummy_prefix = n.add_dummy_prefix;
    s.remove_extra_whitespaces = n.remove_extra_whitespaces;
    s.escape_whitespaces = n.escape_whitespaces;
    s.treat_whitespace_as_suffix = t.treat_whitespace_as_suffix;
    s.byte_fallback = t.byte_fallback;
    s.unk_surface = t.unk_surface;
    s.add_bos = true;  // sentencepiece itself adds nothing; LLaMA is trained with BOS
    s.add_eos = false;
    tok.index();
    // Like sentencepiece's bos_id(): the id of bos_piece if it is a control piece.
    auto control_id = [&](const std::string& piece) {
      const int32_t id = tok.piece_id(piece);
      return id >= 0 && tok.types_[size_t(id)] == int32_t(PieceType::control) ? id : -1;
    };
    tok.ids_.unk = unk;
    tok.ids_.bos = control_id(t.bos_piece);
    tok.ids_.eos = control_id(t.eos_piece);
    tok.ids_.pad = control_id(t.pad_piece);
    return tok;
  }

  // A vocabulary as GGUF stores it (tokenizer.ggml.tokens / scores / token_type
  // and the special ids). byte_fallback is on when all 256 <0xNN> byte pieces
  // are there; if ids.unk is -1 the UNKNOWN-typed piece is used.
  static Tokenizer from_vocab(std::vector<std::string> pieces, std::vector<float> scores, std::vector<int32_t> types,
                              SpecialIds ids, bool add_dummy_prefix) {
    TokenizerSettings s;
    s.add_dummy_prefix = add_dummy_prefix;
    return from_vocab(std::move(pieces), std::move(scores), std::move(types), ids, s, "vocabulary", true);
  }

  // Full control; `name` appears in error messages. With detect_byte_fallback,
  // settings.byte_fallback is replaced by "all 256 byte pieces are present".
  static Tokenizer from_vocab(std::vector<std::string> pieces, std::vector<float> scores, std::vector<int32_t> types,
                              SpecialIds ids, TokenizerSettings settings, std::string name = "vocabulary",
                              bool detect_byte_fallback = false) {
    if (pieces.empty()) fail(name, ": empty vocabulary");
    if (scores.size() != pieces.size() || types.size() != pieces.size())
      fail(name, ": vocabulary arrays differ in length: ", pieces.size(), " pieces, ", scores.size(), " scores, ",
           types.size(), " types");
    Tokenizer tok;
    tok.name_ = std::move(name);
    tok.pieces_ = std::move(pieces);
    tok.scores_ = std::move(scores);
    tok.types_ = std::move(types);
    tok.settings_ = std::move(settings);
    for (size_t i = 0; i < tok.types_.size(); ++i)
      if (tok.types_[i] < 1 || tok.types_[i] > 6)
        fail(tok.name_, ": token ", i, " has type ", tok.types_[i], ", expected 1..6");
    if (detect_byte_fallback) {
      size_t nbytes = 0;
      for (size_t i = 0; i < tok.types_.size(); ++i) nbytes += tok.types_[i] == int32_t(PieceType::byte);
      tok.settings_.byte_fallback = nbytes >= 256;
    }
    const int32_t n = int32_t(tok.pieces_.size());
    auto check = [&](int32_t id, const char* what) {
      if (id < -1 || id >= n) fail(tok.name_, ": ", what, " id ", id, " is outside the vocabulary (", n, " pieces)");
    };
    check(ids.bos, "BOS");
    check(ids.eos, "EOS");
    check(ids.unk, "UNK");
    check(ids.pad, "PAD");
    if (ids.unk < 0)
      for (int32_t i = 0; i < n; ++i)
        if (tok.types_[size_t(i)] == int32_t(PieceType::unknown)) {
          ids.unk = i;
          break;
        }
    if (ids.unk < 0) fail(tok.name_, ": no unknown token (no UNK id and no UNKNOWN-typed piece)");
    tok.ids_ = ids;
    tok.index();
    return tok;
  }

  // Token ids of `text`, with BOS first when add_bos.
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const {
    if (pieces_.empty()) fail("encode on an empty tokenizer (nothing was loaded)");
    std::vector<int32_t> out;
    if (add_bos) {
      if (ids_.bos < 0) fail(name_, ": encode with BOS asked, but the vocabulary has no BOS token");
      out.push_back(ids_.bos);
    }
    const std::string norm = normalize(text);
    encode_normalized(norm, out);
    return out;
  }

  // The text of `ids`, as sentencepiece's DecodeIds.
  std::string decode(const std::vector<int32_t>& ids) const {
    std::string text, bytes;
    bool is_bos_ws = true, bos_ws_seen = false;
    for (int32_t id : ids) {
      check_id(id);
      if (types_[size_t(id)] == int32_t(PieceType::byte)) {
        bytes.push_back(char(byte_of_[size_t(id)]));
        continue;
      }
      detail::drain_utf8(bytes, text, true);
      if (bos_ws_seen || !text.empty()) is_bos_ws = false;
      bos_ws_seen = append_piece_text(id, is_bos_ws, text);
    }
    detail::drain_utf8(bytes, text, true);
    return text;
  }

  // The text normalize-and-escape step produces ("▁Hello▁world").
  std::string normalize(std::string_view input) const {
    std::string out;
    if (input.empty()) return out;
    const auto& s = settings_;
    if (s.remove_extra_whitespaces) {
      while (!input.empty()) {
        auto [piece, used] = normalize_prefix(input);
        if (piece != " ") break;
        input.remove_prefix(used);
      }
      if (input.empty()) return out;
    }
    out.reserve(input.size() * 3 / 2 + 4);
    auto add_ws = [&] { out += s.escape_whitespaces ? detail::kSpaceSymbol : std::string_view(" "); };
    if (!s.treat_whitespace_as_suffix && s.add_dummy_prefix) add_ws();
    bool prev_space = s.remove_extra_whitespaces;
    while (!input.empty()) {
      auto [piece, used] = normalize_prefix(input);
      while (prev_space && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
      if (!piece.empty()) {
        for (char c : piece) {
          if (c == ' ' && s.escape_whitespaces)
            out += detail::kSpaceSymbol;
          else
            out += c;
        }
        prev_space = piece.back() == ' ';
      }
      input.remove_prefix(used);
      if (!s.remove_extra_whitespaces) prev_space = false;
    }
    if (s.remove_extra_whitespaces) {
      const std::string_view sp = s.escape_whitespaces ? detail::kSpaceSymbol : std::string_view(" ");
      while (out.size() >= sp.size() && std::string_view(out).substr(out.size() - sp.size()) == sp)
        out.resize(out.size() - sp.size());
    }
    if (s.treat_whitespace_as_suffix && s.add_dummy_prefix) add_ws();
    return out;
  }

  const std::string& piece(int32_t id) const {
    check_id(id);
    return pieces_[size_t(id)];
  }
  // Id of a piece string, or -1 (control/byte/unknown pieces first, as sentencepiece).
  int32_t piece_id(std::string_view s) const {
    const int32_t r = reserved_.find(pieces_, s);
    return r >= 0 ? r : normal_.find(pieces_, s);
  }
  float score(int32_t id) const {
    check_id(id);
    return scores_[size_t(id)];
  }
  PieceType type(int32_t id) const {
    check_id(id);
    return PieceType(types_[size_t(id)]);
  }
  bool is_control(int32_t id) const { return type(id) == PieceType::control; }
  bool is_byte(int32_t id) const { return type(id) == PieceType::byte; }
  // The byte a <0xNN> piece stands for, or -1.
  int byte_value(int32_t id) const {
    check_id(id);
    return types_[size_t(id)] == int32_t(PieceType::byte) ? byte_of_[size_t(id)] : -1;
  }

  size_t size() const { return pieces_.size(); }
  int32_t bos() const { return ids_.bos; }
  int32_t eos() const { return ids_.eos; }
  int32_t unk() const { return ids_.unk; }
  int32_t pad() const { return ids_.pad; }
  const SpecialIds& special_ids() const { return ids_; }
  const TokenizerSettings& settings() const { return settings_; }
  const std::string& name() const { return name_; }

  // The vocabulary, exactly as loaded (what a GGUF writer stores).
  const std::vector<std::string>& pieces() const { return pieces_; }
  const std::vector<float>& scores() const { return scores_; }
  const std::vector<int32_t>& types() const { return types_; }

  // Appends the text of non-byte piece `id` to out following decode's rules;
  // returns whether a leading "▁" was consumed as the dummy prefix.
  bool append_piece_text(int32_t id, bool is_bos_ws, std::string& out) const {
    const int32_t t = types_[size_t(id)];
    if (t == int32_t(PieceType::control)) return false;
    if (t == int32_t(PieceType::unknown)) {
      out += settings_.unk_surface;
      return false;
    }
    std::string_view p = pieces_[size_t(id)];
    bool has_bos_ws = false;
    if (is_bos_ws && (settings_.add_dummy_prefix || settings_.remove_extra_whitespaces)) {
      if (p.substr(0, detail::kSpaceSymbol.size()) == detail::kSpaceSymbol) {
        p.remove_prefix(detail::kSpaceSymbol.size());
        has_bos_ws = true;
      }
      // removing extra whitespace strips every leading space, not just one
      if (settings_.remove_extra_whitespaces) has_bos_ws = false;
    }
    for (size_t i = 0; i < p.size();) {
      if (p.compare(i, detail::kSpaceSymbol.size(), detail::kSpaceSymbol) == 0) {
        out += ' ';
        i += detail::kSpaceSymbol.size();
      } else {
        out += p[i++];
      }
    }
    return has_bos_ws;
  }

  void check_id(int32_t id) const {
    if (id < 0 || size_t(id) >= pieces_.size())
      fail(name_, ": token id ", id, " is outside the vocabulary (", pieces_.size(), " pieces)");
  }

 private:
  std::string name_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int32_t> types_;
  SpecialIds ids_;
  TokenizerSettings settings_;

  // sentencepiece keeps two maps: pieces that BPE may produce (NORMAL,
  // USER_DEFINED, UNUSED) and the reserved ones (UNKNOWN, CONTROL, BYTE).
  detail::PieceIndex normal_, reserved_;
  std::vector<int16_t> byte_of_;      // id -> byte of a <0xNN> piece
  int32_t byte_id_[256] = {};         // byte -> id of its <0xNN> piece
  std::vector<size_t> user_lengths_;  // distinct lengths of user-defined pieces, longest first
  bool has_unused_ = false;

  static int parse_byte_piece(std::string_view p) {
    auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
    const int hi = hex(p[3]), lo = hex(p[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }

  void index() {
    const size_t n = pieces_.size();
    if (n > size_t(INT32_MAX)) fail(name_, ": too many pieces (", n, ")");
    normal_.reset(n);
    size_t nres = 0;
    for (size_t i = 0; i < n; ++i) nres += !is_mergeable(types_[i]);
    reserved_.reset(nres);
    byte_of_.assign(n, -1);
    std::fill(std::begin(byte_id_), std::end(byte_id_), -1);
    user_lengths_.clear();
    has_unused_ = false;
    for (size_t i = 0; i < n; ++i) {
      const std::string& p = pieces_[i];
      const int32_t t = types_[i];
      if (p.empty()) fail(name_, ": piece ", i, " is empty");
      if (p.find('\0') != std::string::npos) fail(name_, ": piece ", i, " contains a NUL byte");
      auto& map = is_mergeable(t) ? normal_ : reserved_;
      if (!map.insert(pieces_, int32_t(i)))
        fail(name_, ": piece ", i, " \"", p, "\" is already defined (id ", map.find(pieces_, p), ")");
      if (t == int32_t(PieceType::byte)) {
        const int b = parse_byte_piece(p);
        if (b < 0) fail(name_, ": BYTE piece ", i, " is \"", p, "\", expected <0xNN>");
        byte_of_[i] = int16_t(b);
        byte_id_[b] = int32_t(i);
      }
      if (t == int32_t(PieceType::user_defined) &&
          std::find(user_lengths_.begin(), user_lengths_.end(), p.size()) == user_lengths_.end())
        user_lengths_.push_back(p.size());
      if (t == int32_t(PieceType::unused)) has_unused_ = true;
    }
    std::sort(user_lengths_.rbegin(), user_lengths_.rend());
    if (settings_.byte_fallback)
      for (int b = 0; b < 256; ++b)
        if (byte_id_[b] < 0)
          fail(name_, ": byte_fallback is on but there is no byte piece <0x", "0123456789ABCDEF"[b >> 4],
               "0123456789ABCDEF"[b & 15], ">");
  }

  static bool is_mergeable(int32_t t) {
    return t == int32_t(PieceType::normal) || t == int32_t(PieceType::user_defined) ||
           t == int32_t(PieceType::unused);
  }

  // Length of the longest user-defined piece at the start of s, or 0.
  size_t match_user_defined(std::string_view s) const {
    for (size_t len : user_lengths_) {
      if (len > s.size()) continue;
      const int32_t id = normal_.find(pieces_, s.substr(0, len));
      if (id >= 0 && types_[size_t(id)] == int32_t(PieceType::user_defined)) return len;
    }
    return 0;
  }

  // One normalization step: a user-defined piece, else one character (a
  // malformed byte becomes U+FFFD). Returns the text and the bytes consumed.
  std::pair<std::string_view, size_t> normalize_prefix(std::string_view in) const {
    if (!user_lengths_.empty())
      if (size_t len = match_user_defined(in)) return {in.substr(0, len), len};
    const int r = detail::utf8_char(reinterpret_cast<const uint8_t*>(in.data()), in.size());
    if (r > 0) return {in.substr(0, size_t(r)), size_t(r)};
    return {detail::kReplacementChar, 1};
  }

  // BPE over normalized text (sentencepiece's bpe::Model::Encode), appending ids.
  void encode_normalized(const std::string& norm, std::vector<int32_t>& out) const {
    if (norm.empty()) return;
    struct Symbol {
      int32_t prev, next;
      uint32_t begin, len;  // byte range in norm; len 0 = merged away
      bool freeze;          // user-defined piece: never merged
    };
    struct Pair {
      float score;
      int32_t left, right;
      uint32_t len;  // length of the merged piece when queued
    };
    struct Lower {
      bool operator()(const Pair& a, const Pair& b) const {
        return a.score < b.score || (a.score == b.score && a.left > b.left);
      }
    };
    if (norm.size() > UINT32_MAX / 2) fail(name_, ": text too long to tokenize (", norm.size(), " bytes)");

    std::vector<Symbol> sym;
    sym.reserve(norm.size());
    const std::string_view text(norm);
    for (size_t pos = 0; pos < text.size();) {
      size_t len = user_lengths_.empty() ? 0 : match_user_defined(text.substr(pos));
      const bool freeze = len > 0;
      if (!freeze) len = std::min(detail::one_char_len(uint8_t(text[pos])), text.size() - pos);
      const int32_t i = int32_t(sym.size());
      sym.push_back({i - 1, pos + len < text.size() ? i + 1 : -1, uint32_t(pos), uint32_t(len), freeze});
      pos += len;
    }

    std::vector<Pair> heap_storage;
    heap_storage.reserve(sym.size() * 2);
    std::priority_queue<Pair, std::vector<Pair>, Lower> agenda(Lower{}, std::move(heap_storage));
    // For UNUSED pieces: how a merged piece was built, to split it back (sentencepiece's rev_merge).
    std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;

    auto add_pair = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0 || sym[size_t(l)].freeze || sym[size_t(r)].freeze) return;
      const Symbol& a = sym[size_t(l)];
      const Symbol& b = sym[size_t(r)];
      const std::string_view merged = text.substr(a.begin, a.len + b.len);
      const int32_t id = normal_.find(pieces_, merged);
      if (id < 0) return;
      agenda.push({scores_[size_t(id)], l, r, a.len + b.len});
      if (types_[size_t(id)] == int32_t(PieceType::unused))
        rev_merge[merged] = {text.substr(a.begin, a.len), text.substr(b.begin, b.len)};
    };
    for (size_t i = 1; i < sym.size(); ++i) add_pair(int32_t(i - 1), int32_t(i));

    while (!agenda.empty()) {
      const Pair top = agenda.top();
      agenda.pop();
      Symbol& a = sym[size_t(top.left)];
      Symbol& b = sym[size_t(top.right)];
      // Stale: one side was merged away or has grown since this pair was queued.
      if (a.len == 0 || b.len == 0 || a.len + b.len != top.len) continue;
      a.len += b.len;
      a.next = b.next;
      if (b.next >= 0) sym[size_t(b.next)].prev = top.left;
      b.len = 0;
      add_pair(a.prev, top.left);
      add_pair(top.left, a.next);
    }

    bool prev_unk = false;
    auto emit = [&](std::string_view w, auto&& self) -> void {
      int32_t id = piece_id(w);  // reserved pieces first, as sentencepiece's PieceToId
      if (id >= 0 && has_unused_ && types_[size_t(id)] == int32_t(PieceType::unused)) {
        auto it = rev_merge.find(w);
        if (it != rev_merge.end()) {
          self(it->second.first, self);
          self(it->second.second, self);
          return;
        }
      }
      const bool is_unk = id < 0 || types_[size_t(id)] == int32_t(PieceType::unknown);
      if (id < 0) id = ids_.unk;
      if (is_unk && settings_.byte_fallback) {
        for (unsigned char c : w) out.push_back(byte_id_[c]);
      } else if (!(is_unk && prev_unk)) {  // a run of unknowns is one <unk>
        out.push_back(id);
      }
      prev_unk = is_unk;
    };
    for (int32_t i = 0; i >= 0; i = sym[size_t(i)].next)
      emit(text.substr(sym[size_t(i)].begin, sym[size_t(i)].len), emit);
  }
};

// Decodes ids one at a time, e.g. while generating. Each push returns the text
// that became final with that id: never part of a UTF-8 character (byte pieces
// are held until their character is complete; malformed bytes become U+FFFD
// exactly as decode() does). All pushes followed by flush() give decode(ids).
//
// A fresh decoder treats the first piece as the start of the text and drops its
// leading space like decode(); pass at_start = false when continuing after a
// prompt whose text was already shown, so that the space is kept.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool at_start = true) : tok_(&tok), is_bos_ws_(at_start) {}

  std::string push(int32_t id) {
    tok_->check_id(id);
    std::string out;
    const int b = tok_->byte_value(id);
    if (b >= 0) {
      pending_.push_back(char(b));
      any_text_ = true;  // a byte run always prints something
      detail::drain_utf8(pending_, out, false);
      return out;
    }
    detail::drain_utf8(pending_, out, true);
    if (bos_ws_seen_ || any_text_) is_bos_ws_ = false;
    bos_ws_seen_ = tok_->append_piece_text(id, is_bos_ws_, out);
    if (!out.empty()) any_text_ = true;
    return out;
  }

  // Whatever is still held (an unfinished UTF-8 character, as U+FFFD).
  std::string flush() {
    std::string out;
    detail::drain_utf8(pending_, out, true);
    return out;
  }

  // Bytes waiting for the rest of their character.
  size_t pending() const { return pending_.size(); }

 private:
  const Tokenizer* tok_;
  std::string pending_;
  bool is_bos_ws_;
  bool bos_ws_seen_ = false;
  bool any_text_ = false;
};

}  // namespace loupe
