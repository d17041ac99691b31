#!/usr/bin/python3
"""Save the trained demo model in the published layouts.

  OUT/shapes/          the LLM, as Lin-Chen/ShareGPT4V-7B ships: config.json
                       (Share4VLlamaForCausalLM, model_type share4v, the mm_* keys),
                       pytorch_model-0000{1,2}-of-00002.bin (bf16 torch.save pickles) +
                       pytorch_model.bin.index.json, tokenizer.model (LLaMA-2) and the
                       tokenizer/generation configs. Keys model.embed_tokens.weight,
                       model.layers.N.*, model.norm.weight, model.mm_projector.{0,2}.*,
                       lm_head.weight.
  OUT/shapes-vit/      the tower, as ShareGPT4V-7B_Pretrained_vit-large336-l12 ships:
                       CLIPVisionModel config.json, preprocessor_config.json
                       (CLIPImageProcessor), pytorch_model.bin (bf16) with vision_model.*.
  OUT/shapes-lora-lt/  (with --adapter) a LLaVA LoRA directory as PEFT + LLaVA's
                       train.py save it: adapter_config.json, adapter_model.bin
                       (base_model.model.model.layers.N.<module>.lora_{A,B}.weight, bf16),
                       non_lora_trainables.bin (base_model.model.model.mm_projector.*,
                       bf16), config.json (the model's LlavaConfig).

After writing, everything is read back with the independent readers of
reference and one image is run through vision_ref.py's pipeline (an
independent implementation) and through model.py: the logits must agree.

  export.py --base /work/demo-cache/base --adapter /work/demo-cache/lora --out /work/demo-cache/export
"""

import argparse
import json
import os
import shutil
import sys
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import model as M  # noqa: E402
import scenes  # noqa: E402

sys.path.insert(0, os.path.join(M.REPO, "reference"))
import hf_layout  # noqa: E402
import preprocess_ref  # noqa: E402
import vision_ref  # noqa: E402
import vlm_fixture  # noqa: E402

LLM_NAME, VIT_NAME, LORA_NAME = "shapes", "shapes-vit", "shapes-lora-lt"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def text_config(t):
    return {k: t[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                              "num_attention_heads", "num_key_value_heads", "rms_norm_eps")}


def llm_config(text, vision):
    cfg = vlm_fixture.llm_config("sharegpt4v", text_config(text), vision["hidden_size"], "bfloat16",
                                 {"_name_or_path": "loupe-demo/shapes",
                                  "mm_vision_tower": "loupe-demo/shapes-vit"})
    return cfg


def adapter_config(a_args, base_name):
    return OrderedDict([
        ("alpha_pattern", {}), ("auto_mapping", None), ("base_model_name_or_path", base_name),
        ("bias", "none"), ("fan_in_fan_out", False), ("inference_mode", True),
        ("init_lora_weights", True), ("layers_pattern", None), ("layers_to_transform", None),
        ("loftq_config", {}), ("lora_alpha", a_args["lora_alpha"]),
        ("lora_dropout", a_args["lora_dropout"]), ("megatron_config", None),
        ("megatron_core", "megatron.core"), ("modules_to_save", None), ("peft_type", "LORA"),
        ("r", a_args["lora_r"]), ("rank_pattern", {}), ("revision", None),
        # LLaVA's find_all_linear_names returns list(set(...)): any order
        ("target_modules", sorted(TARGETS)), ("task_type", "CAUSAL_LM"),
        ("use_dora", False), ("use_rslora", False)])


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def export_base(sd, text, vision, out):
    llm_dir, vit_dir = os.path.join(out, LLM_NAME), os.path.join(out, VIT_NAME)
    for d in (llm_dir, vit_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
    cfg = llm_config(text, vision)
    llm = OrderedDict()
    for k, v in sd.items():  # LlavaMetaModel order: embed, layers, norm, mm_projector; lm_head
        if k.startswith("llm."):
            llm[k[len("llm."):]] = v.detach().float()
    hf_layout.write_config(llm_dir, cfg)
    stored_llm = hf_layout.save_state_dict(llm_dir, llm, fmt="bin", shards=2, dtype="bf16")
    vlm_fixture.write_tokenizer_files(llm_dir, M.TOKENIZER)
    vit = OrderedDict()
    for k, v in sd.items():
        if k.startswith("vision_tower."):
            vit[k[len("vision_tower."):]] = v.detach() if not v.is_floating_point() else v.detach().float()
    hf_layout.write_config(vit_dir, vlm_fixture.clip_vision_config(
        vision, "bfloat16", "loupe-demo/shapes-vit"))
    vlm_fixture.write_json(os.path.join(vit_dir, "preprocessor_config.json"),
                           vlm_fixture.preprocessor_config("processor", vision["image_size"],
                                                           vision["image_size"], {}))
    stored_vit = hf_layout.save_state_dict(vit_dir, vit, fmt="bin", shards=1, dtype="bf16")
    return llm_dir, vit_dir, cfg, stored_llm, stored_vit


def export_adapter(sd, a_args, cfg, out):
    d = os.path.join(out, LORA_NAME)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    lora, non = OrderedDict(), OrderedDict()
    for k, v in sd.items():
        assert k.startswith("llm."), k
        k2 = "base_model.model." + k[len("llm."):]
        if "lora_" in k:
            lora[k2] = v.detach().to(torch.bfloat16).clone()
        elif "mm_projector" in k:
            non[k2] = v.detach().to(torch.bfloat16).clone()
        else:
            raise ValueError("unexpected adapter tensor %s" % k)
    write_json(os.path.join(d, "adapter_config.json"), adapter_config(a_args, "loupe-demo/" + LLM_NAME))
    torch.save(lora, os.path.join(d, "adapter_model.bin"))
    torch.save(non, os.path.join(d, "non_lora_trainables.bin"))
    hf_layout.write_config(d, cfg)
    return d


def load_exported(llm_dir, vit_dir, lora_dir=None):
    """ShapesVLM (float32, values as stored) from the exported directories alone."""
    cfg = json.load(open(os.path.join(llm_dir, "config.json")))
    vcfg = json.load(open(os.path.join(vit_dir, "config.json")))
    vision = OrderedDict((k, vcfg[k]) for k in M.VISION)
    text = OrderedDict((k, cfg.get(k, M.TEXT.get(k))) for k in M.TEXT)
    vlm = M.ShapesVLM(vision, text)
    llm_sd = hf_layout.load_state_dict(llm_dir)
    vit_sd = hf_layout.load_state_dict(vit_dir)
    sd = OrderedDict()
    for k, v in llm_sd.items():
        sd["llm." + k] = v.float()
    for k, v in vit_sd.items():
        sd["vision_tower." + k] = v.float() if v.is_floating_point() else v
    missing = vlm.load_state_dict(sd, strict=True)
    lora_info = None
    if lora_dir:
        ac = json.load(open(os.path.join(lora_dir, "adapter_config.json")))
        vlm.llm.add_lora(ac["r"], ac["lora_alpha"], 0.0)
        lw = torch.load(os.path.join(lora_dir, "adapter_model.bin"), map_location="cpu")
        nw = torch.load(os.path.join(lora_dir, "non_lora_trainables.bin"), map_location="cpu")
        sd2 = OrderedDict()
        for k, v in list(lw.items()) + list(nw.items()):
            assert k.startswith("base_model.model."), k
            sd2["llm." + k[len("base_model.model."):]] = v.float()
        res = vlm.load_state_dict(sd2, strict=False)
        if res.unexpected_keys:
            raise ValueError("unexpected adapter keys %s" % res.unexpected_keys[:4])
        n_lora = sum(1 for k in sd2 if "lora_" in k)
        if n_lora != 2 * len(TARGETS) * text["num_hidden_layers"]:
            raise ValueError("adapter has %d lora tensors" % n_lora)
        lora_info = ac
    vlm.eval()
    return vlm, cfg, lora_info


def cross_check(llm_dir, vit_dir, image, question):
    """model.py vs vision_ref.py (independent) on the exported base: last-position logits."""
    vlm, cfg, _ = load_exported(llm_dir, vit_dir)
    pixels = preprocess_ref.preprocess(image)
    ids = M.prompt_ids(question)
    llm_cfg, llm_sd, vit_cfg, vit_sd, vit_prefix = vision_ref.load_model(llm_dir, vit_dir)
    r = vision_ref.run_pipeline(llm_sd, llm_cfg, vit_sd, vit_cfg, vit_prefix, pixels, ids)
    with torch.no_grad():
        feats = vlm.image_features(torch.from_numpy(pixels)[None])
        emb = vlm.splice([ids], feats)
        hn = vlm.llm.decoder(emb, torch.arange(emb.shape[1]))
        lg = vlm.llm.logits(hn[:, -1])[0].numpy()
    d = float(np.abs(lg - r["logits"]).max())
    fd = float(np.abs(feats[0].numpy() - r["image_features"]).max())
    return d, fd, float(np.abs(r["logits"]).max()), int(np.argmax(lg)), int(np.argmax(r["logits"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="base run dir (final.pt)")
    ap.add_argument("--adapter", help="adapter run dir (final.pt)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    base = torch.load(os.path.join(a.base, "final.pt"), map_location="cpu")
    text, vision = base["text"], base["vision"]
    llm_dir, vit_dir, cfg, stored_llm, stored_vit = export_base(base["model"], text, vision, a.out)
    print("wrote %s (%d tensors) and %s (%d tensors)" % (llm_dir, len(stored_llm), vit_dir, len(stored_vit)))
    if a.adapter:
        ad = torch.load(os.path.join(a.adapter, "final.pt"), map_location="cpu")
        d = export_adapter(ad["model"], ad["args"], cfg, a.out)
        print("wrote %s" % d)
        load_exported(llm_dir, vit_dir, d)  # loads strictly
    # independent cross-check on one generated scene
    ex = scenes.example(1000, 0)
    img = scenes.render(ex["scene"])
    d, fd, amax, am1, am2 = cross_check(llm_dir, vit_dir, img, ex["prompt_en"])
    print("cross-check vs vision_ref.py: features max|d| %.2e, logits max|d| %.2e (|logits| max %.1f), "
          "argmax %d / %d" % (fd, d, amax, am1, am2))
    if not (d < 1e-3 * max(1.0, amax) and am1 == am2):
        raise SystemExit("exported model disagrees with the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
