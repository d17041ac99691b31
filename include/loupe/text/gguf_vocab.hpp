// The tokenizer as GGUF stores it (tokenizer.ggml.*, llama.cpp's "llama" SPM
// vocabulary): write a Tokenizer into GGUF metadata and read it back.
#pragma once
#include "../io/gguf.hpp"
#include "tokenizer.hpp"

namespace loupe {

// `n_vocab` may exceed the tokenizer (embedding rows padded for alignment):
// the extra ids get "[PAD<id>]" pieces of type UNUSED, as llama.cpp's converter does.
inline void write_vocab(GgufWriter& w, const Tokenizer& tok, int64_t n_vocab) {
  if (n_vocab < int64_t(tok.size()))
    fail(tok.name(), ": tokenizer has ", tok.size(), " pieces but the model's vocabulary is only ", n_vocab);
  std::vector<std::string> pieces = tok.pieces();
  std::vector<float> scores = tok.scores();
  std::vector<int32_t> types = tok.types();
  for (int64_t id = int64_t(tok.size()); id < n_vocab; ++id) {
    pieces.push_back("[PAD" + std::to_string(id) + "]");
    scores.push_back(-1000.0f);
    types.push_back(int32_t(PieceType::unused));
  }
  w.set("tokenizer.ggml.model", GgufValue::str("llama"));
  w.set("tokenizer.ggml.tokens", GgufValue::array(GgufType::STRING, pieces));
  w.set("tokenizer.ggml.scores", GgufValue::array(GgufType::F32, scores));
  w.set("tokenizer.ggml.token_type", GgufValue::array(GgufType::I32, types));
  const SpecialIds& ids = tok.special_ids();
  if (ids.bos >= 0) w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(uint32_t(ids.bos)));
  if (ids.eos >= 0) w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(uint32_t(ids.eos)));
  if (ids.unk >= 0) w.set("tokenizer.ggml.unknown_token_id", GgufValue::u32(uint32_t(ids.unk)));
  if (ids.pad >= 0) w.set("tokenizer.ggml.padding_token_id", GgufValue::u32(uint32_t(ids.pad)));
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(tok.settings().add_bos));
  w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(tok.settings().add_eos));
  w.set("tokenizer.ggml.add_space_prefix", GgufValue::boolean(tok.settings().add_dummy_prefix));
}

inline Tokenizer read_vocab(const GgufFile& f) {
  const std::string model = f.get_str("tokenizer.ggml.model");
  if (model != "llama") fail(f.name(), ": tokenizer.ggml.model '", model, "' is not supported (only 'llama' SentencePiece BPE)");
  const GgufValue& tv = f.get_array("tokenizer.ggml.tokens", GgufType::STRING);
  const GgufValue& sv = f.get_array("tokenizer.ggml.scores", GgufType::F32);
  const GgufValue& yv = f.get_array("tokenizer.ggml.token_type", GgufType::I32);
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (const GgufValue& v : tv.arr) pieces.push_back(v.s);
  for (const GgufValue& v : sv.arr) scores.push_back(float(v.f));
  for (const GgufValue& v : yv.arr) types.push_back(int32_t(v.i));
  SpecialIds ids;
  ids.bos = int32_t(f.get_int("tokenizer.ggml.bos_token_id", -1));
  ids.eos = int32_t(f.get_int("tokenizer.ggml.eos_token_id", -1));
  ids.unk = int32_t(f.get_int("tokenizer.ggml.unknown_token_id", -1));
  ids.pad = int32_t(f.get_int("tokenizer.ggml.padding_token_id", -1));
  TokenizerSettings s;
  s.add_dummy_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", true);
  s.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", true);
  s.add_eos = f.get_bool("tokenizer.ggml.add_eos_token", false);
  return Tokenizer::from_vocab(std::move(pieces), std::move(scores), std::move(types), ids, s, f.name(), true);
}

}  // namespace loupe
