// `loupe eval`'s caption metrics (apps/common/eval_metrics.hpp) against the PyTorch
// evaluation's own (tools/demo_model/eval.py through reference/caption_metrics_ref.py).
#include "../apps/common/eval_metrics.hpp"

#include <loupe/io/json.hpp>

#include <random>

#include "test_util.hpp"

using namespace loupe_test;
namespace fs = std::filesystem;

namespace {

// Captions and near misses in English and Lithuanian: reordered, truncated, upper case
// Lithuanian letters, punctuation runs, empty and repeated words.
std::vector<std::pair<std::string, std::string>> pairs() {
  std::vector<std::pair<std::string, std::string>> p = {
      {"A large red circle on the left, on a white background.", "A large red circle on the left, on a white background."},
      {"A small red circle on the left, on a white background.", "A large red circle on the left, on a white background."},
      {"A large red circle", "A large red circle on the left, on a white background."},
      {"Didelė violetinė žvaigždė centre, žaliame fone.", "Didelė violetinė žvaigždė centre, žaliame fone."},
      {"ŽALIAME FONE didelė ŽVAIGŽDĖ", "Didelė violetinė žvaigždė centre, žaliame fone."},
      {"Mažas mėlynas kvadratas apačioje ir didelis raudonas apskritimas kairėje, baltame fone.",
       "Didelis raudonas apskritimas kairėje ir mažas mėlynas kvadratas apačioje, baltame fone."},
      {"", "A small white square at the top, on an orange background."},
      {"the the the the the the", "the cat is on the mat"},
      {"Čia... ką?! (nežinau) — gerai_taip 42", "čia ką nežinau gerai_taip 42 ..."},
      {"x y z w", "a b c d"},
  };
  // random word salads from one vocabulary
  const std::vector<std::string> vocab = {"a", "large", "small", "red", "circle", "on", "the", "left", ",", ".",
                                          "didelis", "žalias", "Šviesus", "fone", "ir", "and"};
  std::mt19937 rng(7);
  for (int k = 0; k < 40; ++k) {
    std::string h, r;
    for (int i = 0, n = 3 + int(rng() % 12); i < n; ++i) h += vocab[rng() % vocab.size()] + (rng() % 3 ? " " : "");
    for (int i = 0, n = 3 + int(rng() % 12); i < n; ++i) r += vocab[rng() % vocab.size()] + " ";
    p.emplace_back(h, r);
  }
  return p;
}

}  // namespace

TEST_CASE("caption metrics equal the PyTorch evaluation's") {
  const auto ps = pairs();
  const fs::path dir = scratch("eval_metrics");
  {
    std::ofstream f(dir / "in.json");
    f << "{\"hyps\": [";
    for (size_t i = 0; i < ps.size(); ++i) f << (i ? ", " : "") << '"' << loupe::json_escape(ps[i].first) << '"';
    f << "], \"refs\": [";
    for (size_t i = 0; i < ps.size(); ++i) f << (i ? ", " : "") << '"' << loupe::json_escape(ps[i].second) << '"';
    f << "]}\n";
  }
  run_python("caption_metrics_ref.py", quote((dir / "in.json").string()) + " " + quote((dir / "out.json").string()));
  const loupe::Json ref = loupe::Json::load((dir / "out.json").string());
  std::vector<std::string> hyps, refs;
  size_t nonzero = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    INFO("pair " << i << ": '" << ps[i].first << "' vs '" << ps[i].second << "'");
    const auto w = loupe_cli::words(ps[i].first);
    const loupe::Json& rw = ref.at("words").array()[i];
    REQUIRE(w.size() == rw.size());
    for (size_t k = 0; k < w.size(); ++k) CHECK(w[k] == rw.array()[k].str());
    const double b = loupe_cli::corpus_bleu({ps[i].first}, {ps[i].second});
    CHECK(std::abs(b - ref.at("bleu_each").array()[i].number()) < 1e-12);
    CHECK(std::abs(loupe_cli::rouge_l(ps[i].first, ps[i].second) - ref.at("rouge").array()[i].number()) < 1e-12);
    nonzero += b > 0;
    hyps.push_back(ps[i].first);
    refs.push_back(ps[i].second);
  }
  CHECK(std::abs(loupe_cli::corpus_bleu(hyps, refs) - ref.at("bleu").number()) < 1e-12);
  CHECK(nonzero >= 4);  // the cases exercise the non-trivial branch too
  CHECK(loupe_cli::corpus_bleu({"a b c d e"}, {"a b c d e"}) == doctest::Approx(1.0));
}

TEST_CASE("language detection learns each language's own words from the references") {
  const std::vector<std::string> en = {"A large red circle in the centre, on a white background.",
                                       "A small star at the top, on a black background."};
  const std::vector<std::string> lt = {"Didelis raudonas apskritimas centre, baltame fone.",
                                       "Maža žvaigždė viršuje, juodame fone."};
  loupe_cli::LanguageDetector is_lt(lt, en), is_en(en, lt);
  CHECK(is_lt("Didelis žalias kvadratas centre, baltame fone."));
  CHECK(is_lt("ŽVAIGŽDĖ"));  // upper case Lithuanian letters fold to the reference's
  CHECK_FALSE(is_lt("A large green square in the centre, on a white background."));
  CHECK_FALSE(is_lt("centre"));  // both languages use it
  CHECK(is_en("A large green square in the centre."));
  CHECK_FALSE(is_en("Didelis kvadratas centre"));
}
