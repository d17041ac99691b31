// StopMatcher: streams decoded text through while watching for stop strings
// (e.g. a chat template's "</s>" or "###"). Text that might be the start of a
// stop string is held back until it is known not to be; once a stop string
// appears, everything from it on is dropped.
//
// Emitted text never ends inside a UTF-8 character: a trailing incomplete
// sequence (a token can decode to part of a character) is held until its
// remaining bytes arrive, or until flush(). Malformed bytes pass through as-is.
#pragma once
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace loupe {

struct StopMatcher {
  explicit StopMatcher(std::vector<std::string> stops) {
    for (std::string& s : stops)
      if (!s.empty()) stops_.push_back(std::move(s));  // an empty stop would match at once
  }

  // Feed newly decoded text; returns what is safe to show now.
  std::string push(std::string_view text) {
    if (stopped_) return {};
    pending_.append(text);

    // Earliest stop string wins; at the same position the longer one.
    size_t at = std::string::npos;
    const std::string* hit = nullptr;
    for (const std::string& s : stops_) {
      const size_t p = pending_.find(s);
      if (p == std::string::npos) continue;
      if (!hit || p < at || (p == at && s.size() > hit->size())) at = p, hit = &s;
    }
    if (hit) {
      std::string out = pending_.substr(0, at);
      matched_ = *hit;
      pending_.clear();
      stopped_ = true;
      return out;
    }

    // Hold the longest suffix that is a proper prefix of some stop string.
    size_t hold = 0;
    for (const std::string& s : stops_) {
      for (size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len) {
        if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
          hold = len;
          break;
        }
      }
    }
    const size_t cut = utf8_boundary(pending_, pending_.size() - hold);
    std::string out = pending_.substr(0, cut);
    pending_.erase(0, cut);
    return out;
  }

  // End of generation without a stop: release whatever was held back.
  std::string flush() {
    std::string out = stopped_ ? std::string() : std::move(pending_);
    pending_.clear();
    return out;
  }

  bool stopped() const { return stopped_; }
  const std::string& matched() const { return matched_; }  // the stop string seen, if stopped()

  void reset() {
    pending_.clear();
    matched_.clear();
    stopped_ = false;
  }

  // The largest position <= cut that does not split a UTF-8 character of s.
  static size_t utf8_boundary(const std::string& s, size_t cut) {
    size_t k = cut;
    int cont = 0;
    while (k > 0 && cont < 4 && (static_cast<unsigned char>(s[k - 1]) & 0xC0) == 0x80) --k, ++cont;
    if (k == 0 || cont >= 4) return cut;  // no lead byte in reach: malformed, leave it
    const unsigned char lead = static_cast<unsigned char>(s[k - 1]);
    const size_t len = lead >= 0xF0 && lead < 0xF8 ? 4 : lead >= 0xE0 && lead < 0xF0 ? 3 : lead >= 0xC0 && lead < 0xE0 ? 2 : 1;
    return (k - 1) + len > cut ? k - 1 : cut;  // lead's character runs past cut: cut before it
  }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  std::string matched_;
  bool stopped_ = false;
};

}  // namespace loupe
