#!/usr/bin/env python3
"""PyTorch eager fp16 on the GPU, the anchor of bench/cuda.sh (issue #16).

Hugging Face transformers' LlamaForCausalLM at the 7B shape of loupe_bench make-llama
(Vicuna-7B / ShareGPT4V-7B: dim 4096, 32 layers, 32 heads, FFN 11008, vocab 32000) with
random weights, and CLIPVisionModel at ViT-L/14-336, both in fp16, eager attention:
  decode   B sequences after a 32-token prompt, greedy, tokens/s (aggregate)
  prefill  608 positions (576 image + 32 text), positions/s
  clip     one 336x336 image through the tower, ms
Prints one JSON line per measurement (the median of --rounds runs). The GPU machine
has torch and transformers; this machine has neither a GPU nor transformers.
"""
import argparse
import json
import statistics
import time

import torch


def timed(fn, rounds):
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def llama(layers):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, rope_theta=10000.0, attn_implementation="eager")
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).half().eval()
    return model


@torch.inference_mode()
def decode(model, batch, prompt, gen, rounds):
    ids = torch.randint(3, 32000, (batch, prompt), device="cuda")

    def run():
        out = model(ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(gen):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)

    prefill_s = timed(lambda: model(ids, use_cache=True), rounds)
    total_s = timed(run, rounds)
    decode_s = max(total_s - prefill_s, 1e-9)
    return batch * gen / decode_s


@torch.inference_mode()
def prefill(model, positions, rounds):
    ids = torch.randint(3, 32000, (1, positions), device="cuda")
    return positions / timed(lambda: model(ids, use_cache=True), rounds)


@torch.inference_mode()
def clip(rounds):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                           image_size=336, patch_size=14, hidden_act="quick_gelu", attn_implementation="eager")
    with torch.device("cuda"):
        model = CLIPVisionModel(cfg).half().eval()
    px = torch.randn(1, 3, 336, 336, device="cuda", dtype=torch.float16)
    model(px)  # warm-up
    return 1000 * timed(lambda: model(px, output_hidden_states=True), rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("torch_gpu.py: no CUDA device")
    import transformers
    card = torch.cuda.get_device_name(0)
    base = {"engine": "pytorch-eager-fp16", "torch": torch.__version__, "transformers": transformers.__version__, "device": card}
    model = llama(args.layers)
    decode(model, 1, 32, 4, 1)  # warm-up: kernels chosen, memory pools filled
    for b in [int(x) for x in args.batch.split(",")]:
        print(json.dumps({**base, "batch": b, "prompt": 32, "gen": args.gen,
                          "aggregate_tok_s": round(decode(model, b, 32, args.gen, args.rounds), 2)}), flush=True)
    print(json.dumps({**base, "prefill_positions": 608, "prefill_tok_s": round(prefill(model, 608, args.rounds), 1)}), flush=True)
    del model
    torch.cuda.empty_cache()
    print(json.dumps({**base, "clip_ms": round(clip(args.rounds), 2)}), flush=True)


if __name__ == "__main__":
    main()
