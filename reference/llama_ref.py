#!/usr/bin/python3
"""Independent plain-PyTorch reference for Hugging Face LlamaForCausalLM.

Semantics follow transformers' modeling_llama (written from scratch here):
  h = embed_tokens[ids]
  per layer:  h += o_proj(attn(rmsnorm(h, input_layernorm)))
              h += down(silu(gate(x)) * up(x)),  x = rmsnorm(h, post_attention_layernorm)
  out = rmsnorm(h, model.norm);  logits = out @ lm_head^T  (lm_head = embed_tokens if tied)
  rmsnorm(x, w) = w * (x * rsqrt(mean(x^2, -1) + eps))
  RoPE: rotate_half convention, inv_freq = 1/(theta ** (arange(0, hd, 2)/hd)),
        angle[p, i] = p * inv_freq[i], cos/sin of cat(angle, angle),
        q' = q*cos + rotate_half(q)*sin,  rotate_half(x) = cat(-x[hd/2:], x[:hd/2])
  attention: causal softmax(q k^T / sqrt(hd)) v, K/V heads repeated (GQA: kv head
        j serves query heads j*g .. j*g+g-1, g = n_heads / n_kv_heads).
All math in float32 (or float64 with --compute f64) on weights as stored, upcast.

Run with /usr/bin/python3.  See --help; examples:
  llama_ref.py --make /tmp/m --config gqa48 --seed 1 --format safetensors --shards 2 --dtype bf16
  llama_ref.py --load ../shared/models/stories260K-hf --out /tmp/r \
      --expected ../shared/expected/stories260K-greedy.jsonl --greedy 64
"""

import argparse
import json
import math
import os
import shutil
import sys
from collections import OrderedDict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_layout  # noqa: E402

# ------------------------------------------------------------------ configs

# Built-in test configurations (usable as --config NAME).  Each exercises something:
PRESETS = {
    # GQA 4 q heads / 2 kv heads, head_dim 12 (not a power of two), untied,
    # intermediate 100 (not a multiple of 32), theta 500000, eps 1e-2 (large enough to matter)
    "gqa48": dict(hidden_size=48, intermediate_size=100, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                  max_position_embeddings=64, rms_norm_eps=1e-2, rope_theta=500000.0,
                  tie_word_embeddings=False),
    # MHA 5 heads, head_dim 8, tied embeddings, theta 10000, eps 1e-5
    "mha40": dict(hidden_size=40, intermediate_size=72, num_hidden_layers=3,
                  num_attention_heads=5, num_key_value_heads=5, vocab_size=512,
                  max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                  tie_word_embeddings=True),
    # MQA (1 kv head), head_dim 20, tied, theta 1000, eps 1e-6
    "mqa60": dict(hidden_size=60, intermediate_size=132, num_hidden_layers=2,
                  num_attention_heads=3, num_key_value_heads=1, vocab_size=530,
                  max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000.0,
                  tie_word_embeddings=True),
    # head_dim 6 (hidden 36, 6 heads), GQA 6/3, untied, multiple-of-32 vocab/intermediate
    "gqa36": dict(hidden_size=36, intermediate_size=96, num_hidden_layers=1,
                  num_attention_heads=6, num_key_value_heads=3, vocab_size=512,
                  max_position_embeddings=32, rms_norm_eps=1e-4, rope_theta=10000.0,
                  tie_word_embeddings=False),
    # "llama-shaped": hidden 128 (multiples of 32 everywhere, quantisable), 4 heads of 32, MHA
    "mha128": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
                   max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                   tie_word_embeddings=False),
}


def full_config(cfg, dtype_name="float32"):
    """Complete a (partial) config with LlamaConfig defaults, standard key order."""
    c = OrderedDict()
    c["architectures"] = ["LlamaForCausalLM"]
    c["model_type"] = "llama"
    c["hidden_size"] = int(cfg["hidden_size"])
    c["intermediate_size"] = int(cfg["intermediate_size"])
    c["num_hidden_layers"] = int(cfg["num_hidden_layers"])
    c["num_attention_heads"] = int(cfg["num_attention_heads"])
    c["num_key_value_heads"] = int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    c["vocab_size"] = int(cfg["vocab_size"])
    c["max_position_embeddings"] = int(cfg.get("max_position_embeddings", 2048))
    c["rms_norm_eps"] = float(cfg.get("rms_norm_eps", 1e-6))
    c["rope_theta"] = float(cfg.get("rope_theta", 10000.0))
    c["hidden_act"] = cfg.get("hidden_act", "silu")
    c["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", False))
    c["bos_token_id"] = int(cfg.get("bos_token_id", 1))
    c["eos_token_id"] = int(cfg.get("eos_token_id", 2))
    if "head_dim" in cfg:  # only emitted when the caller asks for it
        c["head_dim"] = int(cfg["head_dim"])
    c["torch_dtype"] = cfg.get("torch_dtype", dtype_name)
    return c


def parse_config_arg(s):
    """--config: preset name, JSON string, or path to a JSON file."""
    if s in PRESETS:
        return dict(PRESETS[s])
    if os.path.exists(s):
        with open(s) as f:
            return json.load(f)
    return json.loads(s)


def head_dim_of(cfg):
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def check_config(cfg):
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = head_dim_of(cfg)
    if "head_dim" not in cfg and H % nh:
        raise ValueError("hidden_size %d not divisible by num_attention_heads %d" % (H, nh))
    if nh % nkv:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    if hd % 2:
        raise ValueError("head_dim must be even for RoPE")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError("only hidden_act silu is supported")
    if cfg.get("rope_scaling"):
        raise ValueError("rope_scaling is not supported by this reference")


# ------------------------------------------------------------------ weights

def random_weights(cfg, seed):
    """Random LLaMA weights (float32) with HF names, scaled to keep logits O(1)."""
    g = torch.Generator().manual_seed(seed)
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim_of(cfg)

    def lin(out_f, in_f, gain=1.0):
        return torch.randn(out_f, in_f, generator=g) * (gain / math.sqrt(in_f))

    def norm_w(n):
        # around 1 with clear per-channel variation (a wrong/missing norm weight shows)
        return 1.0 + 0.25 * torch.randn(n, generator=g)

    sd = OrderedDict()
    # embeddings small-ish (rms ~0.3) so rms_norm_eps like 1e-2 has a visible effect
    sd["model.embed_tokens.weight"] = 0.3 * torch.randn(V, H, generator=g)
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        sd[p + "self_attn.q_proj.weight"] = lin(nh * hd, H, 1.5)   # gain: non-flat softmax
        sd[p + "self_attn.k_proj.weight"] = lin(nkv * hd, H, 1.5)
        sd[p + "self_attn.v_proj.weight"] = lin(nkv * hd, H)
        sd[p + "self_attn.o_proj.weight"] = lin(H, nh * hd, 0.7)
        sd[p + "mlp.gate_proj.weight"] = lin(I, H, 1.5)
        sd[p + "mlp.up_proj.weight"] = lin(I, H)
        sd[p + "mlp.down_proj.weight"] = lin(H, I, 0.7)
        sd[p + "input_layernorm.weight"] = norm_w(H)
        sd[p + "post_attention_layernorm.weight"] = norm_w(H)
    sd["model.norm.weight"] = norm_w(H)
    if not cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = lin(V, H, 2.0)
    return sd


def weights_to_compute(sd, cfg, cdtype):
    """Upcast the stored tensors (exactly) to the compute dtype; resolve lm_head."""
    w = {k: v.to(cdtype) for k, v in sd.items()}
    if cfg.get("tie_word_embeddings", False) or "lm_head.weight" not in w:
        if not cfg.get("tie_word_embeddings", False):
            raise KeyError("lm_head.weight missing and tie_word_embeddings is false")
        w["lm_head.weight"] = w["model.embed_tokens.weight"]
    return w


# ------------------------------------------------------------------ model

def rms_norm(x, w, eps):
    var = (x * x).mean(dim=-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rope_cos_sin(T, hd, theta, cdtype):
    # HF computes inv_freq and the angles in float32
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).to(cdtype) / hd))
    pos = torch.arange(T, dtype=torch.int64).to(cdtype)
    ang = pos[:, None] * inv_freq[None, :]          # [T, hd/2]
    emb = torch.cat([ang, ang], dim=-1)             # [T, hd]
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def forward(w, cfg, ids, cdtype=torch.float32, collect_layers=False):
    """ids: list[int] -> (logits [T,V], final-norm hidden [T,H], per-layer residuals)."""
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim_of(cfg)
    eps = float(cfg["rms_norm_eps"])
    theta = float(cfg.get("rope_theta", 10000.0))
    T = len(ids)
    idx = torch.tensor(ids, dtype=torch.int64)
    h = w["model.embed_tokens.weight"][idx]         # [T, H]
    cos, sin = rope_cos_sin(T, hd, theta, cdtype)   # [T, hd]
    mask = torch.full((T, T), float("-inf"), dtype=cdtype).triu(1)
    grp = nh // nkv
    layers = []
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = (x @ w[p + "self_attn.q_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
        k = (x @ w[p + "self_attn.k_proj.weight"].T).view(T, nkv, hd).transpose(0, 1)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).view(T, nkv, hd).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(grp, dim=0)          # [nh, T, hd]
        v = v.repeat_interleave(grp, dim=0)
        s = (q @ k.transpose(1, 2)) / math.sqrt(hd) + mask
        a = torch.softmax(s, dim=-1) @ v             # [nh, T, hd]
        a = a.transpose(0, 1).reshape(T, nh * hd)
        h = h + a @ w[p + "self_attn.o_proj.weight"].T
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate = x @ w[p + "mlp.gate_proj.weight"].T
        up = x @ w[p + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
        if collect_layers:
            layers.append(h.clone())
    hn = rms_norm(h, w["model.norm.weight"], eps)
    logits = hn @ w["lm_head.weight"].T
    return logits, hn, layers


def greedy(w, cfg, prompt_ids, n, cdtype, stop_ids):
    """Argmax continuation of prompt_ids, up to n tokens; stops after emitting a stop id
    (the stop id is included). Full recompute per step (no KV cache).
    Returns (ids, margins): margins[i] = top1 - top2 logit at step i."""
    ids = list(prompt_ids)
    out, margins = [], []
    for _ in range(n):
        logits, _, _ = forward(w, cfg, ids, cdtype)
        top2 = torch.topk(logits[-1], 2).values
        margins.append(float(top2[0] - top2[1]))
        nxt = int(torch.argmax(logits[-1]).item())
        out.append(nxt)
        ids.append(nxt)
        if nxt in stop_ids:
            break
    return out, margins


# ------------------------------------------------------------------ CLI

def parse_tokens(s):
    return [int(t) for t in s.replace(" ", "").split(",") if t != ""]


def write_outputs(outdir, w, cfg, ids, cdtype, dump_layers):
    os.makedirs(outdir, exist_ok=True)
    with torch.no_grad():
        logits, hn, layers = forward(w, cfg, ids, cdtype, collect_layers=dump_layers)
    np.save(os.path.join(outdir, "logits.npy"), logits.to(torch.float32).numpy())
    np.save(os.path.join(outdir, "hidden_last.npy"), hn.to(torch.float32).numpy())
    for i, hl in enumerate(layers):
        np.save(os.path.join(outdir, "layer%02d_out.npy" % i), hl.to(torch.float32).numpy())
    with open(os.path.join(outdir, "tokens.json"), "w") as f:
        json.dump(ids, f)
        f.write("\n")
    return logits


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Plain-PyTorch LlamaForCausalLM reference (HF semantics).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Outputs (in OUT; --make default DIR/ref): logits.npy float32 [T, vocab] (every "
               "position), hidden_last.npy float32 [T, hidden] (after model.norm), tokens.json "
               "(list of ids), with --dump-layers layerNN_out.npy [T, hidden] (residual after "
               "layer NN), with --greedy greedy.json {prompt_ids, greedy_ids, min_margin, margins} (margins[i] = top1-top2 logit gap at step i: tiny gaps make greedy comparisons fragile).\n"
               "Presets for --config: " + ", ".join(sorted(PRESETS)))
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--make", metavar="DIR", help="create a random model in HF layout in DIR")
    mode.add_argument("--load", metavar="DIR", help="use an existing HF LLaMA directory")
    ap.add_argument("--config", help="(--make) preset name, JSON string or JSON file")
    ap.add_argument("--seed", type=int, default=0, help="(--make) RNG seed [0]")
    ap.add_argument("--format", choices=["bin", "safetensors"], default="safetensors",
                    help="(--make) checkpoint format [safetensors]")
    ap.add_argument("--shards", type=int, default=1, help="(--make) number of shards [1]")
    ap.add_argument("--shard-order", choices=["contiguous", "roundrobin"], default="contiguous",
                    help="(--make) how tensors are spread over shards [contiguous]")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32",
                    help="(--make) stored dtype [f32]; the reference uses the rounded weights")
    ap.add_argument("--emit-lm-head", choices=["copy", "shared"],
                    help="(--make, tied configs) also store lm_head.weight = embed_tokens: "
                    "'copy' (own data) or 'shared' (.bin: same pickled storage as embed_tokens)")
    ap.add_argument("--bin-container", choices=["ordereddict", "dict"], default="ordereddict",
                    help="(--make --format bin) pickle shards as OrderedDict or plain dict")
    ap.add_argument("--tokens", help="comma-separated token ids (default: seeded random, "
                    "BOS first, 11 tokens; or the --expected prompt)")
    ap.add_argument("--tokenizer", metavar="MODEL",
                    help="(--make) copy this sentencepiece tokenizer.model into DIR")
    ap.add_argument("--out", help="output directory (--make: default DIR/ref; --load: required)")
    ap.add_argument("--compute", choices=["f32", "f64"], default="f32",
                    help="compute precision [f32 = HF float32 semantics]")
    ap.add_argument("--dump-layers", action="store_true", help="also write per-layer residuals")
    ap.add_argument("--greedy", type=int, metavar="N", default=0,
                    help="greedy-generate N tokens from the tokens; writes greedy.json")
    ap.add_argument("--expected", metavar="JSONL",
                    help="expected greedy jsonl (prompt_ids, greedy_ids): prompt defaults to "
                    "its prompt_ids and --greedy to len(greedy_ids); exit 1 on mismatch")
    a = ap.parse_args(argv)
    cdtype = torch.float64 if a.compute == "f64" else torch.float32
    if a.load and not a.out:
        ap.error("--load needs --out (never write into a model directory such as ../shared)")

    expected = None
    if a.expected:
        with open(a.expected) as f:
            expected = json.loads(f.readline())

    if a.make:
        if not a.config:
            ap.error("--make needs --config")
        dtype_name = hf_layout.dtype_config_name(a.dtype)
        user_cfg = parse_config_arg(a.config)
        user_cfg.setdefault("torch_dtype", dtype_name)
        cfg = full_config(user_cfg, dtype_name)
        check_config(cfg)
        sd = random_weights(cfg, a.seed)
        if a.emit_lm_head:
            if not cfg["tie_word_embeddings"]:
                ap.error("--emit-lm-head is for tied configs")
            e = sd["model.embed_tokens.weight"]
            sd["lm_head.weight"] = e.clone() if a.emit_lm_head == "copy" else e
        hf_layout.write_config(a.make, cfg)
        if a.tokenizer:
            shutil.copyfile(a.tokenizer, os.path.join(a.make, "tokenizer.model"))
        stored = hf_layout.save_state_dict(a.make, sd, fmt=a.format, shards=a.shards,
                                           dtype=a.dtype, order=a.shard_order,
                                           bin_container=a.bin_container)
        model_dir = a.make
    else:
        model_dir = a.load
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = full_config(json.load(f))
        check_config(cfg)
        stored = hf_layout.load_state_dict(model_dir)

    w = weights_to_compute(stored, cfg, cdtype)

    if a.tokens:
        ids = parse_tokens(a.tokens)
    elif expected is not None:
        ids = list(expected["prompt_ids"])
    else:
        g = torch.Generator().manual_seed(a.seed + 12345)
        V = cfg["vocab_size"]
        ids = [cfg["bos_token_id"]] + torch.randint(0, V, (10,), generator=g).tolist()
    bad = [t for t in ids if not 0 <= t < cfg["vocab_size"]]
    if bad or not ids:
        ap.error("token ids out of range / empty: %s" % bad)
    if len(ids) > cfg["max_position_embeddings"]:
        print("warning: %d tokens > max_position_embeddings" % len(ids), file=sys.stderr)

    outdir = a.out or os.path.join(model_dir, "ref")
    logits = write_outputs(outdir, w, cfg, ids, cdtype, a.dump_layers)
    print("wrote %s: logits [%d, %d], max|logit| %.3f, argmax last %d"
          % (outdir, logits.shape[0], logits.shape[1], logits.abs().max().item(),
             int(logits[-1].argmax())))

    ngen = a.greedy or (len(expected["greedy_ids"]) if expected else 0)
    rc = 0
    if ngen:
        stop = {cfg["bos_token_id"], cfg["eos_token_id"]}
        with torch.no_grad():
            gen, margins = greedy(w, cfg, ids, ngen, cdtype, stop)
        with open(os.path.join(outdir, "greedy.json"), "w") as f:
            json.dump({"prompt_ids": ids, "greedy_ids": gen,
                       "min_margin": min(margins), "margins": margins}, f)
            f.write("\n")
        print("greedy (%d): %s" % (len(gen), gen))
        print("smallest top1-top2 logit margin on the greedy path: %.4g (step %d)"
              % (min(margins), margins.index(min(margins))))
        if expected is not None:
            exp = expected["greedy_ids"]
            if gen == exp:
                print("greedy MATCHES expected (%d tokens)" % len(gen))
            else:
                n = next((i for i, (x, y) in enumerate(zip(gen, exp)) if x != y),
                         min(len(gen), len(exp)))
                print("greedy MISMATCH at index %d (got %d tokens, expected %d)"
                      % (n, len(gen), len(exp)))
                rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
