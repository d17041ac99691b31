#!/usr/bin/python3
"""Write a tiny random LLaVA-1.5 / ShareGPT4V checkpoint in a published layout,
plus golden outputs computed by vision_ref.py / llama_ref.py from the weights as
stored (rounded to the stored dtype, upcast to float32).

Run with Debian's /usr/bin/python3 (torch, numpy, PIL, sentencepiece).

Layouts (--layout):
  sharegpt4v              Lin-Chen/ShareGPT4V-7B style.
      DIR/llm/  config.json (Share4VLlamaForCausalLM, model_type share4v,
                mm_vision_tower "Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12"),
                pytorch_model-0000{1,2}-of-00002.bin (bf16) + pytorch_model.bin.index.json,
                tokenizer.model (LLaMA-2), tokenizer_config.json, special_tokens_map.json,
                generation_config.json.  Keys: model.embed_tokens.weight,
                model.layers.N.*, model.norm.weight, model.mm_projector.{0,2}.{weight,bias},
                lm_head.weight.
      DIR/vit/  ShareGPT4V-7B_Pretrained_vit-large336-l12 style CLIPVisionModel:
                config.json (clip_vision_model), preprocessor_config.json
                (CLIPImageProcessor format: size {"shortest_edge"}, crop_size {h,w}),
                pytorch_model.bin (bf16, single file) with vision_model.* keys
                (incl. the int64 embeddings.position_ids buffer).
  sharegpt4v-safetensors  same, LLM as BF16 model-0000{1,2}-of-00002.safetensors +
                model.safetensors.index.json; tower as one F32 model.safetensors.
  llava15                 liuhaotian/llava-v1.5-7b style.
      DIR/llm/  config.json (LlavaLlamaForCausalLM, model_type llava,
                mm_vision_tower "openai/clip-vit-large-patch14-336"), f16 sharded .bin
                (2 shards), tokenizer files. With --tower embedded|both the frozen tower
                is inside as model.vision_tower.vision_tower.vision_model.* (as a
                DeepSpeed-trained LLaVA saves it); the released liuhaotian checkpoint
                has no tower inside (--tower separate).
      DIR/vit/  openai/clip-vit-large-patch14-336 style: config.json of a CLIPModel
                (model_type clip, vision_config + text_config), preprocessor_config.json
                in the legacy CLIPFeatureExtractor format (size/crop_size ints), and with
                --tower separate|both a pytorch_model.bin (f32) of a whole CLIPModel:
                vision_model.*, a small text_model.*, visual_projection.weight,
                text_projection.weight and the 0-d logit_scale.
                With --tower embedded the vit dir holds the configs only.
  llava15-safetensors     same with safetensors: LLM one F32 model.safetensors, tower
                dir model.safetensors (F32); default --tower separate (released layout).

  llava-hf                transformers' own layout, LlavaForConditionalGeneration as in
                llava-hf/llava-1.5-7b-hf (names of transformers < 4.52, still what
                save_pretrained writes). ONE directory DIR/llm/ (no vit/):
                config.json (model_type llava; text_config / vision_config keep only the
                values that differ from LlamaConfig / CLIPVisionConfig defaults - see
                ref/meta.json "defaults_applied"), model-0000{1,2}-of-00002.safetensors (F16)
                + model.safetensors.index.json, tokenizer.model + tokenizer_config.json
                (added_tokens_decoder 32000 <image>, 32001 <pad>), added_tokens.json,
                special_tokens_map.json, generation_config.json, chat_template.json,
                preprocessor_config.json (CLIPImageProcessor, no pad), processor_config.json.
                Keys: vision_tower.vision_model.* (whole CLIPVisionModel incl.
                post_layernorm, no position_ids buffer), multi_modal_projector.linear_{1,2}.
                {weight,bias}, language_model.model.{embed_tokens,layers.N.*,norm},
                language_model.lm_head.weight. embed_tokens / lm_head have 32064 rows (32000
                pieces + <image> + <pad>, padded to 64; rows 0..31999 are exactly the
                llava15 draws of the same seed and sizes).
  llava-hf-new            the same model with transformers >= 4.52 module names
                (modeling_llava.py _checkpoint_conversion_mapping): model.vision_tower.
                vision_model.*, model.multi_modal_projector.*, model.language_model.
                {embed_tokens,layers.N.*,norm}, lm_head.weight; one BF16 pytorch_model.bin;
                config as 4.52 writes it (image_seq_length, multimodal_projector_bias,
                text head_dim; rms_norm_eps left out = the 1e-6 default).
  llava-hf options: --feature-strategy default|full (vision_feature_select_strategy:
                default drops the CLS row -> N features, full keeps it -> N+1);
                --config-overrides keys: "vision" / "vision_config" -> vision_config,
                "text_config" or any LlamaConfig key -> text_config, "preprocessor" ->
                preprocessor_config.json ({"do_pad": true} makes it a LlavaImageProcessor
                that pads to square first, goldens follow), anything else -> the top level
                (vision_feature_layer: int or list of ints, projector_hidden_act,
                multimodal_projector_bias, image_token_index, ...);
                --also-original DIR2 [--original-vocab orig|padded]: the same stored
                weights in the llava15 layout (DIR2/llm f16/bf16 sharded .bin with
                model.mm_projector.{0,2}; DIR2/vit CLIPModel .bin f32; DIR2/ref goldens of
                that layout: vicuna_v1 prompt, pad) - the run fails unless the llava15
                pipeline on DIR2, fed the llava-hf pixels and ids, reproduces the llava-hf
                goldens (logits compared on DIR2's rows).
  Goldens of the llava-hf layouts: pixel_values per preprocessor_config.json (no pad unless
  do_pad); prompt 'USER: <image>\n{question} ASSISTANT:' (chat_template.json, BOS added);
  prompt_ids.json keeps "ids" with -200 at the image (as the other layouts) and adds
  "image_token_index": 32000 (the config's id), "image_sentinel": -200, "ids_hf" (-200 ->
  32000) and "ids_processor" (32000 repeated n_image_features times, as LlavaProcessor
  expands it); image_features.npy [N or N+1, Ht] per the strategy / feature layer(s);
  logits.npy [32064]; greedy.json; meta.json with the generation, tensor prefixes, files,
  the config and the defaults a reader must apply.

Goldens in DIR/ref/ (float32 .npy, C order):
  pixel_values.npy          [3, S, S]   preprocess_ref.preprocess (pad per image_aspect_ratio)
  vision_hidden_states.npy  [L+1, N+1, Dv] (0 = after pre_layrnorm; l+1 = after layer l;
                                         no post_layernorm)
  image_features.npy        [N, Ht]     projector(hidden_states[select_layer][1:])
  inputs_embeds.npy         [T, Ht]     spliced LLM input (T = len(ids) - 1 + N)
  logits.npy                [V]         last position
  prompt_ids.json           {"prompt", "question", "ids" (with -200), "image_token_index",
                             "image_pos", "n_image_features", "n_positions"}
  greedy.json               {"greedy_ids", "margins"} (--greedy N tokens, default 4)
  meta.json                 everything about the fixture (layout, dtypes, configs, files)
--pixels-from NPY skips preprocessing and uses the given pixel_values.

Presets (--preset; default per layout in DEFAULT_PRESET): tiny, odd, full336.
--config-overrides JSON: {"vision": {...CLIP vision config keys...},
  "preprocessor": {...}, any other key -> LLM config.json (text + mm_* keys)}.

Examples:
  vlm_fixture.py --layout sharegpt4v --out /tmp/s4v --seed 1 --self-check
  vlm_fixture.py --layout all --out /tmp/vlm --seed 1    # /tmp/vlm/<layout>/... (4 layouts)
  vlm_fixture.py --layout all-hf --out /tmp/vlmhf --seed 1   # llava-hf, llava-hf-new
  vlm_fixture.py --layout llava-hf --out /tmp/lhf --seed 1 --self-check
      --also-original /tmp/lhf-orig          (one line)
  vlm_fixture.py --layout llava-hf-new --out /tmp/lhfn --seed 2 --feature-strategy full
      --config-overrides '{"vision_feature_layer": -1, "preprocessor": {"do_pad": true}}'
Sources for the llava-hf layouts: see llava_hf.py's docstring (transformers
src/transformers/models/llava/{modeling,configuration,processing,image_processing}_llava.py,
convert_llava_weights_to_hf.py; llava-hf/llava-1.5-7b-hf config.json, chat_template.json).
  vlm_fixture.py --layout llava15 --out /tmp/l15 --seed 2 --preset full336
      --image ../shared/images/skimage_chelsea.png --prompt "What is this?"   (one line)
"""

import argparse
import copy
import json
import os
import shutil
import struct
import sys
import time
from collections import OrderedDict

import numpy as np
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import hf_layout  # noqa: E402
import llama_ref  # noqa: E402
import llava_hf  # noqa: E402
import vision_ref  # noqa: E402

_REPO = os.path.dirname(_HERE)
SHARED = os.path.join(os.path.dirname(_REPO), "shared")
DEFAULT_TOKENIZER = os.path.join(SHARED, "tokenizers", "llama2.model")
DEFAULT_IMAGE = os.path.join(SHARED, "images", "bouguereau_the_shepherdess_1889.jpg")
DEFAULT_QUESTION = "Describe the image in detail."

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

LAYOUTS = {
    # llm: format, shards, dtype; vit: format, dtype; tower placement
    "sharegpt4v": dict(kind="sharegpt4v", fmt="bin", shards=2, dtype="bf16",
                       vit_fmt="bin", vit_dtype="bf16", tower="separate"),
    "sharegpt4v-safetensors": dict(kind="sharegpt4v", fmt="safetensors", shards=2, dtype="bf16",
                                   vit_fmt="safetensors", vit_dtype="f32", tower="separate"),
    "llava15": dict(kind="llava15", fmt="bin", shards=2, dtype="f16",
                    vit_fmt="bin", vit_dtype="f32", tower="both"),
    "llava15-safetensors": dict(kind="llava15", fmt="safetensors", shards=1, dtype="f32",
                                vit_fmt="safetensors", vit_dtype="f32", tower="separate"),
}
# transformers' own layout (LlavaForConditionalGeneration, llava-hf/llava-1.5-7b-hf): one
# directory, tower inside; gen = tensor naming generation (llava_hf.LEGACY / llava_hf.NEW)
HF_LAYOUTS = {
    "llava-hf": dict(kind="llava-hf", gen="legacy", fmt="safetensors", shards=2, dtype="f16"),
    "llava-hf-new": dict(kind="llava-hf", gen="v4.52", fmt="bin", shards=1, dtype="bf16"),
}
DEFAULT_PRESET = {"sharegpt4v": "tiny", "sharegpt4v-safetensors": "full336",
                  "llava15": "odd", "llava15-safetensors": "tiny",
                  "llava-hf": "tiny", "llava-hf-new": "odd"}

PRESETS = {
    # 84/14 -> 6x6 = 36 patches, MHA text
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                    num_attention_heads=4, image_size=84, patch_size=14,
                    layer_norm_eps=1e-5, projection_dim=24),
        text=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5)),
    # odd width 40 with 5 heads (head_dim 8), 112/14 -> 64 patches, GQA 4/2 text
    "odd": dict(
        vision=dict(hidden_size=40, intermediate_size=100, num_hidden_layers=4,
                    num_attention_heads=5, image_size=112, patch_size=14,
                    layer_norm_eps=1e-5, projection_dim=24),
        text=dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5)),
    # the real 336/14 geometry: 24x24 = 576 patches + CLS = 577 positions
    "full336": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, image_size=336, patch_size=14,
                    layer_norm_eps=1e-5, projection_dim=24),
        text=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5)),
}


# ------------------------------------------------------------------ configs

def llm_config(kind, text, mm_hidden, dtype_name, overrides):
    """config.json of the multimodal LLM, keys as in the published files (sorted)."""
    c = {
        "_name_or_path": "ShareGPT4V-7B" if kind == "sharegpt4v" else "./checkpoints/llava-v1.5-7b",
        "architectures": ["Share4VLlamaForCausalLM" if kind == "sharegpt4v"
                          else "LlavaLlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "freeze_mm_mlp_adapter": False,
        "hidden_act": "silu",
        "hidden_size": text["hidden_size"],
        "image_aspect_ratio": "pad",
        "initializer_range": 0.02,
        "intermediate_size": text["intermediate_size"],
        "max_position_embeddings": 4096,
        "mm_hidden_size": mm_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "model_type": "share4v" if kind == "sharegpt4v" else "llava",
        "num_attention_heads": text["num_attention_heads"],
        "num_hidden_layers": text["num_hidden_layers"],
        "num_key_value_heads": text["num_key_value_heads"],
        "pad_token_id": 0,
        "pretraining_tp": 1,
        "rms_norm_eps": text["rms_norm_eps"],
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
        "transformers_version": "4.31.0",
        "tune_mm_mlp_adapter": False,
        "use_cache": True,
        "use_mm_proj": True,
        "vocab_size": 32000,
    }
    if kind == "sharegpt4v":
        c.update({"image_grid_pinpoints": None, "mm_projector_lr": None,
                  "mm_vision_tower": "Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12",
                  "tune_entire_model": False, "tune_vision_tower": False,
                  "vision_tower_lr": None})
    else:
        c.update({"freeze_mm_vision_resampler": False, "max_length": 4096,
                  "mm_resampler_type": None,
                  "mm_vision_tower": "openai/clip-vit-large-patch14-336",
                  "tune_mm_vision_resampler": False, "unfreeze_mm_vision_tower": False})
    c.update(overrides)
    return OrderedDict(sorted(c.items()))


def clip_vision_config(vision, dtype_name, name):
    c = OrderedDict()
    c["_name_or_path"] = name
    c["architectures"] = ["CLIPVisionModel"]
    c["attention_dropout"] = 0.0
    c["dropout"] = 0.0
    c["hidden_act"] = vision.get("hidden_act", "quick_gelu")
    c["hidden_size"] = vision["hidden_size"]
    c["image_size"] = vision["image_size"]
    c["initializer_factor"] = 1.0
    c["initializer_range"] = 0.02
    c["intermediate_size"] = vision["intermediate_size"]
    c["layer_norm_eps"] = vision["layer_norm_eps"]
    c["model_type"] = "clip_vision_model"
    c["num_attention_heads"] = vision["num_attention_heads"]
    c["num_channels"] = vision.get("num_channels", 3)
    c["num_hidden_layers"] = vision["num_hidden_layers"]
    c["patch_size"] = vision["patch_size"]
    c["projection_dim"] = vision["projection_dim"]
    c["torch_dtype"] = dtype_name
    c["transformers_version"] = "4.31.0"
    for k, v in vision.items():  # extra keys from overrides
        if k not in c:
            c[k] = v
    return c


CLIP_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, vocab_size=64, max_position_embeddings=8)


def clip_model_config(vision, dtype_name):
    """openai/clip-vit-large-patch14-336 style CLIPModel config.json."""
    v = clip_vision_config(vision, dtype_name, "")
    for k in ("_name_or_path", "architectures", "torch_dtype", "transformers_version"):
        v.pop(k)
    t = OrderedDict([("attention_dropout", 0.0), ("bos_token_id", 0), ("dropout", 0.0),
                     ("eos_token_id", 2), ("hidden_act", "quick_gelu"),
                     ("hidden_size", CLIP_TEXT["hidden_size"]),
                     ("intermediate_size", CLIP_TEXT["intermediate_size"]),
                     ("layer_norm_eps", 1e-5),
                     ("max_position_embeddings", CLIP_TEXT["max_position_embeddings"]),
                     ("model_type", "clip_text_model"),
                     ("num_attention_heads", CLIP_TEXT["num_attention_heads"]),
                     ("num_hidden_layers", CLIP_TEXT["num_hidden_layers"]),
                     ("pad_token_id", 1), ("projection_dim", vision["projection_dim"]),
                     ("vocab_size", CLIP_TEXT["vocab_size"])])
    c = OrderedDict()
    c["_name_or_path"] = "openai/clip-vit-large-patch14-336"
    c["architectures"] = ["CLIPModel"]
    c["initializer_factor"] = 1.0
    c["logit_scale_init_value"] = 2.6592
    c["model_type"] = "clip"
    c["projection_dim"] = vision["projection_dim"]
    c["text_config"] = t
    c["text_config_dict"] = OrderedDict([("hidden_size", t["hidden_size"]),
                                         ("intermediate_size", t["intermediate_size"]),
                                         ("num_attention_heads", t["num_attention_heads"]),
                                         ("num_hidden_layers", t["num_hidden_layers"]),
                                         ("projection_dim", t["projection_dim"])])
    c["torch_dtype"] = dtype_name
    c["transformers_version"] = "4.21.3"
    c["vision_config"] = v
    c["vision_config_dict"] = OrderedDict([(k, v[k]) for k in (
        "hidden_size", "image_size", "intermediate_size", "num_attention_heads",
        "num_hidden_layers", "patch_size", "projection_dim")])
    return c


def preprocessor_config(style, size, crop, overrides):
    if style == "legacy":  # openai/clip-vit-large-patch14-336
        c = OrderedDict([("crop_size", crop), ("do_center_crop", True), ("do_normalize", True),
                         ("do_resize", True), ("feature_extractor_type", "CLIPFeatureExtractor"),
                         ("image_mean", CLIP_MEAN), ("image_std", CLIP_STD), ("resample", 3),
                         ("size", size)])
    else:  # CLIPImageProcessor (ShareGPT4V tower dir)
        c = OrderedDict([("crop_size", OrderedDict([("height", crop), ("width", crop)])),
                         ("do_center_crop", True), ("do_convert_rgb", True),
                         ("do_normalize", True), ("do_rescale", True), ("do_resize", True),
                         ("image_mean", CLIP_MEAN),
                         ("image_processor_type", "CLIPImageProcessor"),
                         ("image_std", CLIP_STD), ("resample", 3),
                         ("rescale_factor", 0.00392156862745098),
                         ("size", OrderedDict([("shortest_edge", size)]))])
    c.update(overrides)
    return c


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_tokenizer_files(d, tokenizer_model):
    shutil.copyfile(tokenizer_model, os.path.join(d, "tokenizer.model"))
    tok = lambda s: OrderedDict([("__type", "AddedToken"), ("content", s), ("lstrip", False),
                                 ("normalized", False), ("rstrip", False),
                                 ("single_word", False)])
    write_json(os.path.join(d, "tokenizer_config.json"), OrderedDict([
        ("add_bos_token", True), ("add_eos_token", False), ("bos_token", tok("<s>")),
        ("clean_up_tokenization_spaces", False), ("eos_token", tok("</s>")),
        ("legacy", False), ("model_max_length", 4096), ("pad_token", None),
        ("padding_side", "right"), ("sp_model_kwargs", {}),
        ("tokenizer_class", "LlamaTokenizer"), ("unk_token", tok("<unk>"))]))
    write_json(os.path.join(d, "special_tokens_map.json"), OrderedDict([
        ("bos_token", tok("<s>")), ("eos_token", tok("</s>")), ("pad_token", "<unk>"),
        ("unk_token", tok("<unk>"))]))
    write_json(os.path.join(d, "generation_config.json"), OrderedDict([
        ("bos_token_id", 1), ("eos_token_id", 2), ("max_length", 4096), ("pad_token_id", 0),
        ("transformers_version", "4.31.0")]))


# ------------------------------------------------------------------ random weights

def _gen(seed, salt):
    return torch.Generator().manual_seed(int(seed) * 7919 + salt)


def random_vision_weights(vision, seed, prefix="vision_model."):
    """CLIPVisionModel state dict (HF key order), scaled to keep activations O(1);
    norms and biases clearly non-trivial so a dropped bias / norm shows."""
    g = _gen(seed, 11)
    D, I = vision["hidden_size"], vision["intermediate_size"]
    C, P = vision.get("num_channels", 3), vision["patch_size"]
    L = vision["num_hidden_layers"]
    npos = (vision["image_size"] // P) ** 2 + 1

    rn = lambda *s: torch.randn(*s, generator=g)
    lin = lambda o, i, gain=1.0: rn(o, i) * (gain / i ** 0.5)
    bias = lambda n, s=0.1: rn(n) * s
    nw = lambda n: 1.0 + 0.25 * rn(n)

    sd = OrderedDict()
    e = prefix + "embeddings."
    sd[e + "class_embedding"] = rn(D) * 0.5
    sd[e + "position_ids"] = torch.arange(npos, dtype=torch.int64)[None, :]
    sd[e + "patch_embedding.weight"] = rn(D, C, P, P) * (1.0 / (C * P * P) ** 0.5)
    sd[e + "position_embedding.weight"] = rn(npos, D) * 0.5
    sd[prefix + "pre_layrnorm.weight"] = nw(D)
    sd[prefix + "pre_layrnorm.bias"] = bias(D, 0.2)
    for l in range(L):
        p = prefix + "encoder.layers.%d." % l
        for name, gain in (("k_proj", 1.5), ("v_proj", 1.0), ("q_proj", 1.5),
                           ("out_proj", 0.7)):
            sd[p + "self_attn.%s.weight" % name] = lin(D, D, gain)
            sd[p + "self_attn.%s.bias" % name] = bias(D)
        sd[p + "layer_norm1.weight"] = nw(D)
        sd[p + "layer_norm1.bias"] = bias(D, 0.2)
        sd[p + "mlp.fc1.weight"] = lin(I, D, 1.5)
        sd[p + "mlp.fc1.bias"] = bias(I, 0.2)
        sd[p + "mlp.fc2.weight"] = lin(D, I, 0.7)
        sd[p + "mlp.fc2.bias"] = bias(D)
        sd[p + "layer_norm2.weight"] = nw(D)
        sd[p + "layer_norm2.bias"] = bias(D, 0.2)
    sd[prefix + "post_layernorm.weight"] = nw(D)
    sd[prefix + "post_layernorm.bias"] = bias(D, 0.2)
    return sd


def random_clip_model_weights(vision, seed):
    """Whole CLIPModel state dict: a small text tower + projections + the vision tower."""
    g = _gen(seed, 23)
    rn = lambda *s: torch.randn(*s, generator=g)
    T = CLIP_TEXT
    H, V, Pn = T["hidden_size"], T["vocab_size"], T["max_position_embeddings"]
    sd = OrderedDict()
    sd["logit_scale"] = torch.tensor(2.6592)
    sd["text_model.embeddings.position_ids"] = torch.arange(Pn, dtype=torch.int64)[None, :]
    sd["text_model.embeddings.token_embedding.weight"] = rn(V, H) * 0.5
    sd["text_model.embeddings.position_embedding.weight"] = rn(Pn, H) * 0.5
    for l in range(T["num_hidden_layers"]):
        p = "text_model.encoder.layers.%d." % l
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sd[p + "self_attn.%s.weight" % name] = rn(H, H) / H ** 0.5
            sd[p + "self_attn.%s.bias" % name] = rn(H) * 0.1
        for n in ("layer_norm1", "layer_norm2"):
            sd[p + n + ".weight"] = 1.0 + 0.1 * rn(H)
            sd[p + n + ".bias"] = 0.1 * rn(H)
        sd[p + "mlp.fc1.weight"] = rn(T["intermediate_size"], H) / H ** 0.5
        sd[p + "mlp.fc1.bias"] = rn(T["intermediate_size"]) * 0.1
        sd[p + "mlp.fc2.weight"] = rn(H, T["intermediate_size"]) / T["intermediate_size"] ** 0.5
        sd[p + "mlp.fc2.bias"] = rn(H) * 0.1
    sd["text_model.final_layer_norm.weight"] = 1.0 + 0.1 * rn(H)
    sd["text_model.final_layer_norm.bias"] = 0.1 * rn(H)
    sd.update(random_vision_weights(vision, seed, "vision_model."))
    sd["visual_projection.weight"] = rn(vision["projection_dim"], vision["hidden_size"]) * 0.2
    sd["text_projection.weight"] = rn(vision["projection_dim"], H) * 0.2
    return sd


def random_projector_weights(d_in, d_out, seed, ptype="mlp2x_gelu"):
    g = _gen(seed, 37)
    rn = lambda *s: torch.randn(*s, generator=g)
    sd = OrderedDict()
    if ptype == "linear":
        sd["model.mm_projector.weight"] = rn(d_out, d_in) / d_in ** 0.5
        sd["model.mm_projector.bias"] = rn(d_out) * 0.1
        return sd
    depth = int(ptype[3:ptype.index("x")])
    for i in range(depth):
        fan_in = d_in if i == 0 else d_out
        sd["model.mm_projector.%d.weight" % (2 * i)] = rn(d_out, fan_in) * (1.0 / fan_in ** 0.5)
        sd["model.mm_projector.%d.bias" % (2 * i)] = rn(d_out) * 0.2
    return sd


# ------------------------------------------------------------------ independent readers

_ST_NP = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4", "BF16": "<u2"}


def read_safetensors_indep(path):
    """Minimal safetensors reader (independent of hf_layout's) for the self-check."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        body = f.read()
    out = {}
    for k, info in hdr.items():
        if k == "__metadata__":
            continue
        b, e = info["data_offsets"]
        a = np.frombuffer(body[b:e], dtype=_ST_NP[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":  # bf16 -> f32 by shifting into the high half
            t = torch.from_numpy((a.astype(np.uint32) << 16).view(np.float32).copy())
            out[k] = t.to(torch.bfloat16)
        else:
            out[k] = torch.from_numpy(a.copy())
    return out


def load_dir_indep(d):
    files = sorted(os.listdir(d))
    sd = {}
    idx = [f for f in files if f.endswith(".index.json")]
    if idx:
        wm = json.load(open(os.path.join(d, idx[0])))["weight_map"]
        shards = sorted(set(wm.values()))
    else:
        shards = [f for f in ("model.safetensors", "pytorch_model.bin") if f in files]
        wm = None
    for s in shards:
        p = os.path.join(d, s)
        part = read_safetensors_indep(p) if s.endswith(".safetensors") else \
            torch.load(p, map_location="cpu")
        sd.update(part)
    if wm is not None:
        assert set(wm) == set(sd), "index/shards key mismatch in %s" % d
    return sd


# ------------------------------------------------------------------ pixels

def write_goldens(ref_dir, pixels, r, prompt, question, ids):
    """The pipeline goldens of a LLaVA-layout run r (vision_ref.run_pipeline) in
    ref_dir: the .npy files and prompt_ids.json; returns the number of image features."""
    N = r["image_features"].shape[0]
    np.save(os.path.join(ref_dir, "pixel_values.npy"), pixels)
    for k in ("vision_hidden_states", "image_features", "inputs_embeds", "logits"):
        np.save(os.path.join(ref_dir, k + ".npy"), np.ascontiguousarray(r[k]))
    write_json(os.path.join(ref_dir, "prompt_ids.json"), OrderedDict([
        ("prompt", prompt), ("question", question), ("ids", ids),
        ("image_token_index", vision_ref.IMAGE_TOKEN_INDEX),
        ("image_pos", ids.index(vision_ref.IMAGE_TOKEN_INDEX)),
        ("n_image_features", N), ("n_positions", len(ids) - 1 + N)]))
    return N


def input_pixels(a, pre, pad, ref_dir):
    """(image path or None, pixel_values): --pixels-from, else --image (default:
    the shared test image, or a synthetic one) preprocessed."""
    if a.pixels_from:
        return None, np.ascontiguousarray(np.load(a.pixels_from).astype(np.float32))
    image = a.image
    if image is None:
        image = DEFAULT_IMAGE if os.path.exists(DEFAULT_IMAGE) else \
            synth_image(os.path.join(ref_dir, "input.png"), a.seed)
    return image, make_pixels(image, pre, pad, ref_dir)


def make_pixels(image_path, pre, pad, outdir):
    import preprocess_ref
    size, crop = pre["size"], pre["crop_size"]
    if isinstance(size, dict):
        size = size["shortest_edge"]
    if isinstance(crop, dict):
        crop = crop["height"]
    px = preprocess_ref.preprocess(image_path, pad=pad, size=int(size), crop=int(crop),
                                   mean=list(pre["image_mean"]), std=list(pre["image_std"]))
    return np.ascontiguousarray(np.asarray(px, dtype=np.float32))


def synth_image(path, seed, w=97, h=61):
    """Deterministic non-square test image (used when no --image and no ../shared)."""
    from PIL import Image
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255.0 / w, y * 255.0 / h, (x + y) * 127.0 / (w + h)], -1)
    img = np.clip(base + rs.randint(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


# ------------------------------------------------------------------ main

def deep_update(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_update(dst[k], v)
        else:
            dst[k] = v


def build(a):
    t_start = time.time()
    lay = dict(LAYOUTS[a.layout])
    kind = lay["kind"]
    for k in ("dtype", "vit_dtype", "tower", "shards"):
        if getattr(a, k) is not None:
            lay[k] = getattr(a, k)
    if kind == "sharegpt4v" and lay["tower"] != "separate":
        raise SystemExit("sharegpt4v layouts keep the tower in vit/ only (--tower separate)")
    preset = copy.deepcopy(PRESETS[a.preset or DEFAULT_PRESET[a.layout]])
    ov = json.loads(a.config_overrides) if a.config_overrides else {}
    vision = preset["vision"]
    deep_update(vision, ov.pop("vision", {}))
    pre_ov = ov.pop("preprocessor", {})
    text = preset["text"]
    for k in list(text):
        if k in ov:
            text[k] = ov[k]

    out = os.path.abspath(a.out)
    llm_dir, vit_dir, ref_dir = (os.path.join(out, s) for s in ("llm", "vit", "ref"))
    for d in (llm_dir, vit_dir, ref_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)

    dt_llm = hf_layout.dtype_config_name(lay["dtype"])
    dt_vit = hf_layout.dtype_config_name(lay["vit_dtype"])
    D = vision["hidden_size"]
    cfg = llm_config(kind, text, D, dt_llm, ov)
    if cfg["mm_hidden_size"] != D:
        raise SystemExit("mm_hidden_size must equal the vision hidden_size")
    lcfg = llama_ref.full_config(cfg)
    llama_ref.check_config(lcfg)

    # --- weights (float32 masters) ---
    llm_sd = llama_ref.random_weights(lcfg, a.seed)          # model.* + lm_head
    lm_head = llm_sd.pop("lm_head.weight")
    proj_sd = random_projector_weights(D, cfg["hidden_size"], a.seed, cfg["mm_projector_type"])
    tower_in_llm = lay["tower"] in ("embedded", "both")
    tower_in_vit = lay["tower"] in ("separate", "both")
    if kind == "llava15":
        vit_sd = random_clip_model_weights(vision, a.seed)
    else:
        vit_sd = random_vision_weights(vision, a.seed)
    if a.no_position_ids:  # transformers >= 4.31 made the buffer non-persistent
        vit_sd = OrderedDict((k, v) for k, v in vit_sd.items()
                             if not k.endswith("embeddings.position_ids"))
    if tower_in_llm and tower_in_vit:
        # both copies must hold the same values whichever one a loader picks: round the
        # master to the coarser of the two stored dtypes first
        for dt in (lay["dtype"], lay["vit_dtype"]):
            t = hf_layout.parse_dtype(dt)
            vit_sd = OrderedDict((k, v.to(t).float() if v.is_floating_point() else v)
                                 for k, v in vit_sd.items())
    full = OrderedDict(llm_sd)
    if tower_in_llm:  # LlavaMetaModel order: embed, layers, norm, vision_tower, mm_projector
        for k, v in vit_sd.items():
            if k.startswith("vision_model."):
                full[vision_ref.EMBEDDED_TOWER_PREFIX + k[len("vision_model."):]] = v
    full.update(proj_sd)
    full["lm_head.weight"] = lm_head

    # --- write the checkpoint ---
    hf_layout.write_config(llm_dir, cfg)
    stored_llm = hf_layout.save_state_dict(llm_dir, full, fmt=lay["fmt"], shards=lay["shards"],
                                           dtype=lay["dtype"], order=a.shard_order)
    write_tokenizer_files(llm_dir, a.tokenizer)
    if kind == "llava15":
        hf_layout.write_config(vit_dir, clip_model_config(vision, dt_vit))
        pre = preprocessor_config("legacy", vision["image_size"], vision["image_size"], pre_ov)
    else:
        hf_layout.write_config(vit_dir, clip_vision_config(
            vision, dt_vit, "ShareGPT4V-7B_Pretrained_vit-large336-l12"))
        pre = preprocessor_config("processor", vision["image_size"], vision["image_size"], pre_ov)
    write_json(os.path.join(vit_dir, "preprocessor_config.json"), pre)
    stored_vit = None
    if tower_in_vit:
        stored_vit = hf_layout.save_state_dict(vit_dir, vit_sd, fmt=lay["vit_fmt"], shards=1,
                                               dtype=lay["vit_dtype"])
    t_write = time.time()

    # --- goldens from the stored (rounded) weights ---
    if stored_vit is not None:
        tower_sd, tower_prefix = stored_vit, "vision_model."
    else:
        tower_sd, tower_prefix = stored_llm, vision_ref.EMBEDDED_TOWER_PREFIX
    pad = cfg["image_aspect_ratio"] == "pad"
    image, pixels = input_pixels(a, pre, pad, ref_dir)
    S = vision["image_size"]
    if pixels.shape != (3, S, S):
        raise SystemExit("pixel_values shape %s != (3, %d, %d)" % (pixels.shape, S, S))
    prompt = vision_ref.vicuna_v1_prompt(a.prompt)
    ids = vision_ref.tokenizer_image_token(prompt, a.tokenizer)
    cdtype = torch.float64 if a.compute == "f64" else torch.float32
    r = vision_ref.run_pipeline(stored_llm, cfg, tower_sd, vision, tower_prefix, pixels, ids,
                                cdtype)
    N = write_goldens(ref_dir, pixels, r, prompt, a.prompt, ids)
    gen, margins = [], []
    if a.greedy:
        gen, margins = vision_ref.greedy_from_embeds(
            stored_llm, cfg, ids, r["features_compute"], a.greedy, (cfg["eos_token_id"],),
            cdtype)
        write_json(os.path.join(ref_dir, "greedy.json"),
                   OrderedDict([("greedy_ids", gen), ("margins", margins)]))
    t_ref = time.time()

    meta = OrderedDict([
        ("layout", a.layout), ("seed", a.seed), ("preset", a.preset or DEFAULT_PRESET[a.layout]),
        ("llm_dir", "llm"), ("vit_dir", "vit"), ("tower", lay["tower"]),
        ("tower_weights", "vit" if tower_in_vit else "llm"),
        ("llm_format", lay["fmt"]), ("llm_shards", lay["shards"]), ("llm_dtype", dt_llm),
        ("vit_format", lay["vit_fmt"] if tower_in_vit else None),
        ("vit_dtype", dt_vit if tower_in_vit else None),
        ("image", os.path.abspath(image) if image else None),
        ("pixels_from", a.pixels_from), ("pad", pad), ("compute", a.compute),
        ("vision_config", vision), ("llm_config", cfg), ("preprocessor_config", pre),
        ("n_patches", N), ("sequence_length", len(ids) - 1 + N),
        ("logits_argmax", int(np.argmax(r["logits"]))),
        ("logits_absmax", float(np.abs(r["logits"]).max())),
        ("seconds", OrderedDict([("write", round(t_write - t_start, 3)),
                                 ("reference", round(t_ref - t_write, 3))])),
    ])
    write_json(os.path.join(ref_dir, "meta.json"), meta)
    print("%s: wrote %s in %.2fs (ref %.2fs): tower %s, %d patches, T=%d, "
          "hidden absmax %.2f, features absmax %.2f, logits absmax %.2f, argmax %d, greedy %s"
          % (a.layout, out, t_ref - t_start, t_ref - t_write, list(r["vision_hidden_states"].shape),
             N, len(ids) - 1 + N, np.abs(r["vision_hidden_states"]).max(),
             np.abs(r["image_features"]).max(), np.abs(r["logits"]).max(),
             int(np.argmax(r["logits"])), gen))

    if a.self_check:
        self_check(out, a, cfg, vision, pixels, ids, r, stored_llm, stored_vit, tower_in_llm,
                   cdtype)
    return 0


def self_check(out, a, cfg, vision, pixels, ids, r, stored_llm, stored_vit, tower_in_llm,
               cdtype):
    """Reload from disk with independent readers, compare bits, recompute, compare outputs."""
    t0 = time.time()
    llm_dir, vit_dir = os.path.join(out, "llm"), os.path.join(out, "vit")
    problems = []

    def same_sd(disk, mem, what):
        if set(disk) != set(mem):
            problems.append("%s: key sets differ: %s" % (what, sorted(set(disk) ^ set(mem))[:5]))
            return
        for k in mem:
            x, y = disk[k], mem[k]
            if x.dtype != y.dtype or list(x.shape) != list(y.shape) or not torch.equal(x, y):
                problems.append("%s: %s differs (%s %s vs %s %s)"
                                % (what, k, x.dtype, list(x.shape), y.dtype, list(y.shape)))

    disk_llm = load_dir_indep(llm_dir)
    same_sd(disk_llm, stored_llm, "llm")
    disk_vit = None
    if stored_vit is not None:
        disk_vit = load_dir_indep(vit_dir)
        same_sd(disk_vit, stored_vit, "vit")
    # config round trip, and the tower geometry from vit/config.json alone
    cfg_disk = json.load(open(os.path.join(llm_dir, "config.json")))
    vcfg_disk = vision_ref.vision_config_of(json.load(open(os.path.join(vit_dir, "config.json"))))
    if disk_vit is not None:
        tsd, tpre = disk_vit, "vision_model."
    else:
        tsd, tpre = disk_llm, vision_ref.EMBEDDED_TOWER_PREFIX
    r2 = vision_ref.run_pipeline(disk_llm, cfg_disk, tsd, vcfg_disk, tpre,
                                 np.load(os.path.join(out, "ref", "pixel_values.npy")),
                                 json.load(open(os.path.join(out, "ref", "prompt_ids.json")))["ids"],
                                 cdtype)
    for k in ("vision_hidden_states", "image_features", "inputs_embeds", "logits"):
        saved = np.load(os.path.join(out, "ref", k + ".npy"))
        if not np.array_equal(saved, r2[k]):
            problems.append("%s: recomputed differs, max |d| %.3g"
                            % (k, float(np.abs(saved - r2[k]).max())))
    # an embedded tower copy must equal the separate one where both exist
    if tower_in_llm and disk_vit is not None:
        for k, v in disk_vit.items():
            if k.startswith("vision_model."):
                e = disk_llm[vision_ref.EMBEDDED_TOWER_PREFIX + k[len("vision_model."):]]
                if not torch.equal(e.float(), v.to(e.dtype).float()):
                    problems.append("embedded tower copy differs at %s" % k)
    if tower_in_llm and disk_vit is not None:  # the embedded copy gives the same outputs
        r3 = vision_ref.run_pipeline(disk_llm, cfg_disk, disk_llm, vcfg_disk,
                                     vision_ref.EMBEDDED_TOWER_PREFIX, pixels, ids, cdtype)
        for k in ("vision_hidden_states", "logits"):
            if not np.array_equal(r3[k], r[k]):
                problems.append("embedded tower gives different %s" % k)
    # hf_layout's loader must agree with the independent one
    same_sd(hf_layout.load_state_dict(llm_dir), disk_llm, "hf_layout llm")
    # sensitivity: the reference must notice a dropped bias / post-norm misuse
    sens = {}
    with torch.no_grad():
        sd2 = dict(tsd)
        key = tpre + "encoder.layers.0.self_attn.v_proj.bias"
        sd2[key] = torch.zeros_like(sd2[key])
        hs = vision_ref.clip_vision_forward(sd2, vcfg_disk, pixels, tpre, cdtype)
        sens["drop_v_bias_rel"] = float((hs[-1] - torch.from_numpy(r["vision_hidden_states"][-1]))
                                        .abs().max() / np.abs(r["vision_hidden_states"][-1]).max())
        gelu_cfg = dict(vcfg_disk, hidden_act="gelu")
        hs = vision_ref.clip_vision_forward(tsd, gelu_cfg, pixels, tpre, cdtype)
        sens["gelu_instead_of_quick_gelu_rel"] = float(
            (hs[-1] - torch.from_numpy(r["vision_hidden_states"][-1])).abs().max()
            / np.abs(r["vision_hidden_states"][-1]).max())
    for k, v in sens.items():
        if not v > 1e-3:
            problems.append("sensitivity %s too small: %.3g" % (k, v))
    dt = time.time() - t0
    if problems:
        print("SELF-CHECK FAILED (%.2fs):\n  %s" % (dt, "\n  ".join(problems[:20])))
        sys.exit(1)
    print("self-check OK (%.2fs): reloaded %d llm + %d vit tensors bit-identical, outputs "
          "recomputed identically; sensitivity %s"
          % (dt, len(disk_llm), len(disk_vit or {}),
             ", ".join("%s=%.3f" % kv for kv in sens.items())))


# ------------------------------------------------------------------ llava-hf layouts

def pad_vocab_rows(t, n_rows, seed, salt):
    """Append the padding rows convert_llava_weights_to_hf.py adds (32000 -> 32064): it
    samples them around the mean row; here mean + 0.5 * per-column std * N(0, 1), so the
    rows are clearly distinct (a reader that drops or shifts them shows in the logits)."""
    extra = n_rows - t.shape[0]
    if extra <= 0:
        return t
    g = _gen(seed, salt)
    mu, sd = t.mean(0), t.std(0)
    return torch.cat([t, mu + 0.5 * sd * torch.randn(extra, t.shape[1], generator=g)], 0)


def _hf_parse(a, lay):
    """(preset name, vision, text, top, preprocessor overrides) for a llava-hf layout."""
    gen = lay["gen"]
    preset_name = a.preset or DEFAULT_PRESET[a.layout]
    preset = copy.deepcopy(PRESETS[preset_name])
    vision, text = preset["vision"], preset["text"]
    text["max_position_embeddings"] = 4096          # as llava-1.5-7b-hf's text_config
    text["vocab_size"] = llava_hf.PADDED_VOCAB      # 32000 pieces + <image>, <pad>, padded to 64
    if gen == llava_hf.NEW:
        text["rms_norm_eps"] = 1e-6                 # the LlamaConfig default: left out
    ov = json.loads(a.config_overrides) if a.config_overrides else {}
    deep_update(vision, ov.pop("vision", {}))
    deep_update(vision, ov.pop("vision_config", {}))
    pre_ov = ov.pop("preprocessor", {})
    text.update(ov.pop("text_config", {}))
    for k in list(ov):  # text keys given at the top level (as for the other layouts)
        if k in llava_hf.LLAMA_DEFAULTS and k not in llava_hf.LLAVA_DEFAULTS:
            text[k] = ov.pop(k)
    S, P = vision["image_size"], vision["patch_size"]
    strategy = a.feature_strategy or ov.pop("vision_feature_select_strategy", "default")
    top = OrderedDict([("image_token_index", llava_hf.IMAGE_TOKEN_INDEX),
                       ("projector_hidden_act", "gelu"), ("tie_word_embeddings", False),
                       ("vision_feature_layer", -2)])
    if gen == llava_hf.NEW:
        top["image_seq_length"] = (S // P) ** 2 + (1 if strategy == "full" else 0)
        top["multimodal_projector_bias"] = True
    top.update(ov)
    top["vision_feature_select_strategy"] = strategy
    if top["tie_word_embeddings"] or text.get("tie_word_embeddings"):
        raise SystemExit("llava-hf layouts: tied embeddings are not supported here")
    return preset_name, vision, text, top, pre_ov


def build_hf(a):
    """--layout llava-hf / llava-hf-new (see the module docstring)."""
    t_start = time.time()
    lay = dict(HF_LAYOUTS[a.layout])
    gen = lay["gen"]
    for k in ("dtype", "shards"):
        if getattr(a, k) is not None:
            lay[k] = getattr(a, k)
    if a.tower or a.vit_dtype or a.no_position_ids:
        raise SystemExit("--tower / --vit-dtype / --no-position-ids do not apply to %s (the "
                         "tower is inside; position_ids is never saved)" % a.layout)
    preset_name, vision, text, top, pre_ov = _hf_parse(a, lay)
    dt_name = hf_layout.dtype_config_name(lay["dtype"])
    cfg = llava_hf.make_config(text, vision, gen, dt_name, top)
    flat = llava_hf.flat_config(cfg)
    lcfg = llama_ref.full_config(flat)
    llama_ref.check_config(lcfg)
    layers = llava_hf.feature_layers(cfg)
    L = vision["num_hidden_layers"]
    if any(not -(L + 1) <= l <= L for l in layers):
        raise SystemExit("vision_feature_layer %s out of range for %d layers" % (layers, L))
    D, H, V = vision["hidden_size"], flat["hidden_size"], flat["vocab_size"]
    if V < llava_hf.TOKENIZER_PIECES:
        raise SystemExit("vocab_size %d < the tokenizer's 32000 pieces" % V)

    # --- weights: the same draws as the llava15 layouts for the same seed and sizes ---
    gcfg = dict(flat)
    gcfg["vocab_size"] = llava_hf.TOKENIZER_PIECES
    llm = llama_ref.random_weights(llama_ref.full_config(gcfg), a.seed)
    llm["model.embed_tokens.weight"] = pad_vocab_rows(llm["model.embed_tokens.weight"], V, a.seed, 61)
    llm["lm_head.weight"] = pad_vocab_rows(llm["lm_head.weight"], V, a.seed, 67)
    proj = random_projector_weights(D * len(layers), H, a.seed)
    if not flat["multimodal_projector_bias"]:
        proj = OrderedDict((k, v) for k, v in proj.items() if not k.endswith(".bias"))
    tower = OrderedDict((k, v) for k, v in random_vision_weights(vision, a.seed).items()
                        if not k.endswith("embeddings.position_ids"))  # non-persistent buffer
    full = llava_hf.to_hf_state_dict(llm, proj, tower, gen)

    out = os.path.abspath(a.out)
    llm_dir, ref_dir = os.path.join(out, "llm"), os.path.join(out, "ref")
    for d in (llm_dir, os.path.join(out, "vit"), ref_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)
    for d in (llm_dir, ref_dir):
        os.makedirs(d)
    hf_layout.write_config(llm_dir, cfg)
    stored = hf_layout.save_state_dict(llm_dir, full, fmt=lay["fmt"], shards=lay["shards"],
                                       dtype=lay["dtype"], order=a.shard_order)
    llava_hf.write_tokenizer_files(llm_dir, a.tokenizer)
    S = vision["image_size"]
    pre = llava_hf.preprocessor_config(S, S, pre_ov)
    write_json(os.path.join(llm_dir, "preprocessor_config.json"), pre)
    proc = llava_hf.processor_config(vision["patch_size"], top["vision_feature_select_strategy"])
    write_json(os.path.join(llm_dir, "processor_config.json"), proc)
    t_write = time.time()

    # --- goldens from the stored (rounded) weights ---
    c_llm, c_tower, _ = llava_hf.split_state_dict(stored)
    m = llava_hf.Model(cfg, c_llm, c_tower, gen)
    pad = bool(pre.get("do_pad", False))
    image, pixels = input_pixels(a, pre, pad, ref_dir)
    if pixels.shape != (3, S, S):
        raise SystemExit("pixel_values shape %s != (3, %d, %d)" % (pixels.shape, S, S))
    prompt = llava_hf.prompt_text(a.prompt)
    ids = llava_hf.prompt_ids(prompt, a.tokenizer)
    cdtype = torch.float64 if a.compute == "f64" else torch.float32
    r = llava_hf.run_pipeline(m, pixels, ids, cdtype)
    N = r["image_features"].shape[0]
    np.save(os.path.join(ref_dir, "pixel_values.npy"), pixels)
    for k in ("vision_hidden_states", "image_features", "inputs_embeds", "logits"):
        np.save(os.path.join(ref_dir, k + ".npy"), np.ascontiguousarray(r[k]))
    itok = int(top["image_token_index"])
    write_json(os.path.join(ref_dir, "prompt_ids.json"), OrderedDict([
        ("prompt", prompt), ("question", a.prompt), ("ids", ids),
        ("image_token_index", itok), ("image_sentinel", vision_ref.IMAGE_TOKEN_INDEX),
        ("image_pos", ids.index(vision_ref.IMAGE_TOKEN_INDEX)),
        ("n_image_features", N), ("n_positions", len(ids) - 1 + N),
        ("ids_hf", llava_hf.hf_ids(ids, 1, itok)),
        ("ids_processor", llava_hf.hf_ids(ids, N, itok)),
        ("template", "USER: <image>\n{question} ASSISTANT:"), ("bos", 1)]))
    gen_ids, margins = [], []
    if a.greedy:
        gen_ids, margins = vision_ref.greedy_from_embeds(
            m.llm, m.flat, ids, r["features_compute"], a.greedy, (m.flat["eos_token_id"],),
            cdtype)
        write_json(os.path.join(ref_dir, "greedy.json"),
                   OrderedDict([("greedy_ids", gen_ids), ("margins", margins)]))
    t_ref = time.time()

    pre_names = llava_hf.PREFIXES[gen]
    meta = OrderedDict([
        ("layout", a.layout), ("generation", gen), ("seed", a.seed), ("preset", preset_name),
        ("llm_dir", "llm"), ("vit_dir", None), ("tower", "embedded"), ("tower_weights", "llm"),
        ("llm_format", lay["fmt"]), ("llm_shards", lay["shards"]), ("llm_dtype", dt_name),
        ("files", sorted(os.listdir(llm_dir))),
        ("tensor_prefixes", OrderedDict([
            ("vision_tower", pre_names["tower"] + "vision_model."),
            ("multi_modal_projector", pre_names["proj"] + "linear_{1,2}.{weight,bias}"),
            ("language_model", pre_names["lm"] + "{embed_tokens,layers.N,norm}"),
            ("lm_head", pre_names["head"] + ".weight")])),
        ("n_tensors", len(stored)),
        ("position_ids_saved", False), ("post_layernorm_saved", True),
        ("vocab", OrderedDict([
            ("tokenizer_pieces", llava_hf.TOKENIZER_PIECES),
            ("added_tokens", OrderedDict([("<image>", llava_hf.IMAGE_TOKEN_INDEX),
                                          ("<pad>", llava_hf.PAD_TOKEN_INDEX)])),
            ("embedding_rows", V),
            ("padding_rows", "%d..%d (rows 0..31999 are the llava15 draws of this seed)"
             % (llava_hf.TOKENIZER_PIECES, V - 1))])),
        ("image", os.path.abspath(image) if image else None),
        ("pixels_from", a.pixels_from), ("pad", pad), ("compute", a.compute),
        ("feature_strategy", top["vision_feature_select_strategy"]),
        ("vision_feature_layer", top["vision_feature_layer"]),
        ("config", cfg),
        ("defaults_applied", llava_hf.omitted_defaults(cfg)),
        ("text_config_resolved", llava_hf.text_config_full(cfg)),
        ("vision_config_resolved", llava_hf.vision_config_full(cfg)),
        ("flat_config", flat),
        ("preprocessor_config", pre), ("processor_config", proc),
        ("prompt_format", "USER: <image>\\n{question} ASSISTANT:  (BOS added; "
                          "<image> = one id 32000 before LlavaProcessor expands it to "
                          "n_image_features ids)"),
        ("n_patches", N), ("n_image_features", N), ("sequence_length", len(ids) - 1 + N),
        ("logits_argmax", int(np.argmax(r["logits"]))),
        ("logits_absmax", float(np.abs(r["logits"]).max())),
        ("also_original", os.path.abspath(a.also_original) if a.also_original else None),
        ("seconds", OrderedDict([("write", round(t_write - t_start, 3)),
                                 ("reference", round(t_ref - t_write, 3))])),
    ])
    write_json(os.path.join(ref_dir, "meta.json"), meta)
    print("%s: wrote %s in %.2fs (ref %.2fs): %s names, %d tensors, %d features (%s, layer %s), "
          "T=%d, logits [%d] absmax %.2f, argmax %d, greedy %s"
          % (a.layout, out, t_ref - t_start, t_ref - t_write, gen, len(stored), N,
             top["vision_feature_select_strategy"], top["vision_feature_layer"],
             len(ids) - 1 + N, V, np.abs(r["logits"]).max(), int(np.argmax(r["logits"])),
             gen_ids))
    if a.also_original:
        write_original_copy(a, cfg, m, lay, vision, text, pixels, ids, r, image)
    if a.self_check:
        self_check_hf(out, a, m, stored, pixels, ids, r, cdtype)
    return 0


def write_original_copy(a, cfg, m, lay, vision, text, pixels, ids, r, image):
    """The same stored weights in the original llava15 layout (DIR2/llm: f16/bf16 sharded
    .bin with model.* + model.mm_projector.{0,2} + lm_head; DIR2/vit: a CLIPModel .bin (f32,
    the tower's values exactly) with the vicuna_v1 prompt / pad preprocessing of that
    layout in DIR2/ref). Checks that the llava15 pipeline on the copy, fed the llava-hf
    pixels and ids, reproduces the llava-hf goldens (logits on the first 32000 rows)."""
    if len(m.layers) != 1 or m.flat["projector_hidden_act"] != "gelu" or \
            not m.flat["multimodal_projector_bias"]:
        raise SystemExit("--also-original needs an int vision_feature_layer and the gelu "
                         "projector with biases (what llava15 can express)")
    out2 = os.path.abspath(a.also_original)
    llm2, vit2, ref2 = (os.path.join(out2, s) for s in ("llm", "vit", "ref"))
    for d in (llm2, vit2, ref2):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
    f = m.flat
    V0 = llava_hf.TOKENIZER_PIECES if a.original_vocab == "orig" else f["vocab_size"]
    text15 = dict(hidden_size=f["hidden_size"], intermediate_size=f["intermediate_size"],
                  num_hidden_layers=f["num_hidden_layers"],
                  num_attention_heads=f["num_attention_heads"],
                  num_key_value_heads=f["num_key_value_heads"], rms_norm_eps=f["rms_norm_eps"])
    ov15 = {"mm_vision_select_layer": m.layers[0],
            "mm_vision_select_feature": f["mm_vision_select_feature"], "vocab_size": V0}
    if "head_dim" in f:
        ov15["head_dim"] = f["head_dim"]
    if f["rope_theta"] != 10000.0:
        ov15["rope_theta"] = f["rope_theta"]
    dt_name = hf_layout.dtype_config_name(lay["dtype"])
    cfg15 = llm_config("llava15", text15, vision["hidden_size"], dt_name, ov15)
    sd15 = OrderedDict()
    for k, v in m.llm.items():
        if k.startswith("model.mm_projector.") or k == "lm_head.weight":
            continue
        sd15[k] = v[:V0].clone() if k == "model.embed_tokens.weight" else v
    for k, v in m.llm.items():
        if k.startswith("model.mm_projector."):
            sd15[k] = v
    sd15["lm_head.weight"] = m.llm["lm_head.weight"][:V0].clone()
    hf_layout.write_config(llm2, cfg15)
    stored15 = hf_layout.save_state_dict(llm2, sd15, fmt="bin", shards=2, dtype=lay["dtype"])
    write_tokenizer_files(llm2, a.tokenizer)
    hf_layout.write_config(vit2, clip_model_config(vision, "float32"))
    S = vision["image_size"]
    pre15 = preprocessor_config("legacy", S, S, {})
    write_json(os.path.join(vit2, "preprocessor_config.json"), pre15)
    cm = random_clip_model_weights(vision, a.seed)
    for k in list(cm):
        if k.startswith("vision_model.") and k in m.tower:
            cm[k] = m.tower[k].to(torch.float32)
    stored_vit = hf_layout.save_state_dict(vit2, cm, fmt="bin", shards=1, dtype="f32")

    # 1) the llava15 pipeline on the copy (reloaded from disk) with the llava-hf inputs
    l_cfg, l_sd, v_cfg, v_sd, v_pre = vision_ref.load_model(llm2, vit2)
    cdtype = torch.float64 if a.compute == "f64" else torch.float32
    r15 = vision_ref.run_pipeline(l_sd, l_cfg, v_sd, v_cfg, v_pre, pixels, ids, cdtype)
    problems = []
    for k in ("vision_hidden_states", "image_features", "inputs_embeds"):
        if not np.array_equal(r15[k], r[k]):
            problems.append("%s differs (max |d| %.3g)" % (k, float(np.abs(r15[k] - r[k]).max())))
    lg15, lg = r15["logits"], r["logits"][:len(r15["logits"])]
    d_logits = float(np.abs(lg15 - lg).max())
    if d_logits > 1e-5 * max(1.0, float(np.abs(lg).max())):
        problems.append("logits differ (max |d| %.3g)" % d_logits)
    if problems:
        print("ALSO-ORIGINAL CHECK FAILED:\n  " + "\n  ".join(problems))
        sys.exit(1)

    # 2) the copy's own goldens, as the llava15 layout defines them (vicuna_v1, pad)
    pad15 = cfg15["image_aspect_ratio"] == "pad"
    if a.pixels_from:
        px15 = pixels
    else:
        px15 = make_pixels(image, pre15, pad15, ref2)
    prompt15 = vision_ref.vicuna_v1_prompt(a.prompt)
    ids15 = vision_ref.tokenizer_image_token(prompt15, a.tokenizer)
    ro = vision_ref.run_pipeline(l_sd, l_cfg, v_sd, v_cfg, v_pre, px15, ids15, cdtype)
    N = write_goldens(ref2, px15, ro, prompt15, a.prompt, ids15)
    if a.greedy:
        g15, mg15 = vision_ref.greedy_from_embeds(l_sd, l_cfg, ids15, ro["features_compute"],
                                                  a.greedy, (cfg15["eos_token_id"],), cdtype)
        write_json(os.path.join(ref2, "greedy.json"),
                   OrderedDict([("greedy_ids", g15), ("margins", mg15)]))
    write_json(os.path.join(ref2, "meta.json"), OrderedDict([
        ("layout", "llava15"), ("copy_of", os.path.abspath(a.out)), ("copy_of_layout", a.layout),
        ("seed", a.seed), ("llm_dir", "llm"), ("vit_dir", "vit"), ("tower", "separate"),
        ("tower_weights", "vit"), ("llm_format", "bin"), ("llm_shards", 2),
        ("llm_dtype", dt_name), ("vit_format", "bin"), ("vit_dtype", "float32"),
        ("original_vocab", a.original_vocab), ("embedding_rows", V0),
        ("same_tensors_as_hf", "every llava-hf tensor, upcast where stored wider (tower f32); "
         "embed_tokens / lm_head rows 0..%d" % (V0 - 1)),
        ("image", os.path.abspath(image) if image else None), ("pad", pad15),
        ("vision_config", vision), ("llm_config", cfg15), ("preprocessor_config", pre15),
        ("n_patches", N), ("sequence_length", len(ids15) - 1 + N),
        ("logits_argmax", int(np.argmax(ro["logits"]))),
        ("hf_equivalence", "llava15 pipeline on this copy with the llava-hf pixels/ids: hidden "
         "states, features, inputs_embeds identical, logits max |d| %.3g" % d_logits)]))
    print("also-original: llava15 copy in %s (%d + %d tensors); with the llava-hf inputs its "
          "goldens are identical (logits max |d| %.3g on %d rows)"
          % (out2, len(stored15), len(stored_vit), d_logits, len(lg15)))


def self_check_hf(out, a, m, stored, pixels, ids, r, cdtype):
    """Reload with independent readers, check names, recompute; compare the llava-hf pipeline
    with the llava15 one (vision_ref.run_pipeline) on the same weights; sensitivity."""
    t0 = time.time()
    llm_dir = os.path.join(out, "llm")
    problems = []
    disk = load_dir_indep(llm_dir)
    if set(disk) != set(stored):
        problems.append("key sets differ: %s" % sorted(set(disk) ^ set(stored))[:5])
    else:
        for k, v in stored.items():
            if disk[k].dtype != v.dtype or not torch.equal(disk[k], v):
                problems.append("%s differs on disk" % k)
    hl = hf_layout.load_state_dict(llm_dir)
    if set(hl) != set(disk) or any(not torch.equal(hl[k], disk[k]) for k in disk):
        problems.append("hf_layout's loader disagrees with the independent one")
    pre = llava_hf.PREFIXES[m.gen]
    allowed = tuple(v for k, v in pre.items() if k != "head")
    for k in disk:
        if not (k.startswith(allowed) or k == pre["head"] + ".weight"):
            problems.append("unexpected name %s" % k)
        if k.endswith("position_ids"):
            problems.append("position_ids buffer saved: %s" % k)
    if llava_hf.generation_of(disk.keys()) != m.gen:
        problems.append("generation detected wrongly")
    m2 = llava_hf.load(llm_dir, disk)
    saved_ids = json.load(open(os.path.join(out, "ref", "prompt_ids.json")))["ids"]
    r2 = llava_hf.run_pipeline(m2, np.load(os.path.join(out, "ref", "pixel_values.npy")),
                               saved_ids, cdtype)
    for k in ("vision_hidden_states", "image_features", "inputs_embeds", "logits"):
        if not np.array_equal(np.load(os.path.join(out, "ref", k + ".npy")), r2[k]):
            problems.append("%s: recomputed from disk differs" % k)
    # the llava15 code path (vision_ref.run_pipeline) on the same weights
    same15 = "skipped (not expressible in llava15)"
    if len(m.layers) == 1 and m.flat["projector_hidden_act"] == "gelu" and \
            m.flat["multimodal_projector_bias"]:
        same15 = "agrees"
        r15 = vision_ref.run_pipeline(m2.llm, m2.flat, m2.tower, m2.vcfg, "vision_model.",
                                      pixels, ids, cdtype)
        for k in ("vision_hidden_states", "image_features", "inputs_embeds", "logits"):
            if not np.array_equal(r15[k], r[k]):
                problems.append("llava15 pipeline gives a different %s" % k)
    # sensitivity: the strategy and the layer must show
    sens = {}
    with torch.no_grad():
        other = "full" if m.strategy == "default" else "default"
        m3 = llava_hf.Model(m.cfg, m.llm, m.tower, m.gen)
        m3.strategy = other
        hs = torch.from_numpy(r["vision_hidden_states"])
        n_other = llava_hf.select(hs, m.layers, other).shape[0]
        sens["features_other_strategy"] = n_other
        if n_other == r["image_features"].shape[0]:
            problems.append("feature strategy does not change the feature count")
        lay2 = [l - 1 if l > -hs.shape[0] else l + 1 for l in m.layers]
        f2 = llava_hf.projector(m.llm, llava_hf.select(hs, lay2, m.strategy),
                                m.flat["projector_hidden_act"], cdtype=cdtype)
        sens["other_layer_rel"] = float((f2 - torch.from_numpy(r["image_features"])).abs().max()
                                        / np.abs(r["image_features"]).max())
        if not sens["other_layer_rel"] > 1e-3:
            problems.append("feature layer does not matter enough")
    dt = time.time() - t0
    if problems:
        print("SELF-CHECK FAILED (%.2fs):\n  %s" % (dt, "\n  ".join(problems[:20])))
        sys.exit(1)
    print("self-check OK (%.2fs): %d tensors bit-identical on disk, %s names, goldens recomputed "
          "identically, llava15 pipeline %s; sensitivity %s" % (dt, len(disk), m.gen, same15, sens))


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Tiny random LLaVA-1.5 / ShareGPT4V checkpoints in published layouts, "
                    "with golden outputs.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--layout", required=True,
                    choices=sorted(LAYOUTS) + sorted(HF_LAYOUTS) + ["all", "all-hf"],
                    help="'all' writes OUT/<layout>/ for the four original-code layouts "
                         "(seeds SEED..SEED+3); 'all-hf' for llava-hf, llava-hf-new "
                         "(seeds SEED, SEED+1)")
    ap.add_argument("--out", required=True, help="output dir (llm/, vit/, ref/ are replaced)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image", help="input image [../shared/images/"
                    "bouguereau_the_shepherdess_1889.jpg, or a synthetic one]")
    ap.add_argument("--pixels-from", metavar="NPY",
                    help="use this pixel_values .npy [3,S,S] instead of preprocessing")
    ap.add_argument("--prompt", default=DEFAULT_QUESTION,
                    help="user question, wrapped in the vicuna_v1 template [%(default)s]")
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help="model geometry [per layout: %s]" % DEFAULT_PRESET)
    ap.add_argument("--config-overrides", metavar="JSON",
                    help='e.g. \'{"vision": {"num_hidden_layers": 2}, "num_key_value_heads": 2, '
                         '"mm_vision_select_layer": -1}\'')
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], help="LLM stored dtype")
    ap.add_argument("--vit-dtype", choices=["f32", "f16", "bf16"], help="tower dir stored dtype")
    ap.add_argument("--shards", type=int, help="LLM shard count")
    ap.add_argument("--shard-order", choices=["contiguous", "roundrobin"], default="contiguous")
    ap.add_argument("--tower", choices=["embedded", "separate", "both"],
                    help="(llava15*) where the tower weights go [llava15: both, "
                         "llava15-safetensors: separate]")
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="[%(default)s]")
    ap.add_argument("--compute", choices=["f32", "f64"], default="f32")
    ap.add_argument("--greedy", type=int, default=4, metavar="N",
                    help="greedy tokens for ref/greedy.json [4]; 0 = none")
    ap.add_argument("--no-position-ids", action="store_true",
                    help="omit the embeddings.position_ids buffers (newer checkpoints)")
    ap.add_argument("--self-check", action="store_true",
                    help="reload from disk with independent readers and recompute")
    ap.add_argument("--feature-strategy", choices=["default", "full"],
                    help="(llava-hf*) vision_feature_select_strategy: default drops the CLS "
                         "row (N features), full keeps it (N+1) [default]")
    ap.add_argument("--also-original", metavar="DIR2",
                    help="(llava-hf*) also write the same weights in the llava15 layout "
                         "(DIR2/llm, DIR2/vit, DIR2/ref) and check both give the same goldens")
    ap.add_argument("--original-vocab", choices=["orig", "padded"], default="orig",
                    help="(with --also-original) embed_tokens / lm_head rows of the llava15 "
                         "copy: orig = the 32000 tokenizer rows, padded = all rows [orig]")
    a = ap.parse_args(argv)
    if not os.path.exists(a.tokenizer):
        ap.error("tokenizer %s not found (../shared missing?)" % a.tokenizer)
    if a.layout in HF_LAYOUTS:
        return build_hf(a)
    if (a.feature_strategy or a.also_original) and a.layout != "all-hf":
        ap.error("--feature-strategy / --also-original apply to the llava-hf layouts only")
    if a.layout not in ("all", "all-hf"):
        return build(a)
    base, seed = a.out, a.seed
    for i, lay in enumerate(sorted(LAYOUTS) if a.layout == "all" else sorted(HF_LAYOUTS)):
        b = argparse.Namespace(**vars(a))
        b.layout, b.out, b.seed = lay, os.path.join(base, lay), seed + i
        if a.also_original:
            b.also_original = os.path.join(a.also_original, lay)
        build(b) if lay in LAYOUTS else build_hf(b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
