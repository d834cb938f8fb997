#!/usr/bin/python3
"""make bench: embedd against PyTorch on the same random-weight model and
the same 1,024 texts (8..64 tokens each), in the same run, alternating
engines A B A B ... so that machine noise hits both alike.

    scripts/bench.py [--shapes minilm,bge-small] [--rounds 3] [--threads 2]

embedd is timed by its own --stats (model loading excluded); PyTorch by
bench_torch.py (model loading excluded, tokenisation included, padded
length-sorted batches of 32 as sentence-transformers does, OMP_WAIT_POLICY=
PASSIVE). Both engines run in the OpenBLAS environment of this command.
Prints texts/s, effective GFLOP/s (real tokens only), peak RSS, the ratio and
the max |diff| between the two engines' embeddings.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = "/usr/bin/python3"


def gflop_per_text(lens, cfg):
    """Forward FLOPs of each sequence, as bench_torch.py counts them."""
    C, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    total = 0.0
    for n in lens:
        total += L * (2 * n * (4 * C * C + 2 * C * I) + 4 * n * n * C)
    return total / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="minilm")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "embedd"))
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench-out"))
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    print("OPENBLAS_CORETYPE=%s threads=%d rounds=%d" % (
        os.environ.get("OPENBLAS_CORETYPE", "(unset)"), args.threads, args.rounds))
    for shape in args.shapes.split(","):
        model = os.path.join(args.workdir, shape)
        if not os.path.exists(os.path.join(model, "model.safetensors")):
            subprocess.check_call([PY, os.path.join(HERE, "gen_bench_model.py"), "--out", model,
                                   "--shape", shape])
        texts = os.path.join(model, "texts.txt")
        cfg = json.load(open(os.path.join(model, "config.json")))
        C = cfg["hidden_size"]
        tok = subprocess.run([args.binary, "tokenize", "--model", model], stdin=open(texts, "rb"),
                             capture_output=True, check=True).stdout.decode().splitlines()
        lens = [len(json.loads(l)) for l in tok]
        gflop = gflop_per_text(lens, cfg)
        n_texts = len(lens)
        best = {"embedd": None, "pytorch": None}
        rss = {"embedd": 0.0, "pytorch": 0.0}
        emb_out = os.path.join(args.workdir, shape + ".embedd.jsonl")
        torch_out = os.path.join(args.workdir, shape + ".torch.f32")
        env_torch = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        for r in range(args.rounds):
            # A: embedd
            with open(texts, "rb") as fin, open(emb_out, "wb") as fout:
                p = subprocess.Popen([args.binary, "embed", "--model", model, "--threads",
                                      str(args.threads), "--stats"], stdin=fin, stdout=fout,
                                     stderr=subprocess.PIPE)
                err = p.stderr.read()
                _, status, usage = os.wait4(p.pid, 0)
            if status != 0:
                sys.exit("embedd failed: " + err.decode(errors="replace"))
            st = json.loads(err.decode().strip().splitlines()[-1])
            tps = st["texts_per_s"]
            rss["embedd"] = max(rss["embedd"], usage.ru_maxrss / 1024.0)
            if best["embedd"] is None or tps > best["embedd"]:
                best["embedd"] = tps
            print("  round %d embedd : %8.1f texts/s" % (r + 1, tps), flush=True)
            # B: pytorch
            p = subprocess.Popen([PY, os.path.join(HERE, "bench_torch.py"), "--model", model,
                                  "--texts", texts, "--threads", str(args.threads), "--repeat", "1",
                                  "--dump", torch_out], stdout=subprocess.PIPE, env=env_torch)
            out = p.stdout.read()
            _, status, usage = os.wait4(p.pid, 0)
            if status != 0:
                sys.exit("bench_torch.py failed")
            res = json.loads(out.decode().strip().splitlines()[-1])
            tps = res["texts_per_s"]
            rss["pytorch"] = max(rss["pytorch"], usage.ru_maxrss / 1024.0)
            if best["pytorch"] is None or tps > best["pytorch"]:
                best["pytorch"] = tps
            print("  round %d pytorch: %8.1f texts/s" % (r + 1, tps), flush=True)
        a = np.array([json.loads(l) for l in open(emb_out)], dtype=np.float32)
        b = np.fromfile(torch_out, dtype=np.float32).reshape(-1, C)
        diff = float(np.max(np.abs(a - b)))
        print("\n%s shape (%d layers, hidden %d), %d texts, %.1f tokens/text avg, %.1f GFLOP total"
              % (shape, cfg["num_hidden_layers"], C, n_texts, sum(lens) / n_texts, gflop))
        print("| engine  | texts/s | GFLOP/s | peak RSS MiB |")
        print("|---|---:|---:|---:|")
        for eng in ("embedd", "pytorch"):
            print("| %-7s | %7.1f | %7.1f | %12.0f |" % (
                eng, best[eng], best[eng] * gflop / n_texts, rss[eng]))
        print("embedd / pytorch throughput: %.2fx" % (best["embedd"] / best["pytorch"]))
        print("max |diff| between engines' embeddings: %.2g\n" % diff)


if __name__ == "__main__":
    main()
