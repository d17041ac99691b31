#!/usr/bin/python3
"""The demo VLM in plain PyTorch: ShareGPT4V / LLaVA-1.5 architecture, scaled down.

Written from the Hugging Face / LLaVA semantics (no transformers import):
  CLIP vision tower (CLIPVisionModel, keys vision_model.*): conv patch embedding
    (patch 14, no bias) at 336x336 -> 24x24 = 576 patches, CLS + learned position
    embeddings, pre_layrnorm, pre-LN encoder layers (q/k/v/out with biases, softmax
    attention over all 577 tokens, quick_gelu MLP); post_layernorm only on the pooled
    CLS (unused by LLaVA). LLaVA takes hidden_states[-2] (the output of the
    second-to-last layer) and drops the CLS row ('patch').
  Projector mlp2x_gelu (keys model.mm_projector.{0,2}): Linear, GELU(erf), Linear.
  LLaMA (keys model.*, lm_head): RMSNorm, rotate_half RoPE (theta 10000), causal
    attention (MHA or GQA), SwiGLU MLP, untied lm_head.
  Prompt: vicuna_v1 with the image in the first user turn; the 576 projected image
    features replace the -200 placeholder (vision_ref.tokenizer_image_token).
State-dict key names equal the published ones, so export.py saves them unchanged.

The forward functions take an optional `wq` hook: a function (name, weight) -> weight
applied to every weight before use. eval.py uses it to simulate the converted files
(bf16 rounding, Q4_0/Q8_0), train.py for the frozen fake-quantised base of the
QLoRA-style adapter training.
"""

import math
import os
import re
import sys
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "reference"))
import vision_ref  # noqa: E402  (vicuna_v1 prompt, tokenizer_image_token)

SHARED = os.path.join(os.path.dirname(REPO), "shared")
TOKENIZER = os.path.join(SHARED, "tokenizers", "llama2.model")

IMAGE_TOKEN_INDEX = vision_ref.IMAGE_TOKEN_INDEX
BOS, EOS = 1, 2

VISION = OrderedDict([
    ("hidden_size", 64), ("intermediate_size", 256), ("num_hidden_layers", 3),
    ("num_attention_heads", 2), ("image_size", 336), ("patch_size", 14),
    ("layer_norm_eps", 1e-5), ("projection_dim", 64), ("hidden_act", "quick_gelu"),
])
TEXT = OrderedDict([
    ("hidden_size", 128), ("intermediate_size", 352), ("num_hidden_layers", 4),
    ("num_attention_heads", 2), ("num_key_value_heads", 2), ("rms_norm_eps", 1e-5),
    ("rope_theta", 10000.0), ("vocab_size", 32000),
])
SELECT_LAYER = -2


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _id(name, w):
    return w


# Activation hook: (weight name, input) -> input, applied to the input of every matrix
# product with a weight (eval.py: loupe quantises inputs to Q8_0 for quantised weights).
ACT_HOOK = None


def _act(name, x):
    return x if ACT_HOOK is None else ACT_HOOK(name, x)


# ------------------------------------------------------------------ CLIP vision tower

class CLIPAttention(nn.Module):
    def __init__(self, D):
        super().__init__()
        self.k_proj = nn.Linear(D, D)
        self.v_proj = nn.Linear(D, D)
        self.q_proj = nn.Linear(D, D)
        self.out_proj = nn.Linear(D, D)


class CLIPMLP(nn.Module):
    def __init__(self, D, I):
        super().__init__()
        self.fc1 = nn.Linear(D, I)
        self.fc2 = nn.Linear(I, D)


class CLIPEncoderLayer(nn.Module):
    def __init__(self, D, I, eps):
        super().__init__()
        self.self_attn = CLIPAttention(D)
        self.layer_norm1 = nn.LayerNorm(D, eps=eps)
        self.mlp = CLIPMLP(D, I)
        self.layer_norm2 = nn.LayerNorm(D, eps=eps)


class CLIPEncoder(nn.Module):
    def __init__(self, D, I, L, eps):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(D, I, eps) for _ in range(L)])


class CLIPEmbeddings(nn.Module):
    def __init__(self, D, P, S):
        super().__init__()
        n = (S // P) ** 2 + 1
        self.class_embedding = nn.Parameter(torch.zeros(D))
        self.patch_embedding = nn.Conv2d(3, D, kernel_size=P, stride=P, bias=False)
        self.position_embedding = nn.Embedding(n, D)
        self.register_buffer("position_ids", torch.arange(n, dtype=torch.int64)[None, :])


class CLIPVisionTransformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        D, eps = c["hidden_size"], c["layer_norm_eps"]
        self.embeddings = CLIPEmbeddings(D, c["patch_size"], c["image_size"])
        self.pre_layrnorm = nn.LayerNorm(D, eps=eps)
        self.encoder = CLIPEncoder(D, c["intermediate_size"], c["num_hidden_layers"], eps)
        self.post_layernorm = nn.LayerNorm(D, eps=eps)


class CLIPVisionModel(nn.Module):
    """State dict: vision_model.* exactly as HF CLIPVisionModel."""

    def __init__(self, c=VISION):
        super().__init__()
        self.config = dict(c)
        self.vision_model = CLIPVisionTransformer(c)

    def hidden_states(self, pixels, n_layers=None, wq=_id):
        """pixels [B,3,S,S] -> list of hidden states [B,N+1,D]: index 0 after
        pre_layrnorm, l+1 after layer l (only the first n_layers layers run)."""
        c = self.config
        vm = self.vision_model
        W = lambda mod, n, pfx: wq(pfx + n, getattr(mod, n))
        D, nh = c["hidden_size"], c["num_attention_heads"]
        hd = D // nh
        eps = c["layer_norm_eps"]
        e = vm.embeddings
        x = F.conv2d(pixels, wq("vision_model.embeddings.patch_embedding.weight",
                                e.patch_embedding.weight), stride=c["patch_size"])
        B = x.shape[0]
        x = x.flatten(2).transpose(1, 2)                               # [B, N, D]
        cls = wq("vision_model.embeddings.class_embedding", e.class_embedding)
        pos = wq("vision_model.embeddings.position_embedding.weight", e.position_embedding.weight)
        h = torch.cat([cls.to(x.dtype).expand(B, 1, D), x], dim=1) + pos
        h = F.layer_norm(h, (D,), vm.pre_layrnorm.weight, vm.pre_layrnorm.bias, eps)
        states = [h]
        L = c["num_hidden_layers"] if n_layers is None else n_layers
        T = h.shape[1]
        for l in range(L):
            lay = vm.encoder.layers[l]
            p = "vision_model.encoder.layers.%d." % l
            a = lay.self_attn

            def lin(mod, name, y):
                return F.linear(_act(p + name + ".weight", y), wq(p + name + ".weight", mod.weight),
                                mod.bias)

            y = F.layer_norm(h, (D,), lay.layer_norm1.weight, lay.layer_norm1.bias, eps)
            q = lin(a.q_proj, "self_attn.q_proj", y) * hd ** -0.5
            k = lin(a.k_proj, "self_attn.k_proj", y)
            v = lin(a.v_proj, "self_attn.v_proj", y)
            q, k, v = (t.view(B, T, nh, hd).transpose(1, 2) for t in (q, k, v))
            # softmax in the matmul's dtype (bf16 under autocast: 2.5x faster on CPU)
            att = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
            o = (att @ v).transpose(1, 2).reshape(B, T, D)
            h = h + lin(a.out_proj, "self_attn.out_proj", o)
            y = F.layer_norm(h, (D,), lay.layer_norm2.weight, lay.layer_norm2.bias, eps)
            y = lin(lay.mlp.fc2, "mlp.fc2", quick_gelu(lin(lay.mlp.fc1, "mlp.fc1", y)))
            h = h + y
            states.append(h)
        return states

    def features(self, pixels, select_layer=SELECT_LAYER, wq=_id):
        """LLaVA's feature_select: hidden_states[select_layer] without the CLS row."""
        L = self.config["num_hidden_layers"]
        idx = select_layer if select_layer >= 0 else L + 1 + select_layer
        hs = self.hidden_states(pixels, n_layers=idx, wq=wq)
        return hs[idx][:, 1:]


# ------------------------------------------------------------------ LLaMA + projector

class LoRALinear(nn.Module):
    """PEFT-style LoRA around a frozen nn.Linear: y = base(x) + B(A(dropout(x))) * alpha/r.
    Keys: .weight (base), .lora_A.weight [r, in], .lora_B.weight [out, r]."""

    def __init__(self, base, r, alpha, dropout):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.lora_A = nn.Linear(self.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, self.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's init
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta(self, x):
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def merged_weight(self):
        return self.weight + (self.lora_B.weight @ self.lora_A.weight) * self.scaling


class LlamaAttention(nn.Module):
    def __init__(self, H, nh, nkv):
        super().__init__()
        hd = H // nh
        self.q_proj = nn.Linear(H, nh * hd, bias=False)
        self.k_proj = nn.Linear(H, nkv * hd, bias=False)
        self.v_proj = nn.Linear(H, nkv * hd, bias=False)
        self.o_proj = nn.Linear(nh * hd, H, bias=False)


class LlamaMLP(nn.Module):
    def __init__(self, H, I):
        super().__init__()
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)


class RMSNorm(nn.Module):
    def __init__(self, H, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(H))
        self.eps = eps


def rms_norm(x, w, eps):
    xf = x.float()
    return (w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))).to(x.dtype)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        H = c["hidden_size"]
        self.self_attn = LlamaAttention(H, c["num_attention_heads"], c["num_key_value_heads"])
        self.mlp = LlamaMLP(H, c["intermediate_size"])
        self.input_layernorm = RMSNorm(H, c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(H, c["rms_norm_eps"])


class LlavaModel(nn.Module):
    def __init__(self, c, mm_hidden):
        super().__init__()
        H = c["hidden_size"]
        self.embed_tokens = nn.Embedding(c["vocab_size"], H)
        self.layers = nn.ModuleList([LlamaDecoderLayer(c) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(H, c["rms_norm_eps"])
        self.mm_projector = nn.Sequential(nn.Linear(mm_hidden, H), nn.GELU(), nn.Linear(H, H))


def rope_cos_sin(positions, hd, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    ang = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class LlavaLlamaForCausalLM(nn.Module):
    """State dict: model.* + lm_head.weight, as Share4VLlamaForCausalLM saves it."""

    def __init__(self, c=TEXT, mm_hidden=VISION["hidden_size"]):
        super().__init__()
        self.config = dict(c)
        self.model = LlavaModel(c, mm_hidden)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    # -- LoRA
    def lora_modules(self):
        """(name, module) of LLaVA's find_all_linear_names targets: every nn.Linear of
        the LLM except lm_head and the projector (q/k/v/o/gate/up/down)."""
        out = []
        for i, lay in enumerate(self.model.layers):
            for grp, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                               ("mlp", ("gate_proj", "up_proj", "down_proj"))):
                for n in names:
                    out.append(("model.layers.%d.%s.%s" % (i, grp, n), getattr(getattr(lay, grp), n)))
        return out

    def add_lora(self, r, alpha, dropout):
        for name, mod in self.lora_modules():
            lay = self.model.layers[int(name.split(".")[2])]
            grp, n = name.split(".")[3:5]
            setattr(getattr(lay, grp), n, LoRALinear(mod, r, alpha, dropout))

    # -- pieces
    def project(self, feats, wq=_id):
        p = self.model.mm_projector
        x = F.linear(_act("model.mm_projector.0.weight", feats),
                     wq("model.mm_projector.0.weight", p[0].weight), p[0].bias)
        x = F.gelu(x)
        return F.linear(_act("model.mm_projector.2.weight", x),
                        wq("model.mm_projector.2.weight", p[2].weight), p[2].bias)

    def embed(self, ids, wq=_id):
        return F.embedding(ids, wq("model.embed_tokens.weight", self.model.embed_tokens.weight))

    def _lin(self, mod, name, x, wq):
        y = F.linear(_act(name + ".weight", x), wq(name + ".weight", mod.weight))
        if isinstance(mod, LoRALinear):
            y = y + mod.delta(x)
        return y

    def decoder(self, h, positions, cache=None, wq=_id, mask=None):
        """h [B,T,H] input embeddings at `positions` ([T], or [B,T] per row). With a
        cache (list of per-layer (k, v) or None), keys/values are appended and the
        attention covers cache + new tokens. mask: additive [B,1,T,T] (training with
        packed answer segments); default causal. Returns the final-norm states."""
        c = self.config
        B, T, H = h.shape
        nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
        hd = H // nh
        eps = c["rms_norm_eps"]
        cos, sin = rope_cos_sin(positions.reshape(-1), hd, c["rope_theta"])
        if positions.dim() == 2:
            cos, sin = cos.view(B, 1, T, hd), sin.view(B, 1, T, hd)
        cos, sin = cos.to(h.dtype), sin.to(h.dtype)
        past = 0 if cache is None or cache[0] is None else cache[0][0].shape[2]
        if mask is None:
            mask = torch.full((T, past + T), float("-inf")).triu(past + 1)
        for l, lay in enumerate(self.model.layers):
            p = "model.layers.%d." % l
            a = lay.self_attn
            y = rms_norm(h, lay.input_layernorm.weight, eps)
            q = self._lin(a.q_proj, p + "self_attn.q_proj", y, wq).view(B, T, nh, hd).transpose(1, 2)
            k = self._lin(a.k_proj, p + "self_attn.k_proj", y, wq).view(B, T, nkv, hd).transpose(1, 2)
            v = self._lin(a.v_proj, p + "self_attn.v_proj", y, wq).view(B, T, nkv, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if cache is not None:
                if cache[l] is not None:
                    k = torch.cat([cache[l][0], k], dim=2)
                    v = torch.cat([cache[l][1], v], dim=2)
                cache[l] = (k, v)
            if nkv != nh:
                k = k.repeat_interleave(nh // nkv, dim=1)
                v = v.repeat_interleave(nh // nkv, dim=1)
            s = (q * hd ** -0.5) @ k.transpose(-1, -2)
            att = torch.softmax(s + mask.to(s.dtype), dim=-1)
            o = (att @ v).transpose(1, 2).reshape(B, T, nh * hd)
            h = h + self._lin(a.o_proj, p + "self_attn.o_proj", o, wq)
            y = rms_norm(h, lay.post_attention_layernorm.weight, eps)
            m = lay.mlp
            g = F.silu(self._lin(m.gate_proj, p + "mlp.gate_proj", y, wq))
            u = self._lin(m.up_proj, p + "mlp.up_proj", y, wq)
            h = h + self._lin(m.down_proj, p + "mlp.down_proj", g * u, wq)
        return rms_norm(h, self.model.norm.weight, eps)

    def logits(self, hn, wq=_id):
        return F.linear(_act("lm_head.weight", hn), wq("lm_head.weight", self.lm_head.weight))


class ShapesVLM(nn.Module):
    def __init__(self, vision=VISION, text=TEXT):
        super().__init__()
        self.vision_tower = CLIPVisionModel(vision)
        self.llm = LlavaLlamaForCausalLM(text, vision["hidden_size"])

    def image_features(self, pixels, wq=_id, vision_feats=None):
        f = self.vision_tower.features(pixels, wq=wq) if vision_feats is None else vision_feats
        return self.llm.project(f, wq=wq)

    def splice(self, batch_ids, image_feats, wq=_id):
        """batch_ids: list of id lists, each with one IMAGE_TOKEN_INDEX, all of the same
        length with the image at the same index. -> inputs_embeds [B, T-1+N, H]."""
        ids = torch.tensor(batch_ids, dtype=torch.int64)
        pos = (ids[0] == IMAGE_TOKEN_INDEX).nonzero()[0, 0].item()
        assert (ids[:, pos] == IMAGE_TOKEN_INDEX).all()
        e0 = self.llm.embed(ids[:, :pos], wq)
        e1 = self.llm.embed(ids[:, pos + 1:], wq)
        return torch.cat([e0, image_feats.to(e0.dtype), e1], dim=1)


def sincos_2d(grid, D, scale=0.5):
    """MAE-style fixed 2-D sin-cos table [grid*grid, D] (first half y, second half x),
    used only to initialise the (learned) CLIP position embeddings."""
    q = D // 4
    omega = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float64) / q))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                            torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = []
    for c in (ys.reshape(-1), xs.reshape(-1)):
        a = c[:, None] * omega[None, :]
        parts += [a.sin(), a.cos()]
    return (torch.cat(parts, dim=1) * scale).float()


_CLIP_STD = {}


def _clip_std(name):
    """transformers' CLIPPreTrainedModel._init_weights (factor 1) for the tower's
    matrices: q/k/v and fc2 D^-0.5 (2L)^-0.5, out_proj D^-0.5, fc1 (2D)^-0.5."""
    if "vision_model.encoder.layers." not in name:
        return None
    D, L = VISION["hidden_size"], VISION["num_hidden_layers"]
    for key, std in ((".q_proj.", D ** -0.5 * (2 * L) ** -0.5), (".k_proj.", D ** -0.5 * (2 * L) ** -0.5),
                     (".v_proj.", D ** -0.5 * (2 * L) ** -0.5), (".out_proj.", D ** -0.5),
                     (".fc1.", (2 * D) ** -0.5), (".fc2.", D ** -0.5 * (2 * L) ** -0.5)):
        if key in name:
            return std
    return None


def init_weights(model, seed):
    """HF-style init: LLaMA normal(0, 0.02) linears/embeddings, CLIP encoder matrices as
    transformers' CLIP init, zero biases, unit norms; CLIP class embedding normal(0, 0.02); CLIP patch position embeddings start from a
    2-D sin-cos table (an initialisation only: they are trained like any weight)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif p.dim() == 1:
                if "class_embedding" in name:
                    p.normal_(0, 0.02, generator=g)
                else:
                    p.fill_(1.0)
            else:
                p.normal_(0, _clip_std(name) or 0.02, generator=g)
            if name.endswith("embeddings.position_embedding.weight"):
                n, D = p.shape
                grid = int(round((n - 1) ** 0.5))
                p[1:] = sincos_2d(grid, D)


# ------------------------------------------------------------------ prompts / tokens

_SP = None


def sp():
    global _SP
    if _SP is None:
        import sentencepiece as spm
        _SP = spm.SentencePieceProcessor(model_file=TOKENIZER)
    return _SP


def prompt_ids(question):
    """vicuna_v1 prompt with one image, ending with 'ASSISTANT:' (what loupe feeds)."""
    return vision_ref.tokenizer_image_token(vision_ref.vicuna_v1_prompt(question), sp())


_ANS_CACHE = {}


def answer_ids(question, answer):
    """Tokens of ' ' + answer + '</s>' after the prompt, as LLaVA's preprocess_v1 makes
    them (the whole turn tokenized at once; '</s>' is the EOS id). Checked to extend
    prompt_ids(question) exactly."""
    key = (question, answer)
    if key not in _ANS_CACHE:
        p = prompt_ids(question)
        full = vision_ref.tokenizer_image_token(vision_ref.vicuna_v1_prompt(question) + " " + answer, sp())
        if full[:len(p)] != p:
            raise AssertionError("prompt tokens change when the answer follows: %r" % answer)
        _ANS_CACHE[key] = full[len(p):] + [EOS]
    return _ANS_CACHE[key]


def decode(ids):
    ids = [t for t in ids if t != EOS]
    return sp().decode(ids)


# ------------------------------------------------------------------ weight transforms

def bf16_round(w):
    return w.detach().to(torch.bfloat16).float()


def _q_dequant(w, qtype):
    sys.path.insert(0, os.path.join(REPO, "reference"))
    import numpy as np
    import quant_ref
    a = w.detach().float().contiguous().numpy()
    y = quant_ref.dequantize(quant_ref.quantize(a, qtype), qtype).reshape(a.shape)
    return torch.from_numpy(np.ascontiguousarray(y))


def converted_type(name, shape, outtype):
    """The GGUF storage type loupe-convert gives a tensor (include/loupe/convert.hpp
    choose_type + the mmproj rules): 1-D -> f32; patch embedding -> f16 (f32 with
    --outtype f32); position embedding -> f32; with q4_0 lm_head -> q8_0; quantised
    types need rows that are a multiple of 32 (else f16)."""
    if len(shape) < 2 or name.endswith("position_embedding.weight") or name.endswith("class_embedding"):
        return "f32"
    if name.endswith("patch_embedding.weight"):
        return "f32" if outtype == "f32" else "f16"
    t = outtype
    if t == "q4_0" and name == "lm_head.weight":
        t = "q8_0"
    if t in ("q4_0", "q8_0") and shape[-1] % 32:
        t = "f16"
    return t


def simulate_converted(sd, outtype):
    """Weights as loupe sees them after export (bf16 storage) and loupe-convert to
    `outtype` ('bf16' = just the bf16 rounding), upcast to float32."""
    out = OrderedDict()
    for k, v in sd.items():
        if not v.is_floating_point():
            out[k] = v
            continue
        w = bf16_round(v)
        t = converted_type(k, tuple(v.shape), outtype) if outtype != "bf16" else "bf16"
        if t == "f16":
            w = w.half().float()
        elif t in ("q4_0", "q8_0"):
            w = _q_dequant(w, t)
        out[k] = w
    return out
