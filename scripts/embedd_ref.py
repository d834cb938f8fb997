#!/usr/bin/python3
"""embedd_ref.py: shared code of the PyTorch reference and benchmark scripts.

Used by gen_reference.py, gen_bench_model.py and bench_torch.py (imported via
the script directory on sys.path). Needs Debian's python3 with python3-torch
(1.13) and python3-numpy; no transformers / tokenizers / safetensors packages.

Contents:
  * safetensors_write / safetensors_read: minimal Hugging Face safetensors
    (F32, F16, BF16 out; F32, F16, BF16 in).
  * BertWordPiece: Hugging Face's fast BERT tokenizer pipeline (AddedVocabulary
    special-token split, BertNormalizer, BertPreTokenizer, WordPiece) in Python,
    checked against llama.cpp's WordPiece test vectors by check_tokenizer().
  * RefBert: a BERT encoder built from torch's own modules (nn.Embedding,
    nn.LayerNorm, nn.TransformerEncoderLayer), loaded from / saved to
    Hugging Face BERT tensor names.
  * random_bert_weights, write_model_dir, load_model_dir: seeded random
    models in the sentence-transformers directory layout.

Shapes: B batch, T tokens, C hidden_size, H heads, I intermediate_size,
V vocab_size, P max_position_embeddings, TV type_vocab_size, L layers.
"""
import json
import math
import os
import shutil
import struct
import unicodedata

import numpy as np
import torch
import torch.nn as nn

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(SCRIPT_DIR)


def shared_data_dir():
    """EMBEDD_SHARED_DATA, else <repo>/../shared/data."""
    d = os.environ.get("EMBEDD_SHARED_DATA")
    if not d:
        d = os.path.join(os.path.dirname(REPO_DIR), "shared", "data")
    return os.path.abspath(d)


def minilm_dir():
    return os.path.join(shared_data_dir(), "models", "all-MiniLM-L6-v2")


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------

ST_DTYPES = ("F32", "F16", "BF16")


def round_to_dtype(t, dtype):
    """f32 tensor rounded (nearest even) to a storage dtype and back to f32."""
    t = t.detach().to(torch.float32)
    if dtype == "F32":
        return t.clone()
    if dtype == "F16":
        return t.half().float()
    if dtype == "BF16":
        return t.bfloat16().float()
    raise ValueError("unsupported dtype %r" % dtype)


def _tensor_bytes(t, dtype):
    t = t.detach().to(torch.float32).contiguous()
    if dtype == "F32":
        return t.numpy().astype("<f4").tobytes()
    if dtype == "F16":
        return t.half().numpy().astype("<f2").tobytes()
    if dtype == "BF16":
        return t.bfloat16().view(torch.int16).numpy().astype("<i2").tobytes()
    raise ValueError("unsupported dtype %r" % dtype)


def safetensors_write(path, tensors, metadata=None):
    """Writes a safetensors file.

    tensors: list of (name, f32 tensor, dtype) with dtype in ST_DTYPES; the
    data area holds them in list order. Header: 8-byte little-endian length N,
    then N bytes of JSON padded with spaces to a multiple of 8."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name, t, dtype in tensors:
        if name in header:
            raise ValueError("duplicate tensor %r" % name)
        b = _tensor_bytes(t, dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def safetensors_read(path):
    """Reads a safetensors file into {name: f32 torch tensor} (+ metadata)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n:]
    out = {}
    meta = header.pop("__metadata__", None)
    for name, info in header.items():
        b, e = info["data_offsets"]
        buf = data[b:e]
        shape = info["shape"]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(buf, dtype="<f4").astype(np.float32)
        elif dt == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError("%s: tensor %s has unsupported dtype %s" % (path, name, dt))
        if a.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError("%s: tensor %s: %d bytes do not match shape %s"
                             % (path, name, e - b, shape))
        out[name] = torch.from_numpy(a.reshape(shape).copy())
    return out, meta


# ---------------------------------------------------------------------------
# Tokenizer: Hugging Face tokenizers' BERT pipeline
# ---------------------------------------------------------------------------
#
# What the Rust `tokenizers` crate does for bert-base-uncased style
# tokenizer.json files, step by step:
#   0. AddedVocabulary: special tokens ([CLS], [SEP], ...; normalized=false)
#      are matched leftmost-longest in the raw text and become their own ids.
#   1. BertNormalizer.clean_text: drop U+0000, U+FFFD and "other" characters
#      except \t \n \r, then map whitespace to ' '. "Other" is what the
#      unicode_categories crate's is_other() returns: Cc, Cf and Co. Its doc
#      comment says Cc/Cf/Cn/Co, but the code has no Cn test, so unassigned
#      code points are KEPT (unlike transformers' slow Python BertTokenizer).
#      Whitespace is Rust's char::is_whitespace (White_Space) plus \t\n\r.
#   2. handle_chinese_chars: ' ' + c + ' ' around the CJK ranges below (note
#      0x2B920, not the 0x2B820 of Google's BERT; copied from tokenizers).
#   3. strip_accents (default: same as lowercase): NFD, drop Mn.
#   4. lowercase: char-by-char Unicode lowercase mapping (Rust
#      char::to_lowercase, so no final-sigma rule; Python's str.lower() on a
#      whole string would turn a word-final capital sigma into U+03C2).
#   5. BertPreTokenizer: split on whitespace (dropped), isolate each
#      punctuation char (Rust is_ascii_punctuation or Unicode P*).
#   6. WordPiece: words over max_input_chars_per_word characters -> [UNK];
#      greedy longest match with "##" continuation; a word that cannot be
#      fully covered -> one [UNK].
# Unicode tables: Python's unicodedata (Unicode 14 in 3.11); tokenizers uses
# older crate tables (about Unicode 8-9), which only matters for characters
# assigned or re-categorised since then.

# Rust char::is_whitespace (Unicode White_Space property).
_RUST_WHITESPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680]
    + list(range(0x2000, 0x200B))
    + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def _is_bert_whitespace(c):
    return ord(c) in _RUST_WHITESPACE


def _is_bert_control(c):
    if c in "\t\n\r":
        return False
    return unicodedata.category(c) in ("Cc", "Cf", "Co")


def _is_cjk(c):
    cp = ord(c)
    for lo, hi in _CJK_RANGES:
        if lo <= cp <= hi:
            return True
    return False


def _is_bert_punct(c):
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def decode_text(text):
    """bytes -> str with invalid UTF-8 as U+FFFD (maximal subparts); str as is."""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", "replace")
    return text


class BertWordPiece:
    """Hugging Face fast BERT tokenizer (see the step list above)."""

    def __init__(self, vocab, lowercase=True, strip_accents=None,
                 handle_chinese_chars=True, clean_text=True,
                 max_input_chars_per_word=100, unk_token="[UNK]",
                 prefix="##", added_tokens=None, st_lowercase=False):
        self.vocab = list(vocab)
        self.token_to_id = {}
        for i, t in enumerate(self.vocab):
            self.token_to_id.setdefault(t, i)
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.handle_chinese_chars = handle_chinese_chars
        self.clean_text = clean_text
        self.max_chars = max_input_chars_per_word
        self.prefix = prefix
        self.unk_id = self.token_to_id[unk_token]
        self.max_token_chars = max(len(t) for t in self.vocab)
        # Special tokens matched in the raw text, longest first.
        self.added = sorted(added_tokens or [], key=lambda t: -len(t))
        self.added_first = frozenset(t[0] for t in self.added if t)
        self.st_lowercase = st_lowercase

    @classmethod
    def from_dir(cls, d):
        """tokenizer.json if present, else vocab.txt + tokenizer_config.json."""
        st_lower = False
        p = os.path.join(d, "sentence_bert_config.json")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                st_lower = bool(json.load(f).get("do_lower_case", False))
        p = os.path.join(d, "tokenizer.json")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                tj = json.load(f)
            model = tj["model"]
            if model.get("type") != "WordPiece":
                raise ValueError("%s: model type %r is not WordPiece" % (p, model.get("type")))
            norm = tj.get("normalizer") or {}
            if norm.get("type") != "BertNormalizer":
                raise ValueError("%s: normalizer %r is not supported" % (p, norm.get("type")))
            pre = tj.get("pre_tokenizer") or {}
            if pre.get("type") != "BertPreTokenizer":
                raise ValueError("%s: pre_tokenizer %r is not supported" % (p, pre.get("type")))
            inv = sorted(model["vocab"].items(), key=lambda kv: kv[1])
            if [i for _, i in inv] != list(range(len(inv))):
                raise ValueError("%s: vocab ids are not 0..n-1" % p)
            added = []
            for a in tj.get("added_tokens", []):
                if a.get("normalized") or a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
                    raise ValueError("%s: added token %r uses unsupported flags" % (p, a["content"]))
                if model["vocab"].get(a["content"]) != a["id"]:
                    raise ValueError("%s: added token %r is not its vocab entry" % (p, a["content"]))
                added.append(a["content"])
            return cls([t for t, _ in inv],
                       lowercase=norm.get("lowercase", True),
                       strip_accents=norm.get("strip_accents"),
                       handle_chinese_chars=norm.get("handle_chinese_chars", True),
                       clean_text=norm.get("clean_text", True),
                       max_input_chars_per_word=model.get("max_input_chars_per_word", 100),
                       unk_token=model.get("unk_token", "[UNK]"),
                       prefix=model.get("continuing_subword_prefix", "##"),
                       added_tokens=added, st_lowercase=st_lower)
        with open(os.path.join(d, "vocab.txt"), encoding="utf-8") as f:
            vocab = [line.rstrip("\n") for line in f]
        tc = {}
        p = os.path.join(d, "tokenizer_config.json")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                tc = json.load(f)
        specials = [tc.get(k) for k in ("pad_token", "unk_token", "cls_token",
                                        "sep_token", "mask_token")]
        specials = [s for s in specials if s and s in vocab]
        return cls(vocab, lowercase=tc.get("do_lower_case", True),
                   strip_accents=tc.get("strip_accents"),
                   handle_chinese_chars=tc.get("tokenize_chinese_chars", True),
                   unk_token=tc.get("unk_token", "[UNK]"),
                   added_tokens=specials, st_lowercase=st_lower)

    def special_id(self, token):
        """Id of a special token, looked up in the vocabulary."""
        if token not in self.token_to_id:
            raise KeyError("special token %r is not in the vocabulary" % token)
        return self.token_to_id[token]

    def normalize(self, s):
        if self.clean_text:
            out = []
            for c in s:
                if c == "\x00" or c == "\ufffd" or _is_bert_control(c):
                    continue
                out.append(" " if _is_bert_whitespace(c) else c)
            s = "".join(out)
        if self.handle_chinese_chars:
            s = "".join(" " + c + " " if _is_cjk(c) else c for c in s)
        if self.strip_accents:
            s = "".join(c for c in unicodedata.normalize("NFD", s)
                        if unicodedata.category(c) != "Mn")
        if self.lowercase:
            s = "".join(c.lower() for c in s)
        return s

    @staticmethod
    def pre_tokenize(s):
        words = []
        cur = []
        for c in s:
            if _is_bert_whitespace(c):
                if cur:
                    words.append("".join(cur))
                    cur = []
            elif _is_bert_punct(c):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(c)
            else:
                cur.append(c)
        if cur:
            words.append("".join(cur))
        return words

    def wordpiece(self, word):
        if len(word) > self.max_chars:
            return [self.unk_id]
        ids = []
        start = 0
        n = len(word)
        while start < n:
            end = min(n, start + self.max_token_chars)
            found = None
            while start < end:
                sub = word[start:end]
                if start > 0:
                    sub = self.prefix + sub
                i = self.token_to_id.get(sub)
                if i is not None:
                    found = i
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids

    def _split_added(self, s):
        """Yields (is_added, piece) with special tokens matched leftmost-longest."""
        if not self.added:
            yield False, s
            return
        i = 0
        span = 0
        n = len(s)
        while i < n:
            hit = None
            if s[i] in self.added_first:
                for a in self.added:
                    if s.startswith(a, i):
                        hit = a
                        break
            if hit is None:
                i += 1
                continue
            if i > span:
                yield False, s[span:i]
            yield True, hit
            i += len(hit)
            span = i
        if span < n:
            yield False, s[span:]

    def tokenize(self, text):
        """Ids of text (str or raw bytes), without [CLS]/[SEP]."""
        s = decode_text(text)
        if self.st_lowercase:
            s = s.lower()
        ids = []
        for is_added, piece in self._split_added(s):
            if is_added:
                ids.append(self.token_to_id[piece])
                continue
            for w in self.pre_tokenize(self.normalize(piece)):
                ids.extend(self.wordpiece(w))
        return ids

    def encode(self, text, max_len):
        """[CLS] + first max_len-2 tokens + [SEP]."""
        toks = self.tokenize(text)
        return ([self.special_id("[CLS]")] + toks[:max_len - 2]
                + [self.special_id("[SEP]")])


def read_vocab_test(inp_path, out_path):
    """llama.cpp test-tokenizer-0 vectors: list of (text, [ids])."""
    sep = "\n__ggml_vocab_test__\n"
    with open(inp_path, encoding="utf-8", newline="") as f:
        parts = f.read().split(sep)
    if parts and parts[-1] == "":
        parts = parts[:-1]
    with open(out_path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if len(parts) != len(lines):
        raise ValueError("%s: %d tests but %d expected lines" % (inp_path, len(parts), len(lines)))
    return [(t, [int(x) for x in line.split()]) for t, line in zip(parts, lines)]


def check_tokenizer(tok, base=None):
    """Runs the llama.cpp WordPiece vectors; returns a list of
    (file, passed, total, failures). The current file must pass 46/46."""
    if base is None:
        base = os.path.join(shared_data_dir(), "tokenizer-vectors", "ggml-vocab-bert-bge.gguf")
    results = []
    for suffix in ("", ".2024-07"):
        inp = base + suffix + ".inp"
        if not os.path.exists(inp):
            continue
        cases = read_vocab_test(inp, base + suffix + ".out")
        fails = [(t, want, tok.tokenize(t)) for t, want in cases if tok.tokenize(t) != want]
        results.append((os.path.basename(inp), len(cases) - len(fails), len(cases), fails))
    return results


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

def bert_sizes(cfg):
    return dict(V=cfg["vocab_size"], C=cfg["hidden_size"], L=cfg["num_hidden_layers"],
                H=cfg["num_attention_heads"], I=cfg["intermediate_size"],
                P=cfg["max_position_embeddings"], TV=cfg["type_vocab_size"],
                eps=float(cfg["layer_norm_eps"]))


class RefBert(nn.Module):
    """BERT encoder from torch modules. forward(ids (B,T), mask (B,T) bool,
    True = real token) -> last_hidden_state (B,T,C). Token types are all 0,
    positions 0..T-1.

    PyTorch 1.13's TransformerEncoderLayer has a fused inference fast path
    (torch._transformer_encoder_layer_fwd), taken in eval mode when no grad is
    needed. set_fastpath(False) puts the encoder layers in train mode instead;
    with dropout 0.0 that is the same math through the composite ops
    (F.multi_head_attention_forward, nn.Linear, F.gelu, nn.LayerNorm)."""

    def __init__(self, cfg):
        super().__init__()
        s = bert_sizes(cfg)
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError("hidden_act %r: only exact gelu" % cfg.get("hidden_act"))
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(s["V"], s["C"])         # (V, C)
        self.position_embeddings = nn.Embedding(s["P"], s["C"])     # (P, C)
        self.token_type_embeddings = nn.Embedding(s["TV"], s["C"])  # (TV, C)
        self.emb_norm = nn.LayerNorm(s["C"], eps=s["eps"])
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model=s["C"], nhead=s["H"], dim_feedforward=s["I"],
                                       dropout=0.0, activation="gelu",
                                       layer_norm_eps=s["eps"], batch_first=True,
                                       norm_first=False)
            for _ in range(s["L"])])
        self.fastpath = True

    def set_fastpath(self, on):
        self.fastpath = bool(on)
        self.eval()
        if not on:
            for layer in self.layers:
                layer.train()
        return self

    def forward(self, ids, mask):
        B, T = ids.shape
        pos = torch.arange(T, device=ids.device)
        x = (self.word_embeddings(ids)
             + self.position_embeddings(pos)[None, :, :]
             + self.token_type_embeddings(torch.zeros_like(ids)))
        x = self.emb_norm(x)                       # (B, T, C)
        pad = ~mask                                 # True = padding
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        return x

    # --- Hugging Face names ------------------------------------------------

    def hf_tensors(self):
        """Ordered list of (HF name without prefix, f32 tensor)."""
        C = self.cfg["hidden_size"]
        out = [
            ("embeddings.word_embeddings.weight", self.word_embeddings.weight),
            ("embeddings.position_embeddings.weight", self.position_embeddings.weight),
            ("embeddings.token_type_embeddings.weight", self.token_type_embeddings.weight),
            ("embeddings.LayerNorm.weight", self.emb_norm.weight),
            ("embeddings.LayerNorm.bias", self.emb_norm.bias),
        ]
        for i, layer in enumerate(self.layers):
            p = "encoder.layer.%d." % i
            w = layer.self_attn.in_proj_weight      # (3C, C): q, k, v row blocks
            b = layer.self_attn.in_proj_bias        # (3C)
            for j, n in enumerate(("query", "key", "value")):
                out.append((p + "attention.self.%s.weight" % n, w[j * C:(j + 1) * C]))
                out.append((p + "attention.self.%s.bias" % n, b[j * C:(j + 1) * C]))
            out += [
                (p + "attention.output.dense.weight", layer.self_attn.out_proj.weight),
                (p + "attention.output.dense.bias", layer.self_attn.out_proj.bias),
                (p + "attention.output.LayerNorm.weight", layer.norm1.weight),
                (p + "attention.output.LayerNorm.bias", layer.norm1.bias),
                (p + "intermediate.dense.weight", layer.linear1.weight),   # (I, C)
                (p + "intermediate.dense.bias", layer.linear1.bias),
                (p + "output.dense.weight", layer.linear2.weight),         # (C, I)
                (p + "output.dense.bias", layer.linear2.bias),
                (p + "output.LayerNorm.weight", layer.norm2.weight),
                (p + "output.LayerNorm.bias", layer.norm2.bias),
            ]
        return [(n, t.detach()) for n, t in out]

    @torch.no_grad()
    def load_hf(self, tensors, prefix=""):
        """Copies tensors {prefix + HF name: tensor} into the modules. Every
        encoder tensor must be present with the right shape; other names are
        ignored (pooler.*, cls.*)."""
        for n, dst in self.hf_tensors():
            key = prefix + n
            if key not in tensors:
                raise KeyError("missing tensor %s" % key)
            src = tensors[key]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError("tensor %s has shape %s, expected %s"
                                 % (key, tuple(src.shape), tuple(dst.shape)))
            dst.copy_(src.to(dst.dtype))
        return self


def hf_bert_forward(tensors, cfg, ids, mask, prefix=""):
    """Independent check of RefBert's weight mapping: Hugging Face BertModel's
    math written with plain tensor ops straight from the HF tensor names
    (scores = QK^T/sqrt(d) + mask bias, softmax, post-LayerNorm, erf GELU).
    ids (B,T) long, mask (B,T) bool -> (B,T,C) in the dtype of the tensors."""
    s = bert_sizes(cfg)
    C, H, eps = s["C"], s["H"], s["eps"]
    D = C // H
    w = {n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}
    F = torch.nn.functional
    B, T = ids.shape

    def ln(x, n):
        return F.layer_norm(x, (C,), w[n + ".weight"], w[n + ".bias"], eps)

    def lin(x, n):
        return x @ w[n + ".weight"].t() + w[n + ".bias"]

    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:T][None]
         + w["embeddings.token_type_embeddings.weight"][0][None, None])
    x = ln(x, "embeddings.LayerNorm")
    bias = torch.zeros((B, 1, 1, T), dtype=x.dtype)
    bias = bias.masked_fill(~mask[:, None, None, :], torch.finfo(x.dtype).min)
    for i in range(s["L"]):
        p = "encoder.layer.%d." % i

        def heads(t):
            return t.view(B, T, H, D).transpose(1, 2)          # (B, H, T, D)

        q = heads(lin(x, p + "attention.self.query"))
        k = heads(lin(x, p + "attention.self.key"))
        v = heads(lin(x, p + "attention.self.value"))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + bias, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        hmid = F.gelu(lin(x, p + "intermediate.dense"))
        x = ln(lin(hmid, p + "output.dense") + x, p + "output.LayerNorm")
    return x


def random_bert_weights(cfg, seed, extra=False):
    """Seeded random f32 weights {HF name: tensor}, scaled so that attention
    and GELU are genuinely exercised: matrices N(0, (1.5/sqrt(fan_in))^2),
    biases N(0, 0.1^2), LayerNorm weight 1 + N(0, 0.1^2), bias N(0, 0.1^2),
    embeddings N(0, 1) (word) and N(0, 0.5^2) (position, token type).
    extra=True adds pooler.* and cls.predictions.* tensors that the encoder
    does not use."""
    s = bert_sizes(cfg)
    C, I = s["C"], s["I"]
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std + mean

    def mat(out_f, in_f):
        return normal((out_f, in_f), 1.5 / math.sqrt(in_f))

    w = {}
    w["embeddings.word_embeddings.weight"] = normal((s["V"], C), 1.0)
    w["embeddings.position_embeddings.weight"] = normal((s["P"], C), 0.5)
    w["embeddings.token_type_embeddings.weight"] = normal((s["TV"], C), 0.5)
    w["embeddings.LayerNorm.weight"] = normal((C,), 0.1, 1.0)
    w["embeddings.LayerNorm.bias"] = normal((C,), 0.1)
    for i in range(s["L"]):
        p = "encoder.layer.%d." % i
        for n in ("query", "key", "value"):
            w[p + "attention.self.%s.weight" % n] = mat(C, C)
            w[p + "attention.self.%s.bias" % n] = normal((C,), 0.1)
        w[p + "attention.output.dense.weight"] = mat(C, C)
        w[p + "attention.output.dense.bias"] = normal((C,), 0.1)
        w[p + "attention.output.LayerNorm.weight"] = normal((C,), 0.1, 1.0)
        w[p + "attention.output.LayerNorm.bias"] = normal((C,), 0.1)
        w[p + "intermediate.dense.weight"] = mat(I, C)
        w[p + "intermediate.dense.bias"] = normal((I,), 0.1)
        w[p + "output.dense.weight"] = mat(C, I)
        w[p + "output.dense.bias"] = normal((C,), 0.1)
        w[p + "output.LayerNorm.weight"] = normal((C,), 0.1, 1.0)
        w[p + "output.LayerNorm.bias"] = normal((C,), 0.1)
    if extra:
        w["pooler.dense.weight"] = mat(C, C)
        w["pooler.dense.bias"] = normal((C,), 0.1)
        w["cls.predictions.transform.dense.weight"] = mat(C, C)
        w["cls.predictions.transform.dense.bias"] = normal((C,), 0.1)
        w["cls.predictions.transform.LayerNorm.weight"] = normal((C,), 0.1, 1.0)
        w["cls.predictions.transform.LayerNorm.bias"] = normal((C,), 0.1)
        w["cls.predictions.bias"] = normal((s["V"],), 0.1)
    return w


def bert_config(base_path, **sizes):
    """config.json of base_path (key order kept) with some fields changed."""
    with open(base_path, encoding="utf-8") as f:
        cfg = json.load(f)
    for k, v in sizes.items():
        if k not in cfg:
            raise KeyError("%s has no %s" % (base_path, k))
        cfg[k] = v
    return cfg


def _write_json(path, obj, indent=2):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")

MODULE_TYPES = {
    "classic": ("sentence_transformers.models.Transformer",
                "sentence_transformers.models.Pooling",
                "sentence_transformers.models.Normalize"),
    # sentence-transformers 5.x names (as in bge-small-en-v1.5-st5-resave)
    "st5": ("sentence_transformers.base.modules.transformer.Transformer",
            "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
            "sentence_transformers.sentence_transformer.modules.normalize.Normalize"),
}


def write_model_dir(out, cfg, weights, dtype, prefix="", pooling="mean",
                    normalize=True, max_seq_length=128, pooling_format="classic",
                    modules_format="classic", tokenizer_src=None):
    """A sentence-transformers model directory: model.safetensors (weights
    {HF name: f32} stored as dtype, each name with prefix except the cls.*
    pre-training heads, as in BertForPreTraining checkpoints), config.json,
    tokenizer files copied from tokenizer_src, modules.json,
    1_Pooling/config.json, sentence_bert_config.json."""
    os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)
    names = sorted(weights)
    safetensors_write(os.path.join(out, "model.safetensors"),
                      [(("" if n.startswith("cls.") else prefix) + n, weights[n], dtype)
                       for n in names],
                      metadata={"format": "pt"})
    _write_json(os.path.join(out, "config.json"), cfg)
    src = tokenizer_src or minilm_dir()
    for f in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(src, f), os.path.join(out, f))
    types = MODULE_TYPES[modules_format]
    mods = [{"idx": 0, "name": "0", "path": "", "type": types[0]},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": types[1]}]
    if normalize:
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": types[2]})
    _write_json(os.path.join(out, "modules.json"), mods)
    C = cfg["hidden_size"]
    if pooling_format == "classic":
        pc = {"word_embedding_dimension": C,
              "pooling_mode_cls_token": pooling == "cls",
              "pooling_mode_mean_tokens": pooling == "mean",
              "pooling_mode_max_tokens": False,
              "pooling_mode_mean_sqrt_len_tokens": False}
        if pooling == "last":
            pc["pooling_mode_lasttoken"] = True
    else:
        pc = {"embedding_dimension": C, "pooling_mode": pooling, "include_prompt": True}
    _write_json(os.path.join(out, "1_Pooling", "config.json"), pc, indent=4)
    _write_json(os.path.join(out, "sentence_bert_config.json"),
                {"max_seq_length": max_seq_length, "do_lower_case": False})


def load_model_dir(d):
    """Reads a model directory as sentence-transformers would. Returns
    (model (f32, eval), tokenizer, info dict with pooling, normalize,
    max_seq_length)."""
    with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    tensors, _ = safetensors_read(os.path.join(d, "model.safetensors"))
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    model = RefBert(cfg).load_hf(tensors, prefix).eval()
    tok = BertWordPiece.from_dir(d)
    pooling, normalize = "mean", False
    mp = os.path.join(d, "modules.json")
    if os.path.exists(mp):
        with open(mp, encoding="utf-8") as f:
            mods = json.load(f)
        pool_dir = None
        for m in mods:
            t = m.get("type", "")
            if t.endswith("Pooling"):
                pool_dir = m.get("path", "")
            elif t.endswith("Normalize"):
                normalize = True
        if pool_dir is not None:
            pp = os.path.join(d, pool_dir, "config.json")
            if os.path.exists(pp):
                with open(pp, encoding="utf-8") as f:
                    pc = json.load(f)
                if "pooling_mode" in pc:
                    pooling = pc["pooling_mode"]
                elif pc.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif pc.get("pooling_mode_lasttoken"):
                    pooling = "last"
                elif pc.get("pooling_mode_mean_tokens", True):
                    pooling = "mean"
                else:
                    raise ValueError("%s: unsupported pooling mode" % pp)
    max_len = None
    sp = os.path.join(d, "sentence_bert_config.json")
    if os.path.exists(sp):
        with open(sp, encoding="utf-8") as f:
            max_len = json.load(f).get("max_seq_length")
    if max_len is None:
        tp = os.path.join(d, "tokenizer_config.json")
        if os.path.exists(tp):
            with open(tp, encoding="utf-8") as f:
                max_len = json.load(f).get("model_max_length")
    if max_len is None or max_len > cfg["max_position_embeddings"]:
        max_len = cfg["max_position_embeddings"]
    return model, tok, {"pooling": pooling, "normalize": normalize,
                        "max_seq_length": int(max_len), "config": cfg}


def pad_batch(seqs, pad_id=0):
    """list of id lists -> ids (B,T) long, mask (B,T) bool."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = True
    return ids, mask


def pool(hidden, mask, mode):
    """hidden (B,T,C), mask (B,T) -> (B,C): mean over real tokens (as
    sentence-transformers: sum / clamp(count, 1e-9)), first or last real token."""
    if mode == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        last = mask.long().sum(1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    raise ValueError("unknown pooling %r" % mode)


def encoder_flops(lengths, cfg):
    """FLOPs of the encoder layers over real tokens: per sequence of n tokens
    and per layer 2*n*(4*C*C + 2*C*I) + 4*n*n*C."""
    C = cfg["hidden_size"]
    I = cfg["intermediate_size"]
    L = cfg["num_hidden_layers"]
    return sum(L * (2 * n * (4 * C * C + 2 * C * I) + 4 * n * n * C) for n in lengths)
