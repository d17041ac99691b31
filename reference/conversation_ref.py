#!/usr/bin/env python3
"""Reference for include/loupe/chat.hpp: a re-implementation of the Conversation
class of LLaVA (llava/conversation.py) and ShareGPT4V (share4v/conversation.py),
get_prompt() for SeparatorStyle.SINGLE and .TWO, with their templates, and the
way LLaVA's CLI (llava/serve/cli.py) builds the first message and the stop string;
and "llava_hf", the chat_template.json of transformers' LLaVA-1.5 checkpoints
(llava-hf/llava-1.5-7b-hf), transliterated from its Jinja (no jinja2 here).

  conversation_ref.py CASES.json OUTDIR
      CASES.json: list of {"template": name, "image": bool, "turns": [user, reply, user, ...]}
      where the last user turn is followed by an open assistant turn (None) unless
      the turn list ends with a reply. Writes OUTDIR/<i>.prompt and OUTDIR/<i>.stop.
"""
import dataclasses
import json
import os
import sys
from enum import Enum, auto
from typing import List, Optional


class SeparatorStyle(Enum):
    SINGLE = auto()
    TWO = auto()


@dataclasses.dataclass
class Conversation:
    system: str
    roles: List[str]
    messages: list
    sep_style: SeparatorStyle
    sep: str
    sep2: Optional[str] = None

    def copy(self):
        return dataclasses.replace(self, messages=[list(m) for m in self.messages])

    def append_message(self, role, message):
        self.messages.append([role, message])

    def get_prompt(self):
        if self.sep_style == SeparatorStyle.SINGLE:
            out = self.system + self.sep
            for role, message in self.messages:
                out += f"{role}: {message}{self.sep}" if message else f"{role}:"
            return out
        if self.sep_style == SeparatorStyle.TWO:
            seps = (self.sep, self.sep2)
            out = self.system + seps[0]
            for i, (role, message) in enumerate(self.messages):
                out += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
            return out
        raise ValueError(self.sep_style)


SYSTEM_USER = ("A chat between a curious user and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the user's questions.")
SYSTEM_HUMAN = ("A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's questions.")

TEMPLATES = {
    # LLaVA conv_vicuna_v1
    "vicuna_v1": Conversation(SYSTEM_USER, ["USER", "ASSISTANT"], [], SeparatorStyle.TWO, " ", "</s>"),
    # ShareGPT4V conv_share4v_v1 / LLaVA conv_llava_v1
    "share4v_v1": Conversation(SYSTEM_HUMAN, ["USER", "ASSISTANT"], [], SeparatorStyle.TWO, " ", "</s>"),
    "llava_v1": Conversation(SYSTEM_HUMAN, ["USER", "ASSISTANT"], [], SeparatorStyle.TWO, " ", "</s>"),
    # ShareGPT4V conv_share4v_v0 / LLaVA conv_llava_v0 (sep2 left at its None default)
    "share4v_v0": Conversation(SYSTEM_HUMAN, ["Human", "Assistant"], [], SeparatorStyle.SINGLE, "###"),
    "llava_v0": Conversation(SYSTEM_HUMAN, ["Human", "Assistant"], [], SeparatorStyle.SINGLE, "###"),
}

DEFAULT_IMAGE_TOKEN = "<image>"

# llava-hf/llava-1.5-7b-hf chat_template.json:
#   {% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}
#   {% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}
#   {% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}
#   {% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}
# (the assistant's text goes through {% generation %}, which only marks it). Replies end with EOS: no stop text.
def llava_hf_prompt(case):
    messages = []
    for i, text in enumerate(case["turns"]):
        content = [{"type": "text", "text": text}]
        if i == 0 and case["image"]:
            content.insert(0, {"type": "image"})
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": content})
    out = ""
    for message in messages:
        if message["role"] != "system":
            out += message["role"].upper() + ": "
        for content in message["content"]:
            if content["type"] == "image":
                out += "<image>\n"
        for content in message["content"]:
            if content["type"] == "text":
                out += content["text"] + " "
    if len(case["turns"]) % 2 == 1:  # add_generation_prompt
        out += "ASSISTANT:"
    return out, ""


def build(case):
    if case["template"] == "llava_hf":
        return llava_hf_prompt(case)
    conv = TEMPLATES[case["template"]].copy()
    image = case["image"]
    turns = case["turns"]
    for i, text in enumerate(turns):
        if i % 2 == 0:
            if image:  # the CLI's first message: image token, newline, text
                text = DEFAULT_IMAGE_TOKEN + "\n" + text
                image = False
            conv.append_message(conv.roles[0], text)
        else:
            conv.append_message(conv.roles[1], text)
    if len(turns) % 2 == 1:
        conv.append_message(conv.roles[1], None)
    stop = conv.sep if conv.sep_style != SeparatorStyle.TWO else conv.sep2
    return conv.get_prompt(), stop


def main():
    cases = json.load(open(sys.argv[1], encoding="utf-8"))
    outdir = sys.argv[2]
    for i, case in enumerate(cases):
        prompt, stop = build(case)
        with open(os.path.join(outdir, f"{i}.prompt"), "wb") as f:
            f.write(prompt.encode("utf-8"))
        with open(os.path.join(outdir, f"{i}.stop"), "wb") as f:
            f.write(stop.encode("utf-8"))


if __name__ == "__main__":
    main()
