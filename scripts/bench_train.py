#!/usr/bin/python3
"""bench_train.py: training throughput, embedd against PyTorch in the same run.

One unsupervised SimCSE step on the all-MiniLM-L6-v2 shape (random weights,
bench-out/minilm): 64 texts of exactly 32 tokens, each encoded twice with
dropout 0.1, mean pooling, InfoNCE at temperature 0.05, backward, gradient
clipping and AdamW. Engines alternate A B A B (--rounds), each round runs
--steps steps after one warm-up step; the best round of each is reported in
tokens/s (both views counted: 2 x 64 x 32 tokens a step).

  PyTorch: nn.TransformerEncoderLayer (dropout 0.1) in train mode,
           torch.optim.AdamW, 2 threads, OMP_WAIT_POLICY=PASSIVE.
  embedd:  `embedd train --objective simcse` on corpus lines of >= 32 tokens
           truncated to 32, its own log's tokens/s (data loading included).

Usage: scripts/bench_train.py [--rounds 3] [--steps 5] [--threads 2]
Run it under the OpenBLAS kernel you want for both engines, e.g.
  env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=SkylakeX scripts/bench_train.py
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = "/usr/bin/python3"
BATCH, LEN = 64, 32


def torch_worker(model_dir, steps, threads):
    """Runs in a child process: prints tokens/s of `steps` SimCSE steps."""
    sys.path.insert(0, HERE)
    import embedd_ref as er
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    model, _, _ = er.load_model_dir(model_dir)
    model.set_fastpath(False)
    for layer in model.layers:   # BERT's dropout everywhere
        layer.dropout.p = layer.dropout1.p = layer.dropout2.p = 0.1
        layer.self_attn.dropout = 0.1
    emb_drop = torch.nn.Dropout(0.1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (BATCH, LEN), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones((BATCH, LEN), dtype=torch.bool)

    def step():
        opt.zero_grad()
        both = torch.cat([ids, ids])
        m2 = torch.cat([mask, mask])
        pos = torch.arange(LEN)
        x = (model.word_embeddings(both) + model.position_embeddings(pos)[None]
             + model.token_type_embeddings(torch.zeros_like(both)))
        x = emb_drop(model.emb_norm(x))
        for layer in model.layers:
            x = layer(x, src_key_padding_mask=~m2)
        z = F.normalize(x.mean(1), dim=-1)
        sim = z[:BATCH] @ z[BATCH:].t() / 0.05
        loss = F.cross_entropy(sim, torch.arange(BATCH))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    print("tokens_per_s %.1f" % (steps * 2 * BATCH * LEN / dt))


def run_torch(model_dir, steps, threads):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run([PY, __file__, "--torch-worker", model_dir, "--steps", str(steps),
                          "--threads", str(threads)], env=env, capture_output=True, text=True,
                         check=True).stdout
    return float(re.search(r"tokens_per_s ([0-9.]+)", out).group(1))


def corpus_file(workdir):
    """Corpus lines long enough for 32 tokens."""
    path = os.path.join(workdir, "train-corpus.txt")
    if not os.path.exists(path):
        src = os.path.join(os.environ.get("EMBEDD_SHARED_DATA", os.path.join(ROOT, "..", "shared",
                                                                                "data")),
                           "corpus", "wiki1m-head-11914.txt")
        with open(src, encoding="utf-8") as f, open(path, "w", encoding="utf-8") as out:
            for line in f:
                if len(line.split()) >= 40:
                    out.write(line)
    return path


def run_embedd(binary, model_dir, corpus, steps, threads):
    out = tempfile.mkdtemp(prefix="embedd-bench-train-")
    try:
        cmd = [binary, "train", "--model", model_dir, "--corpus", corpus, "--objective", "simcse",
               "--batch-size", str(BATCH), "--max-seq-len", str(LEN), "--min-tokens", str(LEN),
               "--steps", str(steps + 1), "--log-every", "1", "--save-every", "0",
               "--threads", str(threads), "--out", os.path.join(out, "ckpt"), "--resume=false"]
        err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    finally:
        shutil.rmtree(out, ignore_errors=True)
    # per-step times from the log: tokens/s is cumulative, so recover the
    # time of steps 2..N+1 (step 1 is the warm-up) from the first and last.
    rates = [(int(m.group(1)), float(m.group(2)))
             for m in re.finditer(r"step (\d+)/\d+ .*? tok/s ([0-9.]+)", err)]
    tok = 2 * BATCH * LEN
    t1 = rates[0][0] * tok / rates[0][1]
    tn = rates[-1][0] * tok / rates[-1][1]
    return (rates[-1][0] - rates[0][0]) * tok / (tn - t1)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "embedd"))
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench-out"))
    ap.add_argument("--torch-worker")
    args = ap.parse_args()
    if args.torch_worker:
        torch_worker(args.torch_worker, args.steps, args.threads)
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    model = os.path.join(args.workdir, "minilm")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        subprocess.check_call([PY, os.path.join(HERE, "gen_bench_model.py"), "--out", model,
                               "--shape", "minilm"])
    corpus = corpus_file(args.workdir)
    print("SimCSE step, MiniLM shape, batch %d x %d tokens, %d threads, OPENBLAS_CORETYPE=%s"
          % (BATCH, LEN, args.threads, os.environ.get("OPENBLAS_CORETYPE", "(unset)")))
    best = {"embedd": 0.0, "pytorch": 0.0}
    for r in range(args.rounds):
        e = run_embedd(args.binary, model, corpus, args.steps, args.threads)
        t = run_torch(model, args.steps, args.threads)
        best["embedd"], best["pytorch"] = max(best["embedd"], e), max(best["pytorch"], t)
        print("round %d: embedd %.0f tokens/s, PyTorch %.0f tokens/s" % (r + 1, e, t))
    print("best: embedd %.0f tokens/s, PyTorch %.0f tokens/s, ratio %.2fx"
          % (best["embedd"], best["pytorch"], best["embedd"] / best["pytorch"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
