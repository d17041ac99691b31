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
  logits  --base DIR --lora ADIR[:SCALE] ... --out OUT (--tokens 1,2,3 | --vit VITDIR
          --pixels NPY --ids JSON) [--base-quant q4_0] [--merged]
      OUT/logits.npy: [T, V] every position (tokens), or [V] last position (image
      prompt, plus OUT/image_features.npy). --base-quant q4_0: the base weights as
      loupe stores a q4_0 conversion (ggml's Q4_0, lm_head Q8_0), dequantised.
      --merged: evaluate with the adapters merged (get_delta_weight) instead.
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

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


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


def build_linears(w, cfg, adapters, cdtype):
    """{module: LoraLinear} with the active adapters' updates; replaces whole tensors in w."""
    lins = {}
    for l in range(cfg["num_hidden_layers"]):
        for m in LINEARS:
            name = "model.layers.%d.%s" % (l, m)
            lins[name] = LoraLinear(w[name + ".weight"])
    lins["lm_head"] = LoraLinear(w["lm_head.weight"])
    for adir, scale in adapters:
        if scale == 0:
            continue
        acfg, pairs, whole = read_adapter(adir)
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


def cmd_logits(a):
    cdtype = torch.float32
    adapters = []
    for s in a.lora or []:
        path, _, scale = s.rpartition(":") if not os.path.isdir(s) else (s, "", "")
        adapters.append((path, float(scale) if scale else 1.0))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.base, "config.json")) as f:
        raw_cfg = json.load(f)
    cfg = llama_ref.full_config(raw_cfg)
    sd = hf_layout.load_state_dict(a.base)
    text = {k: v for k, v in sd.items() if k.startswith("model.layers.") or
            k in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")}
    w = llama_ref.weights_to_compute(text, cfg, cdtype)
    if a.base_quant == "q4_0":
        w = loupe_q4_0_roundtrip(w, cfg)
    with torch.no_grad():
        lins = build_linears(w, cfg, adapters, cdtype)
        if a.merged:
            for lin in lins.values():
                lin.weight, lin.adapters = lin.merged(), []

        def lin(name, x):
            return lins[name](x)

        if a.tokens:
            ids = [int(t) for t in a.tokens.split(",")]
            h = w["model.embed_tokens.weight"][torch.tensor(ids)]
            logits = llama_forward_embeds(w, cfg, h, lin, cdtype)
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

def cmd_make(a):
    g = torch.Generator().manual_seed(a.seed)
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

    if os.path.isdir(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out)
    with open(os.path.join(a.out, "adapter_config.json"), "w") as f:
        json.dump(acfg, f, indent=2)
        f.write("\n")
    if a.layout == "peft-safetensors":
        hf_layout.write_safetensors(os.path.join(a.out, "adapter_model.safetensors"), out)
    else:
        torch.save(out, os.path.join(a.out, "adapter_model.bin"))
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
    m.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
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
        if not a.tokens and not (a.vit and a.pixels and a.ids):
            ap.error("logits needs --tokens or --vit, --pixels and --ids")
        return cmd_logits(a)
    with open(a.file) as f:
        for args in json.load(f):
            rc = main(args)
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
