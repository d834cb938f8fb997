#!/usr/bin/python3
"""make bench-compare: embedd against ONNX Runtime (npm onnxruntime-node) on
the same random-weight model and the same 1,024 texts (8..64 tokens each),
in the same run, alternating engines A B A B ... so that machine noise hits
both alike.

    scripts/bench_compare.py [--shapes minilm,bge-small] [--rounds 3] [--threads 2]
                             [--ort-passes 3] [--latency-runs 50] [--limit N]

A quick check of the harness itself (not a measurement):
    scripts/bench_compare.py --rounds 1 --ort-passes 1 --latency-runs 5 --limit 64

Per shape (models and texts from gen_bench_model.py, under --workdir):
  * the model is exported to ONNX once (torch.onnx.export, opset 14; inputs
    input_ids, attention_mask, token_type_ids, dynamic batch and sequence
    axes; output last_hidden_state) from a torch module that computes what
    embedd computes (Hugging Face BertModel's math, erf GELU, LayerNorm eps
    from config.json), checked against embedd_ref.hf_bert_forward;
  * onnxruntime-node is installed from npm into WORKDIR/ort once;
  * token ids come from `embedd tokenize`, so both engines see the same ids;
  * A: embedd: `embedd embed --stats` over the texts (timed by embedd itself:
    model loading excluded; tokenisation, packing, forward, pooling and JSON
    output included), then `embedd embed --latency N` on one 16-token text
    (tokenise + forward + pool per run);
  * B: scripts/bench_ort.mjs: texts sorted by length, padded batches of 32,
    intraOpNumThreads=threads, interOpNumThreads=1, graphOptimizationLevel
    'all'; pooling (the model's: mean over the mask, or CLS) and L2
    normalisation in JS; one untimed warm-up pass, then the best of
    --ort-passes timed passes (ids given: no tokenisation); single-text
    latency on the same 16-token ids (forward + pool per run).
Each engine gets its best kernel: embedd runs with OPENBLAS_CORETYPE=SkylakeX
(and OPENBLAS_L2_SIZE unset) when /proc/cpuinfo lists avx512f, whatever this
command's environment says; ONNX Runtime picks its own (MLAS).

Prints, per shape, the best of the rounds for each engine: texts/s,
effective GFLOP/s (encoder FLOPs over real tokens only, as bench.py counts
them) and, with --peak-binary build/bench_gemm (as make bench-compare
passes), that as a share of the fp32 FMA peak measured at the start of the
run, single-text p50 latency, peak RSS (largest of the engine's processes),
the embedd/ORT ratios, and the max |diff| between the two engines'
embeddings.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import gflop_per_text  # noqa: E402  (one FLOP count for every benchmark)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = "/usr/bin/python3"
ORT_VERSION = "1.30.0"
LATENCY_TOKENS = 16      # single-text latency: a text of this many tokens, [CLS]/[SEP] included


def cpu_has_avx512():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


# ---------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------

def export_onnx(model_dir, out_path):
    """Exports model_dir's encoder to out_path (skipped when up to date)."""
    src = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(out_path) and os.path.getmtime(out_path) >= os.path.getmtime(src):
        return
    sys.path.insert(0, HERE)
    import torch
    import embedd_ref as er

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    tensors, _ = er.safetensors_read(src)
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    s = er.bert_sizes(cfg)
    C, H, L, eps = s["C"], s["H"], s["L"], s["eps"]
    D = C // H
    F = torch.nn.functional

    class OnnxBert(torch.nn.Module):
        """Hugging Face BertModel's encoder (as hf_bert_forward), with the
        weights as buffers so that they become named initializers."""

        def __init__(self):
            super().__init__()
            for n, t in tensors.items():
                if n.startswith(prefix) and not n.startswith(prefix + "pooler."):
                    key = n[len(prefix):].replace(".", "__")
                    self.register_buffer(key, t.clone())

        def w(self, n):
            return getattr(self, n.replace(".", "__"))

        def ln(self, x, n):
            return F.layer_norm(x, (C,), self.w(n + ".weight"), self.w(n + ".bias"), eps)

        def lin(self, x, n):
            return F.linear(x, self.w(n + ".weight"), self.w(n + ".bias"))

        def forward(self, input_ids, attention_mask, token_type_ids):
            B, T = input_ids.shape[0], input_ids.shape[1]
            x = (F.embedding(input_ids, self.w("embeddings.word_embeddings.weight"))
                 + self.w("embeddings.position_embeddings.weight")[:T].unsqueeze(0)
                 + F.embedding(token_type_ids, self.w("embeddings.token_type_embeddings.weight")))
            x = self.ln(x, "embeddings.LayerNorm")
            m = attention_mask.to(torch.float32)[:, None, None, :]     # (B, 1, 1, T)
            bias = (1.0 - m) * torch.finfo(torch.float32).min
            scale = 1.0 / math.sqrt(D)
            for i in range(L):
                p = "encoder.layer.%d." % i

                def heads(t):
                    return t.reshape(B, T, H, D).transpose(1, 2)      # (B, H, T, D)

                q = heads(self.lin(x, p + "attention.self.query"))
                k = heads(self.lin(x, p + "attention.self.key"))
                v = heads(self.lin(x, p + "attention.self.value"))
                att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale + bias, dim=-1)
                ctx = torch.matmul(att, v).transpose(1, 2).reshape(B, T, C)
                x = self.ln(self.lin(ctx, p + "attention.output.dense") + x,
                            p + "attention.output.LayerNorm")
                hmid = F.gelu(self.lin(x, p + "intermediate.dense"))
                x = self.ln(self.lin(hmid, p + "output.dense") + x, p + "output.LayerNorm")
            return x

    mod = OnnxBert().eval()
    # Check against the reference math on a padded batch before exporting.
    ids = torch.randint(1000, 2000, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones((3, 11), dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    types = torch.zeros_like(ids)
    with torch.no_grad():
        got = mod(ids, mask, types)
        want = er.hf_bert_forward(tensors, cfg, ids, mask.bool(), prefix)
    err = float((got - want)[mask.bool()].abs().max())
    if err > 1e-4:
        sys.exit("ONNX export module differs from hf_bert_forward by %g" % err)
    tmp = out_path + ".tmp"
    with torch.no_grad():
        torch.onnx.export(mod, (ids, mask, types), tmp,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"},
                                        "token_type_ids": {0: "batch", 1: "sequence"},
                                        "last_hidden_state": {0: "batch", 1: "sequence"}},
                          opset_version=14, do_constant_folding=True)
    os.replace(tmp, out_path)
    print("exported %s (check vs hf_bert_forward: max |diff| %.2g)" % (out_path, err), flush=True)


def install_ort(ort_dir):
    """onnxruntime-node into ort_dir/node_modules (once). The package bundles
    the CPU library; its install script only fetches CUDA binaries, skipped."""
    if os.path.exists(os.path.join(ort_dir, "node_modules", "onnxruntime-node", "package.json")):
        return
    os.makedirs(ort_dir, exist_ok=True)
    env = dict(os.environ, ONNXRUNTIME_NODE_INSTALL="skip")
    subprocess.check_call(["npm", "install", "--no-audit", "--no-fund", "--prefix", ort_dir,
                           "onnxruntime-node@" + ORT_VERSION], env=env)


# ---------------------------------------------------------------------------
# The two engines
# ---------------------------------------------------------------------------

GNU_TIME = "/usr/bin/time"


def run_timed(argv, stdin_path, stdout_path, env):
    """Runs argv; returns (stderr text, peak RSS MiB).

    The peak RSS comes from GNU time, which forks the engine from its own
    small process: Linux carries a process's ru_maxrss over fork and exec,
    so a child spawned straight from this Python process would report at
    least this process's own peak (hundreds of MiB once torch is loaded)."""
    rss_file = stdout_path + ".maxrss"
    if os.path.exists(GNU_TIME):
        argv = [GNU_TIME, "-f", "%M", "-o", rss_file] + argv
    with open(stdin_path, "rb") as fin, open(stdout_path, "wb") as fout:
        p = subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=subprocess.PIPE, env=env)
        err = p.stderr.read()
        _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit("%s failed (status %d): %s" % (" ".join(argv), status,
                                                 err.decode(errors="replace")))
    rss_kb = usage.ru_maxrss
    if os.path.exists(rss_file):
        with open(rss_file) as f:
            rss_kb = int(f.read().split()[-1])
        os.unlink(rss_file)
    return err.decode(errors="replace"), rss_kb / 1024.0


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    sys.exit("no JSON line in: " + text)


def run_embedd(args, model, texts, lat_text, out, env):
    err, rss = run_timed([args.binary, "embed", "--model", model, "--threads", str(args.threads),
                          "--stats"], texts, out, env)
    st = last_json(err)
    err, rss2 = run_timed([args.binary, "embed", "--model", model, "--threads",
                           str(args.threads), "--latency", str(args.latency_runs)],
                          lat_text, out + ".latency", env)
    lat = last_json(err)
    return {"texts_per_s": st["texts_per_s"], "p50_ms": lat["p50_ms"], "rss": max(rss, rss2),
            "kernel": st.get("blas_core", "?")}


def run_ort(args, onnx_path, ids_path, lat_ids, pooling, normalize, dump, ort_dir):
    argv = ["node", os.path.join(HERE, "bench_ort.mjs"), "--ort-dir", ort_dir,
            "--model", onnx_path, "--ids", ids_path, "--threads", str(args.threads),
            "--batch-size", "32", "--passes", str(args.ort_passes),
            "--pooling", pooling, "--normalize", "1" if normalize else "0",
            "--latency-ids", lat_ids, "--latency-runs", str(args.latency_runs),
            "--dump", dump]
    out_path = dump + ".stdout"
    _, rss = run_timed(argv, os.devnull, out_path, dict(os.environ))
    res = last_json(open(out_path).read())
    return {"texts_per_s": res["texts_per_s"], "p50_ms": res["p50_ms"], "rss": rss,
            "kernel": "MLAS"}


def model_pooling(model):
    """(pooling, normalize) of a gen_bench_model.py directory."""
    pc = json.load(open(os.path.join(model, "1_Pooling", "config.json")))
    pooling = "cls" if pc.get("pooling_mode_cls_token") else "mean"
    mods = json.load(open(os.path.join(model, "modules.json")))
    normalize = any(m.get("type", "").endswith("Normalize") for m in mods)
    return pooling, normalize


def bench_shape(args, shape, ort_dir, embedd_env):
    model = os.path.join(args.workdir, shape)
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        subprocess.check_call([PY, os.path.join(HERE, "gen_bench_model.py"), "--out", model,
                               "--shape", shape])
    texts = os.path.join(model, "texts.txt")
    cfg = json.load(open(os.path.join(model, "config.json")))
    C = cfg["hidden_size"]
    onnx_path = os.path.join(args.workdir, shape + ".onnx")
    export_onnx(model, onnx_path)
    pooling, normalize = model_pooling(model)

    tok = subprocess.run([args.binary, "tokenize", "--model", model], stdin=open(texts, "rb"),
                         capture_output=True, check=True, env=embedd_env).stdout.decode()
    tok = tok.splitlines()
    lens = [len(json.loads(l)) for l in tok]
    lines = open(texts, encoding="utf-8").read().splitlines()
    if len(lines) != len(lens):
        sys.exit("%s: %d lines but %d tokenised" % (texts, len(lines), len(lens)))
    lat_line = next((i for i, n in enumerate(lens) if n == LATENCY_TOKENS), None)
    if lat_line is None:
        sys.exit("%s: no text of %d tokens" % (texts, LATENCY_TOKENS))
    lat_text = os.path.join(args.workdir, shape + ".latency.txt")
    with open(lat_text, "w", encoding="utf-8") as f:
        f.write(lines[lat_line] + "\n")
    lat_ids = os.path.join(args.workdir, shape + ".latency.ids.jsonl")
    with open(lat_ids, "w") as f:
        f.write(tok[lat_line] + "\n")
    if 0 < args.limit < len(lines):
        # A quick run on the first texts only.
        lines, tok, lens = lines[:args.limit], tok[:args.limit], lens[:args.limit]
        texts = os.path.join(args.workdir, "%s.texts%d.txt" % (shape, args.limit))
        with open(texts, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    ids_path = os.path.join(args.workdir, shape + ".ids.jsonl")
    with open(ids_path, "w") as f:
        f.write("\n".join(tok) + "\n")
    gflop = gflop_per_text(lens, cfg)
    n_texts = len(lens)

    emb_out = os.path.join(args.workdir, shape + ".embedd.jsonl")
    ort_out = os.path.join(args.workdir, shape + ".ort.f32")
    runs = {"embedd": [], "ort": []}
    for r in range(args.rounds):
        e = run_embedd(args, model, texts, lat_text, emb_out, embedd_env)
        runs["embedd"].append(e)
        print("  round %d embedd (%s): %8.1f texts/s, p50 %6.2f ms" % (
            r + 1, e["kernel"], e["texts_per_s"], e["p50_ms"]), flush=True)
        o = run_ort(args, onnx_path, ids_path, lat_ids, pooling, normalize, ort_out, ort_dir)
        runs["ort"].append(o)
        print("  round %d ort          : %8.1f texts/s, p50 %6.2f ms" % (
            r + 1, o["texts_per_s"], o["p50_ms"]), flush=True)

    a = np.array([json.loads(l) for l in open(emb_out)], dtype=np.float32)
    b = np.fromfile(ort_out, dtype=np.float32).reshape(-1, C)
    diff = float(np.max(np.abs(a - b)))
    best = {}
    for eng, rs in runs.items():
        best[eng] = {"texts_per_s": max(x["texts_per_s"] for x in rs),
                     "p50_ms": min(x["p50_ms"] for x in rs),
                     "rss": max(x["rss"] for x in rs), "kernel": rs[0]["kernel"]}
    print("\n%s shape (%d layers, hidden %d, %s pooling), %d texts, %.1f tokens/text avg, "
          "%.1f GFLOP total, best of %d rounds"
          % (shape, cfg["num_hidden_layers"], C, pooling, n_texts, sum(lens) / n_texts, gflop,
             args.rounds))
    peak_col = "%% of FMA peak (%.0f) | " % args.peak if args.peak else ""
    print("| engine | kernel | texts/s | GFLOP/s | %sp50 ms (%d tokens) | peak RSS MiB |"
          % (peak_col, LATENCY_TOKENS))
    print("|---|---|---:|---:|%s---:|---:|" % ("---:|" if args.peak else ""))
    names = {"embedd": "embedd", "ort": "onnxruntime-node " + ORT_VERSION}
    for eng in ("embedd", "ort"):
        x = best[eng]
        gflops = x["texts_per_s"] * gflop / n_texts
        peak_cell = "%.0f%% | " % (100.0 * gflops / args.peak) if args.peak else ""
        print("| %s | %s | %.1f | %.1f | %s%.2f | %.0f |" % (
            names[eng], x["kernel"], x["texts_per_s"], gflops, peak_cell, x["p50_ms"], x["rss"]))
    print("embedd / ORT: throughput %.2fx, p50 latency %.2fx, peak RSS %.2fx" % (
        best["embedd"]["texts_per_s"] / best["ort"]["texts_per_s"],
        best["embedd"]["p50_ms"] / best["ort"]["p50_ms"],
        best["embedd"]["rss"] / best["ort"]["rss"]))
    print("max |diff| between engines' embeddings: %.2g\n" % diff, flush=True)
    return {"shape": shape, "best": best, "diff": diff, "gflop": gflop, "n_texts": n_texts}


def measure_fma_peak(binary, threads):
    """GFLOP/s of bench_gemm -p at `threads` threads, or 0 without a binary or AVX-512."""
    if not binary:
        return 0.0
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([binary, "-p"], env=env, check=True, capture_output=True,
                         text=True).stdout
    print(out.strip(), flush=True)
    for line in out.splitlines():
        if line.startswith("fp32 FMA peak") and (" %d thread" % threads) in line:
            return float(line.split(":")[1].split()[0])
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="minilm,bge-small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ort-passes", type=int, default=3,
                    help="timed ORT passes per round after one warm-up (best is kept)")
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--limit", type=int, default=0,
                    help="only the first N texts (a quick check of the harness; 0 = all)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "embedd"))
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench-out"))
    ap.add_argument("--peak-binary", default="",
                    help="build/bench_gemm: its -p figure for --threads threads (the fp32 FMA "
                         "peak) becomes the table's percentage column")
    args = ap.parse_args()
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.time()
    ort_dir = os.path.join(args.workdir, "ort")
    install_ort(ort_dir)

    args.peak = measure_fma_peak(args.peak_binary, args.threads)
    embedd_env = dict(os.environ)
    if cpu_has_avx512():
        embedd_env.pop("OPENBLAS_L2_SIZE", None)
        embedd_env["OPENBLAS_CORETYPE"] = "SkylakeX"
    print("embedd: OPENBLAS_CORETYPE=%s; threads=%d rounds=%d ort passes=%d latency runs=%d%s" % (
        embedd_env.get("OPENBLAS_CORETYPE", "(unset)"), args.threads, args.rounds,
        args.ort_passes, args.latency_runs,
        " limit=%d texts" % args.limit if args.limit > 0 else ""), flush=True)
    for shape in args.shapes.split(","):
        bench_shape(args, shape, ort_dir, embedd_env)
    print("total %.0f s" % (time.time() - t0))


if __name__ == "__main__":
    main()
