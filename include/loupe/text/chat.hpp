// Conversation templates as LLaVA (llava/conversation.py) and ShareGPT4V
// (share4v/conversation.py) define them, and the prompt text their
// Conversation.get_prompt() builds, byte for byte. The prompt keeps the literal
// "<image>" marker; the tokenizer side splices the image embeddings in there.
#pragma once
#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"

namespace loupe {

// LLaVA's DEFAULT_IMAGE_TOKEN and the start/end markers used by checkpoints
// trained with mm_use_im_start_end (LLaVA-1.5 and ShareGPT4V are not).
inline constexpr std::string_view kImageToken = "<image>";
inline constexpr std::string_view kImStartToken = "<im_start>";
inline constexpr std::string_view kImEndToken = "<im_end>";

struct ChatTemplate {
  enum Style { Single, Two };  // LLaVA's SeparatorStyle.SINGLE / .TWO
  std::string name;
  std::string system;
  std::array<std::string, 2> roles;  // user, assistant
  Style style = Two;
  std::string sep;
  std::string sep2;  // Two only: closes assistant turns
  bool eos_only = false;  // replies end with the EOS token alone, no stop text

  // What ends a reply in generated text (LLaVA's CLI: sep unless style is TWO,
  // then sep2); empty for eos_only.
  const std::string& stop() const {
    static const std::string none;
    return eos_only ? none : style == Two ? sep2 : sep;
  }
};

// Every known template. vicuna_v1 is what LLaVA-1.5's evaluation scripts use;
// share4v_* are ShareGPT4V's; llava_v0 / llava_v1 are LLaVA's names for the
// same texts as share4v_v0 / share4v_v1 (its CLI picks llava_v1 for "v1" models);
// llava_hf is the chat_template.json of transformers' LLaVA-1.5 checkpoints
// (llava-hf/llava-1.5-7b-hf): no system text, "USER: <image>\n{q} ASSISTANT:",
// every message followed by a space, replies ended by EOS.
inline const std::vector<ChatTemplate>& chat_templates() {
  static const std::string sys_user =
      "A chat between a curious user and an artificial intelligence assistant. "
      "The assistant gives helpful, detailed, and polite answers to the user's questions.";
  static const std::string sys_human =
      "A chat between a curious human and an artificial intelligence assistant. "
      "The assistant gives helpful, detailed, and polite answers to the human's questions.";
  static const std::vector<ChatTemplate> all = {
      {"vicuna_v1", sys_user, {"USER", "ASSISTANT"}, ChatTemplate::Two, " ", "</s>"},
      {"share4v_v1", sys_human, {"USER", "ASSISTANT"}, ChatTemplate::Two, " ", "</s>"},
      {"share4v_v0", sys_human, {"Human", "Assistant"}, ChatTemplate::Single, "###", ""},
      {"llava_v1", sys_human, {"USER", "ASSISTANT"}, ChatTemplate::Two, " ", "</s>"},
      {"llava_v0", sys_human, {"Human", "Assistant"}, ChatTemplate::Single, "###", ""},
      {"llava_hf", "", {"USER", "ASSISTANT"}, ChatTemplate::Two, " ", " ", true},
  };
  return all;
}

inline const ChatTemplate& chat_template(std::string_view name) {
  std::string known;
  for (const ChatTemplate& t : chat_templates()) {
    if (t.name == name) return t;
    known += (known.empty() ? "" : ", ") + t.name;
  }
  fail("unknown chat template '", name, "' (known: ", known, ")");
}

// The first user message of an image conversation, built as LLaVA's CLI does:
// the image marker, a newline, then the user's text.
inline std::string with_image(std::string_view prompt, bool im_start_end = false) {
  std::string m;
  if (im_start_end) m.append(kImStartToken).append(kImageToken).append(kImEndToken);
  else m.append(kImageToken);
  return m.append("\n").append(prompt);
}

struct Conversation {
  ChatTemplate tmpl;
  // (role index: 0 user, 1 assistant; text). An empty text renders as the bare
  // "ROLE:" that generation continues from.
  std::vector<std::pair<int, std::string>> messages;

  explicit Conversation(ChatTemplate t) : tmpl(std::move(t)) {}
  explicit Conversation(std::string_view name) : tmpl(chat_template(name)) {}

  void add_user(std::string text) { messages.emplace_back(0, std::move(text)); }
  // No argument: the open assistant turn the model is to complete.
  void add_assistant(std::string text = {}) { messages.emplace_back(1, std::move(text)); }

  // Put the generated reply into the open assistant turn, ready for the next user turn.
  void set_reply(std::string text) {
    if (messages.empty() || messages.back().first != 1 || !messages.back().second.empty())
      fail("Conversation::set_reply: the last message is not an open assistant turn");
    messages.back().second = std::move(text);
  }

  const std::string& stop() const { return tmpl.stop(); }

  // Conversation.get_prompt() for SINGLE and TWO. As there, TWO alternates sep
  // and sep2 by message position (not by role). No system text: no separator
  // before the first message either (llava_hf).
  std::string prompt() const {
    std::string r = tmpl.system.empty() ? std::string() : tmpl.system + tmpl.sep;
    for (size_t i = 0; i < messages.size(); ++i) {
      const auto& [role, text] = messages[i];
      if (role != 0 && role != 1) fail("Conversation: role index ", role, " is not 0 or 1");
      r += tmpl.roles[size_t(role)];
      if (text.empty()) {
        r += ":";
        continue;
      }
      r += ": ";
      r += text;
      r += tmpl.style == ChatTemplate::Two && i % 2 == 1 ? tmpl.sep2 : tmpl.sep;
    }
    return r;
  }
};

}  // namespace loupe
