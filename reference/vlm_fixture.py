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
  vlm_fixture.py --layout all --out /tmp/vlm --seed 1    # /tmp/vlm/<layout>/...
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
DEFAULT_PRESET = {"sharegpt4v": "tiny", "sharegpt4v-safetensors": "full336",
                  "llava15": "odd", "llava15-safetensors": "tiny"}

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
    image = a.image
    if a.pixels_from:
        pixels = np.ascontiguousarray(np.load(a.pixels_from).astype(np.float32))
        image = None
    else:
        if image is None:
            image = DEFAULT_IMAGE if os.path.exists(DEFAULT_IMAGE) else \
                synth_image(os.path.join(ref_dir, "input.png"), a.seed)
        pixels = make_pixels(image, pre, pad, ref_dir)
    S = vision["image_size"]
    if pixels.shape != (3, S, S):
        raise SystemExit("pixel_values shape %s != (3, %d, %d)" % (pixels.shape, S, S))
    prompt = vision_ref.vicuna_v1_prompt(a.prompt)
    ids = vision_ref.tokenizer_image_token(prompt, a.tokenizer)
    cdtype = torch.float64 if a.compute == "f64" else torch.float32
    r = vision_ref.run_pipeline(stored_llm, cfg, tower_sd, vision, tower_prefix, pixels, ids,
                                cdtype)
    N = r["image_features"].shape[0]
    np.save(os.path.join(ref_dir, "pixel_values.npy"), pixels)
    for k in ("vision_hidden_states", "image_features", "inputs_embeds", "logits"):
        np.save(os.path.join(ref_dir, k + ".npy"), np.ascontiguousarray(r[k]))
    write_json(os.path.join(ref_dir, "prompt_ids.json"), OrderedDict([
        ("prompt", prompt), ("question", a.prompt), ("ids", ids),
        ("image_token_index", vision_ref.IMAGE_TOKEN_INDEX),
        ("image_pos", ids.index(vision_ref.IMAGE_TOKEN_INDEX)),
        ("n_image_features", N), ("n_positions", len(ids) - 1 + N)]))
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


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Tiny random LLaVA-1.5 / ShareGPT4V checkpoints in published layouts, "
                    "with golden outputs.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--layout", required=True, choices=sorted(LAYOUTS) + ["all"],
                    help="'all' writes OUT/<layout>/ for every layout (seeds SEED..SEED+3)")
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
    a = ap.parse_args(argv)
    if not os.path.exists(a.tokenizer):
        ap.error("tokenizer %s not found (../shared missing?)" % a.tokenizer)
    if a.layout != "all":
        return build(a)
    base, seed = a.out, a.seed
    for i, lay in enumerate(sorted(LAYOUTS)):
        b = argparse.Namespace(**vars(a))
        b.layout, b.out, b.seed = lay, os.path.join(base, lay), seed + i
        build(b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
