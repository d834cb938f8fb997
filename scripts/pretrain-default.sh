#!/bin/sh
# Reproduces the default model, models/embedd-small, from a clean checkout:
#   scripts/pretrain-default.sh [WORK_DIR [more embedd pretrain flags]]
# Needs build/embedd (make) and the shared data set ($EMBEDD_SHARED_DATA, or
# ../shared/data beside the checkout). Writes WORK_DIR (default
# pretrain-out/): the pairs file, the stages of `embedd pretrain`, and the
# final model in WORK_DIR/model, which is what models/embedd-small holds
# (plus its model card, README.md). About 5 minutes on 2 cores.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${EMBEDD_SHARED_DATA:-$ROOT/../shared/data}
OUT=${1:-pretrain-out}
if [ $# -gt 0 ]; then shift; fi
C=$DATA/corpus
mkdir -p "$OUT"

# Text pairs: each WordNet gloss line "word1, word2: definition; "example""
# becomes "word1, word2<TAB>definition" (the quoted examples, which contain
# the word itself, are dropped).
sed -E 's/; ".*$//; s/: /\t/' "$C/wordnet30-glosses.txt" > "$OUT/wordnet-pairs.tsv"

"$ROOT/build/embedd" pretrain \
  --vocab "$DATA/models/all-MiniLM-L6-v2" \
  --corpus "$C/gutenberg-00.txt,$C/gutenberg-01.txt,$C/gutenberg-02.txt,$C/gutenberg-03.txt,$C/us-presidential-addresses.txt,$C/wiki1m-head-11914.txt,$C/wikitext103-valid-test-detok.txt,$C/wordnet30-glosses.txt" \
  --pairs "$OUT/wordnet-pairs.tsv" --pairs-epochs 2 --pairs-batch 256 --lr-pairs 1e-3 \
  --temperature 0.1 --sif-a 1e-3 --family-alternations 150 \
  --layers 2 --hidden 384 --heads 6 --intermediate 1536 --max-position 512 \
  --seed 42 --out "$OUT" "$@"
echo "pretrain-default: the model is in $OUT/model"
