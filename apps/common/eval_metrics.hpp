// Caption metrics for `loupe eval`: exact match, corpus BLEU-4 and ROUGE-L over
// word/punctuation tokens, and a language check. Conventions follow
// tools/demo_model/eval.py (the PyTorch evaluation), which tests/test_eval_metrics.cpp
// compares against:
//   tokens:  re.findall(r"\w+|[^\w\s]", s.lower())  — runs of letters/digits/_ and
//            single punctuation marks; non-ASCII letters count as word characters
//   BLEU:    Papineni et al., corpus level: clipped n-gram matches and hypothesis
//            n-gram counts summed over the corpus, geometric mean over n = 1..4,
//            brevity penalty exp(1 - r/c) when c <= r, 0 when any n has no match
//   ROUGE-L: F1 of the longest common subsequence, averaged per caption
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace loupe_cli {

// Lower-cases ASCII, Latin-1 and Latin Extended-A (U+0100..U+017F, where the
// lower-case letter of a pair is the upper-case one + 1) in UTF-8 text.
inline std::string lower_latin(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out += char(c >= 'A' && c <= 'Z' ? c + 32 : c);
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
      unsigned cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
      if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) cp += 0x20;  // À..Þ except ×
      else if (cp >= 0x100 && cp <= 0x17F) {
        // pairs start on even code points in 0100-0137 and 014A-0177, on odd ones in
        // 0139-0148 and 0179-017E; 0138 (ĸ), 0149 (ŉ) and 017F (ſ) have no pair.
        const bool even_pairs = cp <= 0x137 || (cp >= 0x14A && cp <= 0x177);
        const bool odd_pairs = (cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E);
        if ((even_pairs && cp % 2 == 0) || (odd_pairs && cp % 2 == 1)) cp += 1;
      }
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
      ++i;
    } else {
      out += char(c);
    }
  }
  return out;
}

// Word and punctuation tokens of the lower-cased text (see the header comment).
inline std::vector<std::string> words(std::string_view text) {
  const std::string s = lower_latin(text);
  auto is_word = [](unsigned char c) { return c >= 0x80 || std::isalnum(c) || c == '_'; };
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (std::isspace(c)) {
      ++i;
    } else if (is_word(c)) {
      size_t j = i;
      while (j < s.size() && is_word(static_cast<unsigned char>(s[j]))) ++j;
      out.push_back(s.substr(i, j - i));
      i = j;
    } else {
      out.push_back(s.substr(i, 1));
      ++i;
    }
  }
  return out;
}

inline double corpus_bleu(const std::vector<std::string>& hyps, const std::vector<std::string>& refs, int N = 4) {
  std::vector<int64_t> match(N, 0), total(N, 0);
  int64_t c = 0, r = 0;
  for (size_t k = 0; k < hyps.size(); ++k) {
    const auto h = words(hyps[k]), ref = words(refs[k]);
    c += int64_t(h.size());
    r += int64_t(ref.size());
    for (int n = 1; n <= N; ++n) {
      std::map<std::vector<std::string>, int64_t> hn, rn;
      for (size_t i = 0; i + n <= h.size(); ++i) ++hn[{h.begin() + i, h.begin() + i + n}];
      for (size_t i = 0; i + n <= ref.size(); ++i) ++rn[{ref.begin() + i, ref.begin() + i + n}];
      for (const auto& [g, v] : hn) {
        auto it = rn.find(g);
        if (it != rn.end()) match[n - 1] += std::min(v, it->second);
      }
      total[n - 1] += std::max<int64_t>(0, int64_t(h.size()) - n + 1);
    }
  }
  if (c == 0) return 0.0;
  double logp = 0;
  for (int n = 0; n < N; ++n) {
    if (match[n] == 0) return 0.0;
    logp += std::log(double(match[n]) / double(total[n]));
  }
  const double bp = c > r ? 1.0 : std::exp(1.0 - double(r) / double(c));
  return bp * std::exp(logp / N);
}

inline size_t lcs(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::vector<size_t> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
  for (const auto& x : a) {
    cur[0] = 0;
    for (size_t j = 0; j < b.size(); ++j) cur[j + 1] = x == b[j] ? prev[j] + 1 : std::max(prev[j + 1], cur[j]);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

inline double rouge_l(const std::string& hyp, const std::string& ref) {
  const auto h = words(hyp), r = words(ref);
  if (h.empty() || r.empty()) return 0.0;
  const size_t l = lcs(h, r);
  if (l == 0) return 0.0;
  const double p = double(l) / double(h.size()), rc = double(l) / double(r.size());
  return 2 * p * rc / (p + rc);
}

// Tells whether a text is in language B rather than the others, learnt from the
// reference captions: B's words are those B's references use and no other
// language's do (so "centre", used by English and Lithuanian alike, decides nothing).
struct LanguageDetector {
  std::set<std::string> own_words;

  LanguageDetector(const std::vector<std::string>& b_refs, const std::vector<std::string>& other_refs) {
    std::set<std::string> other;
    for (const auto& s : other_refs)
      for (auto& w : words(s)) other.insert(w);
    for (const auto& s : b_refs)
      for (auto& w : words(s)) {
        const unsigned char c = static_cast<unsigned char>(w[0]);
        if (!other.count(w) && (c >= 0x80 || std::isalpha(c))) own_words.insert(w);
      }
  }

  bool operator()(const std::string& text) const {
    for (const auto& w : words(text))
      if (own_words.count(w)) return true;
    return false;
  }
};

}  // namespace loupe_cli
