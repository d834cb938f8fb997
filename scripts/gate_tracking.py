#!/usr/bin/env python3
"""gate_tracking.py: do the publish gate's label-free decisions track real quality?

For each base model (--base NAME=DIR, e.g. the current and the previous
default) it makes many candidates with `embedd` commands, all from
unlabelled text (the sentences of the --stream file, no scores):
  - whitening refits (`embedd whiten`) on stream subsets of several sizes
    and shrinks: the learner's whitening stage (server/learn/stages.h);
  - gradient-trained models (`embedd train`, SimCSE or MLM, at several
    learning rates and step counts): the learner's gradient stage.
Then, like the learner's gate, it embeds --holdout texts of the stream
(never used to fit or train) with the base and with each candidate,
measures the sides (collapse statistics, lexical agreement with TF-IDF on
held-out pairs, uniformity) with the C functions of server/learn/gate.c
(compiled into a shared library and called through ctypes, so the numbers
and the decision are the server's own: gate_decide), and decides.

Only then does it look at labels: the Spearman change on STS-B *train*
pairs (`embedd eval`), which never enters a fit, a training run or a
decision. It prints the table: passes that were real gains, passes that
were losses, rejections that were losses, rejections that were gains.

What the gate cannot see here: the validation loss of a gradient
candidate (the learner measures it with its trainer; `embedd train` does
not report it on held-out texts). Gradient candidates are decided as if
their loss had improved (use_val_loss with a better loss), which is the
case in which the lexical check is the one that decides; whitening
candidates are decided exactly as the learner does (no loss; the lexical
agreement must rise by --lex-gain).

Usage: scripts/gate_tracking.py --base cur=models/embedd-small --base old=DIR
                                [--stream FILE] [--work DIR] [--quick]
"""
import argparse
import ctypes
import json
import math
import os
import random
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.environ.get("EMBEDD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


class GateSide(ctypes.Structure):
    _fields_ = [("val_loss", ctypes.c_double), ("mean_cos", ctypes.c_double),
                ("variance", ctypes.c_double), ("sts", ctypes.c_double),
                ("lex", ctypes.c_double), ("uniformity", ctypes.c_double)]


class GateLimits(ctypes.Structure):
    _fields_ = [("max_cos", ctypes.c_double), ("cos_rise", ctypes.c_double),
                ("min_var", ctypes.c_double), ("use_sts", ctypes.c_int),
                ("sts_tolerance", ctypes.c_double), ("use_val_loss", ctypes.c_int),
                ("use_lex", ctypes.c_int), ("lex_tolerance", ctypes.c_double),
                ("lex_min_gain", ctypes.c_double)]


def load_gate(work):
    """server/learn/gate.c as a shared library."""
    so = os.path.join(work, "libgate.so")
    src = os.path.join(ROOT, "server", "learn", "gate.c")
    subprocess.run(["cc", "-O2", "-std=c11", "-shared", "-fPIC", "-o", so, src, "-lm"], check=True)
    lib = ctypes.CDLL(so)
    lib.gate_decide.restype = ctypes.c_int
    lib.gate_decide.argtypes = [ctypes.POINTER(GateLimits), ctypes.POINTER(GateSide),
                                ctypes.POINTER(GateSide), ctypes.c_char_p, ctypes.c_size_t]
    lib.gate_collapse_stats.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_int,
                                        ctypes.c_int, ctypes.POINTER(ctypes.c_double),
                                        ctypes.POINTER(ctypes.c_double)]
    lib.gate_lexical_pairs.argtypes = [ctypes.POINTER(ctypes.c_int)] * 2 + [ctypes.c_int] * 3 + [
        ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_double)]
    lib.gate_lexical_agreement.restype = ctypes.c_double
    lib.gate_lexical_agreement.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_int,
                                           ctypes.POINTER(ctypes.c_int),
                                           ctypes.POINTER(ctypes.c_int),
                                           ctypes.POINTER(ctypes.c_double), ctypes.c_int]
    lib.gate_uniformity.restype = ctypes.c_double
    lib.gate_uniformity.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_int, ctypes.c_int]
    return lib


def run(args, stdin=None):
    p = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(args), p.stderr[-2000:]))
    return p.stdout, p.stderr


def embed(binary, model, texts):
    out, _ = run([binary, "embed", "--model", model], "\n".join(texts) + "\n")
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == len(texts)
    dim = len(rows[0])
    flat = (ctypes.c_float * (len(rows) * dim))(*[x for r in rows for x in r])
    return flat, dim


def sts_train(binary, model):
    out, err = run([binary, "eval", "--model", model, "--sts",
                    os.path.join(DATA, "stsb", "sts-train.tsv")])
    m = re.search(r"spearman_x100 ([-\d.]+)", out + err)
    return float(m.group(1))


class Holdout:
    """The held-out texts and their lexical pairs (gate_lexical_pairs on word pieces
    without [CLS] and [SEP], as the learner does)."""

    def __init__(self, lib, binary, model, texts):
        out, _ = run([binary, "tokenize", "--model", model], "\n".join(texts) + "\n")
        toks = [json.loads(line)[1:-1] for line in out.splitlines() if line.strip()]
        n = len(texts)
        ids = [t for row in toks for t in row]
        c_ids = (ctypes.c_int * max(1, len(ids)))(*ids)
        c_lens = (ctypes.c_int * n)(*[len(r) for r in toks])
        self.a = (ctypes.c_int * (2 * n))()
        self.b = (ctypes.c_int * (2 * n))()
        self.sim = (ctypes.c_double * (2 * n))()
        vocab = max(ids) + 1
        rc = lib.gate_lexical_pairs(c_ids, c_lens, n, vocab, 0, self.a, self.b, self.sim)
        assert rc == 0
        self.n, self.texts = n, texts


def side(lib, binary, model, hold):
    e, dim = embed(binary, model, hold.texts)
    s = GateSide(val_loss=float("nan"), sts=float("nan"))
    mc, var = ctypes.c_double(), ctypes.c_double()
    lib.gate_collapse_stats(e, hold.n, dim, ctypes.byref(mc), ctypes.byref(var))
    s.mean_cos, s.variance = mc.value, var.value
    s.lex = lib.gate_lexical_agreement(e, dim, hold.a, hold.b, hold.sim, 2 * hold.n)
    s.uniformity = lib.gate_uniformity(e, hold.n, dim)
    return s


def make_candidates(binary, name, base, dim, stream, work, quick):
    """[(label, kind, dir)]: made once, reused when the directory exists. Whitening keeps
    the dimension (--dims), as the learner's stage does; a shrink of 0.01 is its floor when
    the texts span fewer directions than that."""
    cands = []
    sizes = [300, 2000] if quick else [300, 1000, 4000, 12000]
    shrinks = [0.01, 0.3] if quick else [0.01, 0.3, 0.6]
    rng = random.Random(7)
    for size in sizes:
        sub = os.path.join(work, "sub-%d.txt" % size)
        if not os.path.exists(sub):
            with open(sub, "w", encoding="utf-8") as f:
                f.write("\n".join(rng.sample(stream, min(size, len(stream)))) + "\n")
        for shrink in shrinks:
            d = os.path.join(work, "%s-whiten-%d-%g" % (name, size, shrink))
            if not os.path.exists(os.path.join(d, "modules.json")):
                run([binary, "whiten", "--model", base, "--corpus", sub, "--shrink", str(shrink),
                     "--dims", str(dim), "--out", d])
            cands.append(("whiten %d texts shrink %g" % (size, shrink), "whiten", d))
    corpus = os.path.join(work, "stream.txt")
    grid = [("simcse", 1e-5, 40), ("simcse", 1e-4, 40), ("simcse", 1e-3, 40),
            ("mlm", 1e-4, 40), ("mlm", 1e-3, 40), ("simcse", 5e-3, 40)]
    if quick:
        grid = grid[1:3]
    for obj, lr, steps in grid:
        d = os.path.join(work, "%s-%s-%g-%d" % (name, obj, lr, steps))
        if not os.path.exists(os.path.join(d, "modules.json")):
            run([binary, "train", "--model", base, "--corpus", corpus, "--objective", obj,
                 "--lr", str(lr), "--steps", str(steps), "--batch-size", "32",
                 "--warmup", "5", "--save-every", "0", "--out", d])
        cands.append(("%s lr %g %d steps" % (obj, lr, steps), "gradient", d))
    return cands


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "embedd"))
    ap.add_argument("--stream", help="unlabelled texts, one a line (default: STS-B train and "
                    "dev sentences, deduplicated)")
    ap.add_argument("--work", default="/tmp/embedd-gate-tracking")
    ap.add_argument("--holdout", type=int, default=256, help="held-out texts (the learner's "
                    "holdout_eval_max)")
    ap.add_argument("--lex-tolerance", type=float, default=0.5)
    ap.add_argument("--lex-gain", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true", help="a small grid (a smoke test)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.stream:
        with open(args.stream, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    else:
        texts = []
        for split in ("train", "dev"):
            with open(os.path.join(DATA, "stsb", "sts-%s.tsv" % split), encoding="utf-8") as f:
                for line in f:
                    p = line.rstrip("\n").split("\t")
                    if len(p) >= 3:
                        texts += [p[1], p[2]]
    texts = sorted(set(texts))
    random.Random(15).shuffle(texts)
    held, stream = texts[:args.holdout], texts[args.holdout:]
    with open(os.path.join(args.work, "stream.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(stream) + "\n")
    lib = load_gate(args.work)
    rows = []
    for spec in args.base:
        name, base = spec.split("=", 1)
        hold = Holdout(lib, args.binary, base, held)
        cur = side(lib, args.binary, base, hold)
        dim = len(json.loads(run([args.binary, "embed", "--model", base], "x\n")[0]))
        base_sts = sts_train(args.binary, base)
        print("%s: STS-B train %.2f, lexical agreement %.2f, mean cos %.3f, uniformity %.3f" % (
            name, base_sts, cur.lex, cur.mean_cos, cur.uniformity), flush=True)
        for label, kind, d in make_candidates(args.binary, name, base, dim, stream, args.work,
                                              args.quick):
            c = side(lib, args.binary, d, hold)
            lim = GateLimits(max_cos=0.98, cos_rise=0.1, min_var=0.5, use_sts=0,
                             sts_tolerance=0.5, use_val_loss=int(kind == "gradient"),
                             use_lex=1, lex_tolerance=args.lex_tolerance,
                             lex_min_gain=args.lex_gain)
            if kind == "gradient":  # as if the validation loss improved: see the docstring
                c.val_loss, cur.val_loss = 0.0, 1.0
            reason = ctypes.create_string_buffer(256)
            passed = lib.gate_decide(ctypes.byref(lim), ctypes.byref(c), ctypes.byref(cur),
                                     reason, 256)
            cur.val_loss = float("nan")
            delta = sts_train(args.binary, d) - base_sts
            rows.append({"base": name, "candidate": label, "kind": kind, "passed": passed,
                         "reason": reason.value.decode(), "lex": c.lex, "lex_base": cur.lex,
                         "mean_cos": c.mean_cos, "uniformity": c.uniformity,
                         "sts_train_delta": delta})
            print("  %-34s %-6s lex %6.2f (%+6.2f)  sts-train %+6.2f  %s" % (
                label, "PASS" if passed else "reject", c.lex, c.lex - cur.lex, delta,
                reason.value.decode()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print("\n| | real gain (STS-B train up) | real loss (down or equal) |")
    print("|---|---|---|")
    pg = sum(1 for r in rows if r["passed"] and r["sts_train_delta"] > 0)
    pl = sum(1 for r in rows if r["passed"] and r["sts_train_delta"] <= 0)
    rg = sum(1 for r in rows if not r["passed"] and r["sts_train_delta"] > 0)
    rl = sum(1 for r in rows if not r["passed"] and r["sts_train_delta"] <= 0)
    print("| passed | %d | %d |" % (pg, pl))
    print("| rejected | %d | %d |" % (rg, rl))
    big = [r for r in rows if abs(r["sts_train_delta"]) >= 1.0]
    bpg = sum(1 for r in big if r["passed"] and r["sts_train_delta"] > 0)
    brl = sum(1 for r in big if not r["passed"] and r["sts_train_delta"] < 0)
    print("\n%d candidates; %d changed STS-B train by 1 point or more, of which the gate got %d "
          "right (%d passes of gains, %d rejections of losses)" % (
              len(rows), len(big), bpg + brl, bpg, brl))
    xs = [r["lex"] - r["lex_base"] for r in rows]
    ys = [r["sts_train_delta"] for r in rows]
    if len(rows) > 2:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        cxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        cxx = math.sqrt(sum((x - mx) ** 2 for x in xs))
        cyy = math.sqrt(sum((y - my) ** 2 for y in ys))
        if cxx > 0 and cyy > 0:
            print("Pearson correlation of the lexical agreement change with the STS-B train "
                  "change: %.2f" % (cxy / (cxx * cyy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
