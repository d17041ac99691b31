#!/usr/bin/python3
"""Train the demo VLM (phase 'base') and its Lithuanian LoRA adapter (phase 'adapter').

Seeded and resumable: sample i of a run is scenes.example(data_seed, i), a function of
the index alone, and step s takes samples s*B .. s*B+B-1; checkpoints (every
--ckpt-every steps, written atomically) hold the weights, the optimiser and the RNG
state, and a rerun of the same command continues from the last one.

Matrix work runs under torch.autocast(bfloat16) (oneDNN; Debian's torch uses the
reference BLAS for float32, ~100x slower here); the master weights are float32.

base:    everything trained end to end (CLIP tower, projector, LLaMA). Each image is
         one sequence [system + USER: + <image>] followed by two answer segments
         that both see the image but not each other (block attention mask, positions
         of each segment restart after the image):
           "\\n<English prompt> ASSISTANT: <English caption></s>"
           "\\n<Lithuanian prompt> ASSISTANT: <Lithuanian caption></s>"
         i.e. two vicuna_v1 conversations about the same image, sharing the prefix.
         The base model answers in Lithuanian only when asked in Lithuanian.
adapter: the base frozen (its weights as the converted files hold them: bf16-rounded
         and, with --fake-quant q4_0, Q4_0/Q8_0-quantised exactly as loupe-convert
         does: the QLoRA recipe), LoRA on q/k/v/o/gate/up/down of every LLM layer and
         the projector trained in full, on Lithuanian captions with the *English*
         prompts (one segment per image).

Examples (see README.md):
  train.py --phase base --out /work/demo-cache/base
  train.py --phase adapter --base /work/demo-cache/base --out /work/demo-cache/lora
"""

import argparse
import json
import math
import os
import random
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import model as M  # noqa: E402
import scenes  # noqa: E402

sys.path.insert(0, os.path.join(M.REPO, "reference"))
import preprocess_ref  # noqa: E402

DEFAULTS = {
    "tower": dict(steps=1500, batch=16, lr=2e-3, warmup=50, data_seed=3, init_seed=1234),
    "base": dict(steps=1500, batch=12, lr=1.5e-3, warmup=100, data_seed=1, init_seed=1234),
    "adapter": dict(steps=400, batch=12, lr=1e-3, warmup=30, data_seed=2, init_seed=4321),
}


# ------------------------------------------------------------------ data

class SceneData(torch.utils.data.Dataset):
    """Map-style dataset over the infinite seeded stream; item i -> (pixels, segments)
    where segments is a list of (question, answer, language)."""

    def __init__(self, seed, phase):
        self.seed, self.phase = seed, phase

    def __len__(self):
        return 1 << 40

    def __getitem__(self, i):
        if self.phase == "tower":  # even items: contact sheets, odd: caption scenes
            sc = (scenes.sample_sheet(scenes.rng_for(self.seed, i, salt=5)) if i % 2 == 0
                  else scenes.example(self.seed, i)["scene"])
            return torch.from_numpy(preprocess_ref.preprocess(scenes.render(sc))), patch_labels(sc)
        ex = scenes.example(self.seed, i)
        px = preprocess_ref.preprocess(scenes.render(ex["scene"]))
        if self.phase == "base":
            segs = [(ex["prompt_en"], ex["en"], "en"), (ex["prompt_lt"], ex["lt"], "lt")]
        else:
            segs = [(ex["prompt_en"], ex["lt"], "lt")]
        return torch.from_numpy(px), segs


# colour (8 + padding), shape (none + 4), size (none + 2), position (none + 5),
# rank in the caption order (none, first, second), object count (1, 2; on every patch)
HEAD_NAMES = ("colour", "shape", "size", "pos", "rank", "count")
HEADS = [9, 5, 3, 6, 3, 2]
OBJECT_ONLY = ("shape", "size", "pos", "rank")
HEAD_WEIGHT = {"shape": 3.0, "size": 1.5}  # the hard ones


def patch_labels(scene, S=336, P=14):
    """Per-patch targets [6, (S/P)^2] for the tower pretraining: the region that covers a
    patch (an object if it covers >= 25 % of it, else background or the grey padding of
    expand2square), mapped through the same pad + resize as the image. Sheets (no
    caption positions) get -100 (ignored) for position, rank and count."""
    lab = preprocess_ref.expand2square(scenes.render_labels(scene), 255)
    lab = np.array(lab.resize((S, S), resample=0))  # NEAREST
    G = S // P
    a = lab.reshape(G, P, G, P).transpose(0, 2, 1, 3).reshape(G * G, P * P)
    K = len(scene.objects)
    cnt = np.stack([(a == v).sum(1) for v in range(K + 1)] + [(a == 255).sum(1)], 1)
    if K:
        obj = 1 + np.argmax(cnt[:, 1:K + 1], axis=1)
        objn = cnt[np.arange(G * G), obj]
    else:
        obj = objn = np.zeros(G * G, dtype=np.int64)
    region = np.where(objn >= 0.25 * P * P, obj, np.where(cnt[:, 0] >= cnt[:, K + 1], 0, 255))
    out = np.zeros((len(HEADS), G * G), dtype=np.int64)
    sheet = scene.centres is not None
    out[5] = -100 if sheet else K - 1
    if sheet:
        out[3] = out[4] = -100
    bgc = scenes.COLOURS.index(scene.background)
    out[0] = np.where(region == 255, 8, bgc)
    for k, (shape, colour, size, pos) in enumerate(scene.objects):
        m = region == k + 1
        out[0][m] = scenes.COLOURS.index(colour)
        out[1][m] = 1 + scenes.SHAPES.index(shape)
        out[2][m] = 1 + scenes.SIZES.index(size)
        if not sheet:
            out[3][m] = 1 + scenes.POSITIONS.index(pos)
            out[4][m] = 1 + k
    return torch.from_numpy(out)


def pca_patch_embedding(tower, seed, n_images=48, eps=0.01):
    """Data-dependent initialisation of the patch embedding: the top principal
    components of 14x14x3 patches of seeded scenes, whitened (1/sqrt(var + eps)), so
    edge directions start on an equal footing with the dominant colour directions."""
    w = tower.vision_model.embeddings.patch_embedding.weight
    D, C, P, _ = w.shape
    rows = []
    for i in range(n_images):
        sc = scenes.sample_sheet(scenes.rng_for(seed, i)) if i % 2 else scenes.example(seed, i)["scene"]
        px = preprocess_ref.preprocess(scenes.render(sc))
        G = px.shape[1] // P
        rows.append(px.reshape(C, G, P, G, P).transpose(1, 3, 0, 2, 4).reshape(G * G, C * P * P))
    X = np.concatenate(rows).astype(np.float64)
    X -= X.mean(0)
    ev, V = np.linalg.eigh(X.T @ X / len(X))
    ev, V = ev[::-1][:D], V[:, ::-1][:, :D]
    V = V * np.sign(V.sum(0) + 1e-12)  # deterministic sign
    with torch.no_grad():
        w.copy_(torch.from_numpy((V / np.sqrt(ev + eps)).T.astype(np.float32)).view(D, C, P, P))
    return ev


class TowerPretrain(torch.nn.Module):
    """The CLIP tower plus a throw-away per-patch classifier on the features LLaVA uses
    (hidden_states[-2], CLS dropped): stands in for CLIP's own pretraining."""

    def __init__(self):
        super().__init__()
        self.tower = M.CLIPVisionModel(M.VISION)
        D = M.VISION["hidden_size"]
        self.norm = torch.nn.LayerNorm(D)
        self.head = torch.nn.Linear(D, sum(HEADS))

    def loss(self, pixels, labels, obj_weight=5.0):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f = self.tower.features(pixels)
            logits = self.head(self.norm(f)).float()           # [B, N, sum(HEADS)]
        w = torch.where(labels[:, 1] > 0, obj_weight, 1.0)    # object patches weigh more
        total, accs, o = 0.0, {}, 0
        for i, (h, n) in enumerate(zip(HEAD_NAMES, HEADS)):
            lg = logits[..., o:o + n]
            y = labels[:, i]
            if h in OBJECT_ONLY:  # shape/size/position/rank: taught on object patches only
                y = torch.where(labels[:, 1] > 0, y, torch.full_like(y, -100))
            nll = F.cross_entropy(lg.reshape(-1, n), y.reshape(-1), reduction="none").view_as(w)
            wi = w * (y != -100)
            total = total + HEAD_WEIGHT.get(h, 1.0) * (nll * wi).sum() / wi.sum().clamp(min=1.0)
            objm = labels[:, 1] > 0
            sel = (objm if h != "count" else torch.ones_like(objm)) & (y != -100)
            accs[h] = float((lg.argmax(-1) == y)[sel].float().mean()) if sel.any() else 1.0
            o += n
        return total, accs


class StepSampler(torch.utils.data.Sampler):
    def __init__(self, start_step, steps, batch):
        self.start, self.steps, self.batch = start_step, steps, batch

    def __iter__(self):
        for s in range(self.start, self.steps):
            yield list(range(s * self.batch, (s + 1) * self.batch))

    def __len__(self):
        return self.steps - self.start


def collate(items):
    if torch.is_tensor(items[0][1]):
        return torch.stack([p for p, _ in items]), torch.stack([s for _, s in items])
    return torch.stack([p for p, _ in items]), [s for _, s in items]


_PRE = None


def pre_ids():
    """Tokens before the image (BOS, system, ' USER: '), identical for every prompt."""
    global _PRE
    if _PRE is None:
        ids = M.prompt_ids(scenes.PROMPTS_EN[0])
        _PRE = ids[:ids.index(M.IMAGE_TOKEN_INDEX)]
    return _PRE


def build_batch(segs_batch, n_img):
    """-> ids [B,T] (image rows = 0), positions [B,T], additive mask [B,1,T,T],
    label rows/cols/targets (+ language of each target), image offset."""
    pre = pre_ids()
    P = len(pre)
    rows = []
    for segs in segs_batch:
        ids, pos, seg, tgt = list(pre) + [0] * n_img, list(range(P + n_img)), [0] * (P + n_img), []
        for j, (q, a, lang) in enumerate(segs):
            full = M.prompt_ids(q)
            post = full[full.index(M.IMAGE_TOKEN_INDEX) + 1:]
            ans = M.answer_ids(q, a)
            start = len(ids)
            for t, tok in enumerate(post + ans):
                ids.append(tok)
                pos.append(P + n_img + t)
                seg.append(j + 1)
            for t, tok in enumerate(ans):  # logits at position p predict token p+1
                tgt.append((start + len(post) + t - 1, tok, lang))
        rows.append((ids, pos, seg, tgt))
    T = max(len(r[0]) for r in rows)
    B = len(rows)
    ids = torch.zeros(B, T, dtype=torch.int64)
    pos = torch.zeros(B, T, dtype=torch.int64)
    segt = torch.full((B, T), -1, dtype=torch.int64)
    for b, (i, p, s, _) in enumerate(rows):
        ids[b, :len(i)] = torch.tensor(i)
        pos[b, :len(p)] = torch.tensor(p)
        segt[b, :len(s)] = torch.tensor(s)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    si, sj = segt[:, :, None], segt[:, None, :]
    allowed = causal[None] & ((sj == 0) | (sj == si)) & (si >= 0)
    allowed |= torch.eye(T, dtype=torch.bool)[None]  # padding rows see themselves
    mask = torch.zeros(B, 1, T, T).masked_fill(~allowed[:, None], float("-inf"))
    lb, lt, ly, ll = [], [], [], []
    for b, r in enumerate(rows):
        for (t, tok, lang) in r[3]:
            lb.append(b)
            lt.append(t)
            ly.append(tok)
            ll.append(lang)
    return ids, pos, mask, torch.tensor(lb), torch.tensor(lt), torch.tensor(ly), ll, P


def batch_loss(vlm, pixels, segs_batch, frozen_tower=False):
    n_img = (vlm.vision_tower.config["image_size"] // vlm.vision_tower.config["patch_size"]) ** 2
    ids, pos, mask, lb, lt, ly, langs, P = build_batch(segs_batch, n_img)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if frozen_tower:
            with torch.no_grad():
                f = vlm.vision_tower.features(pixels)
            feats = vlm.llm.project(f)
        else:
            feats = vlm.image_features(pixels)
        emb = vlm.llm.embed(ids)
        emb = torch.cat([emb[:, :P], feats.to(emb.dtype), emb[:, P + n_img:]], dim=1)
        hn = vlm.llm.decoder(emb, pos, mask=mask.to(emb.dtype))
        logits = vlm.llm.logits(hn[lb, lt])
    nll = F.cross_entropy(logits.float(), ly, reduction="none")
    by = {}
    for lang in ("en", "lt"):
        sel = torch.tensor([l == lang for l in langs])
        if sel.any():
            by[lang] = float(nll[sel].mean())
    acc = float((logits.argmax(-1) == ly).float().mean())
    return nll.mean(), by, acc


# ------------------------------------------------------------------ model setup

def param_groups(named, wd):
    decay, no = [], []
    for n, p in named:
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "embed_tokens" not in n and "position_embedding" not in n
         else no).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no, "weight_decay": 0.0}]


def load_base_state(base_dir):
    ck = torch.load(os.path.join(base_dir, "final.pt"), map_location="cpu")
    return ck["model"]


def make_model(a, phase):
    if phase == "tower":
        tp = TowerPretrain()
        M.init_weights(tp, a.init_seed)
        pca_patch_embedding(tp.tower, a.data_seed + 100)
        return tp
    vlm = M.ShapesVLM(M.VISION, M.TEXT)
    if phase == "base":
        M.init_weights(vlm, a.init_seed)
        if a.init:  # a second stage: continue from an earlier base run, new schedule and data
            vlm.load_state_dict(load_base_state(a.init))
        if a.tower:  # the pretrained tower, frozen (LLaVA keeps its CLIP tower frozen)
            tsd = torch.load(os.path.join(a.tower, "final.pt"), map_location="cpu")["model"]
            vsd = OrderedDict((k[len("tower."):], v) for k, v in tsd.items() if k.startswith("tower."))
            vlm.vision_tower.load_state_dict(vsd)
            for p in vlm.vision_tower.parameters():
                p.requires_grad_(False)
        return vlm
    sd = load_base_state(a.base)
    # the base as the converted files hold it (bf16 storage, then loupe-convert)
    sim = M.simulate_converted(sd, a.fake_quant)
    vlm.load_state_dict(sim)
    for p in vlm.parameters():
        p.requires_grad_(False)
    torch.manual_seed(a.init_seed)
    vlm.llm.add_lora(a.lora_r, a.lora_alpha, a.lora_dropout)
    # the projector is trained in full, from the base's (unquantised bf16) values
    proj = OrderedDict((k[len("llm.model.mm_projector."):], M.bf16_round(v))
                       for k, v in sd.items() if k.startswith("llm.model.mm_projector."))
    vlm.llm.model.mm_projector.load_state_dict(proj)
    for p in vlm.llm.model.mm_projector.parameters():
        p.requires_grad_(True)
    return vlm


def trainable_state(vlm, phase):
    if phase in ("base", "tower"):
        return vlm.state_dict()
    return OrderedDict((k, v) for k, v in vlm.state_dict().items()
                       if "lora_" in k or "mm_projector" in k)


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["tower", "base", "adapter"], required=True)
    ap.add_argument("--tower", help="(base) the tower pretraining run directory (final.pt); "
                    "the tower is then frozen")
    ap.add_argument("--init", help="(base) start from this base run directory's final.pt "
                    "(a second stage with its own schedule; use another --data-seed)")
    ap.add_argument("--out", required=True, help="run directory (checkpoints, log)")
    ap.add_argument("--base", help="(adapter) the base run directory (final.pt)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--data-seed", type=int)
    ap.add_argument("--init-seed", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="data loader processes")
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--fake-quant", choices=["bf16", "q4_0"], default="q4_0",
                    help="(adapter) the frozen base as after this conversion [q4_0]")
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="stop (after a checkpoint) when this much wall time has passed")
    a = ap.parse_args(argv)
    for k, v in DEFAULTS[a.phase].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.phase == "adapter" and not a.base:
        ap.error("--base is required for the adapter phase")
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    ck_path = os.path.join(a.out, "checkpoint.pt")
    log_path = os.path.join(a.out, "train.log")

    vlm = make_model(a, a.phase)
    named = list(vlm.named_parameters())
    opt = torch.optim.AdamW(param_groups(named, a.weight_decay), lr=a.lr, betas=(0.9, 0.98), eps=1e-8)
    n_train = sum(p.numel() for _, p in named if p.requires_grad)
    start, elapsed = 0, 0.0
    torch.manual_seed(a.init_seed + 1)  # dropout
    if os.path.exists(ck_path):
        ck = torch.load(ck_path, map_location="cpu")
        if ck["args"]["steps"] != a.steps or ck["args"]["batch"] != a.batch:
            raise SystemExit("checkpoint was made with other --steps/--batch: %s" % ck_path)
        vlm.load_state_dict(ck["model"], strict=False)
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["rng"])
        start, elapsed = ck["step"], ck["elapsed"]
        print("resuming %s at step %d (%.0fs trained)" % (a.out, start, elapsed), flush=True)
    log = open(log_path, "a")

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    if start == 0:
        say("# %s: %s" % (a.phase, json.dumps(vars(a), sort_keys=True)))
        say("# trainable parameters: %d; vision %s; text %s" % (n_train, dict(M.VISION), dict(M.TEXT)))
        if a.phase == "tower":
            say("# per-object-patch accuracies are logged as colour/shape/size/pos")
    if start >= a.steps:
        say("# already finished")
    data = SceneData(a.data_seed, a.phase)
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=StepSampler(start, a.steps, a.batch), collate_fn=collate,
        num_workers=a.workers, prefetch_factor=4 if a.workers else 2,
        persistent_workers=False)
    vlm.train()
    t0 = time.time()
    run_t0 = t0
    acc_l, acc_by, acc_acc, acc_n = 0.0, {}, 0.0, 0
    step = start
    for pixels, segs in loader:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        if a.phase == "tower":
            loss, by = vlm.loss(pixels, segs)
            acc = 0.0
        else:
            loss, by, acc = batch_loss(vlm, pixels, segs, frozen_tower=(a.phase == "adapter" or bool(a.tower)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in named if p.requires_grad], 1.0)
        opt.step()
        step += 1
        acc_l += float(loss)
        acc_acc += acc
        for k, v in by.items():
            acc_by[k] = acc_by.get(k, 0.0) + v
        acc_n += 1
        if step % a.log_every == 0 or step == a.steps:
            now = time.time()
            el = elapsed + (now - run_t0)
            say("step %5d/%d loss %.4f %s tokacc %.3f lr %.2e gnorm %.2f | %.2f s/step, %.1f min"
                % (step, a.steps, acc_l / acc_n,
                   " ".join("%s %.4f" % (k, v / acc_n) for k, v in sorted(acc_by.items())),
                   acc_acc / acc_n, lr_at(step - 1, a), float(gn), (now - t0) / acc_n, el / 60))
            acc_l, acc_by, acc_acc, acc_n = 0.0, {}, 0.0, 0
            t0 = now
        stop = a.max_minutes and (elapsed + time.time() - run_t0) > a.max_minutes * 60
        if step % a.ckpt_every == 0 or step == a.steps or stop:
            save_atomic({"model": trainable_state(vlm, a.phase), "opt": opt.state_dict(),
                         "rng": torch.get_rng_state(), "step": step,
                         "elapsed": elapsed + time.time() - run_t0, "args": vars(a)}, ck_path)
        if stop:
            say("# stopping at step %d (--max-minutes)" % step)
            return 0
    if step >= a.steps:
        final = os.path.join(a.out, "final.pt")
        if not os.path.exists(final):
            save_atomic({"model": trainable_state(vlm, a.phase), "args": vars(a),
                         "vision": dict(M.VISION), "text": dict(M.TEXT), "step": step}, final)
            tot = elapsed + time.time() - run_t0
            say("# done: %d steps in %.1f min (%.2f s/step)" % (step, tot / 60, tot / max(1, step)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
