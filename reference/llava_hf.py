#!/usr/bin/python3
"""Hugging Face transformers' own LLaVA-1.5 layout (LlavaForConditionalGeneration, as in
llava-hf/llava-1.5-7b-hf): tensor names of both generations, config defaults, tokenizer /
processor files, a loader and the golden pipeline. No transformers import; run with
/usr/bin/python3. vlm_fixture.py (writer) and lora_ref.py (PEFT adapters) build on it.

Sources (huggingface/transformers unless noted):
  src/transformers/models/llava/modeling_llava.py
      LlavaForConditionalGeneration (>= 4.52): self.model = LlavaModel (vision_tower =
      AutoModel.from_config(vision_config) = CLIPVisionModel, multi_modal_projector,
      language_model = AutoModel(text_config) = LlamaModel) and self.lm_head;
      _checkpoint_conversion_mapping = {"^language_model.model": "model.language_model",
      "^vision_tower": "model.vision_tower", "^multi_modal_projector":
      "model.multi_modal_projector", "^language_model.lm_head": "lm_head"} maps the older
      names (transformers < 4.52: vision_tower, multi_modal_projector, language_model =
      LlamaForCausalLM) onto the new ones when loading.
      LlavaMultiModalProjector: linear_1 (D * n_feature_layers -> H, bias =
      multimodal_projector_bias), ACT2FN[projector_hidden_act] ("gelu" = exact erf GELU),
      linear_2 (H -> H).
      get_image_features: hidden_states = vision_tower(pixels, output_hidden_states=True)
      .hidden_states (index 0 = embeddings after pre_layrnorm; post_layernorm never used);
      vision_feature_layer int: hidden_states[layer], list: concat of the layers on the
      last axis; strategy "default" drops the CLS row ([:, 1:]), "full" keeps it.
      forward: the image features replace (masked_scatter) the positions whose id is
      image_token_index (32000) - the processor has already repeated <image> once per
      feature; positions 0..T-1 over the whole sequence; logits = lm_head(h).
  src/transformers/modeling_utils.py save_pretrained (4.52 .. 4.5x) and
      core_model_loading.revert_weight_conversion (v5) map the new names BACK to the legacy
      ones when saving, so hub checkpoints keep the legacy names; the new names reach disk
      when a state_dict() is saved directly (torch.save / safetensors save_file, trainers).
  src/transformers/models/llava/configuration_llava.py: LlavaConfig defaults (LLAVA_DEFAULTS).
  src/transformers/models/llama/configuration_llama.py, clip/configuration_clip.py: the
      LlamaConfig / CLIPVisionConfig defaults a reader must apply to keys left out of
      text_config / vision_config (config.json is written with to_diff_dict: only values
      that differ from the defaults are kept, see llava-hf/llava-1.5-7b-hf config.json).
  src/transformers/models/llava/convert_llava_weights_to_hf.py: original LLaVA ->
      llava-hf: model.mm_projector.{0,2} -> multi_modal_projector.linear_{1,2}, model.* ->
      language_model.model.*, lm_head -> language_model.lm_head, the CLIP tower ->
      vision_tower.vision_model.*; adds tokens <image> (32000, special, normalized False)
      and <pad> (32001), pad_token_id 32001, image_token_index 32000, and resizes the
      embeddings to 32002 padded to a multiple of 64 = 32064 rows (new rows sampled around
      the mean embedding).
  src/transformers/models/llava/processing_llava.py: LlavaProcessor expands <image> to
      (H/p)*(W/p) + num_additional_image_tokens (1) tokens, minus 1 for strategy "default".
  src/transformers/models/llava/image_processing_llava.py: LlavaImageProcessor = the
      CLIPImageProcessor steps with an optional do_pad (pad_to_square with background
      tuple(int(x*255) for x in image_mean), centred) before resize. llava-1.5-7b-hf ships a
      plain CLIPImageProcessor: resize shortest_edge 336 (bicubic), center crop 336, rescale,
      normalize - NO padding to square (unlike the original LLaVA-1.5 'pad').
  llava-1.5-7b-hf chat_template.json (CHAT_TEMPLATE): "USER: <image>\\n{question} ASSISTANT:";
      the tokenizer adds BOS (add_bos_token true). Each text segment between added tokens is
      sentencepiece-encoded with its own dummy prefix (the Dec-2023 tokenizer.json has the
      Prepend("▁") normalizer): [1, 3148, 1001, 29901, 29871, 32000, 29871, 13, ...] -
      the same ids as LLaVA's tokenizer_image_token with 32000 in place of -200 (the
      modeling_llava docstring's decoded "USER:  \\nWhat's ..." shows both 29871s).
  peft src/peft/utils/save_and_load.py get_peft_model_state_dict: saved adapter keys are
      "base_model.model." + the module path in the PEFT-wrapped model (so the generation's
      names), adapter name removed; modules_to_save saved as base_model.model.<module>.<param>
      (ModulesToSaveWrapper.adapter_state_dict strips "modules_to_save.<adapter>.").

Canonical names (the llava15 names vision_ref.py / llama_ref.py use):
  LLM      model.embed_tokens.weight, model.layers.N.*, model.norm.weight, lm_head.weight
  projector model.mm_projector.0.{weight,bias} (= linear_1), model.mm_projector.2.* (= linear_2)
  tower    vision_model.*  (CLIPVisionModel names)
"""

import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import vision_ref  # noqa: E402

LEGACY, NEW = "legacy", "v4.52"
GENERATIONS = (LEGACY, NEW)

# checkpoint name prefixes of each generation -> canonical prefix
PREFIXES = OrderedDict([
    (LEGACY, OrderedDict([("tower", "vision_tower."), ("proj", "multi_modal_projector."),
                          ("lm", "language_model.model."), ("head", "language_model.lm_head")])),
    (NEW, OrderedDict([("tower", "model.vision_tower."), ("proj", "model.multi_modal_projector."),
                       ("lm", "model.language_model."), ("head", "lm_head")])),
])
CANON = {"tower": "", "lm": "model.", "head": "lm_head"}
PROJ_CANON = {"linear_1": "model.mm_projector.0", "linear_2": "model.mm_projector.2"}
PROJ_HF = {v: k for k, v in PROJ_CANON.items()}

IMAGE_TOKEN_INDEX = 32000
PAD_TOKEN_INDEX = 32001
TOKENIZER_PIECES = 32000
PADDED_VOCAB = 32064

# LlamaConfig() defaults (configuration_llama.py); head_dim None -> hidden_size // heads,
# num_key_value_heads None -> num_attention_heads
LLAMA_DEFAULTS = OrderedDict([
    ("vocab_size", 32000), ("hidden_size", 4096), ("intermediate_size", 11008),
    ("num_hidden_layers", 32), ("num_attention_heads", 32), ("num_key_value_heads", None),
    ("hidden_act", "silu"), ("max_position_embeddings", 2048), ("initializer_range", 0.02),
    ("rms_norm_eps", 1e-6), ("use_cache", True), ("pad_token_id", None), ("bos_token_id", 1),
    ("eos_token_id", 2), ("pretraining_tp", 1), ("tie_word_embeddings", False),
    ("rope_theta", 10000.0), ("rope_scaling", None), ("attention_bias", False),
    ("attention_dropout", 0.0), ("mlp_bias", False), ("head_dim", None)])
# CLIPVisionConfig() defaults (configuration_clip.py)
CLIP_VISION_DEFAULTS = OrderedDict([
    ("hidden_size", 768), ("intermediate_size", 3072), ("projection_dim", 512),
    ("num_hidden_layers", 12), ("num_attention_heads", 12), ("num_channels", 3),
    ("image_size", 224), ("patch_size", 32), ("hidden_act", "quick_gelu"),
    ("layer_norm_eps", 1e-5), ("attention_dropout", 0.0), ("initializer_range", 0.02),
    ("initializer_factor", 1.0)])
# LlavaConfig() defaults (configuration_llava.py); a missing vision_config is CLIP-L/336
# (1024 wide, 4096 MLP, 24 layers, 16 heads, 336/14, projection_dim 768), a missing
# text_config is LlamaConfig()
LLAVA_DEFAULTS = OrderedDict([
    ("image_token_index", 32000), ("projector_hidden_act", "gelu"),
    ("vision_feature_select_strategy", "default"), ("vision_feature_layer", -2),
    ("image_seq_length", 576), ("multimodal_projector_bias", True),
    ("tie_word_embeddings", False)])

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# llava-hf/llava-1.5-7b-hf chat_template.json
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


# ------------------------------------------------------------------ names

def canonical_name(name):
    """transformers name (either generation; tensor or module) -> (canonical name, generation).
    Names that are neither (already canonical, or foreign) come back unchanged with None."""
    for gen, pre in PREFIXES.items():
        for part, p in pre.items():
            if part == "head":
                if name == p or name.startswith(p + "."):
                    return CANON["head"] + name[len(p):], gen
                continue
            if not name.startswith(p):
                continue
            rest = name[len(p):]
            if part == "proj":
                head, _, tail = rest.partition(".")
                if head not in PROJ_CANON:
                    raise ValueError("unexpected projector tensor %s" % name)
                return PROJ_CANON[head] + ("." + tail if tail else ""), gen
            return CANON[part] + rest, gen
    return name, None


def hf_name(canon, gen):
    """canonical name (tensor or module) -> the transformers name of generation gen."""
    pre = PREFIXES[gen]
    for c, h in PROJ_CANON.items():
        if canon == h or canon.startswith(h + "."):
            return pre["proj"] + c + canon[len(h):]
    if canon == "lm_head" or canon.startswith("lm_head."):
        return pre["head"] + canon[len("lm_head"):]
    if canon.startswith("model."):
        return pre["lm"] + canon[len("model."):]
    if canon.startswith("vision_model."):
        return pre["tower"] + canon
    raise ValueError("no transformers name for %s" % canon)


def generation_of(keys):
    """LEGACY or NEW from a checkpoint's names (lm_head.weight alone is ambiguous: it is
    also the canonical name, so the other prefixes decide)."""
    gens = {canonical_name(k)[1] for k in keys if not k.startswith("lm_head")}
    gens.discard(None)
    if len(gens) != 1:
        raise ValueError("not a LlavaForConditionalGeneration state dict (generations %s)"
                         % sorted(gens))
    return gens.pop()


def to_hf_state_dict(llm, proj, tower, gen):
    """Canonical dicts -> OrderedDict in LlavaForConditionalGeneration's module order
    (vision_tower, multi_modal_projector, language model, lm_head)."""
    sd = OrderedDict()
    for k, v in tower.items():
        sd[hf_name(k, gen)] = v
    for k, v in proj.items():
        sd[hf_name(k, gen)] = v
    for k, v in llm.items():
        if k != "lm_head.weight":
            sd[hf_name(k, gen)] = v
    sd[hf_name("lm_head.weight", gen)] = llm["lm_head.weight"]
    return sd


def split_state_dict(sd):
    """transformers state dict -> (llm+projector canonical dict, tower canonical dict, gen)."""
    gen = generation_of(sd.keys())
    llm, tower = OrderedDict(), OrderedDict()
    for k, v in sd.items():
        c, g = canonical_name(k)
        if g is None:
            raise ValueError("unexpected tensor %s in a %s checkpoint" % (k, gen))
        if g != gen:
            raise ValueError("mixed naming: %s in a %s checkpoint" % (k, gen))
        (tower if c.startswith("vision_model.") else llm)[c] = v
    return llm, tower, gen


# ------------------------------------------------------------------ config

def text_config_full(cfg):
    """text_config with LlamaConfig defaults applied."""
    t = OrderedDict(LLAMA_DEFAULTS)
    t.update(cfg.get("text_config") or {})
    if t["num_key_value_heads"] is None:
        t["num_key_value_heads"] = t["num_attention_heads"]
    if t["head_dim"] is None:
        t["head_dim"] = t["hidden_size"] // t["num_attention_heads"]
    return t


def vision_config_full(cfg):
    v = OrderedDict(CLIP_VISION_DEFAULTS)
    v.update(cfg.get("vision_config") or {})
    return v


def top_config_full(cfg):
    c = OrderedDict(LLAVA_DEFAULTS)
    c.update({k: v for k, v in cfg.items() if k not in ("text_config", "vision_config")})
    return c


def omitted_defaults(cfg):
    """{"text_config": {key: default}, "vision_config": {...}, "top": {...}}: the keys this
    config.json leaves out, with the values a reader must use (only keys that matter)."""
    t, v = cfg.get("text_config") or {}, cfg.get("vision_config") or {}
    tf = text_config_full(cfg)
    out = OrderedDict()
    out["text_config"] = OrderedDict(
        (k, tf[k] if k in ("num_key_value_heads", "head_dim") else d)
        for k, d in LLAMA_DEFAULTS.items() if k not in t)
    out["vision_config"] = OrderedDict((k, d) for k, d in CLIP_VISION_DEFAULTS.items()
                                       if k not in v)
    out["top"] = OrderedDict((k, d) for k, d in LLAVA_DEFAULTS.items() if k not in cfg)
    return out


def feature_layers(cfg):
    layer = top_config_full(cfg)["vision_feature_layer"]
    return [int(layer)] if isinstance(layer, int) else [int(x) for x in layer]


def flat_config(cfg):
    """A llava15-style flat config (text keys + mm_* keys) for vision_ref / llama_ref."""
    t, v, top = text_config_full(cfg), vision_config_full(cfg), top_config_full(cfg)
    strategy = top["vision_feature_select_strategy"]
    if strategy not in ("default", "full"):
        raise ValueError("vision_feature_select_strategy %r" % strategy)
    layer = top["vision_feature_layer"]
    f = OrderedDict()
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps",
              "rope_theta", "rope_scaling", "hidden_act", "bos_token_id", "eos_token_id"):
        f[k] = t[k]
    if (cfg.get("text_config") or {}).get("head_dim") is not None:
        f["head_dim"] = t["head_dim"]
    # LlavaConfig forwards text_config.tie_word_embeddings when the top-level one is False
    f["tie_word_embeddings"] = bool(top["tie_word_embeddings"] or t["tie_word_embeddings"])
    f["mm_hidden_size"] = v["hidden_size"]
    f["mm_vision_select_layer"] = layer
    f["mm_vision_select_feature"] = "patch" if strategy == "default" else "cls_patch"
    f["mm_projector_type"] = "mlp2x_gelu"
    f["projector_hidden_act"] = top["projector_hidden_act"]
    f["multimodal_projector_bias"] = bool(top["multimodal_projector_bias"])
    f["image_token_index"] = top["image_token_index"]
    f["image_aspect_ratio"] = "square"
    return f


def make_config(text, vision, style, dtype_name, top):
    """config.json as transformers writes it (to_diff_dict): text_config / vision_config keep
    only values that differ from LlamaConfig / CLIPVisionConfig defaults (plus model_type).
    style LEGACY mimics llava-hf/llava-1.5-7b-hf (transformers 4.36.0.dev0: ignore_index,
    top-level vocab_size, text _name_or_path/architectures/torch_dtype, vision vocab_size);
    NEW mimics a 4.52 save (image_seq_length, multimodal_projector_bias, text head_dim).
    text / vision: full dicts of the values used; top: LlavaConfig keys (all written)."""
    t = OrderedDict()
    tfull = OrderedDict(LLAMA_DEFAULTS)
    tfull.update(text)
    if tfull["num_key_value_heads"] is None:
        tfull["num_key_value_heads"] = tfull["num_attention_heads"]
    if style == NEW and tfull["head_dim"] is None:
        tfull["head_dim"] = tfull["hidden_size"] // tfull["num_attention_heads"]
    for k, val in tfull.items():
        d = LLAMA_DEFAULTS.get(k, object())
        if k == "num_key_value_heads":
            d = 32  # the default object's value (LlamaConfig() resolves None -> 32)
        if k == "head_dim":
            d = 128
        if val is not None and val != d:
            t[k] = val
    t["model_type"] = "llama"
    if style == LEGACY:
        t["_name_or_path"] = "lmsys/vicuna-7b-v1.5"
        t["architectures"] = ["LlamaForCausalLM"]
        t["torch_dtype"] = dtype_name
    else:
        t["torch_dtype"] = dtype_name
    v = OrderedDict()
    for k, val in vision.items():
        if k in CLIP_VISION_DEFAULTS and val == CLIP_VISION_DEFAULTS[k]:
            continue
        v[k] = val
    v["model_type"] = "clip_vision_model"
    if style == LEGACY:
        v["vocab_size"] = 32000
    c = OrderedDict()
    c["architectures"] = ["LlavaForConditionalGeneration"]
    if style == LEGACY:
        c["ignore_index"] = -100
    c["model_type"] = "llava"
    c["pad_token_id"] = PAD_TOKEN_INDEX
    c["text_config"] = OrderedDict(sorted(t.items()))
    c["torch_dtype"] = dtype_name
    c["transformers_version"] = "4.36.0.dev0" if style == LEGACY else "4.52.4"
    c["vision_config"] = OrderedDict(sorted(v.items()))
    c.update(top)
    if style == LEGACY:
        c["vocab_size"] = tfull["vocab_size"]
    return OrderedDict(sorted(c.items()))


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _added(content):
    return OrderedDict([("content", content), ("lstrip", False), ("normalized", False),
                        ("rstrip", False), ("single_word", False), ("special", True)])


def write_tokenizer_files(d, tokenizer_model):
    """The slow-tokenizer files of llava-hf/llava-1.5-7b-hf (tokenizer.json, the fast
    tokenizer, is not written). Returns the file names."""
    import shutil
    shutil.copyfile(tokenizer_model, os.path.join(d, "tokenizer.model"))
    dec = OrderedDict([("0", _added("<unk>")), ("1", _added("<s>")), ("2", _added("</s>")),
                       (str(IMAGE_TOKEN_INDEX), _added("<image>")),
                       (str(PAD_TOKEN_INDEX), _added("<pad>"))])
    _write_json(os.path.join(d, "tokenizer_config.json"), OrderedDict([
        ("add_bos_token", True), ("add_eos_token", False), ("added_tokens_decoder", dec),
        ("bos_token", "<s>"), ("clean_up_tokenization_spaces", False), ("eos_token", "</s>"),
        ("legacy", False), ("model_max_length", 1000000000000000019884624838656),
        ("pad_token", "<pad>"), ("padding_side", "left"), ("processor_class", "LlavaProcessor"),
        ("sp_model_kwargs", {}), ("tokenizer_class", "LlamaTokenizer"),
        ("trust_remote_code", False), ("unk_token", "<unk>"),
        ("use_default_system_prompt", False)]))
    _write_json(os.path.join(d, "added_tokens.json"),
                OrderedDict([("<image>", IMAGE_TOKEN_INDEX), ("<pad>", PAD_TOKEN_INDEX)]))
    tok = lambda s: OrderedDict([("content", s), ("lstrip", False), ("normalized", False),
                                 ("rstrip", False), ("single_word", False)])
    _write_json(os.path.join(d, "special_tokens_map.json"), OrderedDict([
        ("bos_token", tok("<s>")), ("eos_token", tok("</s>")), ("pad_token", tok("<pad>")),
        ("unk_token", tok("<unk>"))]))
    _write_json(os.path.join(d, "generation_config.json"), OrderedDict([
        ("_from_model_config", True), ("bos_token_id", 1), ("eos_token_id", 2),
        ("pad_token_id", PAD_TOKEN_INDEX), ("transformers_version", "4.36.0.dev0")]))
    _write_json(os.path.join(d, "chat_template.json"),
                OrderedDict([("chat_template", CHAT_TEMPLATE)]))
    return ["tokenizer.model", "tokenizer_config.json", "added_tokens.json",
            "special_tokens_map.json", "generation_config.json", "chat_template.json"]


def preprocessor_config(size, crop, overrides=None):
    """llava-1.5-7b-hf preprocessor_config.json (CLIPImageProcessor). With "do_pad": true in
    overrides it becomes a LlavaImageProcessor (pad to square with the mean colour first)."""
    c = OrderedDict([("crop_size", OrderedDict([("height", crop), ("width", crop)])),
                     ("do_center_crop", True), ("do_convert_rgb", True), ("do_normalize", True),
                     ("do_rescale", True), ("do_resize", True), ("image_mean", CLIP_MEAN),
                     ("image_processor_type", "CLIPImageProcessor"), ("image_std", CLIP_STD),
                     ("processor_class", "LlavaProcessor"), ("resample", 3),
                     ("rescale_factor", 0.00392156862745098),
                     ("size", OrderedDict([("shortest_edge", size)]))])
    c.update(overrides or {})
    if c.get("do_pad"):
        c["image_processor_type"] = "LlavaImageProcessor"
    return OrderedDict(sorted(c.items()))


def processor_config(patch_size, strategy):
    """processor_config.json of the llava-hf repos (LlavaProcessor kwargs)."""
    return OrderedDict([("image_token", "<image>"), ("num_additional_image_tokens", 1),
                        ("patch_size", patch_size), ("processor_class", "LlavaProcessor"),
                        ("vision_feature_select_strategy", strategy)])


def read_preprocessor(d):
    """(pad, size, crop, mean, std) from a llava-hf preprocessor_config.json."""
    with open(os.path.join(d, "preprocessor_config.json")) as f:
        pc = json.load(f)
    size, crop = pc.get("size", {"shortest_edge": 224}), pc.get("crop_size", 224)
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height"))
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("width"))
    return (bool(pc.get("do_pad", False)), int(size), int(crop),
            list(pc.get("image_mean", CLIP_MEAN)), list(pc.get("image_std", CLIP_STD)))


# ------------------------------------------------------------------ prompt

def prompt_text(question):
    """chat_template applied to [{"role": "user", "content": [image, text]}] with
    add_generation_prompt: 'USER: <image>\\n' + question + ' ASSISTANT:'."""
    return "USER: <image>\n" + question + " ASSISTANT:"


def prompt_ids(prompt, sp_or_path):
    """ids with -200 at the image (loupe's / LLaVA's convention), BOS first."""
    return vision_ref.tokenizer_image_token(prompt, sp_or_path)


def hf_ids(ids, n_expand=1, image_token_index=IMAGE_TOKEN_INDEX):
    """-200 -> image_token_index repeated n_expand times (LlavaProcessor expansion)."""
    out = []
    for t in ids:
        out.extend([image_token_index] * n_expand if t == vision_ref.IMAGE_TOKEN_INDEX else [t])
    return out


# ------------------------------------------------------------------ model

def is_llava_hf(d):
    p = os.path.join(d, "config.json")
    if not os.path.exists(p):
        return False
    with open(p) as f:
        c = json.load(f)
    return c.get("model_type") == "llava" and ("text_config" in c or "vision_config" in c
                                               or "LlavaForConditionalGeneration"
                                               in (c.get("architectures") or []))


class Model:
    """A loaded llava-hf directory: cfg (config.json), flat (llava15-style), vcfg (CLIP vision
    config with defaults), llm (canonical LLM + projector tensors), tower (canonical
    vision_model.* tensors), gen (LEGACY or NEW)."""

    def __init__(self, cfg, llm, tower, gen):
        self.cfg, self.llm, self.tower, self.gen = cfg, llm, tower, gen
        self.flat = flat_config(cfg)
        self.vcfg = vision_config_full(cfg)
        self.layers = feature_layers(cfg)
        self.strategy = top_config_full(cfg)["vision_feature_select_strategy"]


def load(d, sd=None):
    import hf_layout
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f, object_pairs_hook=OrderedDict)
    if sd is None:
        sd = hf_layout.load_state_dict(d)
    llm, tower, gen = split_state_dict(sd)
    return Model(cfg, llm, tower, gen)


def select(hs, layers, strategy):
    sel = [hs[l] if strategy == "full" else hs[l][1:] for l in layers]
    return sel[0] if len(sel) == 1 else torch.cat(sel, dim=-1)


def projector(proj, x, act_name="gelu", lin=None, cdtype=torch.float32):
    """LlavaMultiModalProjector on canonical tensors (model.mm_projector.{0,2}.*).
    lin(module, x) -> x @ W^T (+ LoRA) may replace the plain matmul (lora_ref.py)."""
    act = vision_ref._act(act_name)
    x = x.to(cdtype)
    for i, m in enumerate(("model.mm_projector.0", "model.mm_projector.2")):
        if i:
            x = act(x)
        w = proj[m + ".weight"].to(cdtype)
        y = x @ w.T if lin is None else lin(m, x)
        b = proj.get(m + ".bias")
        x = y + b.to(cdtype) if b is not None else y
    return x


def image_features(m, pixels, cdtype=torch.float32):
    hs = vision_ref.clip_vision_forward(m.tower, m.vcfg, pixels, "vision_model.", cdtype)
    feats = projector(m.llm, select(hs, m.layers, m.strategy), m.flat["projector_hidden_act"],
                      cdtype=cdtype)
    return hs, feats


def run_pipeline(m, pixels, ids, cdtype=torch.float32):
    """Goldens like vision_ref.run_pipeline (ids carry -200 at the image)."""
    with torch.no_grad():
        hs, feats = image_features(m, pixels, cdtype)
        lcfg, w = vision_ref.llm_compute_weights(m.llm, m.flat, cdtype)
        emb = vision_ref.splice_embeddings(w["model.embed_tokens.weight"], ids, feats)
        logits = vision_ref.llm_logits_from_embeds(w, lcfg, emb, cdtype)
    f32 = lambda t: t.to(torch.float32).numpy()
    return {"vision_hidden_states": f32(hs), "image_features": f32(feats),
            "inputs_embeds": f32(emb), "logits": f32(logits[-1]), "features_compute": feats}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Goldens for an existing llava-hf "
                                 "(LlavaForConditionalGeneration) directory.")
    ap.add_argument("--model", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--image")
    src.add_argument("--pixels")
    ap.add_argument("--prompt", default="Describe the image in detail.",
                    help="question, wrapped as 'USER: <image>\\n{q} ASSISTANT:'")
    ap.add_argument("--greedy", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    m = load(a.model)
    os.makedirs(a.out, exist_ok=True)
    if a.image:
        import preprocess_ref
        pad, size, crop, mean, std = read_preprocessor(a.model)
        pixels = preprocess_ref.preprocess(a.image, pad=pad, size=size, crop=crop, mean=mean,
                                           std=std)
        np.save(os.path.join(a.out, "pixel_values.npy"), np.asarray(pixels, np.float32))
    else:
        pixels = np.load(a.pixels)
    prompt = prompt_text(a.prompt)
    ids = prompt_ids(prompt, os.path.join(a.model, "tokenizer.model"))
    r = run_pipeline(m, pixels, ids)
    for k in ("vision_hidden_states", "image_features", "inputs_embeds", "logits"):
        np.save(os.path.join(a.out, k + ".npy"), r[k])
    _write_json(os.path.join(a.out, "prompt_ids.json"), {"prompt": prompt, "ids": ids})
    if a.greedy:
        toks, margins = vision_ref.greedy_from_embeds(m.llm, m.flat, ids, r["features_compute"],
                                                      a.greedy, (m.flat["eos_token_id"],))
        _write_json(os.path.join(a.out, "greedy.json"), {"greedy_ids": toks, "margins": margins})
    print("%s (%s names): features %s, logits %s, argmax %d"
          % (a.out, m.gen, r["image_features"].shape, r["logits"].shape, int(r["logits"].argmax())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
