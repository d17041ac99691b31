#include "test_util.hpp"

#include "ckpt_util.hpp"

#include <loupe/io/checkpoint.hpp>

using namespace ckpt_test;
using loupe::Checkpoint;
namespace fs = std::filesystem;

namespace {

fs::path models() { return loupe_test::shared_dir() / "models"; }

std::string open_error(const fs::path& p) {
  return error_of([&] { Checkpoint::open(p.string()); });
}

}  // namespace

TEST_CASE("checkpoint: stories260K safetensors and pytorch_model.bin hold the same tensors") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = models() / "stories260K-hf";
  CHECK(Checkpoint::resolve(dir.string()) == (dir / "model.safetensors").string());
  Checkpoint st = Checkpoint::open(dir.string());  // resolves model.safetensors
  Checkpoint pt = Checkpoint::open_file((dir / "pytorch_model.bin").string());
  CHECK(st.source == (dir / "model.safetensors").string());
  REQUIRE(st.tensors.size() == pt.tensors.size());
  CHECK(st.tensors.size() >= 47);
  for (const loupe::SourceTensor& a : pt.tensors) {
    INFO("tensor " << a.name);
    const loupe::SourceTensor& b = st.get(a.name);
    CHECK(a.dtype == loupe::DType::F32);
    CHECK(b.dtype == a.dtype);
    CHECK(b.shape == a.shape);
    REQUIRE(b.data.size == a.data.size);
    CHECK(std::memcmp(a.data.data, b.data.data, a.data.size) == 0);
    CHECK(a.view().contiguous());
    CHECK(a.view().nbytes() == a.data.size);
  }
  const loupe::Json cfg = loupe::Json::load((dir / "config.json").string());
  CHECK(pt.get("model.embed_tokens.weight").shape ==
        std::vector<int64_t>{cfg.at("vocab_size").integer(), cfg.at("hidden_size").integer()});

  std::string msg = error_of([&] { st.get("lm_head.weight"); });
  CHECK(msg == (dir / "model.safetensors").string() + ": checkpoint has no tensor 'lm_head.weight'");
}

TEST_CASE("checkpoint: the sharded bf16 llama2xs loads through its index, as torch.load reads it") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = models() / "llama2xs-bf16-sharded";
  Checkpoint c = Checkpoint::open(dir.string());
  CHECK(c.source == (dir / "pytorch_model.bin.index.json").string());
  REQUIRE(c.tensors.size() == 47);

  // Shapes from config.json (HF LlamaForCausalLM names; tied embeddings: no lm_head).
  const loupe::Json cfg = loupe::Json::load((dir / "config.json").string());
  const int64_t d = cfg.at("hidden_size").integer(), ff = cfg.at("intermediate_size").integer();
  const int64_t heads = cfg.at("num_attention_heads").integer(), kv = cfg.at("num_key_value_heads").integer();
  const int64_t hd = d / heads, layers = cfg.at("num_hidden_layers").integer();
  std::vector<std::pair<std::string, std::vector<int64_t>>> want = {
      {"model.embed_tokens.weight", {cfg.at("vocab_size").integer(), d}}, {"model.norm.weight", {d}}};
  for (int64_t l = 0; l < layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    want.push_back({p + "self_attn.q_proj.weight", {heads * hd, d}});
    want.push_back({p + "self_attn.k_proj.weight", {kv * hd, d}});
    want.push_back({p + "self_attn.v_proj.weight", {kv * hd, d}});
    want.push_back({p + "self_attn.o_proj.weight", {d, heads * hd}});
    want.push_back({p + "mlp.gate_proj.weight", {ff, d}});
    want.push_back({p + "mlp.up_proj.weight", {ff, d}});
    want.push_back({p + "mlp.down_proj.weight", {d, ff}});
    want.push_back({p + "input_layernorm.weight", {d}});
    want.push_back({p + "post_attention_layernorm.weight", {d}});
  }
  CHECK(want.size() == 47);
  for (const auto& entry : want) {
    const auto& [name, shape] = entry;
    INFO(entry.first);  // (clang 14: a lambda, as INFO makes, cannot capture a structured binding)
    const loupe::SourceTensor* t = c.find(name);
    REQUIRE(t);
    CHECK(t->dtype == loupe::DType::BF16);
    CHECK(t->shape == shape);
  }

  // Values and order: torch.load of shard 1 then shard 2.
  auto out = loupe_test::scratch("llama2xs_dump");
  loupe_test::run_python("ckpt_dump_torch.py",
                         loupe_test::quote(out.string()) + " " +
                             loupe_test::quote((dir / "pytorch_model-00001-of-00002.bin").string()) + " " +
                             loupe_test::quote((dir / "pytorch_model-00002-of-00002.bin").string()));
  loupe::Json manifest = loupe::Json::load((out / "manifest.json").string());
  REQUIRE(manifest.array().size() == c.tensors.size());
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const loupe::Json& m = manifest.array()[i];
    CHECK(c.tensors[i].name == m.array()[0].str());
    CHECK(m.array()[1].str() == "BF16");
    check_values(c.tensors[i], (out / m.array()[3].str()).string());
  }
}

TEST_CASE("checkpoint: sharded safetensors, formats told by magic, errors in indexes") {
  auto fx = loupe_test::scratch("checkpoint_st");
  loupe_test::run_python("ckpt_safetensors_fixture.py", loupe_test::quote(fx.string()));
  loupe::Json manifest = loupe::Json::load((fx / "manifest.json").string());

  Checkpoint sh = Checkpoint::open((fx / "sharded").string());
  CHECK(sh.source == (fx / "sharded/model.safetensors.index.json").string());
  REQUIRE(sh.tensors.size() == manifest.array().size());
  for (size_t i = 0; i < sh.tensors.size(); ++i) {
    const loupe::Json& m = manifest.array()[i];
    CHECK(sh.tensors[i].name == m.array()[0].str());
    check_values(sh.tensors[i], (fx / m.array()[3].str()).string());
  }
  CHECK(sh.metadata.size() == 2);  // {"format": "pt"} from each shard

  // Told apart by content, not by name: safetensors named .bin, an index named .txt.
  fs::copy_file(fx / "fixture.safetensors", fx / "weights.bin");
  CHECK(Checkpoint::open_file((fx / "weights.bin").string()).tensors.size() == manifest.array().size());
  fs::copy_file(fx / "fixture.safetensors", fx / "adapter_model.safetensors");
  CHECK(Checkpoint::open_file((fx / "adapter_model.safetensors").string()).find("w.bf16"));

  // A safetensors header 123 bytes long: the file starts with '{' but is no JSON index.
  std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  h.resize(123, ' ');
  std::string brace = std::string("\x7b\0\0\0\0\0\0\0", 8) + h + std::string("\0\0\x80\x3f", 4);
  write_file((fx / "brace.safetensors").string(), brace);
  Checkpoint br = Checkpoint::open((fx / "brace.safetensors").string());
  REQUIRE(br.tensors.size() == 1);
  CHECK(loupe::to_f32(br.tensors[0].view()).f32()[0] == 1.0f);

  auto write_index = [&](const fs::path& dir, const std::string& weight_map) {
    fs::create_directories(dir);
    for (const char* s : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
      if (fs::exists(fx / "sharded" / s) && !fs::exists(dir / s)) fs::copy_file(fx / "sharded" / s, dir / s);
    write_file((dir / "model.safetensors.index.json").string(), "{\"metadata\": {}, \"weight_map\": {" + weight_map + "}}");
    return dir;
  };
  const std::string s1 = "\"model-00001-of-00002.safetensors\"", s2 = "\"model-00002-of-00002.safetensors\"";
  std::string full;
  for (size_t i = 0; i < manifest.array().size(); ++i)
    full += (i ? ", \"" : "\"") + loupe::json_escape(manifest.array()[i].array()[0].str()) + "\": " + (i < 5 ? s1 : s2);

  // The index lists a tensor its shard lacks.
  auto d = write_index(fx / "extra", full + ", \"model.fake.weight\": " + s1);
  CHECK(open_error(d) == (d / "model.safetensors.index.json").string() +
                             ": tensor 'model.fake.weight' is listed for shard 'model-00001-of-00002.safetensors' but "
                             "that shard does not contain it");
  // A shard holds a tensor the index does not list.
  d = write_index(fx / "unlisted", full.substr(full.find(',') + 2));
  CHECK(contains(open_error(d), "tensor 'w.f32' is in shard 'model-00001-of-00002.safetensors' but not in the index"));
  // The index maps a tensor to the wrong shard.
  std::string wrong = full;
  wrong.replace(wrong.find(s1), s1.size(), s2);
  d = write_index(fx / "wrong", wrong);
  CHECK(contains(open_error(d), "tensor 'w.f32' is in shard 'model-00001-of-00002.safetensors' but the index maps it to "
                                "'model-00002-of-00002.safetensors'"));
  // A shard file is missing.
  d = write_index(fx / "missing", full);
  fs::remove(d / "model-00002-of-00002.safetensors");
  std::string msg = open_error(d);
  CHECK(contains(msg, (d / "model.safetensors.index.json").string() + ": shard 'model-00002-of-00002.safetensors'"));
  CHECK(contains(msg, "is missing: " + (d / "model-00002-of-00002.safetensors").string() + " does not exist"));
  // Duplicate names in the weight map, shard names that leave the directory.
  d = write_index(fx / "dup", full + ", \"w.f32\": " + s1);
  CHECK(contains(open_error(d), "duplicate key 'w.f32'"));
  d = write_index(fx / "escape", "\"w.f32\": \"../model-00001-of-00002.safetensors\"");
  CHECK(contains(open_error(d), "weight_map entry for 'w.f32' names '../model-00001-of-00002.safetensors', which is not a plain file name"));
  d = write_index(fx / "noweights", "");
  write_file((d / "model.safetensors.index.json").string(), "{\"metadata\": {}}");
  CHECK(contains(open_error(d), "index has no \"weight_map\" object"));

  // Nothing to open.
  fs::create_directories(fx / "empty");
  CHECK(contains(open_error(fx / "empty"), (fx / "empty").string() + ": no checkpoint in this directory"));
  write_file((fx / "junk.bin").string(), "hello, this is not a checkpoint");
  CHECK(open_error(fx / "junk.bin") == (fx / "junk.bin").string() +
                                           ": unrecognised checkpoint format (expected safetensors, a torch.save zip archive or a MindSpore .ckpt)");
  CHECK(contains(open_error(fx / "nonexistent.bin"), "nonexistent.bin: cannot open"));
  // A truncated safetensors file is named and diagnosed through Checkpoint too.
  std::string bytes = loupe_test::slurp(fx / "fixture.safetensors");
  write_file((fx / "cut.safetensors").string(), bytes.substr(0, bytes.size() / 2));
  msg = open_error(fx / "cut.safetensors");
  CHECK(msg.rfind((fx / "cut.safetensors").string() + ":", 0) == 0);
  CHECK((contains(msg, "larger than the file") || contains(msg, "truncated")));
}

TEST_CASE("checkpoint: a MindSpore .ckpt (chunked at odd offsets, CRC trailer) holds the tensors it was written from") {
  LOUPE_REQUIRE_SHARED();
  const fs::path dir = models() / "stories260K-hf", tmp = loupe_test::scratch("ckpt_mindspore");
  loupe_test::run_python("mindspore_ckpt.py", "write " + dir.string() + " " + (tmp / "one.ckpt").string());
  loupe_test::run_python("mindspore_ckpt.py", "write " + dir.string() + " " + (tmp / "chunked.ckpt").string() + " --split-bytes 1001 --crc");
  const Checkpoint st = Checkpoint::open(dir.string());
  for (const char* f : {"one.ckpt", "chunked.ckpt"}) {
    INFO(f);
    const Checkpoint ms = Checkpoint::open_file((tmp / f).string());
    REQUIRE(ms.tensors.size() == st.tensors.size());
    for (const loupe::SourceTensor& a : st.tensors) {
      const loupe::SourceTensor* b = ms.find(a.name);
      REQUIRE_MESSAGE(b, a.name);
      CHECK(b->dtype == a.dtype);
      CHECK(b->shape == a.shape);
      REQUIRE(b->data.size == a.data.size);
      CHECK(std::memcmp(b->data.data, a.data.data, a.data.size) == 0);
    }
  }
  // Not a checkpoint, and cut short: errors naming the file.
  const std::string one = loupe_test::slurp(tmp / "one.ckpt");
  std::ofstream(tmp / "cut.ckpt", std::ios::binary) << one.substr(0, one.size() / 2);
  CHECK(open_error(tmp / "cut.ckpt").find("cut.ckpt: ") != std::string::npos);
}
