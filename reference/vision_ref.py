#!/usr/bin/python3
"""Independent plain-PyTorch reference for the LLaVA-1.5 / ShareGPT4V image path.

Written from the semantics of transformers' CLIPVisionModel and the LLaVA /
ShareGPT4V multimodal glue (no transformers import; run with /usr/bin/python3).

CLIP vision tower (HF CLIPVisionTransformer, key prefix ``vision_model.``):
  x      = conv2d(pixels, embeddings.patch_embedding.weight, stride=patch, no bias)
           -> [N, D] patches in row-major (y, x) order
  h      = cat(class_embedding, x) + position_embedding.weight[0 .. N]
  h      = pre_layrnorm(h)                       -> hidden_states[0]
  layer: h = h + out_proj(attn(layer_norm1(h)))   (q,k,v,out with biases;
             q scaled by head_dim**-0.5; softmax over all N+1 tokens, no mask)
         h = h + fc2(act(fc1(layer_norm2(h))))    act = quick_gelu: x*sigmoid(1.702x)
                                                 -> hidden_states[l+1]
  post_layernorm is applied only to the pooled CLS output, never to hidden_states.
LLaVA feature select: hidden_states[mm_vision_select_layer] (default -2);
  'patch' drops the CLS row, 'cls_patch' keeps it.
Projector (LLaVA builder): 'linear' = one Linear; 'mlpNx_gelu' = Linear,
  (GELU(erf), Linear) * (N-1); keys model.mm_projector.{0,2,..}.{weight,bias}.
Prompt: tokenizer_image_token: split on '<image>', encode each chunk with
  sentencepiece (HF slow LlamaTokenizer: BOS + sp.encode(chunk)), keep the first
  chunk's BOS only, put IMAGE_TOKEN_INDEX (-200) between chunks.
LLM input: embed_tokens for text ids, the image features in place of -200,
  positions 0..T-1 over the spliced sequence; LlamaForCausalLM via llama_ref.py.

Library API (import vision_ref):
  clip_vision_forward(sd, vcfg, pixels, prefix="vision_model.") -> [L+1, N+1, D]
  select_features(hidden_states, layer=-2, feature="patch")      -> [N, D]
  projector_forward(sd, x, ptype="mlp2x_gelu", prefix="model.mm_projector.")
  vicuna_v1_prompt(question) -> str
  tokenizer_image_token(prompt, sp_or_path, bos_id=1)            -> list[int]
  splice_embeddings(embed_w, ids, image_features)                -> [T, H]
  llm_logits_from_embeds(w, lcfg, embeds)                        -> [T, V]
  run_pipeline(llm_sd, llm_cfg, vit_sd, vit_cfg, vit_prefix, pixels, ids) -> dict
  load_model(llm_dir, vit_dir=None) -> (llm_cfg, llm_sd, vit_cfg, vit_sd, vit_prefix)

CLI: compute goldens for an existing checkpoint (see --help), e.g.
  vision_ref.py --llm DIR/llm --vit DIR/vit --image ../shared/images/skimage_chelsea.png
      --prompt "Describe the image." --out /tmp/ref   (one line)
"""

import argparse
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)

IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's "
                    "questions.")

# Where the LLM checkpoint keeps an embedded copy of the tower (LLaVA trained with
# DeepSpeed saves the frozen tower as model.vision_tower.vision_tower.vision_model.*).
EMBEDDED_TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."


# ------------------------------------------------------------------ CLIP vision

def _act(name):
    name = (name or "quick_gelu").lower()
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: F.gelu(x)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) *
                                                     (x + 0.044715 * x * x * x)))
    raise ValueError("unsupported hidden_act %r" % name)


def _layer_norm(x, w, b, eps):
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def vision_config_of(cfg):
    """Accept a CLIPVisionConfig dict, or a CLIPModel config dict (vision_config inside)."""
    if "vision_config" in cfg and "hidden_size" not in cfg:
        cfg = cfg["vision_config"]
    c = dict(cfg)
    c.setdefault("hidden_act", "quick_gelu")
    c.setdefault("layer_norm_eps", 1e-5)
    c.setdefault("num_channels", 3)
    return c


def clip_vision_forward(sd, vcfg, pixels, prefix="vision_model.", cdtype=torch.float32):
    """pixels: [3,H,W] (or [1,3,H,W]) float. Returns hidden_states [L+1, N+1, D]
    (index 0 = embeddings after pre_layrnorm; index l+1 = output of layer l)."""
    vcfg = vision_config_of(vcfg)

    def W(name):
        return sd[prefix + name].to(cdtype)

    x = torch.as_tensor(np.asarray(pixels)).to(cdtype)
    if x.dim() == 3:
        x = x[None]
    if x.shape[0] != 1:
        raise ValueError("one image at a time")
    P = int(vcfg["patch_size"])
    D = int(vcfg["hidden_size"])
    nh = int(vcfg["num_attention_heads"])
    hd = D // nh
    if hd * nh != D:
        raise ValueError("hidden_size %d not divisible by heads %d" % (D, nh))
    eps = float(vcfg["layer_norm_eps"])
    act = _act(vcfg.get("hidden_act"))

    pw = W("embeddings.patch_embedding.weight")                   # [D, C, P, P]
    pb = sd.get(prefix + "embeddings.patch_embedding.bias")       # CLIP: absent
    pe = F.conv2d(x, pw, None if pb is None else pb.to(cdtype), stride=P)  # [1, D, gh, gw]
    pe = pe.flatten(2).transpose(1, 2)[0]                         # [N, D], row-major
    N = pe.shape[0]
    pos = W("embeddings.position_embedding.weight")
    if pos.shape[0] != N + 1:
        raise ValueError("position_embedding has %d rows, image gives %d patches + CLS"
                         % (pos.shape[0], N))
    pid = sd.get(prefix + "embeddings.position_ids")
    if pid is not None and not torch.equal(pid.reshape(-1).long(), torch.arange(N + 1)):
        raise ValueError("position_ids buffer is not arange(N+1)")
    h = torch.cat([W("embeddings.class_embedding")[None, :], pe], dim=0) + pos
    h = _layer_norm(h, W("pre_layrnorm.weight"), W("pre_layrnorm.bias"), eps)

    states = [h]
    L = int(vcfg["num_hidden_layers"])
    T = N + 1
    for l in range(L):
        p = "encoder.layers.%d." % l
        r = h
        y = _layer_norm(h, W(p + "layer_norm1.weight"), W(p + "layer_norm1.bias"), eps)
        q = (y @ W(p + "self_attn.q_proj.weight").T + W(p + "self_attn.q_proj.bias")) * hd ** -0.5
        k = y @ W(p + "self_attn.k_proj.weight").T + W(p + "self_attn.k_proj.bias")
        v = y @ W(p + "self_attn.v_proj.weight").T + W(p + "self_attn.v_proj.bias")
        q = q.view(T, nh, hd).transpose(0, 1)
        k = k.view(T, nh, hd).transpose(0, 1)
        v = v.view(T, nh, hd).transpose(0, 1)
        a = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v       # [nh, T, hd]
        a = a.transpose(0, 1).reshape(T, D)
        h = r + a @ W(p + "self_attn.out_proj.weight").T + W(p + "self_attn.out_proj.bias")
        r = h
        y = _layer_norm(h, W(p + "layer_norm2.weight"), W(p + "layer_norm2.bias"), eps)
        y = act(y @ W(p + "mlp.fc1.weight").T + W(p + "mlp.fc1.bias"))
        h = r + y @ W(p + "mlp.fc2.weight").T + W(p + "mlp.fc2.bias")
        states.append(h)
    return torch.stack(states, dim=0)


def clip_pooled(sd, vcfg, hidden_states, prefix="vision_model.", cdtype=torch.float32):
    """post_layernorm(last hidden CLS) (CLIPVisionModel pooler_output; LLaVA ignores it)."""
    vcfg = vision_config_of(vcfg)
    return _layer_norm(hidden_states[-1, 0], sd[prefix + "post_layernorm.weight"].to(cdtype),
                       sd[prefix + "post_layernorm.bias"].to(cdtype),
                       float(vcfg["layer_norm_eps"]))


def select_features(hidden_states, layer=-2, feature="patch"):
    f = hidden_states[layer]
    if feature == "patch":
        return f[1:]
    if feature == "cls_patch":
        return f
    raise ValueError("unexpected mm_vision_select_feature %r" % feature)


# ------------------------------------------------------------------ projector

def projector_forward(sd, x, ptype="mlp2x_gelu", prefix="model.mm_projector.",
                      cdtype=torch.float32):
    def W(name):
        return sd[prefix + name].to(cdtype)

    x = x.to(cdtype)
    if ptype == "linear":
        return x @ W("weight").T + W("bias")
    m = re.match(r"^mlp(\d+)x_gelu$", ptype or "")
    if not m:
        raise ValueError("unsupported mm_projector_type %r" % ptype)
    depth = int(m.group(1))
    for i in range(depth):
        if i:
            x = F.gelu(x)  # nn.GELU(): exact erf form
        x = x @ W("%d.weight" % (2 * i)).T + W("%d.bias" % (2 * i))
    return x


# ------------------------------------------------------------------ prompt

def vicuna_v1_prompt(question):
    """conv_templates['vicuna_v1'] with one user turn '<image>\\n' + question."""
    return VICUNA_V1_SYSTEM + " USER: " + DEFAULT_IMAGE_TOKEN + "\n" + question + " ASSISTANT:"


def _sp(sp_or_path):
    if isinstance(sp_or_path, str):
        import sentencepiece as spm
        return spm.SentencePieceProcessor(model_file=sp_or_path)
    return sp_or_path


def tokenizer_image_token(prompt, sp_or_path, bos_id=None, image_token_index=IMAGE_TOKEN_INDEX):
    """LLaVA's tokenizer_image_token on top of a sentencepiece model.

    Each chunk is tokenized like HF's slow LlamaTokenizer(chunk).input_ids, i.e.
    [BOS] + sp.encode(chunk) (add_bos_token=True). The first chunk's BOS is kept,
    the others' dropped, and one image_token_index goes between chunks."""
    sp = _sp(sp_or_path)
    bos = sp.bos_id() if bos_id is None else bos_id
    chunks = [[bos] + list(sp.encode(c)) for c in prompt.split(DEFAULT_IMAGE_TOKEN)]
    ids = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == bos:
        offset = 1
        ids.append(bos)
    # LLaVA interleaves chunks with a separator of offset+1 image tokens and then
    # drops the first `offset` entries of every piece: one image token survives.
    sep = [image_token_index] * (offset + 1)
    for i, c in enumerate(chunks):
        if i:
            ids.extend(sep[offset:])
        ids.extend(c[offset:])
    return ids


# ------------------------------------------------------------------ LLM glue

def splice_embeddings(embed_w, ids, image_features, image_token_index=IMAGE_TOKEN_INDEX):
    """prepare_inputs_labels_for_multimodal for one sample with one image."""
    n_img = sum(1 for t in ids if t == image_token_index)
    if n_img != 1:
        raise ValueError("expected exactly one image token, got %d" % n_img)
    parts = []
    for t in ids:
        if t == image_token_index:
            parts.append(image_features.to(embed_w.dtype))
        else:
            parts.append(embed_w[t][None, :])
    return torch.cat(parts, dim=0)


def llm_logits_from_embeds(w, lcfg, embeds, cdtype=torch.float32, last_only=True):
    """Run llama_ref.forward on inputs_embeds. llama_ref has no inputs_embeds entry, so
    embed_tokens is swapped for the embedding rows and ids = 0..T-1 (lm_head was
    resolved by weights_to_compute beforehand, so a tied head is unaffected).
    last_only: returns logits [1, V] of the last position only (the head is applied
    here to llama_ref's final-norm output; a 1-row dummy head keeps its own cheap)."""
    import llama_ref
    w2 = dict(w)
    w2["model.embed_tokens.weight"] = embeds.to(cdtype)
    head = w["lm_head.weight"]
    if last_only:
        w2["lm_head.weight"] = head[:1]
    logits, hn, _ = llama_ref.forward(w2, lcfg, list(range(embeds.shape[0])), cdtype)
    if last_only:
        return hn[-1:] @ head.T
    return logits


def llm_compute_weights(llm_sd, llm_cfg, cdtype=torch.float32):
    """(llama_ref config, upcast weights) from a multimodal LLM state dict."""
    import llama_ref
    lcfg = llama_ref.full_config(llm_cfg)
    text = {k: v for k, v in llm_sd.items()
            if k.startswith("model.layers.") or k in ("model.embed_tokens.weight",
                                                      "model.norm.weight", "lm_head.weight")}
    return lcfg, llama_ref.weights_to_compute(text, lcfg, cdtype)


def run_pipeline(llm_sd, llm_cfg, vit_sd, vit_cfg, vit_prefix, pixels, ids,
                 cdtype=torch.float32):
    """Full reference. Returns dict of float32 numpy arrays:
    vision_hidden_states [L+1,N+1,D], image_features [N,Ht], inputs_embeds [T,Ht],
    logits [V] (last position); features_compute = the image
    features as a torch tensor in the compute dtype (for greedy_from_embeds)."""
    with torch.no_grad():
        hs = clip_vision_forward(vit_sd, vit_cfg, pixels, vit_prefix, cdtype)
        sel = select_features(hs, int(llm_cfg.get("mm_vision_select_layer", -2)),
                              llm_cfg.get("mm_vision_select_feature", "patch"))
        feats = projector_forward(llm_sd, sel, llm_cfg.get("mm_projector_type", "linear"),
                                  "model.mm_projector.", cdtype)
        lcfg, w = llm_compute_weights(llm_sd, llm_cfg, cdtype)
        emb = splice_embeddings(w["model.embed_tokens.weight"], ids, feats)
        logits = llm_logits_from_embeds(w, lcfg, emb, cdtype)
    f32 = lambda t: t.to(torch.float32).numpy()
    return {"vision_hidden_states": f32(hs), "image_features": f32(feats),
            "inputs_embeds": f32(emb), "logits": f32(logits[-1]),
            "features_compute": feats}


def greedy_from_embeds(llm_sd, llm_cfg, ids, image_features, n, stop_ids=(2,),
                       cdtype=torch.float32):
    """Greedy continuation (full recompute each step). Returns (tokens, margins) where
    margin = top1 - top2 logit at each step (small margins = fragile comparison)."""
    with torch.no_grad():
        lcfg, w = llm_compute_weights(llm_sd, llm_cfg, cdtype)
        ids = list(ids)
        out, margins = [], []
        for _ in range(n):
            emb = splice_embeddings(w["model.embed_tokens.weight"], ids,
                                    torch.as_tensor(image_features).to(cdtype))
            last = llm_logits_from_embeds(w, lcfg, emb, cdtype)[-1]
            top = torch.topk(last, 2)
            t = int(top.indices[0])
            out.append(t)
            margins.append(float(top.values[0] - top.values[1]))
            ids.append(t)
            if t in stop_ids:
                break
    return out, margins


# ------------------------------------------------------------------ loading

def _read_json(path):
    with open(path) as f:
        return json.load(f)


def load_model(llm_dir, vit_dir=None):
    """Load an LLM dir (+ optional separate tower dir). The tower weights come from
    vit_dir when it has weights, else from the LLM checkpoint's embedded copy.
    Returns (llm_cfg, llm_sd, vit_cfg, vit_sd, vit_prefix)."""
    import hf_layout
    llm_cfg = _read_json(os.path.join(llm_dir, "config.json"))
    llm_sd = hf_layout.load_state_dict(llm_dir)
    vit_cfg, vit_sd, prefix = None, None, None
    if vit_dir:
        vit_cfg = vision_config_of(_read_json(os.path.join(vit_dir, "config.json")))
        try:
            vit_sd = hf_layout.load_state_dict(vit_dir)
            prefix = "vision_model."
        except FileNotFoundError:
            vit_sd = None
    if vit_sd is None:
        if not any(k.startswith(EMBEDDED_TOWER_PREFIX) for k in llm_sd):
            raise FileNotFoundError("no tower weights in %s and none embedded in %s"
                                    % (vit_dir, llm_dir))
        vit_sd, prefix = llm_sd, EMBEDDED_TOWER_PREFIX
    if vit_cfg is None:
        raise ValueError("need --vit (a dir with the CLIP config) for the tower geometry")
    return llm_cfg, llm_sd, vit_cfg, vit_sd, prefix


def read_preprocessor_config(vit_dir):
    """Return (size, crop, mean, std) from a preprocessor_config.json in either the
    legacy CLIPFeatureExtractor format (ints) or the CLIPImageProcessor format (dicts)."""
    pc = _read_json(os.path.join(vit_dir, "preprocessor_config.json"))
    size, crop = pc.get("size", 224), pc.get("crop_size", 224)
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height"))
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("width"))
    return int(size), int(crop), list(pc["image_mean"]), list(pc["image_std"])


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="LLaVA/ShareGPT4V image-path reference on an existing checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Writes into OUT: pixel_values.npy [3,S,S] (only with --image), "
               "vision_hidden_states.npy [L+1,N+1,D], image_features.npy [N,H], "
               "inputs_embeds.npy [T,H], logits.npy [V] (last position), prompt_ids.json, "
               "and greedy.json with --greedy N. All float32.")
    ap.add_argument("--llm", required=True, help="LLM checkpoint dir (config.json + weights)")
    ap.add_argument("--vit", help="CLIP tower dir (config.json, preprocessor_config.json, "
                    "optional weights; without weights the LLM's embedded tower is used)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="image file (preprocessed with preprocess_ref.py)")
    src.add_argument("--pixels", help="pixel_values .npy [3,S,S] to use as is")
    ap.add_argument("--prompt", default="Describe the image in detail.",
                    help="user question (wrapped in the vicuna_v1 template)")
    ap.add_argument("--raw-prompt", action="store_true",
                    help="use --prompt as the full prompt (must contain <image>)")
    ap.add_argument("--tokenizer", help="tokenizer.model [LLM/tokenizer.model]")
    ap.add_argument("--compute", choices=["f32", "f64"], default="f32")
    ap.add_argument("--greedy", type=int, default=0, metavar="N")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cdtype = torch.float64 if a.compute == "f64" else torch.float32
    t0 = time.time()
    llm_cfg, llm_sd, vit_cfg, vit_sd, prefix = load_model(a.llm, a.vit)
    os.makedirs(a.out, exist_ok=True)
    if a.image:
        import preprocess_ref
        size, crop, mean, std = read_preprocessor_config(a.vit)
        pad = llm_cfg.get("image_aspect_ratio", "square") == "pad"
        pixels = preprocess_ref.preprocess(a.image, pad=pad, size=size, crop=crop,
                                           mean=mean, std=std)
        np.save(os.path.join(a.out, "pixel_values.npy"), np.asarray(pixels, np.float32))
    else:
        pixels = np.load(a.pixels)
    prompt = a.prompt if a.raw_prompt else vicuna_v1_prompt(a.prompt)
    ids = tokenizer_image_token(prompt, a.tokenizer or os.path.join(a.llm, "tokenizer.model"))
    r = run_pipeline(llm_sd, llm_cfg, vit_sd, vit_cfg, prefix, pixels, ids, cdtype)
    for k in ("vision_hidden_states", "image_features", "inputs_embeds", "logits"):
        np.save(os.path.join(a.out, k + ".npy"), r[k])
    with open(os.path.join(a.out, "prompt_ids.json"), "w") as f:
        json.dump({"prompt": prompt, "ids": ids}, f)
        f.write("\n")
    if a.greedy:
        toks, margins = greedy_from_embeds(llm_sd, llm_cfg, ids, r["image_features"], a.greedy,
                                           (llm_cfg.get("eos_token_id", 2),), cdtype)
        with open(os.path.join(a.out, "greedy.json"), "w") as f:
            json.dump({"greedy_ids": toks, "margins": margins}, f)
            f.write("\n")
    print("wrote %s in %.2fs: hidden %s, features %s, T=%d, argmax %d"
          % (a.out, time.time() - t0, r["vision_hidden_states"].shape,
             r["image_features"].shape, r["inputs_embeds"].shape[0], int(r["logits"].argmax())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
