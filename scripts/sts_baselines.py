#!/usr/bin/python3
"""sts_baselines.py: two non-neural STS Benchmark baselines (Spearman x100).

    scripts/sts_baselines.py [--data DIR] [--sts FILE [FILE ...]]
                             [--corpus FILE [FILE ...]] [--only tfidf|sif]

Runs with Debian's python3 + python3-numpy + python3-scipy only (no
scikit-learn, nothing pip-installed). Nothing is cached on disk.

Input: STS files as TSV `score<TAB>sentence1<TAB>sentence2` (no header),
e.g. DATA/stsb/sts-train.tsv and DATA/stsb/sts-dev.tsv (the defaults).
Metric: scipy.stats.spearmanr(cosine, gold score).correlation * 100 over all
pairs of a file. A pair in which a sentence has no usable token gets
cosine 0 (what sklearn's cosine_similarity gives for a zero row).

Tokenisation (both baselines): text.lower(), then re.findall(r"(?u)\\b\\w\\w+\\b")
-- the defaults of scikit-learn's CountVectorizer/TfidfVectorizer
(lowercase=True, strip_accents=None, token_pattern (?u)\\b\\w\\w+\\b), so
one-character tokens ("a", "I", "5") are dropped.

1. tfidf-pairs -- TF-IDF bag of words, IDF from the pairs themselves.
   For one STS file the document collection is every sentence of the file,
   both columns, in file order (n = 2 * pairs; a sentence occurring twice
   counts twice). Vocabulary = every token of those documents.
   df(t) = number of documents containing t;
   idf(t) = ln((1 + n) / (1 + df(t))) + 1          (smooth_idf, sublinear_tf off)
   x[d, t] = count(t in d) * idf(t), each row L2-normalised,
   score(pair) = x[s1] . x[s2] (= cosine). This is what
   TfidfVectorizer().fit_transform(s1 + s2) followed by the row-wise dot
   product computes (sklearn gives 68.01 on sts-train.tsv, 75.53 on
   sts-dev.tsv).

2. ppmi-svd-sif / ppmi-svd-sif-nopc -- averaged word vectors learnt from an
   unlabelled corpus (default: DATA/corpus/gutenberg-00..03.txt,
   us-presidential-addresses.txt, wiki1m-head-11914.txt,
   wikitext103-valid-test-detok.txt, wordnet30-glosses.txt; one paragraph
   per line; see DATA/PROVENANCE.md).
   a. Corpus counts: every line tokenised as above; count(w) over all tokens;
      N_tok = total number of tokens (in or out of the vocabulary);
      p(w) = count(w) / N_tok. Vocabulary V = the 60,000 most frequent tokens
      (ties broken by the token string, so the choice is deterministic).
   b. Co-occurrence: within one line only, for every token position i whose
      word is in V and every position j with 1 <= |i - j| <= 5 whose word is
      in V, #(w_i, w_j) += 1 (symmetric window 5, unweighted: no distance
      weighting, no subsampling, no dynamic window). Out-of-vocabulary tokens
      keep their positions (they are not deleted before windowing); they are
      just never counted as a word or a context. The matrix is symmetric.
   c. PPMI with context-distribution smoothing alpha = 0.75 (Levy, Goldberg &
      Dagan 2015; option --cds, 1.0 switches it off):
        D = sum of all #(w, c);  P(w, c) = #(w, c) / D;
        P(w) = sum_c #(w, c) / D;
        P_a(c) = (sum_w #(w, c))^a / sum_c' (sum_w #(w, c'))^a;
        PPMI(w, c) = max(0, ln(P(w, c) / (P(w) * P_a(c)))), stored sparse.
   d. Truncated SVD, k = 300: U, S, Vt = scipy.sparse.linalg.svds(PPMI, k=300,
      solver="arpack", v0 = fixed random vector (numpy default_rng(seed 0),
      uniform [-1, 1))); word vectors W = U * sqrt(S) (eigenvalue weighting
      p = 0.5; option --eig-power, 1.0 gives U * S). Singular-vector signs do
      not matter: every score below is invariant to flipping a column of W.
   e. SIF sentence vector (Arora, Liang & Ma 2017): over the tokens of the
      sentence that are in V (repeats counted; out-of-vocabulary tokens
      skipped), v_s = (1 / m) * sum a / (a + p(w)) * W[w], a = 1e-4,
      m = number of in-vocabulary tokens. A sentence with m = 0 gets v_s = 0.
   f. Common-component removal (ppmi-svd-sif only): X = the vectors of all
      sentences of the evaluated file (both columns, 2 * pairs rows, in file
      order); u = first right singular vector of X, uncentred (what Arora's
      released code gets from TruncatedSVD(n_components=1) on X);
      v_s <- v_s - (v_s . u) u. ppmi-svd-sif-nopc skips this step.
   g. score(pair) = cosine(v_s1, v_s2).

Output: one line per (baseline, file) on stdout, e.g.
    tfidf-pairs  sts-train.tsv  spearman_x100 68.01
progress and timings on stderr. Deterministic: no random choice except the
fixed ARPACK start vector.
"""
import argparse
import collections
import os
import re
import sys
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds
from scipy.stats import spearmanr

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")

DEFAULT_CORPUS = [
    "gutenberg-00.txt", "gutenberg-01.txt", "gutenberg-02.txt",
    "gutenberg-03.txt", "us-presidential-addresses.txt",
    "wiki1m-head-11914.txt", "wikitext103-valid-test-detok.txt",
    "wordnet30-glosses.txt",
]

T0 = time.time()


def log(msg):
    print("[%7.1fs] %s" % (time.time() - T0, msg), file=sys.stderr, flush=True)


def tokenize(text):
    return TOKEN_RE.findall(text.lower())


def read_sts(path):
    """[(gold score, sentence1, sentence2)], split on TAB only (no quoting)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                sys.exit("%s:%d: expected score<TAB>sentence1<TAB>sentence2"
                         % (path, ln))
            rows.append((float(parts[0]), parts[1], parts[2]))
    if not rows:
        sys.exit("%s: no pairs" % path)
    return rows


def spearman_x100(scores, gold):
    return 100.0 * spearmanr(scores, gold).correlation


def rowwise_cosine(a, b):
    """Cosine of each row of a with the same row of b; 0 if either is 0."""
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    den = na * nb
    out = np.zeros(len(a))
    ok = den > 0
    out[ok] = dot[ok] / den[ok]
    return out


# ---------------------------------------------------------------- baseline 1

def tfidf_pairs(rows):
    s1 = [r[1] for r in rows]
    s2 = [r[2] for r in rows]
    docs = s1 + s2
    n = len(docs)
    vocab = {}
    indptr = [0]
    indices = []
    for d in docs:
        for t in tokenize(d):
            indices.append(vocab.setdefault(t, len(vocab)))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float64)
    # csr_matrix sums the duplicate (doc, term) entries -> raw term counts
    tf = sp.csr_matrix((data, np.asarray(indices, dtype=np.int64),
                        np.asarray(indptr, dtype=np.int64)),
                       shape=(n, len(vocab)))
    tf.sum_duplicates()
    df = np.bincount(tf.indices, minlength=len(vocab)).astype(np.float64)
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    x = tf.multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    inv = np.zeros_like(norms)
    inv[norms > 0] = 1.0 / norms[norms > 0]
    x = sp.diags(inv).dot(x).tocsr()
    m = len(rows)
    a, b = x[:m], x[m:]
    cos = np.asarray(a.multiply(b).sum(axis=1)).ravel()
    return cos


# ---------------------------------------------------------------- baseline 2

def read_corpus(paths):
    """Token strings per line -> (ids array int32 of all tokens with -1 for
    words outside the vocabulary, line id per token, vocab list, p(w))."""
    lines = []
    counts = collections.Counter()
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                toks = tokenize(line)
                if toks:
                    counts.update(toks)
                    lines.append(toks)
        log("read %s (%d lines so far, %d types)" % (os.path.basename(p),
                                                     len(lines), len(counts)))
    return lines, counts


def build_vectors(paths, vocab_size, window, cds, dim, eig_power, seed):
    lines, counts = read_corpus(paths)
    n_tok = sum(counts.values())
    # 60,000 most frequent; ties by token string -> deterministic
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab = [w for w, _ in ranked[:vocab_size]]
    V = len(vocab)
    index = {w: i for i, w in enumerate(vocab)}
    p_w = np.array([counts[w] for w in vocab], dtype=np.float64) / n_tok
    log("%d tokens, %d types, vocabulary %d (min count %d)"
        % (n_tok, len(counts), V, counts[vocab[-1]]))

    get = index.get
    ids = np.fromiter((get(t, -1) for toks in lines for t in toks),
                      dtype=np.int32, count=n_tok)
    lens = np.fromiter((len(toks) for toks in lines), dtype=np.int64,
                       count=len(lines))
    line_of = np.repeat(np.arange(len(lines), dtype=np.int32), lens)
    del lines

    # co-occurrence counts, offsets 1..window in one direction, then C + C^T
    cooc = sp.csr_matrix((V, V), dtype=np.float64)
    for d in range(1, window + 1):
        w = ids[:-d]
        c = ids[d:]
        keep = (w >= 0) & (c >= 0) & (line_of[:-d] == line_of[d:])
        m = sp.coo_matrix((np.ones(int(keep.sum()), dtype=np.float64),
                           (w[keep], c[keep])), shape=(V, V)).tocsr()
        cooc = cooc + m
        log("window offset %d: %d pairs" % (d, int(keep.sum())))
    del ids, line_of
    cooc = (cooc + cooc.T).tocsr()
    cooc.sum_duplicates()
    cooc.sort_indices()
    log("co-occurrence matrix %dx%d, nnz %d" % (V, V, cooc.nnz))

    # PPMI with context-distribution smoothing (alpha = cds)
    total = cooc.data.sum()
    row = np.asarray(cooc.sum(axis=1)).ravel()
    col = np.asarray(cooc.sum(axis=0)).ravel()
    p_row = row / total
    col_a = col ** cds
    p_col = col_a / col_a.sum()
    r_idx = np.repeat(np.arange(V), np.diff(cooc.indptr))
    pmi = np.log(cooc.data / total) - np.log(p_row[r_idx]) \
        - np.log(p_col[cooc.indices])
    ppmi = sp.csr_matrix((np.maximum(pmi, 0.0), cooc.indices.copy(),
                          cooc.indptr.copy()), shape=(V, V))
    ppmi.eliminate_zeros()
    del cooc, pmi, r_idx
    log("PPMI nnz %d (cds %.2f)" % (ppmi.nnz, cds))

    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size=min(ppmi.shape))
    u, s, _ = svds(ppmi, k=dim, solver="arpack", v0=v0)
    order = np.argsort(-s)
    u, s = u[:, order], s[order]
    log("svds k=%d done: singular values %.3f .. %.3f" % (dim, s[0], s[-1]))
    W = u * (s ** eig_power)[None, :]
    return index, p_w, W


def sif_embed(sentences, index, p_w, W, a):
    weights = a / (a + p_w)
    out = np.zeros((len(sentences), W.shape[1]))
    for i, s in enumerate(sentences):
        idx = [index[t] for t in tokenize(s) if t in index]
        if idx:
            idx = np.asarray(idx)
            out[i] = (weights[idx, None] * W[idx]).sum(axis=0) / len(idx)
    return out


def remove_pc(X):
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    u = vt[0]
    return X - np.outer(X @ u, u)


# ---------------------------------------------------------------------- main

def main():
    env = os.environ.get("EMBEDD_SHARED_DATA")
    default_data = env if env else os.path.join(ROOT, "..", "shared", "data")
    ap = argparse.ArgumentParser(
        description="Non-neural STS Benchmark baselines: TF-IDF with IDF from "
        "the pairs themselves, and SIF-weighted averages of PPMI+SVD word "
        "vectors learnt from an unlabelled corpus. Prints Spearman x100 of "
        "cosine vs gold score. The module docstring (top of this file) says "
        "exactly what is computed.")
    ap.add_argument("--data", default=default_data,
                    help="shared data directory (default: $EMBEDD_SHARED_DATA "
                    "or ../shared/data relative to the repository root)")
    ap.add_argument("--sts", nargs="+", metavar="FILE",
                    help="STS TSV files (score<TAB>s1<TAB>s2); default "
                    "DATA/stsb/sts-train.tsv DATA/stsb/sts-dev.tsv")
    ap.add_argument("--corpus", nargs="+", metavar="FILE",
                    help="unlabelled corpus files, one paragraph per line; "
                    "default DATA/corpus/{%s}" % ",".join(DEFAULT_CORPUS))
    ap.add_argument("--only", choices=["tfidf", "sif"],
                    help="run only one of the two baselines")
    ap.add_argument("--vocab", type=int, default=60000,
                    help="vocabulary size (most frequent corpus words); "
                    "default %(default)s")
    ap.add_argument("--window", type=int, default=5,
                    help="symmetric co-occurrence window; default %(default)s")
    ap.add_argument("--cds", type=float, default=0.75,
                    help="context-distribution smoothing exponent alpha "
                    "(1.0 = plain PPMI); default %(default)s")
    ap.add_argument("--dim", type=int, default=300, help="SVD dimensions; default %(default)s")
    ap.add_argument("--eig-power", type=float, default=0.5,
                    help="word vectors U * S^p (0.5 = U*sqrt(S), 1 = U*S); "
                    "default %(default)s")
    ap.add_argument("--sif-a", type=float, default=1e-4,
                    help="SIF weight a / (a + p(w)); default %(default)s")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the fixed ARPACK start vector; "
                    "default %(default)s")
    args = ap.parse_args()

    data = os.path.normpath(args.data)
    sts = args.sts or [os.path.join(data, "stsb", f)
                       for f in ("sts-train.tsv", "sts-dev.tsv")]
    corpus = args.corpus or [os.path.join(data, "corpus", f)
                             for f in DEFAULT_CORPUS]
    for p in sts + ([] if args.only == "tfidf" else corpus):
        if not os.path.isfile(p):
            sys.exit("missing file: %s (set --data or EMBEDD_SHARED_DATA)" % p)
    files = [(p, read_sts(p)) for p in sts]

    def report(name, path, value):
        print("%-18s %-16s spearman_x100 %.2f"
              % (name, os.path.basename(path), value), flush=True)

    if args.only != "sif":
        for path, rows in files:
            gold = [r[0] for r in rows]
            report("tfidf-pairs", path, spearman_x100(tfidf_pairs(rows), gold))

    if args.only != "tfidf":
        index, p_w, W = build_vectors(corpus, args.vocab, args.window,
                                      args.cds, args.dim, args.eig_power,
                                      args.seed)
        for path, rows in files:
            gold = [r[0] for r in rows]
            m = len(rows)
            X = sif_embed([r[1] for r in rows] + [r[2] for r in rows],
                          index, p_w, W, args.sif_a)
            cos_pc = rowwise_cosine(*np.split(remove_pc(X), [m]))
            cos_nopc = rowwise_cosine(*np.split(X, [m]))
            report("ppmi-svd-sif", path, spearman_x100(cos_pc, gold))
            report("ppmi-svd-sif-nopc", path, spearman_x100(cos_nopc, gold))
    log("done")


if __name__ == "__main__":
    main()
