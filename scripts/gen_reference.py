#!/usr/bin/python3
"""gen_reference.py: tiny fixture models and PyTorch reference embeddings.

Writes (relative to the repository):
  tests/fixtures/tiny-f16/    random BERT (hidden 32, 2 layers, 4 heads, FFN 64,
                              real 30,522-entry vocab), F16 weights, HF names
                              without prefix, mean pooling + Normalize,
                              classic sentence-transformers files.
  tests/fixtures/tiny-bf16/   the same f32 weights (same seed) stored BF16, every
                              name with "bert.", plus unused bert.pooler.* and
                              cls.predictions.* tensors (no prefix, as in HF); CLS pooling in the new
                              pooling format, sentence-transformers 5 module
                              names, no Normalize.
  tests/fixtures/reference/   texts.bin, <fixture>.ids.txt, .mean.f32, .cls.f32,
                              .hidden.f32 and README.md (formats are there).
  tests/fixtures/tiny-dense/  tiny-f16's encoder (its files are symlinks to
                              ../tiny-f16/) with two sentence-transformers Dense
                              modules after mean pooling: 2_Dense (32 -> 24,
                              bias, Tanh, F32) and 3_Dense (24 -> 16, no bias,
                              Identity, F16), then Normalize.
  tests/fixtures/reference/   tiny-dense.raw.f32, tiny-dense.f32 and DENSE.md:
                              its embeddings before and after Normalize.

The reference of each fixture is computed from its stored (rounded) weights in
float32, with the composite (non-fused) TransformerEncoderLayer path, in
batches of 16 with padding. The script asserts that one-text-at-a-time runs
and the fused fast path agree to 1e-5, and reports the float64-vs-float32
difference. It first checks its tokenizer against llama.cpp's WordPiece
vectors and stops unless all 46 pass. Deterministic: runs single-threaded and
rewrites identical bytes.

The Dense references run sentence-transformers' own definition of the
module (STDense below: an nn.Linear, then the activation class named in
config.json, imported by name) on the torch pooled outputs of tiny-f16, read
back from the stored (rounded) weights; checked against the same math in
float64 and in plain tensor ops.

Usage: scripts/gen_reference.py [--seed 1234] [--out-root tests/fixtures]
                                [--part all|encoder|dense]
--part dense writes only tiny-dense/ and its references, from the tiny-f16
already in --out-root (the encoder part's float outputs differ in their last
bits between machines, so it leaves them alone).
Data: $EMBEDD_SHARED_DATA (default <repo>/../shared/data).
"""
import argparse
import hashlib
import importlib
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import embedd_ref as er  # noqa: E402
import torch  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
            layer_norm_eps=1e-12)
MAX_SEQ_LENGTH = 128
N_STS = 200
BATCH = 16
N_HIDDEN_DUMP = 3
TOL = 1e-5

FIXTURES = (
    dict(name="tiny-f16", dtype="F16", prefix="", extra=False, pooling="mean",
         normalize=True, pooling_format="classic", modules_format="classic"),
    dict(name="tiny-bf16", dtype="BF16", prefix="bert.", extra=True, pooling="cls",
         normalize=False, pooling_format="new", modules_format="st5"),
)


def sts_sentences(n):
    """First n distinct sentences of sts-dev.tsv (score \\t s1 \\t s2), s1 before s2."""
    path = os.path.join(er.shared_data_dir(), "stsb", "sts-dev.tsv")
    seen = set()
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 3:
                raise ValueError("%s: line with %d columns" % (path, len(cols)))
            for s in cols[1:]:
                if s not in seen:
                    seen.add(s)
                    out.append(s)
                    if len(out) == n:
                        return out
    raise ValueError("%s: only %d distinct sentences" % (path, len(out)))


def long_text(n_words):
    """n_words words of the mixed corpus sample, lines joined by spaces."""
    path = os.path.join(er.shared_data_dir(), "corpus", "sample-mixed-2k.txt")
    words = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words += line.split()
            if len(words) >= n_words:
                break
    return " ".join(words[:n_words])


def hard_cases():
    """(label, bytes) of texts that exercise tokenizer and padding corners."""
    cases = [
        ("empty string", ""),
        ("whitespace only", "   \t  "),
        ("accents (NFD + drop Mn)", "Café naïve résumé Ångström"),
        ("CJK ideographs spaced, digits", "我想在apple工作1314151天"),
        ("emoji, VS16 (Mn) dropped", "I ❤️ 🦙 and 😁"),
        ("3,000 words, truncated to 128 ids", long_text(3000)),
        ("control chars dropped", "a\x00b\x07c\x1bd"),
        ("invalid UTF-8 (U+FFFD dropped)", b"caf\xc3 \xff\xfe ok \xe2\x82"),
        ("invalid UTF-8: overlong NUL, surrogate, > U+10FFFF",
         b"x\xc0\x80y \xed\xa0\x80z \xf4\x90\x80\x80w"),
        ("mixed case, punctuation", "Hello, WORLD!!! (test) don't"),
        ("word over 100 chars -> [UNK]",
         "pneumonoultramicroscopicsilicovolcanoconiosis" * 3 + " ok"),
        ("100-char word split, 101-char word [UNK]", "x" * 100 + " " + "y" * 101),
        ("80 accented chars = 160 bytes, under the 100-char limit", "ü" * 80),
        ("newlines, CR, tab", "First line.\nSecond line\r\nthird\n\n\tfourth"),
        ("unsplittable word -> one [UNK]", "a🦙b and x"),
        ("capital sigma lowercased per char (no final sigma)", "ΟΔΟΣ ΣΟΦΟΣ"),
        ("NBSP, U+3000, U+2028 -> space; ZWJ, SHY, BOM (Cf) dropped",
         "a\u00a0b\u3000c\u200dd\u00ade\u2028f\ufeffg"),
        ("Cc chars Python calls whitespace (\\x1c \\x85 \\x0b \\x0c) dropped, Co dropped",
         "p\x1cq\x85r\x0bs\x0ct\x7fu v\ue000w"),
        ("ASCII symbols split as punctuation", "$5+3=8 ^_^ `code` |pipe| <tag> ~home"),
    ]
    return [(label, t if isinstance(t, bytes) else t.encode("utf-8")) for label, t in cases]


def f32_bytes(t):
    return t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()


def run(model, seqs, batch, dtype):
    """Per text: last_hidden_state rows of its real tokens (n_i, C)."""
    model = model.to(dtype)
    out = []
    with torch.no_grad():
        for i in range(0, len(seqs), batch):
            ids, mask = er.pad_batch(seqs[i:i + batch])
            h = model(ids, mask)
            for j, s in enumerate(seqs[i:i + batch]):
                out.append(h[j, :len(s)].clone())
    return out


def pooled(hidden, mode):
    """(n_texts, C) from per-text hidden rows."""
    rows = []
    for h in hidden:
        mask = torch.ones((1, h.shape[0]), dtype=torch.bool)
        rows.append(er.pool(h[None], mask, mode)[0])
    return torch.stack(rows)


def max_diff(a, b):
    if isinstance(a, list):
        return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b))
    return float((a.double() - b.double()).abs().max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out-root", default=os.path.join(er.REPO_DIR, "tests", "fixtures"))
    ap.add_argument("--part", choices=("all", "encoder", "dense"), default="all")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.part in ("all", "encoder"):
        gen_encoder(args)
    if args.part in ("all", "dense"):
        gen_dense(args)


def gen_encoder(args):

    # 1. Tokenizer against llama.cpp's vectors (HF reference ids).
    tok0 = er.BertWordPiece.from_dir(er.minilm_dir())
    tok_lines = []
    for fname, ok, total, fails in er.check_tokenizer(tok0):
        tok_lines.append("%s: %d/%d" % (fname, ok, total))
        for text, want, got in fails:
            print("TOKENIZER MISMATCH %s: %r\n  want %s\n  got  %s" % (fname, text, want, got))
        if ok != total or total != 46:
            sys.exit("tokenizer check failed: %s %d/%d" % (fname, ok, total))
    print("tokenizer check:", "; ".join(tok_lines))

    # 2. Texts.
    sts = sts_sentences(N_STS)
    hard = hard_cases()
    texts = [s.encode("utf-8") for s in sts] + [t for _, t in hard]
    labels = ["stsb dev"] * len(sts) + [lab for lab, _ in hard]
    ref_dir = os.path.join(args.out_root, "reference")
    os.makedirs(ref_dir, exist_ok=True)
    with open(os.path.join(ref_dir, "texts.bin"), "wb") as f:
        f.write(struct.pack("<I", len(texts)))
        for t in texts:
            f.write(struct.pack("<I", len(t)))
            f.write(t)

    cfg = er.bert_config(os.path.join(er.minilm_dir(), "config.json"), **TINY)
    report = {}
    for fx in FIXTURES:
        name = fx["name"]
        d = os.path.join(args.out_root, name)
        # 3. Model directory.
        w = er.random_bert_weights(cfg, args.seed, extra=fx["extra"])
        er.write_model_dir(d, cfg, w, fx["dtype"], prefix=fx["prefix"], pooling=fx["pooling"],
                           normalize=fx["normalize"], max_seq_length=MAX_SEQ_LENGTH,
                           pooling_format=fx["pooling_format"],
                           modules_format=fx["modules_format"])
        # Read it back as a consumer would; the stored values must be the
        # f32 master weights rounded to the storage dtype.
        model, tok, info = er.load_model_dir(d)
        assert info["pooling"] == fx["pooling"] and info["normalize"] == fx["normalize"]
        assert info["max_seq_length"] == MAX_SEQ_LENGTH
        stored, _ = er.safetensors_read(os.path.join(d, "model.safetensors"))
        for n, t in w.items():
            sn = n if n.startswith("cls.") else fx["prefix"] + n
            assert torch.equal(stored[sn], er.round_to_dtype(t, fx["dtype"])), n

        # 4. Ids.
        seqs = [tok.encode(t, info["max_seq_length"]) for t in texts]
        with open(os.path.join(ref_dir, name + ".ids.txt"), "w", encoding="ascii") as f:
            for s in seqs:
                f.write(" ".join(str(i) for i in s) + "\n")

        # 5. Forward passes.
        slow = model.set_fastpath(False)
        h32 = run(slow, seqs, BATCH, torch.float32)
        h32_single = run(slow, seqs, 1, torch.float32)
        h64 = run(slow, seqs, BATCH, torch.float64)
        fast = model.set_fastpath(True)
        h32_fast = run(fast, seqs, BATCH, torch.float32)
        h32_fast_single = run(fast, seqs, 1, torch.float32)
        model.set_fastpath(False).to(torch.float32)
        # The HF-name mapping, checked against BertModel's math in plain ops.
        st64 = {n: t.double() for n, t in stored.items()}
        hf64 = []
        with torch.no_grad():
            for i in range(0, len(seqs), BATCH):
                ids, mask = er.pad_batch(seqs[i:i + BATCH])
                h = er.hf_bert_forward(st64, cfg, ids, mask, fx["prefix"])
                hf64 += [h[j, :len(s)] for j, s in enumerate(seqs[i:i + BATCH])]

        mean32, cls32 = pooled(h32, "mean"), pooled(h32, "cls")
        r = {
            "n_tokens": sum(len(s) for s in seqs),
            "truncated": sum(1 for t in texts if len(tok.tokenize(t)) > MAX_SEQ_LENGTH - 2),
            "batch_vs_single": max(max_diff(pooled(h32_single, m), pooled(h32, m)) for m in ("mean", "cls")),
            "batch_vs_single_hidden": max_diff(h32_single, h32),
            "fast_vs_composite": max(max_diff(pooled(h32_fast, m), pooled(h32, m)) for m in ("mean", "cls")),
            "fast_single_vs_composite": max(max_diff(pooled(h32_fast_single, m), pooled(h32, m))
                                            for m in ("mean", "cls")),
            "f64_vs_f32_mean": max_diff(pooled(h64, "mean"), mean32),
            "f64_vs_f32_cls": max_diff(pooled(h64, "cls"), cls32),
            "f64_vs_f32_hidden": max_diff(h64, h32),
            "hf_plain_ops_vs_modules_f64": max_diff(hf64, h64),
            "max_abs_hidden": max(float(h.abs().max()) for h in h32),
            "mean_abs_mean": float(mean32.abs().mean()),
        }
        # Smallest distance between two STS sentences' mean vectors: a model
        # that collapsed (tiny init) would put them all on one point.
        r["min_pairwise_mean_dist"] = float(torch.cdist(mean32[:N_STS], mean32[:N_STS])
                                            .add(torch.eye(N_STS) * 1e9).min())
        for k in ("batch_vs_single", "fast_vs_composite", "fast_single_vs_composite",
                  "hf_plain_ops_vs_modules_f64"):
            if not r[k] <= TOL:
                sys.exit("%s: %s = %.3e exceeds %.0e" % (name, k, r[k], TOL))
        report[name] = r

        # 6. Outputs.
        with open(os.path.join(ref_dir, name + ".mean.f32"), "wb") as f:
            f.write(f32_bytes(mean32))
        with open(os.path.join(ref_dir, name + ".cls.f32"), "wb") as f:
            f.write(f32_bytes(cls32))
        with open(os.path.join(ref_dir, name + ".hidden.f32"), "wb") as f:
            for h in h32[:N_HIDDEN_DUMP]:
                f.write(f32_bytes(h))
        r["hidden_rows"] = [len(s) for s in seqs[:N_HIDDEN_DUMP]]

    write_readme(ref_dir, args, texts, labels, report, tok_lines)

    # 7. Summary.
    print("texts: %d (%d STS-B dev + %d hard cases)" % (len(texts), len(sts), len(hard)))
    for name, r in report.items():
        print("%s: %d ids, %d truncated; max|diff| batch-vs-single %.2e, fastpath-vs-composite %.2e "
              "(single %.2e); f64-vs-f32 mean %.2e cls %.2e hidden %.2e; max|h| %.2f; "
              "min STS mean-vector distance %.3f; HF-math (plain ops) vs modules in f64 %.1e"
              % (name, r["n_tokens"], r["truncated"], r["batch_vs_single"], r["fast_vs_composite"],
                 r["fast_single_vs_composite"], r["f64_vs_f32_mean"], r["f64_vs_f32_cls"],
                 r["f64_vs_f32_hidden"], r["max_abs_hidden"], r["min_pairwise_mean_dist"],
                 r["hf_plain_ops_vs_modules_f64"]))
    total = 0
    for root in [ref_dir] + [os.path.join(args.out_root, fx["name"]) for fx in FIXTURES]:
        size = 0
        for dp, _, fs in os.walk(root):
            size += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
        total += size
        print("%-40s %9d bytes" % (os.path.relpath(root, er.REPO_DIR), size))


# ---- Dense modules ---------------------------------------------------------

DENSE_FIXTURE = "tiny-dense"
DENSE_BASE = "tiny-f16"
# (folder, out_features, bias, activation_function, storage dtype)
DENSE_MODULES = (
    ("2_Dense", 24, True, "torch.nn.modules.activation.Tanh", "F32"),
    ("3_Dense", 16, False, "torch.nn.modules.linear.Identity", "F16"),
)
# The encoder's files, shared with the base fixture through symlinks.
DENSE_LINKED = ("config.json", "model.safetensors", "sentence_bert_config.json",
                "1_Pooling") + er.TOKENIZER_FILES


class STDense(torch.nn.Module):
    """sentence-transformers' Dense module (sentence_transformers/base/modules/
    dense.py): features["sentence_embedding"] = activation_function(linear(x)),
    linear = nn.Linear(in_features, out_features, bias), activation_function
    an instance of the torch class config.json names, imported by name as
    sentence-transformers' import_from_string does."""

    def __init__(self, in_features, out_features, bias, activation_function):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, out_features, bias=bias)
        module, _, cls = activation_function.rpartition(".")
        self.activation_function = getattr(importlib.import_module(module), cls)()

    @classmethod
    def load(cls, folder):
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        m = cls(**cfg)
        tensors, _ = er.safetensors_read(os.path.join(folder, "model.safetensors"))
        m.load_state_dict(tensors, strict=True)
        return m.eval()

    def forward(self, features):
        features["sentence_embedding"] = self.activation_function(
            self.linear(features["sentence_embedding"]))
        return features


def write_dense_fixture(root, seed):
    """tiny-dense/: symlinks to the base fixture's encoder files, modules.json
    and one folder per Dense module (config.json as sentence-transformers
    saves it, model.safetensors with linear.weight [and linear.bias])."""
    d = os.path.join(root, DENSE_FIXTURE)
    os.makedirs(d, exist_ok=True)
    for name in DENSE_LINKED:
        link = os.path.join(d, name)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.join("..", DENSE_BASE, name), link)
    g = torch.Generator().manual_seed(seed + 1)
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"}]
    in_f = TINY["hidden_size"]
    for i, (folder, out_f, bias, act, dtype) in enumerate(DENSE_MODULES):
        os.makedirs(os.path.join(d, folder), exist_ok=True)
        w = torch.randn((out_f, in_f), generator=g) * (1.5 / in_f ** 0.5)
        tensors = [("linear.weight", w, dtype)]
        if bias:
            tensors.append(("linear.bias", (torch.rand(out_f, generator=g) - 0.5) * 0.4, dtype))
        er.safetensors_write(os.path.join(d, folder, "model.safetensors"), tensors,
                             metadata={"format": "pt"})
        er._write_json(os.path.join(d, folder, "config.json"),
                       {"in_features": in_f, "out_features": out_f, "bias": bias,
                        "activation_function": act})
        # sentence-transformers 5 class path for one, the classic one for the other
        mtype = ("sentence_transformers.base.modules.dense.Dense" if i == 0
                 else "sentence_transformers.models.Dense")
        mods.append({"idx": 2 + i, "name": str(2 + i), "path": folder, "type": mtype})
        in_f = out_f
    n = 2 + len(DENSE_MODULES)
    mods.append({"idx": n, "name": str(n), "path": "%d_Normalize" % n,
                 "type": "sentence_transformers.models.Normalize"})
    er._write_json(os.path.join(d, "modules.json"), mods)
    return d


def gen_dense(args):
    ref_dir = os.path.join(args.out_root, "reference")
    base = os.path.join(args.out_root, DENSE_BASE)
    d = write_dense_fixture(args.out_root, args.seed)
    # The texts and ids exactly as the encoder part wrote them.
    with open(os.path.join(ref_dir, "texts.bin"), "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<I", raw[:4])
    texts, pos = [], 4
    for _ in range(n):
        (ln,) = struct.unpack("<I", raw[pos:pos + 4])
        texts.append(raw[pos + 4:pos + 4 + ln])
        pos += 4 + ln
    model, tok, info = er.load_model_dir(base)
    seqs = [tok.encode(t, info["max_seq_length"]) for t in texts]
    with open(os.path.join(ref_dir, DENSE_BASE + ".ids.txt"), encoding="ascii") as f:
        want = [[int(x) for x in line.split()] for line in f]
    assert seqs == want, "tokenizer ids differ from %s.ids.txt" % DENSE_BASE
    h32 = run(model.set_fastpath(False), seqs, BATCH, torch.float32)
    pooled32 = pooled(h32, "mean")
    mods = [STDense.load(os.path.join(d, m[0])) for m in DENSE_MODULES]
    with torch.no_grad():
        feats = {"sentence_embedding": pooled32.clone()}
        for m in mods:
            feats = m(feats)
        raw32 = feats["sentence_embedding"]
        # sentence-transformers' Normalize: F.normalize(x, p=2, dim=1)
        served32 = torch.nn.functional.normalize(raw32, p=2, dim=1)
        # The same math in float64 from the stored weights, in plain ops.
        x = pooled32.double()
        for folder, _, bias, act, _ in DENSE_MODULES:
            t, _ = er.safetensors_read(os.path.join(d, folder, "model.safetensors"))
            x = x @ t["linear.weight"].double().t()
            if bias:
                x = x + t["linear.bias"].double()
            if act.endswith("Tanh"):
                x = torch.tanh(x)
        raw64 = x
    r = {"plain_f64_vs_modules_f32": max_diff(raw64, raw32),
         "max_abs_raw": float(raw32.abs().max()),
         "tanh_saturated": float((mods[0].linear(pooled32).abs() > 3).float().mean())}
    if not r["plain_f64_vs_modules_f32"] <= TOL:
        sys.exit("tiny-dense: plain f64 vs modules %.3e exceeds %.0e"
                 % (r["plain_f64_vs_modules_f32"], TOL))
    with open(os.path.join(ref_dir, DENSE_FIXTURE + ".raw.f32"), "wb") as f:
        f.write(f32_bytes(raw32))
    with open(os.path.join(ref_dir, DENSE_FIXTURE + ".f32"), "wb") as f:
        f.write(f32_bytes(served32))
    write_dense_readme(ref_dir, args, len(texts), r)
    print("tiny-dense: %d texts; Dense outputs up to |%.2f|, %.1f%% of tanh inputs past |3|; "
          "modules f32 vs plain ops f64 %.2e"
          % (len(texts), r["max_abs_raw"], 100 * r["tanh_saturated"],
             r["plain_f64_vs_modules_f32"]))


def write_dense_readme(ref_dir, args, n, r):
    L = ["# Reference embeddings of the tiny Dense fixture\n",
         "Generated by `scripts/gen_reference.py --seed %d --part dense` (Debian python3, "
         "PyTorch %s); do not edit by hand.\n" % (args.seed, torch.__version__),
         "`../tiny-dense/` is `../tiny-f16/` (the same files, as symlinks: config, weights, "
         "tokenizer, mean pooling) followed by two sentence-transformers Dense modules and "
         "Normalize:\n",
         "| folder | in | out | bias | activation_function | stored |",
         "|---|---|---|---|---|---|"]
    in_f = TINY["hidden_size"]
    for folder, out_f, bias, act, dtype in DENSE_MODULES:
        L.append("| %s | %d | %d | %s | %s | %s |" % (folder, in_f, out_f, bias, act, dtype))
        in_f = out_f
    L.append("")
    L.append("Weights are seeded normal (std 1.5/sqrt(in)) and biases uniform in [-0.2, 0.2], "
             "rounded to the stored dtype. The references apply sentence-transformers' own "
             "definition of the module (an `nn.Linear`, then an instance of the activation "
             "class config.json names) to the float32 torch mean pooling of tiny-f16 (the "
             "composite path, batches of 16), read back from the stored files; float64 plain "
             "ops on the same stored weights agree to %.1e.\n" % r["plain_f64_vs_modules_f32"])
    L.append("* `tiny-dense.raw.f32`: %d x %d little-endian float32, the output of the last "
             "Dense module (before Normalize)." % (n, DENSE_MODULES[-1][1]))
    L.append("* `tiny-dense.f32`: the same rows L2-normalised (`F.normalize(p=2, dim=1)`): "
             "the served embedding.")
    L.append("* Texts and ids: `texts.bin` and `tiny-f16.ids.txt` (checked to be the same).\n")
    L.append("## sha256\n")
    for f in (DENSE_FIXTURE + ".raw.f32", DENSE_FIXTURE + ".f32"):
        L.append("* `%s` %s" % (f, sha256(os.path.join(ref_dir, f))))
    for folder, *_ in DENSE_MODULES:
        p = os.path.join(ref_dir, "..", DENSE_FIXTURE, folder, "model.safetensors")
        L.append("* `../%s/%s/model.safetensors` %s" % (DENSE_FIXTURE, folder, sha256(p)))
    with open(os.path.join(ref_dir, "DENSE.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_readme(ref_dir, args, texts, labels, report, tok_lines):
    n = len(texts)
    L = []
    L.append("# Reference embeddings for the tiny fixture models\n")
    L.append("Generated by `scripts/gen_reference.py --seed %d` (Debian python3, PyTorch %s, "
             "numpy); do not edit by hand. Re-running rewrites identical bytes (single thread)."
             "\n" % (args.seed, torch.__version__))
    L.append("## Models\n")
    L.append("`../tiny-f16/` and `../tiny-bf16/`: BERT with hidden 32, 2 layers, 4 heads, FFN 64, "
             "bert-base-uncased vocab (30,522), 512 positions, 2 token types, LayerNorm eps 1e-12, "
             "exact erf GELU, max_seq_length 128. Both hold the same seeded f32 weights, "
             "rounded to nearest even when stored: tiny-f16 as F16 with plain HF names, mean "
             "pooling + Normalize (classic module files); tiny-bf16 as BF16 with the `bert.` "
             "prefix, extra unused `bert.pooler.*` and `cls.predictions.*` tensors, CLS pooling in "
             "the new `pooling_mode` format, sentence-transformers 5 module names, no Normalize. "
             "Tokenizer files are all-MiniLM-L6-v2's.\n")
    L.append("The references are computed from each model's *stored* weights (after rounding), "
             "in float32, by torch's own modules (nn.Embedding, nn.LayerNorm, "
             "nn.TransformerEncoderLayer, post-norm, src_key_padding_mask), in padded batches "
             "of 16 through the composite (non-fused) path. Checked at generation time: "
             "one-text-at-a-time runs and PyTorch 1.13's fused encoder-layer fast path agree "
             "with them to 1e-5, and the tensor-name mapping is checked in float64 against "
             "Hugging Face BertModel's math written in plain tensor ops from the HF names "
             "(`hf_bert_forward`).\n")
    L.append("## Files\n")
    L.append("* `texts.bin`: u32 LE count, then per text u32 LE byte length + raw bytes "
             "(%d texts; some are not valid UTF-8 on purpose)." % n)
    L.append("* `<fixture>.ids.txt`: one line per text, model input ids separated by spaces: "
             "[CLS] + the first 126 tokens + [SEP].")
    L.append("* `<fixture>.mean.f32`, `<fixture>.cls.f32`: %d x 32 little-endian float32, the "
             "UNNORMALISED mean over real tokens and the first ([CLS]) row of the last hidden "
             "state. (tiny-f16's served embedding is mean + L2 normalisation; tiny-bf16's is "
             "cls, unnormalised.)" % n)
    for name, r in report.items():
        L.append("* `%s.hidden.f32`: last_hidden_state of texts 0..%d, rows concatenated "
                 "(%s rows) x 32 float32." % (name, N_HIDDEN_DUMP - 1,
                                              " + ".join(str(x) for x in r["hidden_rows"])))
    L.append("")
    L.append("## Tokenizer\n")
    L.append("Python port of Hugging Face tokenizers' BERT pipeline (scripts/embedd_ref.py): "
             "special tokens matched in the raw text, BertNormalizer (clean text drops NUL, "
             "U+FFFD and Cc/Cf/Co except \\t\\n\\r -- unassigned Cn code points are kept, as the "
             "Rust crate does --, whitespace to ' ', CJK spacing, NFD + drop Mn, per-character "
             "lowercase), BertPreTokenizer, WordPiece (greedy, `##`, > 100 chars -> [UNK]). "
             "Raw bytes are decoded with invalid sequences as U+FFFD. llama.cpp vectors: "
             + "; ".join(tok_lines) + ".\n")
    L.append("## Numerical noise\n")
    L.append("max |difference| of the float32 reference against the same computation in float64 "
             "(same rounded weights):\n")
    L.append("| fixture | mean | cls | hidden | batch vs single | fast path vs composite |")
    L.append("|---|---|---|---|---|---|")
    for name, r in report.items():
        L.append("| %s | %.2e | %.2e | %.2e | %.2e | %.2e |"
                 % (name, r["f64_vs_f32_mean"], r["f64_vs_f32_cls"], r["f64_vs_f32_hidden"],
                    r["batch_vs_single"], max(r["fast_vs_composite"], r["fast_single_vs_composite"])))
    L.append("\nHidden values reach |%.2f|; a C float32 implementation should match to about "
             "1e-5 absolute.\n" % max(r["max_abs_hidden"] for r in report.values()))
    L.append("## Texts\n")
    L.append("0-%d: the first %d distinct sentences of STS-B dev (`sts-dev.tsv`, s1 before s2). "
             "Then:\n" % (N_STS - 1, N_STS))
    for i in range(N_STS, n):
        L.append("* %d: %s (%d bytes)" % (i, labels[i], len(texts[i])))
    L.append("\n## sha256\n")
    for f in sorted(os.listdir(ref_dir)):
        if f != "README.md":
            L.append("* `%s` %s" % (f, sha256(os.path.join(ref_dir, f))))
    with open(os.path.join(ref_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
