#!/usr/bin/python3
"""bench_torch.py: PyTorch baseline for the embedd benchmark.

  OMP_WAIT_POLICY=PASSIVE scripts/bench_torch.py --model DIR --texts FILE \\
      [--threads 2] [--repeat 3] [--batch-size 32] [--dump FILE] [--no-fastpath]

Loads DIR (as written by gen_bench_model.py, or any BERT model directory with
model.safetensors in F32/F16/BF16) into the torch-module encoder of
embedd_ref.py (nn.Embedding, nn.LayerNorm, nn.TransformerEncoderLayer), eval
mode, under torch.inference_mode(), with torch.set_num_threads(threads) and
OpenBLAS limited to the same number of threads. It encodes FILE (one text per
line) the way sentence-transformers' encode() does: texts sorted by
decreasing length, batches of 32 tokenised per batch and padded to the batch's
longest, forward, pooling from the model's config (mean over real tokens or
CLS), L2 normalisation when modules.json lists Normalize.

The caller should set OMP_WAIT_POLICY=PASSIVE in the environment (the
benchmark script does), so idle OpenMP threads do not spin against the other
engine, and the same OPENBLAS_CORETYPE as the C side: Debian's torch uses the
system OpenBLAS (0.3.21), which misdetects recent Xeons and falls back to its
SSE3 "Prescott" kernels, about 3-4x slower than Haswell/SkylakeX. The kernel
in use is reported as blas_core (and a warning is printed for Prescott). Tokenisation (a pure-Python WordPiece, slower than HF's Rust one) is
inside the timed part, as in sentence-transformers, and is also reported on
its own.

Prints one JSON line, from the best (fastest) of --repeat runs:
  engine, texts_per_s, gflops (encoder GFLOP/s over the whole run), seconds,
  peak_rss_mb, plus tokenize_seconds, model_seconds, texts_per_s_model,
  gflops_model, gflop, n_texts, n_tokens, threads, batch_size, fastpath,
  blas_core, torch.
GFLOP count: per sequence of n real tokens (with [CLS]/[SEP], padding not
counted) and per layer 2*n*(4*C*C + 2*C*I) + 4*n*n*C.
--dump FILE writes the final embeddings, n_texts x C little-endian float32 in
the order of FILE's lines.
"""
import argparse
import json
import os
import resource
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--texts", required=True, help="text file, one text per line")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dump", help="write embeddings (n x C float32 LE) here")
    ap.add_argument("--no-fastpath", action="store_true",
                    help="composite TransformerEncoderLayer path instead of the fused one")
    return ap.parse_args()


def openblas_core():
    """Kernel name of the OpenBLAS loaded into this process, or None."""
    import ctypes
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = sorted({line.split()[-1] for line in f
                            if "openblas" in line and line.split()[-1].startswith("/")})
        for p in paths:
            fn = ctypes.CDLL(p).openblas_get_corename
            fn.restype = ctypes.c_char_p
            return fn().decode("ascii", "replace")
    except (OSError, AttributeError, IndexError):
        pass
    return None


def main():
    args = parse_args()
    # Before torch (and its OpenBLAS) is loaded.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    import embedd_ref as er

    torch.set_num_threads(args.threads)
    torch.zeros(2, 2) @ torch.zeros(2, 2)          # loads and initialises BLAS
    blas_core = openblas_core()
    if blas_core == "Prescott":
        print("warning: OpenBLAS runs its Prescott (SSE3) kernels; set OPENBLAS_CORETYPE "
              "(the Makefile exports Haswell) to the same value for both engines", file=sys.stderr)
    with open(args.texts, encoding="utf-8", newline="") as f:
        texts = f.read().split("\n")
    if texts and texts[-1] == "":
        texts.pop()
    if not texts:
        sys.exit("%s: no texts" % args.texts)

    model, tok, info = er.load_model_dir(args.model)
    model.set_fastpath(not args.no_fastpath)
    cfg = info["config"]
    max_len = info["max_seq_length"]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))   # stable, as argsort(-len)

    def encode_all():
        t_tok = 0.0
        out = [None] * len(texts)
        lengths = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in range(0, len(order), args.batch_size):
                idx = order[b:b + args.batch_size]
                t1 = time.perf_counter()
                seqs = [tok.encode(texts[i], max_len) for i in idx]
                ids, mask = er.pad_batch(seqs)
                t_tok += time.perf_counter() - t1
                h = model(ids, mask)
                e = er.pool(h, mask, info["pooling"])
                if info["normalize"]:
                    e = torch.nn.functional.normalize(e, p=2, dim=1)
                for j, i in enumerate(idx):
                    out[i] = e[j]
                lengths += [len(s) for s in seqs]
        return time.perf_counter() - t0, t_tok, out, lengths

    best = None
    for _ in range(max(1, args.repeat)):
        r = encode_all()
        if best is None or r[0] < best[0]:
            best = r
    seconds, t_tok, emb, lengths = best
    flops = er.encoder_flops(lengths, cfg)
    model_s = seconds - t_tok
    res = {
        "engine": "pytorch",
        "texts_per_s": round(len(texts) / seconds, 2),
        "gflops": round(flops / seconds / 1e9, 2),
        "seconds": round(seconds, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "tokenize_seconds": round(t_tok, 4),
        "model_seconds": round(model_s, 4),
        "texts_per_s_model": round(len(texts) / model_s, 2),
        "gflops_model": round(flops / model_s / 1e9, 2),
        "gflop": round(flops / 1e9, 3),
        "n_texts": len(texts),
        "n_tokens": sum(lengths),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "fastpath": not args.no_fastpath,
        "blas_core": blas_core,
        "torch": torch.__version__,
    }
    if args.dump:
        with open(args.dump, "wb") as f:
            f.write(torch.stack(emb).to(torch.float32).numpy().astype("<f4").tobytes())
    print(json.dumps(res))


if __name__ == "__main__":
    main()
