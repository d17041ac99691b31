// Chat templates (chat.hpp) against a re-implementation of LLaVA's /
// ShareGPT4V's Conversation.get_prompt(), and the stop-string matcher (stop.hpp).
#include "test_util.hpp"

#include <loupe/text/chat.hpp>
#include <loupe/text/stop.hpp>

using loupe::Conversation;
using loupe::StopMatcher;

namespace {

std::string json_string(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (c == '\n') o += "\\n";
    else if (c == '\t') o += "\\t";
    else o += c;  // UTF-8 bytes go through as they are
  }
  return o + "\"";
}

// Feed the pieces one by one; return everything emitted (flushed at the end).
std::string stream(StopMatcher& m, const std::vector<std::string>& pieces, std::vector<std::string>* emitted = nullptr) {
  std::string all;
  for (const std::string& p : pieces) {
    std::string e = m.push(p);
    if (emitted) emitted->push_back(e);
    all += e;
  }
  return all + m.flush();
}

bool utf8_complete(const std::string& s) {
  // true if s does not end inside a multi-byte character
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (i + len > s.size()) return false;
    i += len;
  }
  return true;
}

}  // namespace

TEST_CASE("template texts and lookup") {
  const auto& v = loupe::chat_template("vicuna_v1");
  CHECK(v.system ==
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions.");
  CHECK(v.roles[0] == "USER");
  CHECK(v.stop() == "</s>");
  CHECK(loupe::chat_template("share4v_v1").system.find("curious human") != std::string::npos);
  CHECK(loupe::chat_template("share4v_v0").stop() == "###");
  try {
    loupe::chat_template("vicuna_v2");
    FAIL("no error for an unknown template");
  } catch (const loupe::Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("vicuna_v2") != std::string::npos);
    for (const auto& t : loupe::chat_templates()) CHECK(msg.find(t.name) != std::string::npos);
  }
  CHECK(loupe::with_image("Describe.") == "<image>\nDescribe.");
  CHECK(loupe::with_image("Hi", true) == "<im_start><image><im_end>\nHi");
}

TEST_CASE("a LLaVA-1.5 prompt, spelled out") {
  Conversation c("vicuna_v1");
  c.add_user(loupe::with_image("What is shown?"));
  c.add_assistant();
  CHECK(c.prompt() ==
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is shown? "
        "ASSISTANT:");
  c.set_reply("A cat.");
  c.add_user("Its colour?");
  c.add_assistant();
  CHECK(c.prompt() ==
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is shown? "
        "ASSISTANT: A cat.</s>USER: Its colour? ASSISTANT:");
  c.set_reply("Grey.");
  CHECK_THROWS_AS(c.set_reply("again"), loupe::Error);  // no open assistant turn any more
}

TEST_CASE("prompts match the Python Conversation (and llava-hf's chat template) for 1-3 turns, with and without image") {
  auto dir = loupe_test::scratch("chat_prompts");
  const std::vector<std::string> names = {"vicuna_v1", "share4v_v1", "share4v_v0", "llava_v1", "llava_v0", "llava_hf"};
  const std::vector<std::string> users = {"Describe this image in detail.",
                                          "What does the sign say? Quote it: \"STOP\" \\ ok",
                                          "Und auf Deutsch? Größe: 3 m — 日本語も。\n2nd line"};
  const std::vector<std::string> replies = {"A red sign on a pole.", "It says \"STOP\".\nNothing else."};

  struct Case {
    std::string name;
    bool image;
    std::vector<std::string> turns;  // user, reply, user, ...
  };
  std::vector<Case> cases;
  for (const auto& name : names)
    for (bool image : {false, true})
      for (int n_users = 1; n_users <= 3; ++n_users)
        for (bool closed : {false, true}) {  // closed: the last reply is present too
          Case k{name, image, {}};
          for (int u = 0; u < n_users; ++u) {
            k.turns.push_back(users[size_t(u)]);
            if (u + 1 < n_users || closed) k.turns.push_back(replies[size_t(u) % replies.size()]);
          }
          cases.push_back(k);
        }

  {
    std::ofstream js(dir / "cases.json", std::ios::binary);
    js << "[\n";
    for (size_t i = 0; i < cases.size(); ++i) {
      js << "{\"template\": " << json_string(cases[i].name) << ", \"image\": " << (cases[i].image ? "true" : "false")
         << ", \"turns\": [";
      for (size_t t = 0; t < cases[i].turns.size(); ++t) js << (t ? ", " : "") << json_string(cases[i].turns[t]);
      js << "]}" << (i + 1 < cases.size() ? ",\n" : "\n");
    }
    js << "]\n";
  }
  loupe_test::run_python("conversation_ref.py",
                         loupe_test::quote((dir / "cases.json").string()) + " " + loupe_test::quote(dir.string()));

  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& k = cases[i];
    Conversation c(k.name);
    for (size_t t = 0; t < k.turns.size(); ++t) {
      if (t % 2 == 0) c.add_user(t == 0 && k.image ? loupe::with_image(k.turns[t]) : k.turns[t]);
      else c.add_assistant(k.turns[t]);
    }
    if (k.turns.size() % 2 == 1) c.add_assistant();
    INFO("case " << i << ": " << k.name << (k.image ? " +image" : "") << ", " << k.turns.size() << " turns");
    CHECK(c.prompt() == loupe_test::slurp(dir / (std::to_string(i) + ".prompt")));
    CHECK(c.stop() == loupe_test::slurp(dir / (std::to_string(i) + ".stop")));
  }
  MESSAGE(cases.size() << " conversations compared");
}

TEST_CASE("StopMatcher: stop string split across pushes") {
  StopMatcher m({"</s>"});
  std::vector<std::string> emitted;
  const std::string all = stream(m, {"Hello", " world<", "/", "s>", " trailing"}, &emitted);
  CHECK(all == "Hello world");
  CHECK(m.stopped());
  CHECK(m.matched() == "</s>");
  CHECK(emitted[0] == "Hello");
  CHECK(emitted[1] == " world");  // "<" held back
  CHECK(emitted[2] == "");        // "</" held back
  CHECK(emitted[3] == "");        // stop found: nothing more
  CHECK(emitted[4] == "");        // after stopping everything is dropped
}

TEST_CASE("StopMatcher: partial prefix that is not a stop is released") {
  StopMatcher m({"</s>"});
  CHECK(m.push("a </") == "a ");
  CHECK(m.push("b>") == "</b>");
  CHECK(m.push("<<") == "<");  // only the last "<" can still start "</s>"
  CHECK(m.push("/x") == "</x");
  CHECK(!m.stopped());
  CHECK(m.push("</s") == "");
  CHECK(m.flush() == "</s");  // generation ended without the stop: release the held text
  CHECK(!m.stopped());
}

TEST_CASE("StopMatcher: several stop strings, earliest wins") {
  StopMatcher m({"###", "</s>", "USER:"});
  CHECK(stream(m, {"one ##", "two </", "s> three ### four"}) == "one ##two ");
  CHECK(m.matched() == "</s>");

  StopMatcher a({"b", "ab"});  // "ab" starts before "b" does, so it is the one matched
  CHECK(stream(a, {"xab"}) == "x");
  CHECK(a.matched() == "ab");

  StopMatcher overlap({"aab"});  // the held suffix must be the longest prefix that fits
  CHECK(stream(overlap, {"a", "a", "a", "b", "c"}) == "a");
  CHECK(overlap.matched() == "aab");

  StopMatcher none({});  // no stops: everything passes straight through
  CHECK(none.push("abc") == "abc");
  StopMatcher empty({""});  // an empty stop is ignored, not an instant stop
  CHECK(empty.push("abc") == "abc");
  CHECK(!empty.stopped());
}

TEST_CASE("StopMatcher: multi-byte UTF-8 is never split") {
  // "é" = C3 A9, "日" = E6 97 A5, "😀" = F0 9F 98 80
  SUBCASE("a character split across pushes is held until complete") {
    StopMatcher m({"</s>"});
    std::vector<std::string> emitted;
    const std::string all = stream(m, {"caf\xC3", "\xA9 \xE6", "\x97", "\xA5!", "\xF0\x9F\x98", "\x80"}, &emitted);
    CHECK(all == "caf\xC3\xA9 \xE6\x97\xA5!\xF0\x9F\x98\x80");
    for (const auto& e : emitted) CHECK(utf8_complete(e));
    CHECK(emitted[0] == "caf");
    CHECK(emitted[1] == "\xC3\xA9 ");
    CHECK(emitted[2] == "");
    CHECK(emitted[3] == "\xE6\x97\xA5!");
  }
  SUBCASE("a multi-byte stop string whose prefix ends mid-character") {
    StopMatcher m({"日本"});
    std::vector<std::string> emitted;
    const std::string all = stream(m, {"x\xE6\x97\xA5\xE6", "\x9C", "\xAC", "y"}, &emitted);
    CHECK(all == "x");
    CHECK(m.stopped());
    for (const auto& e : emitted) CHECK(utf8_complete(e));
  }
  SUBCASE("a false start with multi-byte characters is released whole") {
    StopMatcher m({"日本"});
    CHECK(m.push("\xE6\x97\xA5") == "");
    CHECK(m.push("\xE6\x9C") == "");  // could still be 本 (E6 9C AC)
    CHECK(m.push("\xAD") == "\xE6\x97\xA5\xE6\x9C\xAD");  // 札, not 本
    CHECK(!m.stopped());
  }
  SUBCASE("malformed bytes do not stall the stream") {
    StopMatcher m({"</s>"});
    CHECK(m.push("a\x80\x80\x80\x80\x80") == "a\x80\x80\x80\x80\x80");
    CHECK(m.push("\xE2" "b") == "\xE2" "b");
  }
}
