#!/usr/bin/python3
"""gen_bench_model.py: a random-weight benchmark model directory + texts.

  scripts/gen_bench_model.py --out DIR --shape minilm|bge-small [--seed 0]

DIR gets a sentence-transformers model directory with F32 weights under the
Hugging Face BERT names (model.safetensors, config.json, all-MiniLM-L6-v2's
tokenizer files, modules.json with Normalize, 1_Pooling/config.json,
sentence_bert_config.json with max_seq_length 256):
  minilm     all-MiniLM-L6-v2 shape: 6 layers, hidden 384, 12 heads, FFN 1536,
             mean pooling
  bge-small  bge-small-en-v1.5 shape: 12 layers, same widths, CLS pooling
and DIR/texts.txt: 1,024 lines, line i made of n_i words drawn from the
vocabulary entries that are whole lowercase ASCII words of 2+ letters (each
exactly one token), n_i uniform in 8..64 (fixed seed); every line is checked
with the Python tokenizer to give exactly n_i tokens.
Data: $EMBEDD_SHARED_DATA (default <repo>/../shared/data).
"""
import argparse
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import embedd_ref as er  # noqa: E402

SHAPES = {
    "minilm": dict(config=("all-MiniLM-L6-v2", "config.json"), pooling="mean",
                   sizes=dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                              intermediate_size=1536)),
    "bge-small": dict(config=("bge-small-en-v1.5", "config.json"), pooling="cls",
                      sizes=dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=1536)),
}
N_TEXTS = 1024
MIN_TOKENS, MAX_TOKENS = 8, 64
MAX_SEQ_LENGTH = 256


def bench_texts(tok, seed):
    words = [t for t in tok.vocab if re.fullmatch(r"[a-z]{2,}", t)]
    rng = random.Random(seed)
    lines = []
    for _ in range(N_TEXTS):
        n = rng.randint(MIN_TOKENS, MAX_TOKENS)
        line = " ".join(rng.choice(words) for _ in range(n))
        got = len(tok.tokenize(line))
        if got != n:
            raise AssertionError("text %r: %d tokens, expected %d" % (line, got, n))
        lines.append(line)
    return lines, len(words)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shape = SHAPES[args.shape]
    cfg = er.bert_config(os.path.join(er.shared_data_dir(), "models", *shape["config"]),
                         **shape["sizes"])
    w = er.random_bert_weights(cfg, args.seed)
    os.makedirs(args.out, exist_ok=True)
    er.write_model_dir(args.out, cfg, w, "F32", pooling=shape["pooling"], normalize=True,
                       max_seq_length=MAX_SEQ_LENGTH)
    tok = er.BertWordPiece.from_dir(args.out)
    lines, n_words = bench_texts(tok, args.seed)
    with open(os.path.join(args.out, "texts.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    n_tok = sum(len(line.split()) for line in lines)
    print("%s: %s, %d params, %d texts, %d tokens without specials (%d-word pool)"
          % (args.out, args.shape, sum(t.numel() for t in w.values()), len(lines), n_tok, n_words))


if __name__ == "__main__":
    main()
