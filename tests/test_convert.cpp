// loupe-convert: failure cases give a clear message and leave no output file;
// --inspect lists what a file holds; the CLI converts and generates end to end.
#include "test_util.hpp"

#include <loupe/convert/convert.hpp>

#include <algorithm>
#include <csignal>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace loupe;
using loupe_test::error_of;
namespace fs = std::filesystem;

namespace {

ConvertOptions quiet(DType t = DType::F16) {
  ConvertOptions o;
  o.outtype = t;
  o.name = "m";
  return o;
}

// A fresh ShareGPT4V fixture (sharded bf16 pickles + separate tower dir).
fs::path fixture(const std::string& name) {
  fs::path d = loupe_test::scratch("convert_" + name);
  loupe_test::run_python("vlm_fixture.py", "--layout sharegpt4v --out " + d.string() + " --seed 1 > /dev/null");
  return d;
}

bool no_outputs(const fs::path& out) {
  if (!fs::exists(out)) return true;
  for (auto& e : fs::directory_iterator(out)) {
    INFO("left behind: " << e.path());
    return false;
  }
  return true;
}

std::string run(const std::string& cmd, int* rc = nullptr) {
  const fs::path out = fs::path(LOUPE_TEST_TMP) / "cmd_out.txt";
  int r = std::system((cmd + " > " + out.string() + " 2>&1").c_str());
  if (rc) *rc = WEXITSTATUS(r);
  return loupe_test::slurp(out);
}

std::string bin(const char* name) { return (fs::path(LOUPE_BINARY_DIR) / "bin" / name).string(); }

void edit_json(const fs::path& p, const std::string& from, const std::string& to) {
  std::string s = loupe_test::slurp(p);
  const size_t at = s.find(from);
  REQUIRE_MESSAGE(at != std::string::npos, "'" << from << "' not in " << p);
  s.replace(at, from.size(), to);
  std::ofstream(p, std::ios::binary) << s;
}

}  // namespace

TEST_CASE("convert: failures name the file and the problem and leave no output") {
  LOUPE_REQUIRE_SHARED();
  fs::path d = fixture("fail");
  const fs::path llm = d / "llm", vit = d / "vit";
  auto opts = quiet();
  opts.vision_tower = vit.string();
  const fs::path out = d / "out";

  SUBCASE("missing shard") {
    fs::remove(llm / "pytorch_model-00002-of-00002.bin");
    std::string e = error_of([&] { convert_model(llm.string(), out.string(), opts); });
    CHECK(e.find("pytorch_model-00002-of-00002.bin") != std::string::npos);
    CHECK(no_outputs(out));
  }
  SUBCASE("index naming a tensor the shard lacks") {
    edit_json(llm / "pytorch_model.bin.index.json", "\"weight_map\": {", "\"weight_map\": {\"model.extra.weight\": \"pytorch_model-00001-of-00002.bin\", ");
    std::string e = error_of([&] { convert_model(llm.string(), out.string(), opts); });
    CHECK(e.find("model.extra.weight") != std::string::npos);
    CHECK(no_outputs(out));
  }
  SUBCASE("shape mismatch with config.json") {
    edit_json(llm / "config.json", "\"intermediate_size\": ", "\"intermediate_size\": 1");
    std::string e = error_of([&] { convert_model(llm.string(), out.string(), opts); });
    CHECK(e.find("but the config implies") != std::string::npos);
    CHECK(e.find("mlp.gate_proj.weight") != std::string::npos);
    CHECK(no_outputs(out));
  }
  SUBCASE("unknown architecture") {
    edit_json(llm / "config.json", "\"model_type\": \"share4v\"", "\"model_type\": \"gpt2\"");
    std::string e = error_of([&] { convert_model(llm.string(), out.string(), opts); });
    CHECK(e.find("unknown architecture: model_type 'gpt2'") != std::string::npos);
    CHECK(e.find("config.json") != std::string::npos);
    CHECK(no_outputs(out));
  }
  SUBCASE("vision tower named by hub id but not given and not beside the model") {
    auto o2 = quiet();
    std::string e = error_of([&] { convert_model(llm.string(), out.string(), o2); });
    CHECK(e.find("Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12") != std::string::npos);
    CHECK(e.find("--vision-tower") != std::string::npos);
    CHECK(no_outputs(out));
  }
  SUBCASE("the tower found beside the model by its hub name") {
    fs::rename(vit, d / "ShareGPT4V-7B_Pretrained_vit-large336-l12");
    auto o2 = quiet();
    ConvertResult r = convert_model(llm.string(), out.string(), o2);
    CHECK(fs::exists(r.mmproj_path));
  }
  SUBCASE("unsupported dtype") {
    // A float64 weight in a safetensors checkpoint.
    fs::path st = d / "f64";
    loupe_test::run_python("llama_ref.py", "--make " + st.string() + " --config gqa36 --seed 2 --tokenizer " +
                                               (loupe_test::shared_dir() / "models/stories260K-hf/tokenizer.model").string() +
                                               " > /dev/null");
    const std::string py = "import sys; sys.path.insert(0, 'reference'); import hf_layout, torch\n"
                           "sd = hf_layout.load_state_dict(sys.argv[1])\n"
                           "sd['model.norm.weight'] = sd['model.norm.weight'].double()\n"
                           "hf_layout.save_state_dict(sys.argv[1], sd, fmt='safetensors')\n";
    std::ofstream(d / "f64.py") << py;
    REQUIRE(std::system(("/usr/bin/python3 " + (d / "f64.py").string() + " " + st.string()).c_str()) == 0);
    std::string e = error_of([&] { convert_model(st.string(), out.string(), quiet()); });
    CHECK(e.find("model.norm.weight") != std::string::npos);
    CHECK(e.find("unsupported dtype F64") != std::string::npos);
    CHECK(no_outputs(out));
  }
  SUBCASE("unknown tensor in the checkpoint") {
    const std::string py = "import sys; sys.path.insert(0, 'reference'); import hf_layout, torch\n"
                           "sd = hf_layout.load_state_dict(sys.argv[1])\n"
                           "sd['model.surprise.weight'] = torch.zeros(4, 4)\n"
                           "hf_layout.save_state_dict(sys.argv[1], sd, fmt='bin', shards=2, dtype='bf16')\n";
    std::ofstream(d / "extra.py") << py;
    REQUIRE(std::system(("/usr/bin/python3 " + (d / "extra.py").string() + " " + llm.string()).c_str()) == 0);
    std::string e = error_of([&] { convert_model(llm.string(), out.string(), opts); });
    CHECK(e.find("unknown tensor 'model.surprise.weight'") != std::string::npos);
    CHECK(no_outputs(out));
  }
  SUBCASE("disk full (the OS refuses the write) leaves no half-written file") {
    // RLIMIT_FSIZE makes write() fail with EFBIG once the file would pass 64 KiB.
    struct rlimit old {};
    getrlimit(RLIMIT_FSIZE, &old);
    auto prev = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 64 * 1024;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    std::string e = error_of([&] { convert_model(llm.string(), out.string(), opts); });
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, prev);
    CHECK(e.find("write failed (File too large)") != std::string::npos);  // strerror(EFBIG)
    CHECK(no_outputs(out));
  }
  SUBCASE("absurd sizes in a config are refused before anything is computed from them") {
    // Each crafted value once crashed the converter (SIGFPE, SIGSEGV), wrote an
    // mmproj its own loader rejects, or grew memory until allocation failed.
    struct Case {
      fs::path file;
      std::string from, to, message;
    };
    const Case cases[] = {
        {vit / "config.json", "\"patch_size\": 14", "\"patch_size\": 0", "patch_size 0 is out of range (1 to 84)"},
        {vit / "config.json", "\"image_size\": 84", "\"image_size\": -9223372036854775808", "image_size -9223372036854775808 is out of range"},
        {vit / "config.json", "\"num_attention_heads\": 4", "\"num_attention_heads\": 0", "num_attention_heads 0 is out of range (1 to 32)"},
        {vit / "config.json", "\"num_attention_heads\": 4", "\"num_attention_heads\": 5", "hidden_size 32 is not a multiple of num_attention_heads 5"},
        {vit / "config.json", "\"image_size\": 84", "\"image_size\": 85", "image_size 85 is not a multiple of patch_size 14"},
        {vit / "config.json", "\"layer_norm_eps\": 1e-05", "\"layer_norm_eps\": 0", "layer_norm_eps 0 is out of range"},
        {llm / "config.json", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 300000000", "num_hidden_layers 300000000 is out of range (1 to 1024)"},
        {llm / "config.json", "\"hidden_size\": ", "\"hidden_size\": -", "is out of range (1 to 65536)"},
    };
    for (const Case& c : cases) {
      const std::string saved = loupe_test::slurp(c.file);
      edit_json(c.file, c.from, c.to);
      const std::string e = error_of([&] { convert_model(llm.string(), out.string(), opts); });
      INFO(c.to << ": " << e);
      CHECK(e.rfind(c.file.string() + ": ", 0) == 0);
      CHECK(e.find(c.message) != std::string::npos);
      CHECK(no_outputs(out));
      std::ofstream(c.file, std::ios::binary) << saved;
    }
  }
}

TEST_CASE("convert: transformers' LLaVA settings loupe cannot honour are errors naming the key, leaving no output") {
  LOUPE_REQUIRE_SHARED();
  const fs::path d = loupe_test::scratch("convert_llava_hf_bad"), llm = d / "llm", cfg = llm / "config.json", out = d / "out";
  loupe_test::run_python("vlm_fixture.py", "--layout llava-hf --out " + d.string() + " --seed 1 --greedy 0 > /dev/null");
  const std::string good = loupe_test::slurp(cfg);
  struct Case {
    const char *from, *to, *error;
  };
  const Case cases[] = {
      {"\"vision_feature_layer\": -2", "\"vision_feature_layer\": [-2, -3]", "vision_feature_layer lists 2 layers"},
      {"\"vision_feature_layer\": -2", "\"vision_feature_layer\": -40", "vision_feature_layer -40 is outside the tower's 3 layers"},
      {"\"vision_feature_select_strategy\": \"default\"", "\"vision_feature_select_strategy\": \"cls\"",
       "vision_feature_select_strategy 'cls' is not supported"},
      {"\"projector_hidden_act\": \"gelu\"", "\"projector_hidden_act\": \"relu\"", "projector_hidden_act 'relu' is not supported"},
      {"\"model_type\": \"clip_vision_model\"", "\"model_type\": \"siglip_vision_model\"",
       "vision_config model_type 'siglip_vision_model' is not supported"},
      {"\"model_type\": \"llama\"", "\"model_type\": \"mistral\"", "unknown architecture: model_type 'mistral'"},
      {"\"hidden_size\": 64,", "\"head_dim\": 8, \"hidden_size\": 64,", "head_dim 8 is not hidden_size / num_attention_heads (16)"},
      {"\"hidden_size\": 64,", "", "has shape [32064, 64] but the config implies [32064, 4096]"},  // LlamaConfig's default width
  };
  for (const Case& c : cases) {
    INFO(std::string(c.to));
    std::ofstream(cfg, std::ios::binary) << good;
    edit_json(cfg, c.from, c.to);
    const std::string e = error_of([&] { convert_model(llm.string(), out.string(), quiet()); });
    CHECK(e.find(c.error) != std::string::npos);
    CHECK(e.find(llm.string()) != std::string::npos);
    CHECK(no_outputs(out));
  }
  // A tower option for a checkpoint that holds its own.
  std::ofstream(cfg, std::ios::binary) << good;
  auto o = quiet();
  o.vision_tower = d.string();
  CHECK(error_of([&] { convert_model(llm.string(), out.string(), o); }).find("--vision-tower is for LLaVA checkpoints without") !=
        std::string::npos);
  CHECK(no_outputs(out));
}

// The MindSpore port of ShareGPT4V (mindone examples/sharegpt_4v): the same
// tiny ShareGPT4V as .ckpt files renamed as its convert_weights.py does, written
// by reference/mindspore_ckpt.py from MindSpore's checkpoint.proto.
TEST_CASE("convert: the MindSpore port's .ckpt files give the Hugging Face checkpoint's GGUF tensors and description") {
  LOUPE_REQUIRE_SHARED();
  const fs::path d = fixture("mindspore");
  auto o = quiet();
  o.outtype = DType::F32;
  o.vision_tower = (d / "vit").string();
  const ConvertResult hf = convert_model((d / "llm").string(), (d / "gguf-hf").string(), o);
  const std::string img = (loupe_test::shared_dir() / "images/skimage_chelsea.png").string();
  auto describe = [&](const ConvertResult& r) {
    int rc = -1;
    const std::string text = run("(" + bin("loupe") + " describe -m " + r.text_path + " --mmproj " + r.mmproj_path + " --image " +
                                 img + " -p 'Describe the image.' -n 12 2>/dev/null)", &rc);
    CHECK(rc == 0);
    return text;
  };
  const std::string want = describe(hf);
  CHECK(!want.empty());
  // The port's names (convert_weights.py) and its network's own (Hugging Face's, embedding_table);
  // tensors split in chunks at odd byte offsets, the CRC trailer, append_dict's counters and
  // rotary caches; the tower's parameters without the vision_tower. prefix.
  const std::vector<std::string> variants = {
      "", "--llm-names hf-embedding-table --split-bytes 1001 --crc --append-dict --with-inv-freq", "--llm-names hf --vit-prefix none"};
  for (size_t i = 0; i < variants.size(); ++i) {
    INFO("mindspore_ckpt.py convert " << variants[i]);
    const fs::path ms = d / ("ms" + std::to_string(i)), out = d / ("gguf-ms" + std::to_string(i));
    loupe_test::run_python("mindspore_ckpt.py", "convert --src " + d.string() + " --out " + ms.string() + " " + variants[i] + " > /dev/null");
    auto mo = quiet();
    mo.outtype = DType::F32;
    const ConvertResult r = convert_model(ms.string(), out.string(), mo);
    loupe_test::check_same_tensors(hf.text_path, r.text_path);
    loupe_test::check_same_tensors(hf.mmproj_path, r.mmproj_path);
    if (i == 0) CHECK(describe(r) == want);
  }
  // Broken files: clear errors naming the file, no output.
  struct Broken {
    const char *how, *error;
  };
  const Broken broken[] = {{"truncated", "mindspore_llama_model.ckpt: "},
                           {"wrong-wire-type", "mindspore_llama_model.ckpt: "},
                           {"length-past-end", "mindspore_llama_model.ckpt: "},
                           {"length-past-parent", "mindspore_llama_model.ckpt: "},
                           {"unknown-dtype", "tensor_type 'Complex64' is not supported"},
                           {"missing-parameter", "mindspore_llama_model.ckpt (the port's names read as Hugging Face's): tensor '"}};
  for (const Broken& b : broken) {
    INFO(std::string(b.how));
    const fs::path ms = d / (std::string("broken-") + b.how), out = d / (std::string("out-") + b.how);
    loupe_test::run_python("mindspore_ckpt.py", "convert --src " + d.string() + " --out " + ms.string() + " --break " + b.how + " > /dev/null");
    const std::string e = error_of([&] { convert_model(ms.string(), out.string(), quiet()); });
    MESSAGE(std::string(b.how), ": ", e);
    CHECK(e.find(b.error) != std::string::npos);
    CHECK(no_outputs(out));
  }
}

TEST_CASE("convert: a failed re-conversion leaves the earlier results exactly as they were") {
  LOUPE_REQUIRE_SHARED();
  fs::path d = fixture("reconvert");
  auto opts = quiet();
  opts.vision_tower = (d / "vit").string();
  const fs::path out = d / "out";
  const ConvertResult first = convert_model((d / "llm").string(), out.string(), opts);
  const std::string text = loupe_test::slurp(first.text_path), mmproj = loupe_test::slurp(first.mmproj_path);
  // The text model converts (into a temporary), then the tower fails.
  edit_json(d / "vit" / "config.json", "\"hidden_act\": \"quick_gelu\"", "\"hidden_act\": \"relu\"");
  opts.outtype = DType::Q8_0;  // different bytes, had they landed
  CHECK(error_of([&] { convert_model((d / "llm").string(), out.string(), opts); }).find("hidden_act 'relu'") != std::string::npos);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"m.gguf", "mmproj-m.gguf"});
  CHECK(loupe_test::slurp(first.text_path) == text);
  CHECK(loupe_test::slurp(first.mmproj_path) == mmproj);
}

TEST_CASE("convert: loupe-convert interrupted by SIGINT, SIGTERM or SIGHUP leaves no temporary file") {
  LOUPE_REQUIRE_SHARED();
  const fs::path model = loupe_test::shared_dir() / "models/llama2xs-bf16-sharded";
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    const fs::path out = loupe_test::scratch("convert_signal_" + std::to_string(sig)) / "models";  // made by the conversion
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      const std::string m = model.string(), o = out.string(), exe = bin("loupe-convert");
      freopen("/dev/null", "w", stderr);
      execl(exe.c_str(), exe.c_str(), "--model", m.c_str(), "--outtype", "q4_0", "-q", "-o", o.c_str(), (char*)nullptr);
      _exit(127);
    }
    // Wait until the temporary file exists, then interrupt.
    bool seen = false;
    for (int i = 0; i < 20000 && !seen; ++i) {
      if (fs::exists(out))
        for (const auto& e : fs::directory_iterator(out)) seen |= e.path().extension() == ".tmp";
      if (!seen) usleep(500);
    }
    kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    INFO("signal " << sig);
    REQUIRE_MESSAGE(seen, "the conversion never showed its temporary file");
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == sig);
    CHECK_MESSAGE(!fs::exists(out), "left behind: " << out);  // not even the folder the conversion made
  }
}

TEST_CASE("convert: loupe-convert CLI converts, --inspect lists, bad flags exit non-zero") {
  LOUPE_REQUIRE_SHARED();
  fs::path out = loupe_test::scratch("convert_cli");
  int rc = -1;
  std::string log = run(bin("loupe-convert") + " --model " + (loupe_test::shared_dir() / "models/llama2xs-bf16-sharded").string() +
                            " --outtype q4_0 -o " + out.string(),
                        &rc);
  CHECK(rc == 0);
  CHECK(log.find("wrote " + (out / "llama2xs-bf16-sharded.gguf").string()) != std::string::npos);
  std::string listing = run(bin("loupe-convert") + " --inspect " + (out / "llama2xs-bf16-sharded.gguf").string(), &rc);
  CHECK(rc == 0);
  CHECK(listing.find("blk.4.ffn_down.weight") != std::string::npos);
  CHECK(listing.find("Q4_0") != std::string::npos);
  CHECK(listing.find("llama.attention.head_count_kv") != std::string::npos);
  listing = run(bin("loupe-convert") + " --inspect " + (loupe_test::shared_dir() / "models/llama2xs-bf16-sharded").string(), &rc);
  CHECK(rc == 0);
  CHECK(listing.find("47 tensors") != std::string::npos);
  CHECK(listing.find("BF16") != std::string::npos);
  run(bin("loupe-convert") + " --model /nonexistent -o " + out.string(), &rc);
  CHECK(rc == 1);
  run(bin("loupe-convert") + " --bogus", &rc);
  CHECK(rc == 1);
  CHECK(run(bin("loupe-convert") + " --help", &rc).find("--vision-tower") != std::string::npos);
  CHECK(rc == 0);
}

TEST_CASE("cli: loupe generate prints the known story at temperature 0") {
  LOUPE_REQUIRE_SHARED();
  fs::path out = loupe_test::scratch("cli_generate");
  int rc = -1;
  run(bin("loupe-convert") + " --model " + (loupe_test::shared_dir() / "models/stories260K-hf").string() + " --outtype f32 -o " + out.string(), &rc);
  REQUIRE(rc == 0);
  const fs::path txt = out / "story.txt";
  rc = std::system((bin("loupe") + " generate -m " + (out / "stories260K-hf.gguf").string() +
                    " -p 'Once upon a time' -n 64 --temp 0 > " + txt.string() + " 2>/dev/null").c_str());
  CHECK(rc == 0);
  const std::string story = loupe_test::slurp(txt);
  // The continuation karpathy's run.c prints (../shared/expected/stories260K-greedy.jsonl).
  const std::string want = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
  CHECK(story.rfind(want, 0) == 0);
  std::string tokens = run(bin("loupe") + " tokenize -m " + (out / "stories260K-hf.gguf").string() + " -p 'Once upon a time'", &rc);
  CHECK(tokens == "[1, 403, 407, 261, 378]\n");
  run(bin("loupe") + " generate -m " + (out / "missing.gguf").string() + " -p x", &rc);
  CHECK(rc == 1);
}

TEST_CASE("convert: re-quantising a GGUF gives the same bytes as converting the checkpoint directly") {
  LOUPE_REQUIRE_SHARED();
  fs::path out = loupe_test::scratch("convert_requant");
  const fs::path src = loupe_test::shared_dir() / "models/llama2xs-bf16-sharded";
  ConvertOptions o = quiet(DType::F32);
  o.name = "f32";
  const std::string f32 = convert_model(src.string(), out.string(), o).text_path;
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::F16}) {
    o = quiet(t);
    o.name = std::string("direct-") + dtype_name(t);
    GgufFile direct = GgufFile::open(convert_model(src.string(), out.string(), o).text_path);
    o.name = std::string("requant-") + dtype_name(t);
    GgufFile requant = GgufFile::open(convert_model(f32, out.string(), o).text_path);
    REQUIRE(direct.tensors.size() == requant.tensors.size());
    for (size_t i = 0; i < direct.tensors.size(); ++i) {
      INFO(direct.tensors[i].name);
      CHECK(direct.tensors[i].dtype == requant.tensors[i].dtype);
      CHECK(std::memcmp(direct.tensors[i].view.data, requant.tensors[i].view.data, direct.tensors[i].view.nbytes()) == 0);
    }
    CHECK(requant.get_int("general.file_type") == direct.get_int("general.file_type"));
  }
  // A quantised GGUF can be re-quantised too, with a note about the extra rounding.
  std::string note;
  o = quiet(DType::Q4_0);
  o.name = "q8-to-q4";
  o.log = [&](const std::string& s) { note += s; };
  convert_model((out / "direct-Q8_0.gguf").string(), out.string(), o);
  CHECK(note.find("dequantised to f32 and requantised") != std::string::npos);
  CHECK(error_of([&] { o.name = "direct-Q8_0"; convert_model((out / "direct-Q8_0.gguf").string(), out.string(), o); })
            .find("refusing to overwrite the input file") != std::string::npos);
}
