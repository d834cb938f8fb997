#!/usr/bin/python3
"""eval_precision.py: how close `embedd embed --precision P` comes to fp32.

    scripts/eval_precision.py [--model DIR]... [--precision int8] [--binary build/embedd]
                              [--sts ../shared/data/stsb/sts-dev.tsv]

Embeds every distinct sentence of the STS file (columns score, sentence 1,
sentence 2) with each model in fp32 and in the given precision, and prints
the cosine between each sentence's two embeddings (min, 1st percentile,
mean), the texts/s of both runs (one run each, not a benchmark) and the STS
Spearman x100 of both. Default models: the bundled models/embedd-small and,
when present, the random-weight benchmark models bench-out/minilm and
bench-out/bge-small (scripts/gen_bench_model.py). Exits 1 if a min cosine is
below --min-cos (0.999)."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def read_sts(path):
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) >= 3:
                pairs.append((float(p[0]), p[1], p[2]))
    return pairs


def embed(binary, model, texts, precision):
    r = subprocess.run([binary, "embed", "--model", model, "--precision", precision, "--stats"],
                       input="\n".join(texts) + "\n", capture_output=True, text=True, check=True)
    vecs = np.array([json.loads(l) for l in r.stdout.splitlines()], dtype=np.float64)
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    return vecs, stats["texts_per_s"]


def spearman(a, b):
    def ranks(x):
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        # average ranks of ties
        xs = np.asarray(x)[order]
        i = 0
        while i < len(xs):
            j = i
            while j + 1 < len(xs) and xs[j + 1] == xs[i]:
                j += 1
            r[order[i:j + 1]] = (i + j) / 2.0
            i = j + 1
        return r
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "embedd"))
    ap.add_argument("--sts", default=os.path.join(
        os.environ.get("EMBEDD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data")),
        "stsb", "sts-dev.tsv"))
    ap.add_argument("--min-cos", type=float, default=0.999)
    args = ap.parse_args()
    models = args.model or [m for m in (os.path.join(ROOT, "models", "embedd-small"),
                                        os.path.join(ROOT, "bench-out", "minilm"),
                                        os.path.join(ROOT, "bench-out", "bge-small"))
                            if os.path.exists(os.path.join(m, "model.safetensors"))]
    pairs = read_sts(args.sts)
    texts = list(dict.fromkeys([s for _, a, b in pairs for s in (a, b)]))
    index = {t: i for i, t in enumerate(texts)}
    gold = [g for g, _, _ in pairs]
    print("%d distinct sentences of %s; %s against fp32" % (len(texts), args.sts, args.precision))
    print("| model | min cos | p1 cos | mean cos | fp32 texts/s | %s texts/s | "
          "STS x100 fp32 | STS x100 %s |" % (args.precision, args.precision))
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ok = True
    for model in models:
        ref, ref_tps = embed(args.binary, model, texts, "fp32")
        got, got_tps = embed(args.binary, model, texts, args.precision)
        cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))

        def sts(v):
            a = np.array([v[index[x]] for _, x, _ in pairs])
            b = np.array([v[index[y]] for _, _, y in pairs])
            sim = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            return 100.0 * spearman(sim, gold)
        print("| %s | %.6f | %.6f | %.6f | %.1f | %.1f | %.2f | %.2f |" % (
            os.path.relpath(model, ROOT), cos.min(), np.percentile(cos, 1), cos.mean(), ref_tps,
            got_tps, sts(ref), sts(got)), flush=True)
        ok = ok and cos.min() >= args.min_cos
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
