// The tokenizer as GGUF stores it (tokenizer.ggml.*, llama.cpp's "llama" SPM
// vocabulary): write a Tokenizer into GGUF metadata and read it back.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "../io/gguf.hpp"
#include "../io/json.hpp"
#include "tokenizer.hpp"

namespace loupe {

// Tokens a checkpoint adds after tokenizer.model's pieces (llava-hf's <image>
// and <pad>), with the id of its padding token if that is one of them.
struct AddedTokens {
  struct Token {
    int64_t id;
    std::string text;
    bool special;  // CONTROL (never produced from text), else USER_DEFINED
  };
  std::vector<Token> tokens;
  int64_t pad = -1;
};

// Reads the added tokens of the Hugging Face directory `dir` as llama.cpp's
// convert_hf_to_gguf.py (_set_vocab_sentencepiece) does: added_tokens.json
// ({"<image>": 32000}) as USER_DEFINED, then tokenizer_config.json's
// added_tokens_decoder ({"32000": {"content": "<image>", "special": true}}),
// special ones CONTROL. Unlike llama.cpp, ids tokenizer.model already has keep
// its piece and type (tokenizer_config.json lists <unk>, <s> and </s> too).
// The padding token: special_tokens_map.json's (or tokenizer_config.json's) pad_token.
inline AddedTokens read_added_tokens(const std::string& dir, const Tokenizer& tok) {
  namespace fs = std::filesystem;
  std::map<int64_t, AddedTokens::Token> added;
  auto take = [&](int64_t id, const std::string& text, bool special, const std::string& where) {
    if (id < 0) fail(where, ": added token '", text, "' has a negative id ", id);
    if (id >= int64_t(tok.size())) added[id] = {id, text, special};
  };
  const fs::path at = fs::path(dir) / "added_tokens.json", tc = fs::path(dir) / "tokenizer_config.json",
                 sm = fs::path(dir) / "special_tokens_map.json";
  if (fs::exists(at)) {
    const Json j = Json::load(at.string());
    if (!j.is_object()) fail(at.string(), ": expected an object of token: id");
    for (size_t i = 0; i < j.keys().size(); ++i) take(j.values()[i].integer(), j.keys()[i], false, at.string());
  }
  std::string pad_text;
  auto pad_of = [](const Json& j) -> std::string {
    const Json* p = j.find("pad_token");
    if (!p || p->is_null()) return "";
    if (p->is_string()) return p->str();
    return p->get_or<std::string>("content", "");
  };
  if (fs::exists(tc)) {
    const Json j = Json::load(tc.string());
    if (const Json* d = j.find("added_tokens_decoder"); d && d->is_object()) {
      for (size_t i = 0; i < d->keys().size(); ++i) {
        const std::string& key = d->keys()[i];
        char* end = nullptr;
        const long long id = std::strtoll(key.c_str(), &end, 10);
        if (key.empty() || *end) fail(tc.string(), ": added_tokens_decoder key '", key, "' is not a token id");
        const Json& t = d->values()[i];
        take(id, t.at("content").str(), t.get_or<bool>("special", false), tc.string());
      }
    }
    pad_text = pad_of(j);
  }
  if (fs::exists(sm)) {
    const std::string p = pad_of(Json::load(sm.string()));
    if (!p.empty()) pad_text = p;
  }
  AddedTokens r;
  for (auto& [id, t] : added) {
    if (t.text == pad_text) r.pad = id;
    r.tokens.push_back(std::move(t));
  }
  return r;
}

// `n_vocab` may exceed the tokenizer (embedding rows padded for alignment):
// ids beyond it are the `added` tokens, the rest get "[PAD<id>]" pieces of type
// UNUSED, as llama.cpp's converter does.
inline void write_vocab(GgufWriter& w, const Tokenizer& tok, int64_t n_vocab, const AddedTokens& added = {}) {
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
  for (const AddedTokens::Token& t : added.tokens) {
    if (t.id >= n_vocab)
      fail(tok.name(), ": added token '", t.text, "' has id ", t.id, " but the model's vocabulary is only ", n_vocab);
    pieces[size_t(t.id)] = t.text;
    types[size_t(t.id)] = int32_t(t.special ? PieceType::control : PieceType::user_defined);
  }
  w.set("tokenizer.ggml.model", GgufValue::str("llama"));
  w.set("tokenizer.ggml.tokens", GgufValue::array(GgufType::STRING, pieces));
  w.set("tokenizer.ggml.scores", GgufValue::array(GgufType::F32, scores));
  w.set("tokenizer.ggml.token_type", GgufValue::array(GgufType::I32, types));
  const SpecialIds& ids = tok.special_ids();
  if (ids.bos >= 0) w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(uint32_t(ids.bos)));
  if (ids.eos >= 0) w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(uint32_t(ids.eos)));
  if (ids.unk >= 0) w.set("tokenizer.ggml.unknown_token_id", GgufValue::u32(uint32_t(ids.unk)));
  const int64_t pad = ids.pad >= 0 ? ids.pad : added.pad;
  if (pad >= 0) w.set("tokenizer.ggml.padding_token_id", GgufValue::u32(uint32_t(pad)));
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
