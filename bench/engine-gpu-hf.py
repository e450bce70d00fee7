#!/usr/bin/env python3
"""Hugging Face `GPT2LMHeadModel.generate` on this GPU: the peer bench/engine-gpu.cpp compares GPT-2 decode with.

GPT-2 124M (the stock config, random weights: speed does not depend on the values), fp16, on the GPU, batch 1,
greedy with its KV cache, the same prompt length and number of new tokens as the engine benchmark. Decode rate
= (new tokens - 1) / (time of a generate of all of them - time of a generate of one), so prefill is left out as
it is from the engine's TPOT; the whole-generate rate is reported beside it. Prints and writes JSON (--out).
"""
import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel


def timed_generate(model, ids, new_tokens):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, use_cache=True, pad_token_id=0)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    if out.shape[1] != ids.shape[1] + new_tokens:
        raise RuntimeError(f"generate returned {out.shape[1] - ids.shape[1]} new tokens, expected {new_tokens}")
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("engine-gpu-hf: no CUDA device visible to PyTorch")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).to(device="cuda", dtype=torch.float16).eval()
    gen = torch.Generator().manual_seed(9)
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt), generator=gen).to("cuda")
    with torch.inference_mode():
        for _ in range(2):  # warm-up: kernels, allocator, generation config
            timed_generate(model, ids, args.new)
            timed_generate(model, ids, 1)
        full, one = [], []
        for _ in range(args.reps):  # interleaved
            full.append(timed_generate(model, ids, args.new))
            one.append(timed_generate(model, ids, 1))
    t_full, t_one = statistics.median(full), statistics.median(one)
    result = {
        "model": "gpt2 (GPT2LMHeadModel, random weights)",
        "dtype": "float16",
        "promptTokens": args.prompt,
        "newTokens": args.new,
        "greedy": True,
        "kvCache": True,
        "reps": args.reps,
        "generateMs": {"median": t_full * 1e3, "all": [t * 1e3 for t in full]},
        "oneTokenGenerateMs": {"median": t_one * 1e3, "all": [t * 1e3 for t in one]},
        "e2eTokPerSec": args.new / t_full,
        "decodeTokPerSec": (args.new - 1) / (t_full - t_one),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"hugging face generate: decode {result['decodeTokPerSec']:.0f} tok/s, whole generate "
          f"{result['e2eTokPerSec']:.0f} tok/s ({t_full * 1e3:.1f} ms for {args.new} tokens)")


if __name__ == "__main__":
    main()
