// SentencePieceModel: the contents of a sentencepiece `tokenizer.model` (a
// serialized `ModelProto`), read straight from the protobuf wire format so the
// engine needs neither libprotobuf nor libsentencepiece (and builds for WASM).
//
// Only the fields that change tokenization are kept; everything else (training
// corpus settings, self-test data, extensions) is skipped by wire type. Field
// numbers are those of sentencepiece_model.proto:
//   ModelProto     { pieces = 1; trainer_spec = 2; normalizer_spec = 3;
//                    self_test_data = 4; denormalizer_spec = 5 }
//   SentencePiece  { piece = 1; score = 2 (float); type = 3 (enum) }
//   TrainerSpec    { model_type = 3; vocab_size = 4; treat_whitespace_as_suffix = 24;
//                    byte_fallback = 35; unk_id..pad_id = 40..43; unk_surface = 44;
//                    unk_piece..pad_piece = 45..48 }
//   NormalizerSpec { name = 1; precompiled_charsmap = 2; add_dummy_prefix = 3;
//                    remove_extra_whitespaces = 4; escape_whitespaces = 5 }
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../io/file.hpp"

namespace loupe {

// SentencePiece.Type; GGUF's tokenizer.ggml.token_type uses the same numbers.
enum class PieceType : int32_t {
  normal = 1,
  unknown = 2,
  control = 3,
  user_defined = 4,
  unused = 5,
  byte = 6,
};

// TrainerSpec.ModelType.
enum class SentencePieceModelType : int32_t { unigram = 1, bpe = 2, word = 3, chr = 4 };

inline const char* model_type_name(int32_t t) {
  switch (t) {
    case 1: return "UNIGRAM";
    case 2: return "BPE";
    case 3: return "WORD";
    case 4: return "CHAR";
    default: return "unknown";
  }
}

struct SentencePieceModel {
  struct Piece {
    std::string piece;
    float score = 0.0f;
    int32_t type = int32_t(PieceType::normal);  // proto default NORMAL
  };
  // Defaults are the proto defaults, which apply when a field is absent.
  struct Trainer {
    int32_t model_type = int32_t(SentencePieceModelType::unigram);
    int32_t vocab_size = 8000;
    bool byte_fallback = false;
    bool treat_whitespace_as_suffix = false;
    int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
    // sentencepiece falls back to these when the stored piece is empty.
    std::string unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
    std::string unk_surface = " \xE2\x81\x87 ";  // " ⁇ ", what decode prints for <unk>
  };
  struct Normalizer {
    std::string name;
    std::string precompiled_charsmap;  // empty for "identity"
    bool add_dummy_prefix = true;
    bool remove_extra_whitespaces = true;
    bool escape_whitespaces = true;
  };

  std::string file;  // where it came from, for messages
  std::vector<Piece> pieces;
  Trainer trainer;
  Normalizer normalizer;
  bool has_denormalizer = false;
  Normalizer denormalizer;

  static SentencePieceModel parse(const Blob& blob);
  static SentencePieceModel load(const std::string& path) { return parse(Blob::open(path)); }
};

namespace detail {

// Cursor over one protobuf message [pos, end) inside a blob. Every read is
// checked against the message end, so nothing past it (or past the file) is
// ever touched; errors name the file, the offset and the field being read.
struct ProtoCursor {
  enum Wire : uint32_t { varint_wire = 0, fixed64_wire = 1, len_wire = 2, fixed32_wire = 5 };

  const Blob& blob;
  size_t pos;
  size_t end;
  const char* msg;  // message name for errors, e.g. "TrainerSpec"

  bool done() const { return pos >= end; }

  uint64_t varint(const char* what) {
    const size_t start = pos;
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos >= end)
        fail(blob.name, ": truncated at offset ", pos, ": varint for ", msg, ".", what, " (started at offset ", start,
             ") runs past the end of its message at offset ", end);
      const uint8_t b = blob.data[pos++];
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail(blob.name, ": offset ", start, ": varint for ", msg, ".", what, " is longer than 10 bytes (corrupt protobuf)");
  }

  uint32_t fixed32(const char* what) {
    if (end - pos < 4)
      fail(blob.name, ": truncated at offset ", pos, ": ", msg, ".", what, " needs 4 bytes, ", end - pos,
           " left in its message");
    uint32_t v = uint32_t(blob.data[pos]) | uint32_t(blob.data[pos + 1]) << 8 | uint32_t(blob.data[pos + 2]) << 16 |
                 uint32_t(blob.data[pos + 3]) << 24;
    pos += 4;
    return v;
  }

  // A length-delimited field: returns [begin, end) of its payload.
  std::pair<size_t, size_t> bytes(const char* what) {
    const size_t at = pos;
    const uint64_t n = varint(what);
    if (n > end - pos)
      fail(blob.name, ": truncated at offset ", at, ": ", msg, ".", what, " has length ", n, " but only ", end - pos,
           " bytes are left in its message");
    std::pair<size_t, size_t> r{pos, pos + size_t(n)};
    pos += size_t(n);
    return r;
  }

  std::string string(const char* what) {
    auto [b, e] = bytes(what);
    return std::string(reinterpret_cast<const char*>(blob.data + b), e - b);
  }

  struct Key {
    uint32_t field;
    uint32_t wire;
    size_t offset;
  };
  Key key() {
    const size_t at = pos;
    const uint64_t k = varint("field key");
    const uint64_t field = k >> 3;
    if (field == 0 || field > 0x1fffffff)
      fail(blob.name, ": offset ", at, ": invalid field number ", field, " in ", msg, " (not a protobuf / corrupt file)");
    return {uint32_t(field), uint32_t(k & 7), at};
  }

  void expect(const Key& k, uint32_t wire, const char* what) const {
    if (k.wire != wire)
      fail(blob.name, ": offset ", k.offset, ": ", msg, ".", what, " (field ", k.field, ") has wire type ", k.wire,
           ", expected ", wire, " (corrupt file or not a sentencepiece model)");
  }

  void skip(const Key& k) {
    switch (k.wire) {
      case varint_wire: varint("unknown field"); break;
      case fixed64_wire:
        if (end - pos < 8)
          fail(blob.name, ": truncated at offset ", pos, ": 8-byte field ", k.field, " of ", msg, " runs past its end");
        pos += 8;
        break;
      case len_wire: bytes("unknown field"); break;
      case fixed32_wire: fixed32("unknown field"); break;
      default:
        fail(blob.name, ": offset ", k.offset, ": field ", k.field, " of ", msg, " has wire type ", k.wire,
             " (groups or invalid), which sentencepiece models never use: corrupt file or not a sentencepiece model");
    }
  }

  ProtoCursor sub(std::pair<size_t, size_t> r, const char* name) const { return ProtoCursor{blob, r.first, r.second, name}; }

  // int32 / enum fields are varints; negative values are sign-extended to 64 bits.
  int32_t int32(const Key& k, const char* what) {
    expect(k, varint_wire, what);
    return int32_t(uint32_t(varint(what)));
  }
  bool boolean(const Key& k, const char* what) {
    expect(k, varint_wire, what);
    return varint(what) != 0;
  }
  float float32(const Key& k, const char* what) {
    expect(k, fixed32_wire, what);
    const uint32_t u = fixed32(what);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  std::string str(const Key& k, const char* what) {
    expect(k, len_wire, what);
    return string(what);
  }
};

inline void parse_normalizer(ProtoCursor c, SentencePieceModel::Normalizer& n) {
  while (!c.done()) {
    const auto k = c.key();
    switch (k.field) {
      case 1: n.name = c.str(k, "name"); break;
      case 2: n.precompiled_charsmap = c.str(k, "precompiled_charsmap"); break;
      case 3: n.add_dummy_prefix = c.boolean(k, "add_dummy_prefix"); break;
      case 4: n.remove_extra_whitespaces = c.boolean(k, "remove_extra_whitespaces"); break;
      case 5: n.escape_whitespaces = c.boolean(k, "escape_whitespaces"); break;
      default: c.skip(k);
    }
  }
}

inline void parse_trainer(ProtoCursor c, SentencePieceModel::Trainer& t) {
  auto piece_or_default = [](std::string s, std::string& dst) {
    if (!s.empty()) dst = std::move(s);
  };
  while (!c.done()) {
    const auto k = c.key();
    switch (k.field) {
      case 3: t.model_type = c.int32(k, "model_type"); break;
      case 4: t.vocab_size = c.int32(k, "vocab_size"); break;
      case 24: t.treat_whitespace_as_suffix = c.boolean(k, "treat_whitespace_as_suffix"); break;
      case 35: t.byte_fallback = c.boolean(k, "byte_fallback"); break;
      case 40: t.unk_id = c.int32(k, "unk_id"); break;
      case 41: t.bos_id = c.int32(k, "bos_id"); break;
      case 42: t.eos_id = c.int32(k, "eos_id"); break;
      case 43: t.pad_id = c.int32(k, "pad_id"); break;
      case 44: t.unk_surface = c.str(k, "unk_surface"); break;
      case 45: piece_or_default(c.str(k, "unk_piece"), t.unk_piece); break;
      case 46: piece_or_default(c.str(k, "bos_piece"), t.bos_piece); break;
      case 47: piece_or_default(c.str(k, "eos_piece"), t.eos_piece); break;
      case 48: piece_or_default(c.str(k, "pad_piece"), t.pad_piece); break;
      default: c.skip(k);
    }
  }
}

inline SentencePieceModel::Piece parse_piece(ProtoCursor c) {
  SentencePieceModel::Piece p;
  while (!c.done()) {
    const auto k = c.key();
    switch (k.field) {
      case 1: p.piece = c.str(k, "piece"); break;
      case 2: p.score = c.float32(k, "score"); break;
      case 3: p.type = c.int32(k, "type"); break;
      default: c.skip(k);
    }
  }
  return p;
}

}  // namespace detail

inline SentencePieceModel SentencePieceModel::parse(const Blob& blob) {
  SentencePieceModel m;
  m.file = blob.name;
  if (blob.size == 0) fail(blob.name, ": empty file, expected a sentencepiece model (ModelProto)");
  detail::ProtoCursor c{blob, 0, blob.size, "ModelProto"};
  while (!c.done()) {
    const auto k = c.key();
    switch (k.field) {
      case 1: {
        c.expect(k, c.len_wire, "pieces");
        const size_t at = c.pos;
        auto p = detail::parse_piece(c.sub(c.bytes("pieces"), "SentencePiece"));
        if (p.type < 1 || p.type > 6)
          fail(blob.name, ": offset ", at, ": piece ", m.pieces.size(), " has type ", p.type,
               ", expected 1..6 (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)");
        m.pieces.push_back(std::move(p));
        break;
      }
      case 2:
        c.expect(k, c.len_wire, "trainer_spec");
        detail::parse_trainer(c.sub(c.bytes("trainer_spec"), "TrainerSpec"), m.trainer);
        break;
      case 3:
        c.expect(k, c.len_wire, "normalizer_spec");
        detail::parse_normalizer(c.sub(c.bytes("normalizer_spec"), "NormalizerSpec"), m.normalizer);
        break;
      case 5:
        c.expect(k, c.len_wire, "denormalizer_spec");
        m.has_denormalizer = true;
        detail::parse_normalizer(c.sub(c.bytes("denormalizer_spec"), "NormalizerSpec"), m.denormalizer);
        break;
      default: c.skip(k);
    }
  }
  if (m.pieces.empty()) fail(blob.name, ": no pieces found: not a sentencepiece model (ModelProto)");
  return m;
}

}  // namespace loupe
