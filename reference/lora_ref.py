#!/usr/bin/python3
"""PyTorch reference for LoRA adapters as PEFT applies them, and a writer of tiny
random adapters in the published layouts.

PEFT semantics, written from peft/tuners/lora/layer.py, model.py and
peft/utils/{other,save_and_load}.py (no peft package needed):
  - LoraLayer.update_layer: scaling = lora_alpha / r, or lora_alpha / sqrt(r) with
    use_rslora; r and lora_alpha per module from rank_pattern / alpha_pattern via
    get_pattern_key: the first key k (in dict order) with
    re.match(rf"(.*\\.)?({k})$", module_name), module_name as in
    base_model.named_modules() ("model.layers.0.self_attn.q_proj").
  - lora.Linear.forward (inference, dropout = identity):
        result = base_layer(x)
        for each active adapter: result = result + lora_B(lora_A(x)) * scaling
  - lora.Linear.get_delta_weight / merge: W += transpose(B @ A, fan_in_fan_out) * scaling
  - a run-time scale s multiplies the scaling (LoraLayer.scale_layer: scaling *= s),
    which is llama.cpp's LoRA scale.
  - saved keys (get_peft_model_state_dict): base_model.model.<module>.lora_A.weight
    [r, in] and .lora_B.weight [out, r] (adapter name removed); modules_to_save as
    base_model.model.<module>.weight (whole tensors that replace the base's).
  - LLaVA / ShareGPT4V LoRA runs add non_lora_trainables.bin, keys
    base_model.model.model.mm_projector.{0,2}.{weight,bias}; LLaVA's
    load_pretrained_model strips "base_model." and then "model." (from
    "model.model.") and loads them over the model: the projector is replaced.

  - llava-hf bases (transformers' LlavaForConditionalGeneration, see llava_hf.py): keys
    are base_model.model.<module path in that model>: language_model.model.layers.N.
    self_attn.q_proj (transformers < 4.52 names) or model.language_model.layers.N... (>=
    4.52, --naming v4.52; both are accepted on either base, as transformers maps them);
    target_modules as PEFT's check_target_module_exists reads it: a list matches module
    paths equal to or ending in "." + entry (so ["q_proj", "v_proj"] also hits the CLIP
    tower's q_proj / v_proj), a string is re.fullmatch'ed (default here
    .*language_model.*\.(q_proj|...|down_proj)), all-linear = every nn.Linear but lm_head
    (tower, projector included; written as the leaf-name list). modules_to_save
    ["multi_modal_projector"] (the default here; --no-projector for none) is saved as
    base_model.model.multi_modal_projector.linear_1.weight etc. (new names:
    base_model.model.model.multi_modal_projector...): ModulesToSaveWrapper.adapter_state_dict
    strips "modules_to_save.default.", get_peft_model_state_dict the adapter name.

The LLaMA math is llama_ref.py's (HF LlamaForCausalLM) with every projection going
through a PEFT-style LoRA linear; the vision path is vision_ref.py's.

Run with /usr/bin/python3.  Subcommands:
  make    --base DIR --out ADIR [--layout peft-safetensors|peft-bin|llava] [--r 4]
          [--alpha 8] [--rslora] [--rank-pattern JSON] [--alpha-pattern JSON]
          [--targets q_proj,v_proj|all-linear] [--magnitude 0.5] [--dtype f32|f16|bf16]
          [--modules-to-save lm_head] [--no-projector] [--seed S] [--break KIND]
      a random adapter for the HF model in DIR (llava: DIR is the LLM dir of a
      vlm_fixture.py checkpoint; the adapter gets a random replacement projector).
      --break rank|dtype|module|target writes a deliberately broken adapter.
      llava-hf base (DIR = vlm_fixture.py --layout llava-hf* DIR/llm): peft-safetensors /
      peft-bin only, [--target-regex RE | --targets LIST|all-linear] [--naming legacy|v4.52]
      [--modules-to-save multi_modal_projector,lm_head,embed_tokens] [--no-projector].
  logits  --base DIR --lora ADIR[:SCALE] ... --out OUT (--tokens 1,2,3 | --vit VITDIR
          --pixels NPY --ids JSON) [--base-quant q4_0] [--merged]
      OUT/logits.npy: [T, V] every position (tokens), or [V] last position (image
      prompt, plus OUT/image_features.npy). --base-quant q4_0: the base weights as
      loupe stores a q4_0 conversion (ggml's Q4_0, lm_head Q8_0), dequantised.
      --merged: evaluate with the adapters merged (get_delta_weight) instead.
      llava-hf base: no --vit (the tower is inside); LoRA on the tower / projector and
      modules_to_save of the projector are applied; ids as DIR/ref/prompt_ids.json (-200).
  batch   FILE.json: a list of argument lists, run in one process (saves start-ups).
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
from collections import OrderedDict

import numpy as np
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import hf_layout  # noqa: E402
import llama_ref  # noqa: E402
import llava_hf  # noqa: E402

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
# the nn.Linear modules of a CLIP encoder layer (CLIPAttention, CLIPMLP), CLIPAttention order
TOWER_LINEARS = ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                 "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]
# what a LLaVA fine-tune usually targets on a LlavaForConditionalGeneration: the language
# model's linears only (a plain name list would also hit the tower's q/k/v_proj)
HF_DEFAULT_TARGET_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


# ------------------------------------------------------------------ PEFT rules

def get_pattern_key(pattern_keys, key_to_match):
    """peft.utils.other.get_pattern_key."""
    for key in pattern_keys:
        if re.match(r"(.*\.)?(%s)$" % key, key_to_match):
            return key
    return key_to_match


def module_r_alpha(cfg, module):
    rp, ap = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    r = rp.get(get_pattern_key(rp.keys(), module), cfg.get("r", 8))
    alpha = ap.get(get_pattern_key(ap.keys(), module), cfg.get("lora_alpha", 8))
    return r, alpha


def scaling_of(cfg, module):
    r, alpha = module_r_alpha(cfg, module)
    return alpha / math.sqrt(r) if cfg.get("use_rslora", False) else alpha / r


class LoraLinear:
    """peft.tuners.lora.layer.Linear at inference, for one base weight [out, in]."""

    def __init__(self, weight):
        self.weight = weight
        self.adapters = []  # (A [r, in], B [out, r], scaling)

    def __call__(self, x):
        result = x @ self.weight.T
        for A, B, s in self.adapters:
            result = result + ((x @ A.T) @ B.T) * s
        return result

    def merged(self):
        W = self.weight.clone()
        for A, B, s in self.adapters:
            W += (B @ A) * s  # get_delta_weight, fan_in_fan_out False for nn.Linear
        return W


def read_adapter(adir):
    """-> (config, {module: (A, B)}, {hf name: whole tensor}) as LLaVA / PEFT load them."""
    with open(os.path.join(adir, "adapter_config.json")) as f:
        cfg = json.load(f, object_pairs_hook=OrderedDict)
    st = os.path.join(adir, "adapter_model.safetensors")
    sd = hf_layout.read_safetensors(st) if os.path.exists(st) else \
        torch.load(os.path.join(adir, "adapter_model.bin"), map_location="cpu")
    pairs, whole = {}, OrderedDict()
    for k, v in sd.items():
        k = k[len("base_model.model."):] if k.startswith("base_model.model.") else k
        m = re.match(r"^(.*)\.lora_([AB])\.weight$", k)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = v
        else:
            whole[k] = v
    nlt = os.path.join(adir, "non_lora_trainables.bin")
    if os.path.exists(nlt):
        for k, v in torch.load(nlt, map_location="cpu").items():
            k = k[11:] if k.startswith("base_model.") else k
            k = k[6:] if k.startswith("model.model.") else k
            whole[k] = v
    return cfg, {m: (p["A"], p["B"]) for m, p in pairs.items()}, whole


# ------------------------------------------------------------------ LLaMA with LoRA linears

def llama_forward_embeds(w, cfg, h, lin, cdtype):
    """llama_ref.forward on input embeddings h [T, H], every projection via lin(module, x)."""
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], llama_ref.head_dim_of(cfg)
    eps = float(cfg["rms_norm_eps"])
    T = h.shape[0]
    cos, sin = llama_ref.rope_cos_sin(T, hd, float(cfg.get("rope_theta", 10000.0)), cdtype)
    mask = torch.full((T, T), float("-inf"), dtype=cdtype).triu(1)
    grp = nh // nkv
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        x = llama_ref.rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = lin(p + "self_attn.q_proj", x).view(T, nh, hd).transpose(0, 1)
        k = lin(p + "self_attn.k_proj", x).view(T, nkv, hd).transpose(0, 1)
        v = lin(p + "self_attn.v_proj", x).view(T, nkv, hd).transpose(0, 1)
        q = q * cos + llama_ref.rotate_half(q) * sin
        k = k * cos + llama_ref.rotate_half(k) * sin
        k = k.repeat_interleave(grp, dim=0)
        v = v.repeat_interleave(grp, dim=0)
        s = (q @ k.transpose(1, 2)) / math.sqrt(hd) + mask
        a = (torch.softmax(s, dim=-1) @ v).transpose(0, 1).reshape(T, nh * hd)
        h = h + lin(p + "self_attn.o_proj", a)
        x = llama_ref.rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        g = lin(p + "mlp.gate_proj", x)
        u = lin(p + "mlp.up_proj", x)
        h = h + lin(p + "mlp.down_proj", torch.nn.functional.silu(g) * u)
    hn = llama_ref.rms_norm(h, w["model.norm.weight"], eps)
    return lin("lm_head", hn)


def loupe_q4_0_roundtrip(w, cfg):
    """The weights as loupe-convert --outtype q4_0 stores them, dequantised: 2-D
    weights Q4_0 (rows of 32), the output projection Q8_0 (the tied embedding too),
    rows that are not a multiple of 32 F16."""
    import quant_ref
    tied = cfg.get("tie_word_embeddings", False)
    out = dict(w)
    for k, t in w.items():
        if t.dim() != 2 or k == "lm_head.weight" and tied:
            continue
        a = t.to(torch.float32).numpy()
        if k == "lm_head.weight" or (tied and k == "model.embed_tokens.weight"):
            qt = "q8_0"
        elif a.shape[1] % 32:
            out[k] = t.to(torch.float16).to(t.dtype)
            continue
        else:
            qt = "q4_0"
        deq = quant_ref.dequantize(quant_ref.quantize(a, qt), qt).reshape(a.shape)
        out[k] = torch.from_numpy(np.ascontiguousarray(deq)).to(t.dtype)
    if tied:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


_EXTRA_LINEAR = re.compile(r"^(vision_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|"
                           r"mlp\.fc[12])|model\.mm_projector\.\d+)\.weight$")


def build_linears(w, cfg, adapters, cdtype, extra=None):
    """{module: LoraLinear} with the active adapters' updates; replaces whole tensors in w.
    extra (llava-hf bases): canonical tower (vision_model.*) and projector
    (model.mm_projector.*) tensors; their linears get LoraLinears too, adapter names are
    mapped to canonical ones (llava_hf.canonical_name, either generation) and
    modules_to_save tensors of the tower / projector replace entries of extra in place."""
    lins = {}
    for l in range(cfg["num_hidden_layers"]):
        for m in LINEARS:
            name = "model.layers.%d.%s" % (l, m)
            lins[name] = LoraLinear(w[name + ".weight"])
    lins["lm_head"] = LoraLinear(w["lm_head.weight"])
    if extra is not None:
        for k, t in extra.items():
            if _EXTRA_LINEAR.match(k):
                lins[k[:-len(".weight")]] = LoraLinear(t.to(cdtype))
    for adir, scale in adapters:
        if scale == 0:
            continue
        acfg, pairs, whole = read_adapter(adir)
        if extra is not None:
            build_hf_adapter(adir, scale, acfg, pairs, whole, w, lins, extra, cdtype)
            continue
        for k, t in whole.items():
            if k.startswith("model.mm_projector."):
                continue  # the vision path takes these
            if k not in w:
                raise SystemExit("%s: %s is not a tensor of the base model" % (adir, k))
            w[k] = t.to(cdtype)
            mod = k[:-len(".weight")]
            if mod in lins:
                lins[mod].weight = w[k]
        for mod, (A, B) in pairs.items():
            r, _ = module_r_alpha(acfg, mod)
            if A.shape[0] != r or B.shape[1] != r:
                raise SystemExit("%s: rank of %s is not r=%d" % (adir, mod, r))
            lins[mod].adapters.append((A.to(cdtype), B.to(cdtype), scaling_of(acfg, mod) * scale))
    return lins


def build_hf_adapter(adir, scale, acfg, pairs, whole, w, lins, extra, cdtype):
    """One adapter on a llava-hf base (see build_linears). r / alpha patterns are matched
    against the adapter's own (transformers) module names, as PEFT does."""
    for k, t in whole.items():
        c, _ = llava_hf.canonical_name(k)
        if c.startswith("model.mm_projector.") or c.startswith("vision_model."):
            if c not in extra:
                raise SystemExit("%s: %s is not a tensor of the base model" % (adir, k))
            extra[c] = t
            if c[:-len(".weight")] in lins and c.endswith(".weight"):
                lins[c[:-len(".weight")]].weight = t.to(cdtype)
            continue
        if c not in w:
            raise SystemExit("%s: %s is not a tensor of the base model" % (adir, k))
        w[c] = t.to(cdtype)
        mod = c[:-len(".weight")]
        if mod in lins:
            lins[mod].weight = w[c]
    for mod, (A, B) in pairs.items():
        c, _ = llava_hf.canonical_name(mod)
        if c not in lins:
            raise SystemExit("%s: LoRA on %s, not a linear module of the base" % (adir, mod))
        r, _ = module_r_alpha(acfg, mod)
        if A.shape[0] != r or B.shape[1] != r:
            raise SystemExit("%s: rank of %s is not r=%d" % (adir, mod, r))
        lins[c].adapters.append((A.to(cdtype), B.to(cdtype), scaling_of(acfg, mod) * scale))


def clip_forward_lin(sd, vcfg, pixels, lin, cdtype=torch.float32, prefix="vision_model."):
    """vision_ref.clip_vision_forward with the encoder's linears through lin(module, x)
    (x @ W^T [+ LoRA]; biases added here). Same op order, so without adapters the result
    is bit-identical to vision_ref's."""
    import torch.nn.functional as F
    import vision_ref
    vcfg = vision_ref.vision_config_of(vcfg)

    def W(name):
        return sd[prefix + name].to(cdtype)

    x = torch.as_tensor(np.asarray(pixels)).to(cdtype)
    if x.dim() == 3:
        x = x[None]
    P, D, nh = int(vcfg["patch_size"]), int(vcfg["hidden_size"]), int(vcfg["num_attention_heads"])
    hd = D // nh
    eps = float(vcfg["layer_norm_eps"])
    act = vision_ref._act(vcfg.get("hidden_act"))
    pe = F.conv2d(x, W("embeddings.patch_embedding.weight"), None, stride=P)
    pe = pe.flatten(2).transpose(1, 2)[0]
    h = torch.cat([W("embeddings.class_embedding")[None, :], pe], dim=0) + \
        W("embeddings.position_embedding.weight")
    h = vision_ref._layer_norm(h, W("pre_layrnorm.weight"), W("pre_layrnorm.bias"), eps)
    states = [h]
    T = h.shape[0]
    for l in range(int(vcfg["num_hidden_layers"])):
        p = "encoder.layers.%d." % l
        L = lambda name, y: lin(prefix + p + name, y) + W(p + name + ".bias")
        M = lambda name, y: lin(prefix + p + name, y)  # bias added after the residual
        r = h
        y = vision_ref._layer_norm(h, W(p + "layer_norm1.weight"), W(p + "layer_norm1.bias"), eps)
        q = L("self_attn.q_proj", y) * hd ** -0.5
        k = L("self_attn.k_proj", y)
        v = L("self_attn.v_proj", y)
        q = q.view(T, nh, hd).transpose(0, 1)
        k = k.view(T, nh, hd).transpose(0, 1)
        v = v.view(T, nh, hd).transpose(0, 1)
        a = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
        a = a.transpose(0, 1).reshape(T, D)
        h = r + M("self_attn.out_proj", a) + W(p + "self_attn.out_proj.bias")
        r = h
        y = vision_ref._layer_norm(h, W(p + "layer_norm2.weight"), W(p + "layer_norm2.bias"), eps)
        y = act(L("mlp.fc1", y))
        h = r + M("mlp.fc2", y) + W(p + "mlp.fc2.bias")
        states.append(h)
    return torch.stack(states, dim=0)


def cmd_logits(a):
    cdtype = torch.float32
    adapters = []
    for s in a.lora or []:
        path, _, scale = s.rpartition(":") if not os.path.isdir(s) else (s, "", "")
        adapters.append((path, float(scale) if scale else 1.0))
    os.makedirs(a.out, exist_ok=True)
    hfm = llava_hf.load(a.base) if llava_hf.is_llava_hf(a.base) else None
    if hfm is not None:  # transformers' LlavaForConditionalGeneration, canonical names
        raw_cfg, sd = hfm.flat, hfm.llm
        extra = OrderedDict(hfm.tower)
        extra.update((k, v) for k, v in sd.items() if k.startswith("model.mm_projector."))
    else:
        with open(os.path.join(a.base, "config.json")) as f:
            raw_cfg = json.load(f)
        sd = hf_layout.load_state_dict(a.base)
        extra = None
    cfg = llama_ref.full_config(raw_cfg)
    text = {k: v for k, v in sd.items() if k.startswith("model.layers.") or
            k in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")}
    w = llama_ref.weights_to_compute(text, cfg, cdtype)
    if a.base_quant == "q4_0":
        w = loupe_q4_0_roundtrip(w, cfg)
    with torch.no_grad():
        lins = build_linears(w, cfg, adapters, cdtype, extra)
        if a.merged:
            for lin in lins.values():
                lin.weight, lin.adapters = lin.merged(), []

        def lin(name, x):
            return lins[name](x)

        if a.tokens:
            ids = [int(t) for t in a.tokens.split(",")]
            h = w["model.embed_tokens.weight"][torch.tensor(ids)]
            logits = llama_forward_embeds(w, cfg, h, lin, cdtype)
        elif hfm is not None:
            import vision_ref
            pixels = np.load(a.pixels)
            with open(a.ids) as f:
                ids = json.load(f)["ids"]
            hs = clip_forward_lin(extra, hfm.vcfg, pixels, lin, cdtype)
            proj = {k: v for k, v in extra.items() if k.startswith("model.mm_projector.")}
            feats = llava_hf.projector(proj, llava_hf.select(hs, hfm.layers, hfm.strategy),
                                       hfm.flat["projector_hidden_act"], lin, cdtype)
            emb = vision_ref.splice_embeddings(w["model.embed_tokens.weight"], ids, feats)
            logits = llama_forward_embeds(w, cfg, emb, lin, cdtype)[-1]
            np.save(os.path.join(a.out, "image_features.npy"), feats.to(torch.float32).numpy())
        else:
            import vision_ref
            _, _, vcfg, vsd, prefix = vision_ref.load_model(a.base, a.vit)
            proj = {k: v for k, v in sd.items() if k.startswith("model.mm_projector.")}
            for adir, scale in adapters:
                if scale != 0:
                    proj.update({k: v for k, v in read_adapter(adir)[2].items() if k.startswith("model.mm_projector.")})
            pixels = np.load(a.pixels)
            with open(a.ids) as f:
                ids = json.load(f)["ids"]
            hs = vision_ref.clip_vision_forward(vsd, vcfg, pixels, prefix, cdtype)
            sel = vision_ref.select_features(hs, int(raw_cfg.get("mm_vision_select_layer", -2)),
                                             raw_cfg.get("mm_vision_select_feature", "patch"))
            feats = vision_ref.projector_forward(proj, sel, raw_cfg.get("mm_projector_type", "linear"),
                                                 "model.mm_projector.", cdtype)
            emb = vision_ref.splice_embeddings(w["model.embed_tokens.weight"], ids, feats)
            logits = llama_forward_embeds(w, cfg, emb, lin, cdtype)[-1]
            np.save(os.path.join(a.out, "image_features.npy"), feats.to(torch.float32).numpy())
    np.save(os.path.join(a.out, "logits.npy"), np.ascontiguousarray(logits.to(torch.float32).numpy()))
    print("%s: logits %s, |max| %.3f, %d adapters%s%s" % (a.out, list(logits.shape), float(logits.abs().max()),
          len(adapters), ", merged" if a.merged else "", ", base q4_0" if a.base_quant else ""))
    return 0


# ------------------------------------------------------------------ random adapters

def write_adapter(out_dir, layout, acfg, tensors):
    """A fresh PEFT directory: adapter_config.json and the weights as safetensors or a pickle."""
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(acfg, f, indent=2)
        f.write("\n")
    if layout == "peft-safetensors":
        hf_layout.write_safetensors(os.path.join(out_dir, "adapter_model.safetensors"), tensors)
    else:
        torch.save(tensors, os.path.join(out_dir, "adapter_model.bin"))


def cmd_make(a):
    g = torch.Generator().manual_seed(a.seed)
    if llava_hf.is_llava_hf(a.base):
        return cmd_make_hf(a, g)
    if a.target_regex or a.naming:
        raise SystemExit("--target-regex / --naming apply to llava-hf bases only")
    if a.targets is None:
        a.targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    with open(os.path.join(a.base, "config.json")) as f:
        base_cfg = json.load(f, object_pairs_hook=OrderedDict)
    cfg = llama_ref.full_config(base_cfg)
    sd = hf_layout.load_state_dict(a.base)
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    rank_pattern = json.loads(a.rank_pattern, object_pairs_hook=OrderedDict) if a.rank_pattern else {}
    alpha_pattern = json.loads(a.alpha_pattern, object_pairs_hook=OrderedDict) if a.alpha_pattern else {}
    targets = a.targets.split(",") if a.targets != "all-linear" else "all-linear"
    acfg = OrderedDict([
        ("alpha_pattern", alpha_pattern), ("auto_mapping", None),
        ("base_model_name_or_path", os.path.abspath(a.base)), ("bias", "none"),
        ("fan_in_fan_out", False), ("inference_mode", True), ("init_lora_weights", True),
        ("layers_pattern", None), ("layers_to_transform", None), ("loftq_config", {}),
        ("lora_alpha", a.alpha), ("lora_dropout", 0.05), ("megatron_config", None),
        ("megatron_core", "megatron.core"),
        ("modules_to_save", a.modules_to_save.split(",") if a.modules_to_save else None),
        ("peft_type", "LORA"), ("r", a.r), ("rank_pattern", rank_pattern), ("revision", None),
        ("target_modules", targets), ("task_type", "CAUSAL_LM"), ("use_dora", False),
        ("use_rslora", a.rslora)])
    if a.break_ == "target":
        acfg["target_modules"] = list(targets) + ["fc1"]

    def wanted(module):
        if targets == "all-linear":
            return module != "lm_head"
        return any(module == t or module.endswith("." + t) for t in targets)

    modules = ["model.layers.%d.%s" % (l, m) for l in range(cfg["num_hidden_layers"]) for m in LINEARS]
    modules.append("lm_head")
    dt = hf_layout.parse_dtype(a.dtype)
    out = OrderedDict()
    for mod in modules:
        if not wanted(mod):
            continue
        W = sd[mod + ".weight"]
        r, _ = module_r_alpha(acfg, mod)
        A = torch.randn(r, W.shape[1], generator=g) / math.sqrt(W.shape[1])
        B = torch.randn(W.shape[0], r, generator=g) * (a.magnitude / math.sqrt(r))
        out["base_model.model.%s.lora_A.weight" % mod] = A.to(dt)
        out["base_model.model.%s.lora_B.weight" % mod] = B.to(dt)
    if not out:
        raise SystemExit("no module of the base matches --targets %s" % a.targets)
    first = next(iter(out))
    if a.break_ == "rank":
        kb = first.replace("lora_A", "lora_B")
        out[kb] = torch.cat([out[kb], out[kb][:, :1]], dim=1)
    elif a.break_ == "dtype":
        out[first] = out[first].to(torch.float64)
    elif a.break_ == "module":
        out["base_model.model.model.layers.0.mlp.fc1.lora_A.weight"] = torch.randn(a.r, 8, generator=g)
        out["base_model.model.model.layers.0.mlp.fc1.lora_B.weight"] = torch.randn(8, a.r, generator=g)
    for m in (a.modules_to_save.split(",") if a.modules_to_save else []):
        key = {"lm_head": "lm_head.weight", "embed_tokens": "model.embed_tokens.weight"}[m]
        base = sd[key].to(torch.float32)
        out["base_model.model." + key] = (base + 0.5 * base.std() * torch.randn(base.shape, generator=g)).to(dt)

    write_adapter(a.out, a.layout, acfg, out)
    if a.layout == "llava":
        run_cfg = OrderedDict(base_cfg)
        run_cfg["mm_projector_lr"] = 2e-05
        run_cfg["tune_mm_mlp_adapter"] = False
        hf_layout.write_config(a.out, run_cfg)
        if not a.no_projector:
            nlt = OrderedDict()
            for k in ("model.mm_projector.0.weight", "model.mm_projector.0.bias",
                      "model.mm_projector.2.weight", "model.mm_projector.2.bias"):
                t = sd[k].to(torch.float32)
                fan_in = t.shape[1] if t.dim() == 2 else 1
                nlt["base_model.model." + k] = (torch.randn(t.shape, generator=g) *
                                                (1.0 / math.sqrt(fan_in) if t.dim() == 2 else 0.2)).to(dt)
            torch.save(nlt, os.path.join(a.out, "non_lora_trainables.bin"))
    print("%s: %s adapter, %d tensors, r=%d alpha=%g%s" % (a.out, a.layout, len(out), a.r, a.alpha,
                                                           ", rslora" if a.rslora else ""))
    return 0


def cmd_make_hf(a, g):
    """make on a llava-hf (LlavaForConditionalGeneration) base: module paths as PEFT sees
    them in that model (LEGACY: language_model.model.layers.N..., vision_tower.vision_model...,
    multi_modal_projector.linear_{1,2}, language_model.lm_head; NEW (transformers >= 4.52):
    model.language_model.layers.N..., model.vision_tower..., model.multi_modal_projector...,
    lm_head). Target matching as peft's check_target_module_exists: a list matches a module
    whose name is, or ends with "." + , an entry; a string is re.fullmatch'ed; all-linear
    expands to every nn.Linear but the output embedding (lm_head), written back as leaf names.
    modules_to_save (default ["multi_modal_projector"], none with --no-projector) are saved
    whole as base_model.model.<module>.<param> (get_peft_model_state_dict strips
    modules_to_save.<adapter>.)."""
    if a.layout == "llava":
        raise SystemExit("--layout llava (non_lora_trainables.bin) is the original LLaVA's; "
                         "use peft-safetensors or peft-bin on a llava-hf base")
    m = llava_hf.load(a.base)
    gen = a.naming or m.gen
    lcfg = llama_ref.full_config(m.flat)
    tower = ["vision_model.encoder.layers.%d.%s" % (l, x)
             for l in range(int(m.vcfg["num_hidden_layers"])) for x in TOWER_LINEARS]
    proj = ["model.mm_projector.0", "model.mm_projector.2"]
    lm = ["model.layers.%d.%s" % (l, x) for l in range(lcfg["num_hidden_layers"]) for x in LINEARS]
    canon = tower + proj + lm + ["lm_head"]      # named_modules() order
    names = OrderedDict((c, llava_hf.hf_name(c, gen)) for c in canon)
    weights = dict(m.tower)
    weights.update(m.llm)
    if a.target_regex:
        targets = a.target_regex
    elif a.targets == "all-linear":
        targets = sorted({n.rsplit(".", 1)[-1] for c, n in names.items() if c != "lm_head"})
    elif a.targets:
        targets = a.targets.split(",")
    else:
        targets = HF_DEFAULT_TARGET_REGEX

    def wanted(name):
        if isinstance(targets, str):
            return re.fullmatch(targets, name) is not None
        return any(name == t or name.endswith("." + t) for t in targets)

    if a.modules_to_save is not None:
        mts = [x for x in a.modules_to_save.split(",") if x]
    else:
        mts = [] if a.no_projector else ["multi_modal_projector"]
    mts_canon = {"multi_modal_projector": [k for k in m.llm if k.startswith("model.mm_projector.")],
                 "lm_head": ["lm_head.weight"], "embed_tokens": ["model.embed_tokens.weight"]}
    for x in mts:
        if x not in mts_canon:
            raise SystemExit("--modules-to-save: %s is not one of %s" % (x, sorted(mts_canon)))
    rank_pattern = json.loads(a.rank_pattern, object_pairs_hook=OrderedDict) if a.rank_pattern else {}
    alpha_pattern = json.loads(a.alpha_pattern, object_pairs_hook=OrderedDict) if a.alpha_pattern else {}
    acfg = OrderedDict([
        ("alpha_pattern", alpha_pattern), ("auto_mapping", None),
        ("base_model_name_or_path", os.path.abspath(a.base)), ("bias", "none"),
        ("fan_in_fan_out", False), ("inference_mode", True), ("init_lora_weights", True),
        ("layers_pattern", None), ("layers_to_transform", None), ("loftq_config", {}),
        ("lora_alpha", a.alpha), ("lora_dropout", 0.05), ("megatron_config", None),
        ("megatron_core", "megatron.core"), ("modules_to_save", mts or None),
        ("peft_type", "LORA"), ("r", a.r), ("rank_pattern", rank_pattern), ("revision", None),
        ("target_modules", targets), ("task_type", "CAUSAL_LM"), ("use_dora", False),
        ("use_rslora", a.rslora)])
    if a.break_ == "target":
        if isinstance(targets, str):
            raise SystemExit("--break target needs a list --targets")
        acfg["target_modules"] = list(targets) + ["fc3"]
    dt = hf_layout.parse_dtype(a.dtype)
    out = OrderedDict()
    hit = {"tower": 0, "projector": 0, "language_model": 0}
    for c, name in names.items():
        if not wanted(name):
            continue
        if c.startswith("model.mm_projector.") and "multi_modal_projector" in mts:
            raise SystemExit("%s is both a LoRA target and in modules_to_save" % name)
        W = weights[c + ".weight"]
        r, _ = module_r_alpha(acfg, name)
        A = torch.randn(r, W.shape[1], generator=g) / math.sqrt(W.shape[1])
        B = torch.randn(W.shape[0], r, generator=g) * (a.magnitude / math.sqrt(r))
        out["base_model.model.%s.lora_A.weight" % name] = A.to(dt)
        out["base_model.model.%s.lora_B.weight" % name] = B.to(dt)
        hit["tower" if c.startswith("vision_model.") else
            "projector" if c.startswith("model.mm_projector.") else "language_model"] += 1
    if not out:
        raise SystemExit("no module of the base matches target_modules %r" % (targets,))
    first = next(iter(out))
    if a.break_ == "rank":
        kb = first.replace("lora_A", "lora_B")
        out[kb] = torch.cat([out[kb], out[kb][:, :1]], dim=1)
    elif a.break_ == "dtype":
        out[first] = out[first].to(torch.float64)
    elif a.break_ == "module":
        bad = llava_hf.hf_name("model.layers.0.mlp.fc1", gen)
        out["base_model.model.%s.lora_A.weight" % bad] = torch.randn(a.r, 8, generator=g)
        out["base_model.model.%s.lora_B.weight" % bad] = torch.randn(8, a.r, generator=g)
    for x in mts:
        for c in mts_canon[x]:
            base = weights[c].to(torch.float32)
            if x == "multi_modal_projector":  # a freshly trained projector
                fan_in = base.shape[1] if base.dim() == 2 else 1
                new = torch.randn(base.shape, generator=g) * \
                    (1.0 / math.sqrt(fan_in) if base.dim() == 2 else 0.2)
            else:
                new = base + 0.5 * base.std() * torch.randn(base.shape, generator=g)
            out["base_model.model." + llava_hf.hf_name(c, gen)] = new.to(dt)
    write_adapter(a.out, a.layout, acfg, out)
    print("%s: %s adapter on a llava-hf base (%s names), %d tensors, r=%d alpha=%g, LoRA on %s, "
          "modules_to_save %s" % (a.out, a.layout, gen, len(out), a.r, a.alpha,
                                  ", ".join("%s %d" % kv for kv in hit.items()), mts))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--base", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--layout", choices=["peft-safetensors", "peft-bin", "llava"], default="peft-safetensors")
    m.add_argument("--r", type=int, default=4)
    m.add_argument("--alpha", type=float, default=8)
    m.add_argument("--rslora", action="store_true")
    m.add_argument("--rank-pattern")
    m.add_argument("--alpha-pattern")
    m.add_argument("--targets", help="comma list or all-linear [q_proj,k_proj,v_proj,o_proj,"
                   "gate_proj,up_proj,down_proj; llava-hf base: --target-regex's default]")
    m.add_argument("--target-regex", help="(llava-hf base) target_modules as one regex string "
                   "(re.fullmatch on module paths) [%s when no --targets]" % HF_DEFAULT_TARGET_REGEX)
    m.add_argument("--naming", choices=list(llava_hf.GENERATIONS),
                   help="(llava-hf base) module paths of this transformers generation "
                        "[the base's own]")
    m.add_argument("--magnitude", type=float, default=0.5)
    m.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    m.add_argument("--modules-to-save")
    m.add_argument("--no-projector", action="store_true")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--break", dest="break_", choices=["rank", "dtype", "module", "target"])
    lg = sub.add_parser("logits")
    lg.add_argument("--base", required=True)
    lg.add_argument("--lora", action="append")
    lg.add_argument("--out", required=True)
    lg.add_argument("--tokens")
    lg.add_argument("--vit")
    lg.add_argument("--pixels")
    lg.add_argument("--ids")
    lg.add_argument("--base-quant", choices=["q4_0"])
    lg.add_argument("--merged", action="store_true")
    b = sub.add_parser("batch")
    b.add_argument("file")
    a = ap.parse_args(argv)
    if a.cmd == "make":
        return cmd_make(a)
    if a.cmd == "logits":
        if not a.tokens and not (a.pixels and a.ids and (a.vit or llava_hf.is_llava_hf(a.base))):
            ap.error("logits needs --tokens or --vit, --pixels and --ids (no --vit for a "
                     "llava-hf base)")
        return cmd_logits(a)
    with open(a.file) as f:
        for args in json.load(f):
            rc = main(args)
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
