// Checkpoint: every tensor of a Hugging Face style checkpoint, whatever it is
// stored as — one .safetensors file, one torch.save zip, a MindSpore .ckpt, or
// shards listed by a *.index.json ({"weight_map": {tensor: shard file}}). Formats are told apart by
// their first bytes, not by file extensions. Tensors stay mmapped (zero-copy)
// wherever the file stores them contiguously.
//
// Indexes are checked both ways: a listed tensor missing from its shard, a shard
// tensor the index does not list (or maps elsewhere), a missing shard file and a
// name given twice are all errors — a checkpoint that disagrees with its index
// is not guessed at.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "json.hpp"
#include "mindspore_checkpoint.hpp"
#include "safetensors.hpp"
#include "source_tensor.hpp"
#include "torch_checkpoint.hpp"

namespace loupe {

struct Checkpoint {
  std::string source;                  // the file or directory opened (for messages)
  std::vector<SourceTensor> tensors;   // file order; shard by shard for sharded checkpoints
  std::vector<std::pair<std::string, std::string>> metadata;  // safetensors __metadata__ (all shards)

  const SourceTensor* find(std::string_view name) const {
    for (const SourceTensor& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  const SourceTensor& get(std::string_view name) const {
    const SourceTensor* t = find(name);
    if (!t) fail(source, ": checkpoint has no tensor '", name, "'");
    return *t;
  }

  // The file open(dir) reads: the first of these that exists in dir.
  static std::string resolve(const std::string& dir) {
    namespace fs = std::filesystem;
    static const char* names[] = {"model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                                  "pytorch_model.bin"};
    for (const char* n : names)
      if (fs::is_regular_file(fs::path(dir) / n)) return (fs::path(dir) / n).string();
    fail(dir, ": no checkpoint in this directory (looked for model.safetensors.index.json, model.safetensors, "
              "pytorch_model.bin.index.json, pytorch_model.bin)");
  }

  // A directory (see resolve) or a file (see open_file).
  static Checkpoint open(const std::string& path_or_dir) {
    std::error_code ec;
    if (std::filesystem::is_directory(path_or_dir, ec)) return open_file(resolve(path_or_dir));
    return open_file(path_or_dir);
  }

  // Renames every tensor (another framework's names to Hugging Face's); the
  // names must stay distinct.
  template <class F>
  void rename(F&& f) {
    for (SourceTensor& t : tensors) t.name = f(t.name);
    check_unique();
  }

  // One file: .safetensors, a torch.save zip, a MindSpore .ckpt, or a shard index (e.g.
  // adapter_model.safetensors, non_lora_trainables.bin, pytorch_model.bin.index.json).
  static Checkpoint open_file(const std::string& path) {
    Checkpoint c;
    c.source = path;
    Blob b = Blob::open(path);
    // Binary formats first: a safetensors header length may well start with '{' (123).
    size_t k = 0;
    while (k < b.size && (b.data[k] == ' ' || b.data[k] == '\n' || b.data[k] == '\r' || b.data[k] == '\t')) ++k;
    if (!is_safetensors(b) && !is_zip(b) && !is_mindspore_checkpoint(b) && k < b.size && b.data[k] == '{') {
      c.open_index(std::string(b.view()));
    } else {
      c.add_file(b);
    }
    c.check_unique();
    return c;
  }

 private:
  // Append one file's tensors (format told by its first bytes).
  void add_file(const Blob& b) {
    std::vector<SourceTensor> ts;
    if (is_safetensors(b)) {
      SafetensorsFile f = read_safetensors(b);
      ts = std::move(f.tensors);
      metadata.insert(metadata.end(), f.metadata.begin(), f.metadata.end());
    } else if (is_zip(b) || is_legacy_torch_pickle(b)) {
      ts = read_torch_checkpoint(b);
    } else if (is_mindspore_checkpoint(b)) {
      ts = read_mindspore_checkpoint(b, &metadata);
    } else if (b.size >= 9 && b.data[8] == '{') {
      read_safetensors(b);  // a safetensors file with a bad header length: let the reader say what is wrong
      fail(b.name, ": malformed safetensors header");
    } else {
      fail(b.name, ": unrecognised checkpoint format (expected safetensors, a torch.save zip archive or a MindSpore .ckpt)");
    }
    for (SourceTensor& t : ts) tensors.push_back(std::move(t));
  }

  void open_index(const std::string& text) {
    namespace fs = std::filesystem;
    Json idx = Json::parse_file_text(text, source);
    const Json* wm = idx.is_object() ? idx.find("weight_map") : nullptr;
    if (!wm || !wm->is_object()) fail(source, ": index has no \"weight_map\" object");
    std::unordered_map<std::string, std::string> shard_of;
    std::vector<std::string> shards;  // first-appearance order
    std::unordered_map<std::string, std::vector<std::string>> listed;
    for (size_t k = 0; k < wm->keys().size(); ++k) {
      const std::string& name = wm->keys()[k];
      const Json& v = wm->values()[k];
      if (!v.is_string()) fail(source, ": weight_map entry for '", name, "' is not a file name");
      const std::string& shard = v.str();
      if (shard.empty() || shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos || shard == "..")
        fail(source, ": weight_map entry for '", name, "' names '", shard, "', which is not a plain file name");
      shard_of[name] = shard;
      auto& l = listed[shard];
      if (l.empty()) shards.push_back(shard);
      l.push_back(name);
    }
    const fs::path dir = fs::path(source).parent_path();
    std::unordered_set<std::string> found;
    for (const std::string& shard : shards) {
      const std::string path = (dir / shard).string();
      std::error_code ec;  // a name from the file: too long or otherwise odd is "missing", not an exception
      if (!fs::is_regular_file(path, ec))
        fail(source, ": shard '", shard, "' (holding '", listed[shard][0], "' and ", listed[shard].size() - 1,
             " more tensors) is missing: ", path, " does not exist");
      const size_t first = tensors.size();
      add_file(Blob::open(path));
      // Every tensor of the shard must be listed for it ...
      for (size_t i = first; i < tensors.size(); ++i) {
        const std::string& n = tensors[i].name;
        auto it = shard_of.find(n);
        if (it == shard_of.end()) fail(source, ": tensor '", n, "' is in shard '", shard, "' but not in the index");
        if (it->second != shard)
          fail(source, ": tensor '", n, "' is in shard '", shard, "' but the index maps it to '", it->second, "'");
        found.insert(n);
      }
    }
    // ... and every listed tensor present.
    for (size_t k = 0; k < wm->keys().size(); ++k)
      if (!found.count(wm->keys()[k]))
        fail(source, ": tensor '", wm->keys()[k], "' is listed for shard '", shard_of[wm->keys()[k]],
             "' but that shard does not contain it");
  }

  void check_unique() const {
    std::unordered_set<std::string_view> seen;
    for (const SourceTensor& t : tensors)
      if (!seen.insert(t.name).second) fail(source, ": tensor '", t.name, "' appears twice");
  }
};

}  // namespace loupe
