#!/usr/bin/python3
"""gen_train_reference.py: PyTorch autograd reference for embedd's trainer.

Writes tests/fixtures/train/:
  model/             a tiny random BERT (hidden 32, 2 layers, 4 heads, FFN 64,
                     a 96-token vocabulary of its own, 64 positions, mean
                     pooling) with its MLM head (cls.predictions.*), F32.
  ref.safetensors    one packed training batch as embedd builds it (3 texts:
                     two SimCSE views, then an MLM copy with [MASK]ed tokens and
                     labels), and for it:
                       nodrop.*   losses and every parameter gradient, no dropout;
                       drop.*     the same with dropout masks drawn here and
                                  exported (drop.mask.K, embedd's layout);
                       adam.*     parameters after 5 AdamW steps (warm-up,
                                  linear decay, clipping, weight decay groups,
                                  L2-SP) on that batch without dropout.
                     Gradients and parameters are flat vectors in embedd's
                     layout (train.h): the 17 encoder tensors of emb_weights
                     (Q, K, V fused per layer), then the 5 MLM-head tensors.
                     Scalars and settings are in the metadata.

Two independent torch computations must agree before anything is written:
  - RefBert (nn.Embedding, nn.LayerNorm, nn.TransformerEncoderLayer) with
    autograd: the no-dropout losses and gradients, and the 5 AdamW steps
    (torch.optim.AdamW, torch.nn.utils.clip_grad_norm_);
  - a functional forward over the packed sequences (F.linear, F.layer_norm,
    softmax, F.gelu) that can apply exported dropout masks: must match
    RefBert's losses and gradients without dropout to 1e-5, then gives the
    dropout case.

--part dense writes tests/fixtures/train/dense.safetensors instead (and
nothing else): two frozen sentence-transformers Dense modules for that model
(dense.0: 32 -> 24, bias, Tanh; dense.1: 24 -> 16, no bias, Identity), and
for the same batch with SimCSE's z = normalize(Dense(pool(h))) and the MLM
weight 0 (so that every gradient comes through the Dense modules): losses
and gradients without dropout (dense.nodrop.*) and with ref.safetensors'
dropout masks (dense.drop.*), in the layout above (the frozen Dense weights
get no gradient). Both torch computations must agree without dropout. The
model and batch are rebuilt from the seed and checked against the
committed model/ and ref.safetensors first.

--part pairs writes tests/fixtures/train/pairs.safetensors instead (and
nothing else): the pairs objective (train.h, EMB_OBJ_PAIRS) on the same
model: B = 3 anchors and their 3 positives (pairs.ids, the 2B texts back to
back, each [CLS] ... [SEP]; pairs.lens), z = normalize(mean pool(h)),
loss = the mean of cross-entropy over the rows and over the columns of
cos(z_anchor_i, z_positive_j) / temperature, the positives on the diagonal;
without dropout: pairs.loss (the unweighted pairs loss, then weight times
it) and pairs.grads, every gradient in the layout above (the MLM head's
are 0), for the weight and temperature in the metadata. Both torch
computations must agree, and the row and column losses must differ (so
that a one-sided loss cannot pass).

Also: --check-checkpoint DIR --texts FILE --embeddings FILE.jsonl loads a
model directory written by embedd into RefBert and compares its sentence
embeddings with embedd's (`embedd embed --model DIR < FILE`, one JSON array
per text line).

Usage: scripts/gen_train_reference.py [--out tests/fixtures/train] [--part all|dense|pairs]
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import embedd_ref as er  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            vocab_size=96, max_position_embeddings=64, type_vocab_size=2,
            layer_norm_eps=1e-12, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(5)
SETTINGS = dict(temperature=0.05, simcse_weight=1.0, mlm_weight=0.7, lr=2e-3, weight_decay=0.01,
                beta1=0.9, beta2=0.999, adam_eps=1e-6, clip_norm=1.0, warmup_steps=2,
                total_steps=10, l2sp=0.05, steps=5)
HEAD = ["cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.bias"]


def config():
    cfg = {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
           "pad_token_id": 0, "position_embedding_type": "absolute"}
    cfg.update(TINY)
    return cfg


def vocab():
    words = ["the", "a", "man", "woman", "dog", "cat", "is", "was", "runs", "eats", "on", "in"]
    out = SPECIALS + words
    for c in "abcdefghijklmnopqrstuvwxyz":
        out.append(c)
    while len(out) < TINY["vocab_size"]:
        out.append("##%s" % "abcdefghijklmnopqrstuvwxyz"[len(out) % 26] * (1 + len(out) // 26))
    return out[:TINY["vocab_size"]]


# ---- the flat layout of train.h ---------------------------------------------

def enc_names(L):
    """HF names of the encoder in emb_weights order; Q, K, V are one fused
    (3C, C) block per layer, listed as a tuple."""
    out = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
           "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
           "embeddings.LayerNorm.bias"]
    per = [("qkv", "weight"), ("qkv", "bias"), "attention.output.dense.weight",
           "attention.output.dense.bias", "attention.output.LayerNorm.weight",
           "attention.output.LayerNorm.bias", "intermediate.dense.weight",
           "intermediate.dense.bias", "output.dense.weight", "output.dense.bias",
           "output.LayerNorm.weight", "output.LayerNorm.bias"]
    for p in per:
        group = []
        for i in range(L):
            pre = "encoder.layer.%d." % i
            if isinstance(p, tuple):
                group += [pre + "attention.self.%s.%s" % (n, p[1]) for n in ("query", "key", "value")]
            else:
                group.append(pre + p)
        out.append(tuple(group))
    return out


def flatten(tensors, L):
    """{HF name: tensor} -> one flat vector in embedd's layout."""
    parts = []
    for n in enc_names(L):
        names = n if isinstance(n, tuple) else (n,)
        parts += [tensors[x].reshape(-1) for x in names]
    parts += [tensors[n].reshape(-1) for n in HEAD]
    return torch.cat(parts)


# ---- RefBert + MLM head (torch modules) ----------------------------------------

class RefTrainer(torch.nn.Module):
    def __init__(self, cfg, weights):
        super().__init__()
        self.cfg = cfg
        self.bert = er.RefBert(cfg).set_fastpath(False)
        self.bert.load_hf(weights)
        C, V = cfg["hidden_size"], cfg["vocab_size"]
        self.dense = torch.nn.Linear(C, C)
        self.norm = torch.nn.LayerNorm(C, eps=cfg["layer_norm_eps"])
        self.bias = torch.nn.Parameter(torch.zeros(V))
        with torch.no_grad():
            self.dense.weight.copy_(weights[HEAD[0]])
            self.dense.bias.copy_(weights[HEAD[1]])
            self.norm.weight.copy_(weights[HEAD[2]])
            self.norm.bias.copy_(weights[HEAD[3]])
            self.bias.copy_(weights[HEAD[4]])

    def named_hf(self):
        """(HF name, parameter or slice) in the order of flatten()."""
        b = self.bert
        C = self.cfg["hidden_size"]
        d = {"embeddings.word_embeddings.weight": b.word_embeddings.weight,
             "embeddings.position_embeddings.weight": b.position_embeddings.weight,
             "embeddings.token_type_embeddings.weight": b.token_type_embeddings.weight,
             "embeddings.LayerNorm.weight": b.emb_norm.weight,
             "embeddings.LayerNorm.bias": b.emb_norm.bias}
        for i, layer in enumerate(b.layers):
            p = "encoder.layer.%d." % i
            for j, n in enumerate(("query", "key", "value")):
                d[p + "attention.self.%s.weight" % n] = ("in_w", i, j)
                d[p + "attention.self.%s.bias" % n] = ("in_b", i, j)
            d[p + "attention.output.dense.weight"] = layer.self_attn.out_proj.weight
            d[p + "attention.output.dense.bias"] = layer.self_attn.out_proj.bias
            d[p + "attention.output.LayerNorm.weight"] = layer.norm1.weight
            d[p + "attention.output.LayerNorm.bias"] = layer.norm1.bias
            d[p + "intermediate.dense.weight"] = layer.linear1.weight
            d[p + "intermediate.dense.bias"] = layer.linear1.bias
            d[p + "output.dense.weight"] = layer.linear2.weight
            d[p + "output.dense.bias"] = layer.linear2.bias
            d[p + "output.LayerNorm.weight"] = layer.norm2.weight
            d[p + "output.LayerNorm.bias"] = layer.norm2.bias
        d[HEAD[0]], d[HEAD[1]] = self.dense.weight, self.dense.bias
        d[HEAD[2]], d[HEAD[3]], d[HEAD[4]] = self.norm.weight, self.norm.bias, self.bias

        def get(v, attr):
            if isinstance(v, tuple):
                layer = b.layers[v[1]].self_attn
                t = layer.in_proj_weight if v[0] == "in_w" else layer.in_proj_bias
                t = getattr(t, attr) if attr else t
                return t[v[2] * C:(v[2] + 1) * C]
            return getattr(v, attr) if attr else v
        return d, get

    def flat(self, attr=None):
        d, get = self.named_hf()
        return flatten({n: get(v, attr).detach() for n, v in d.items()},
                       self.cfg["num_hidden_layers"])

    def hidden(self, ids, seq_off):
        seqs = [ids[seq_off[s]:seq_off[s + 1]] for s in range(len(seq_off) - 1)]
        T = max(len(s) for s in seqs)
        pad = torch.zeros((len(seqs), T), dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.bool)
        for i, s in enumerate(seqs):
            pad[i, :len(s)] = s
            mask[i, :len(s)] = True
        h = self.bert(pad, mask)
        return torch.cat([h[i, :len(s)] for i, s in enumerate(seqs)])

    def mlm_logits(self, h):
        x = self.norm(F.gelu(self.dense(h)))
        return x @ self.bert.word_embeddings.weight.t() + self.bias


def losses(h, batch, wte, head_fn, st, post=None):
    """(simcse, mlm) from packed last hidden states h (T, C); post (the
    Dense modules) runs on the pooled rows before normalisation."""
    off, B = batch["seq_off"], batch["n_texts"]
    z = torch.stack([h[off[s]:off[s + 1]].mean(0) for s in range(2 * B)])
    if post is not None:
        z = post(z)
    z = F.normalize(z, dim=-1, eps=1e-12)
    sim = z[:B] @ z[B:].t() / st["temperature"]
    simcse = F.cross_entropy(sim, torch.arange(B))
    rows = (batch["labels"] >= 0).nonzero().flatten()
    mlm = F.cross_entropy(head_fn(h[rows]), batch["labels"][rows])
    return simcse, mlm


# ---- functional forward with masks ----------------------------------------------

def functional_hidden(w, cfg, ids, seq_off, masks=None):
    C, NH, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    eps, HD = cfg["layer_norm_eps"], C // cfg["num_attention_heads"]
    S = len(seq_off) - 1
    x = (w["embeddings.word_embeddings.weight"][ids]
         + torch.cat([w["embeddings.position_embeddings.weight"][:seq_off[s + 1] - seq_off[s]]
                      for s in range(S)])
         + w["embeddings.token_type_embeddings.weight"][0])
    x = F.layer_norm(x, (C,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    if masks is not None:
        x = x * masks[0]
    poff = [0]
    for s in range(S):
        n = seq_off[s + 1] - seq_off[s]
        poff.append(poff[-1] + NH * n * n)
    for i in range(L):
        p = "encoder.layer.%d." % i
        lin = lambda t, n: F.linear(t, w[p + n + ".weight"], w[p + n + ".bias"])  # noqa: E731
        q, k, v = (lin(x, "attention.self." + n) for n in ("query", "key", "value"))
        ctx = []
        for s in range(S):
            a, b = seq_off[s], seq_off[s + 1]
            n = b - a
            heads = lambda t: t[a:b].view(n, NH, HD).transpose(0, 1)  # noqa: E731
            probs = torch.softmax(heads(q) @ heads(k).transpose(1, 2) / math.sqrt(HD), dim=-1)
            if masks is not None:
                probs = probs * masks[1 + 3 * i][poff[s]:poff[s + 1]].view(NH, n, n)
            ctx.append((probs @ heads(v)).transpose(0, 1).reshape(n, C))
        h = lin(torch.cat(ctx), "attention.output.dense")
        if masks is not None:
            h = h * masks[2 + 3 * i]
        x = F.layer_norm(h + x, (C,), w[p + "attention.output.LayerNorm.weight"],
                         w[p + "attention.output.LayerNorm.bias"], eps)
        h = lin(F.gelu(lin(x, "intermediate.dense")), "output.dense")
        if masks is not None:
            h = h * masks[3 + 3 * i]
        x = F.layer_norm(h + x, (C,), w[p + "output.LayerNorm.weight"],
                         w[p + "output.LayerNorm.bias"], eps)
    return x


def functional_grads(weights, cfg, batch, st, masks=None, post=None):
    w = {n: t.clone().requires_grad_(True) for n, t in weights.items()}
    C = cfg["hidden_size"]
    h = functional_hidden(w, cfg, batch["ids"], batch["seq_off"], masks)

    def head(x):
        x = F.linear(x, w[HEAD[0]], w[HEAD[1]])
        x = F.layer_norm(F.gelu(x), (C,), w[HEAD[2]], w[HEAD[3]], cfg["layer_norm_eps"])
        return x @ w["embeddings.word_embeddings.weight"].t() + w[HEAD[4]]
    s, m = losses(h, batch, None, head, st, post)
    total = st["simcse_weight"] * s + st["mlm_weight"] * m
    total.backward()
    grads = flatten({n: t.grad for n, t in w.items()}, cfg["num_hidden_layers"])
    return [s.item(), m.item(), total.item()], grads


# ---- the batch ---------------------------------------------------------------------

def make_batch(g, B=3):
    lens = [7, 12, 9][:B]
    texts = [torch.cat([torch.tensor([CLS]),
                        torch.randint(5, TINY["vocab_size"], (n - 2,), generator=g),
                        torch.tensor([SEP])]) for n in lens]
    mlm = [t.clone() for t in texts]
    labels = [torch.full_like(t, -1) for t in texts]
    # BERT's 80/10/10 on ordinary tokens, fixed here so that every case
    # appears: [MASK], a random id, and a kept token.
    plan = [(0, 2, MASK), (0, 5, "random"), (1, 1, MASK), (1, 4, "keep"), (1, 9, MASK),
            (2, 3, MASK), (2, 7, "random")]
    for s, pos, what in plan:
        labels[s][pos] = mlm[s][pos]
        if what == MASK:
            mlm[s][pos] = MASK
        elif what == "random":
            mlm[s][pos] = int(torch.randint(5, TINY["vocab_size"], (1,), generator=g))
    seqs = texts + texts + mlm
    lab = [torch.full_like(t, -1) for t in texts] * 2 + labels
    off = [0]
    for s in seqs:
        off.append(off[-1] + len(s))
    return {"n_texts": B, "n_simcse": 2 * B, "n_mlm": B, "ids": torch.cat(seqs),
            "labels": torch.cat(lab), "seq_off": off}


def draw_masks(g, cfg, batch):
    T, C, NH = len(batch["ids"]), cfg["hidden_size"], cfg["num_attention_heads"]
    off = batch["seq_off"]
    P = sum(NH * (off[s + 1] - off[s]) ** 2 for s in range(len(off) - 1))
    ph, pa = cfg["hidden_dropout_prob"], cfg["attention_probs_dropout_prob"]

    def mask(n, p):
        keep = (torch.rand(n, generator=g) >= p).float()
        return keep / (1 - p)
    out = [mask(T * C, ph).view(T, C)]
    for _ in range(cfg["num_hidden_layers"]):
        out += [mask(P, pa), mask(T * C, ph).view(T, C), mask(T * C, ph).view(T, C)]
    return out


# ---- AdamW steps with torch.optim ------------------------------------------------------

def lr_at(st, step):
    if step <= st["warmup_steps"]:
        return st["lr"] * step / st["warmup_steps"]
    prog = min(1.0, (step - st["warmup_steps"]) / (st["total_steps"] - st["warmup_steps"]))
    return st["lr"] * (1.0 - prog)


def adam_steps(cfg, weights, batch, st):
    model = RefTrainer(cfg, weights)
    d, get = model.named_hf()
    no_decay, decay = [], []
    for name, p in model.named_parameters():
        is_norm = "norm" in name.split(".")[-2] if "." in name else False
        (no_decay if name.endswith("bias") or is_norm else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": st["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=st["lr"], betas=(st["beta1"], st["beta2"]), eps=st["adam_eps"])
    enc_params = list(model.bert.parameters())
    anchor = [p.detach().clone() for p in enc_params]
    totals = []
    for step in range(1, st["steps"] + 1):
        opt.zero_grad()
        h = model.hidden(batch["ids"], batch["seq_off"])
        s, m = losses(h, batch, None, model.mlm_logits, st)
        l2 = sum(((p - a) ** 2).sum() for p, a in zip(enc_params, anchor))
        total = st["simcse_weight"] * s + st["mlm_weight"] * m + 0.5 * st["l2sp"] * l2
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), st["clip_norm"])
        for group in opt.param_groups:
            group["lr"] = lr_at(st, step)
        opt.step()
        totals.append(total.item())
    return model.flat(), totals, (decay, no_decay)


def ref_grads(cfg, weights, batch, st, post=None):
    model = RefTrainer(cfg, weights)
    h = model.hidden(batch["ids"], batch["seq_off"])
    s, m = losses(h, batch, None, model.mlm_logits, st, post)
    total = st["simcse_weight"] * s + st["mlm_weight"] * m
    total.backward()
    return [s.item(), m.item(), total.item()], model.flat("grad"), model


def rel(a, b):
    return float((a - b).norm() / max(b.norm(), 1e-30))


def check_checkpoint(args):
    model, tok, info = er.load_model_dir(args.check_checkpoint)
    with open(args.texts, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f]
    seqs = [torch.tensor(tok.encode(t, info["max_seq_length"])) for t in texts]
    ids, mask = er.pad_batch(seqs)
    with torch.no_grad():
        h = model(ids, mask)
    emb = er.pool(h, mask, info["pooling"])
    if info["normalize"]:
        emb = F.normalize(emb, dim=-1)
    with open(args.embeddings, encoding="utf-8") as f:
        ours = torch.tensor([json.loads(line) for line in f], dtype=torch.float32)
    diff = float((ours - emb).abs().max())
    print("checkpoint %s: %d texts, max |diff| vs PyTorch = %.3g" % (
        args.check_checkpoint, len(texts), diff))
    return 0 if diff < 1e-4 else 1


def setup(seed):
    """The settings, the model's weights and the batch, from the seed."""
    cfg, st = config(), dict(SETTINGS)
    weights = er.random_bert_weights(cfg, seed, extra=True)
    for n in list(weights):
        if n.startswith("pooler."):
            del weights[n]
    # Gentler than the forward fixtures' scale, so that training is sane.
    for n, t in weights.items():
        if t.dim() == 2 and "embeddings" not in n:
            weights[n] = t * (0.02 / (1.5 / math.sqrt(t.shape[1]))) * 10
    g = torch.Generator().manual_seed(seed)
    batch = make_batch(g)
    return cfg, st, weights, g, batch


# ---- frozen Dense modules after pooling ------------------------------------------

# (out_features, bias, activation class), as sentence-transformers' Dense
# builds them: nn.Linear(in, out, bias), then the activation.
DENSE = ((24, True, torch.nn.Tanh), (16, False, torch.nn.Identity))


def dense_modules(C, seed):
    g = torch.Generator().manual_seed(seed + 1)
    mods, in_f = [], C
    for out_f, bias, act in DENSE:
        lin = torch.nn.Linear(in_f, out_f, bias=bias)
        with torch.no_grad():
            lin.weight.copy_(torch.randn((out_f, in_f), generator=g) * (1.5 / math.sqrt(in_f)))
            if bias:
                lin.bias.copy_((torch.rand(out_f, generator=g) - 0.5) * 0.4)
        lin.requires_grad_(False)
        mods.append(torch.nn.Sequential(lin, act()))
        in_f = out_f
    return mods


def gen_dense(args):
    """dense.safetensors: see the docstring."""
    cfg, st, weights, _, batch = setup(args.seed)
    out = os.path.abspath(args.out)
    stored, _ = er.safetensors_read(os.path.join(out, "model", "model.safetensors"))
    for n, t in weights.items():
        assert torch.equal(stored[n], t.float()), "model/ differs from the seed at " + n
    ref, _ = er.safetensors_read(os.path.join(out, "ref.safetensors"))
    assert torch.equal(ref["batch.ids"], batch["ids"].float()), "ref.safetensors batch differs"
    mods = dense_modules(cfg["hidden_size"], args.seed)
    st["mlm_weight"] = 0.0

    def post(z):
        for m in mods:
            z = m(z)
        return z
    loss_ref, grads_ref, _ = ref_grads(cfg, weights, batch, st, post)
    loss_fn, grads_fn = functional_grads(weights, cfg, batch, st, post=post)
    for a, b in zip(loss_ref, loss_fn):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (loss_ref, loss_fn)
    assert rel(grads_fn, grads_ref) < 1e-5, rel(grads_fn, grads_ref)
    n_masks = 1 + 3 * cfg["num_hidden_layers"]
    masks = [ref["drop.mask.%d" % i] for i in range(n_masks)]
    T, C = len(batch["ids"]), cfg["hidden_size"]
    masks = [m.view(T, C) if i % 3 != 1 else m for i, m in enumerate(masks)]
    loss_drop, grads_drop = functional_grads(weights, cfg, batch, st, masks, post)
    plain = ref_grads(cfg, weights, batch, st)[0]
    tensors = []
    for i, m in enumerate(mods):
        tensors.append(("dense.%d.weight" % i, m[0].weight.detach(), "F32"))
        if m[0].bias is not None:
            tensors.append(("dense.%d.bias" % i, m[0].bias.detach(), "F32"))
    tensors += [("dense.nodrop.loss", torch.tensor(loss_ref), "F32"),
                ("dense.nodrop.grads", grads_ref, "F32"),
                ("dense.drop.loss", torch.tensor(loss_drop), "F32"),
                ("dense.drop.grads", grads_drop, "F32")]
    er.safetensors_write(os.path.join(out, "dense.safetensors"), tensors,
                         metadata={"activations": "tanh,identity", "bias": "1,0",
                                   "mlm_weight": "0.0"})
    print("wrote %s/dense.safetensors: SimCSE loss %.6f without dropout (%.6f without the Dense "
          "modules), %.6f with dropout; RefBert vs functional: grads rel %.2g"
          % (out, loss_ref[0], plain[0], loss_drop[0], rel(grads_fn, grads_ref)))
    return 0


# ---- the pairs objective ----------------------------------------------------------

PAIRS = dict(temperature=0.05, simcse_weight=0.8, n_pairs=3)


def pairs_batch(seed):
    """B anchors, then their B positives: 2B texts [CLS] ... [SEP]."""
    g = torch.Generator().manual_seed(seed + 2)
    lens = [6, 9, 4, 8, 5, 11]
    texts = [torch.cat([torch.tensor([CLS]),
                        torch.randint(5, TINY["vocab_size"], (n - 2,), generator=g),
                        torch.tensor([SEP])]) for n in lens]
    # a positive that shares words with its anchor, as a real pair would
    texts[3][1:4] = texts[0][1:4]
    off = [0]
    for t in texts:
        off.append(off[-1] + len(t))
    return {"ids": torch.cat(texts), "lens": lens, "seq_off": off, "n_texts": len(lens) // 2}


def pairs_losses(h, batch, tau):
    """(row loss, column loss) of symmetric InfoNCE on the pooled h."""
    off, B = batch["seq_off"], batch["n_texts"]
    z = torch.stack([h[off[s]:off[s + 1]].mean(0) for s in range(2 * B)])
    z = F.normalize(z, dim=-1, eps=1e-12)
    sim = z[:B] @ z[B:].t() / tau
    labels = torch.arange(B)
    return F.cross_entropy(sim, labels), F.cross_entropy(sim.t(), labels)


def gen_pairs(args):
    """pairs.safetensors: see the docstring."""
    cfg, _, weights, _, _ = setup(args.seed)
    out = os.path.abspath(args.out)
    stored, _ = er.safetensors_read(os.path.join(out, "model", "model.safetensors"))
    for n, t in weights.items():
        assert torch.equal(stored[n], t.float()), "model/ differs from the seed at " + n
    batch = pairs_batch(args.seed)
    tau, wt = PAIRS["temperature"], PAIRS["simcse_weight"]
    L = cfg["num_hidden_layers"]

    # RefBert (torch modules)
    model = RefTrainer(cfg, weights)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    rows, cols = pairs_losses(model.hidden(batch["ids"], batch["seq_off"]), batch, tau)
    loss = (rows + cols) / 2
    (wt * loss).backward()
    grads_ref = model.flat("grad")

    # the functional forward
    w = {n: t.clone().requires_grad_(True) for n, t in weights.items()}
    h = functional_hidden(w, cfg, batch["ids"], batch["seq_off"])
    r2, c2 = pairs_losses(h, batch, tau)
    (wt * (r2 + c2) / 2).backward()
    grads_fn = flatten({n: t.grad if t.grad is not None else torch.zeros_like(t)
                        for n, t in w.items()}, L)
    assert abs(loss.item() - ((r2 + c2) / 2).item()) <= 1e-5 * loss.item(), (loss, r2, c2)
    assert rel(grads_fn, grads_ref) < 1e-5, rel(grads_fn, grads_ref)
    assert abs(rows.item() - cols.item()) > 1e-3, (rows.item(), cols.item())
    n_head = sum(weights[n].numel() for n in HEAD)
    assert float(grads_ref[-n_head:].abs().max()) == 0.0

    f32 = lambda t: torch.as_tensor(t).detach().to(torch.float32).reshape(-1)  # noqa: E731
    tensors = [("pairs.ids", f32(batch["ids"]), "F32"),
               ("pairs.lens", f32(batch["lens"]), "F32"),
               ("pairs.loss", f32([loss.item(), wt * loss.item()]), "F32"),
               ("pairs.grads", grads_ref, "F32")]
    meta = {k: repr(v) for k, v in PAIRS.items()}
    er.safetensors_write(os.path.join(out, "pairs.safetensors"), tensors, metadata=meta)
    print("wrote %s/pairs.safetensors: pairs loss %.6f (rows %.6f, columns %.6f), weight %g; "
          "RefBert vs functional: grads rel %.2g"
          % (out, loss.item(), rows.item(), cols.item(), wt, rel(grads_fn, grads_ref)))
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures", "train"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--part", choices=("all", "dense", "pairs"), default="all")
    ap.add_argument("--check-checkpoint")
    ap.add_argument("--texts")
    ap.add_argument("--embeddings")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.check_checkpoint:
        return check_checkpoint(args)
    if args.part == "dense":
        return gen_dense(args)
    if args.part == "pairs":
        return gen_pairs(args)
    cfg, st, weights, g, batch = setup(args.seed)

    loss_ref, grads_ref, _ = ref_grads(cfg, weights, batch, st)
    loss_fn, grads_fn = functional_grads(weights, cfg, batch, st)
    for a, b in zip(loss_ref, loss_fn):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (loss_ref, loss_fn)
    assert rel(grads_fn, grads_ref) < 1e-5, rel(grads_fn, grads_ref)
    masks = draw_masks(g, cfg, batch)
    loss_drop, grads_drop = functional_grads(weights, cfg, batch, st, masks)
    params5, totals, _ = adam_steps(cfg, weights, batch, st)
    init = flatten(weights, cfg["num_hidden_layers"])

    out = os.path.abspath(args.out)
    mdir = os.path.join(out, "model")
    os.makedirs(mdir, exist_ok=True)
    with open(os.path.join(mdir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab()) + "\n")
    write_tiny_dir(mdir, cfg, weights)
    f32 = lambda t: t.detach().to(torch.float32).reshape(-1)  # noqa: E731
    tensors = [("batch.ids", f32(batch["ids"]), "F32"),
               ("batch.labels", f32(batch["labels"]), "F32"),
               ("batch.seq_off", f32(torch.tensor(batch["seq_off"])), "F32"),
               ("init.params", init, "F32"),
               ("nodrop.loss", torch.tensor(loss_ref), "F32"),
               ("nodrop.grads", grads_ref, "F32"),
               ("drop.loss", torch.tensor(loss_drop), "F32"),
               ("drop.grads", grads_drop, "F32"),
               ("adam.losses", torch.tensor(totals), "F32"),
               ("adam.params", params5, "F32")]
    tensors += [("drop.mask.%d" % i, f32(m), "F32") for i, m in enumerate(masks)]
    meta = {k: repr(v) for k, v in st.items()}
    meta.update(n_texts=str(batch["n_texts"]), n_simcse=str(batch["n_simcse"]),
                n_mlm=str(batch["n_mlm"]))
    er.safetensors_write(os.path.join(out, "ref.safetensors"), tensors, metadata=meta)
    print("wrote %s: losses nodrop %s drop %s; 5 AdamW steps %s" % (
        out, ["%.6f" % x for x in loss_ref], ["%.6f" % x for x in loss_drop],
        ["%.5f" % x for x in totals]))
    print("RefBert vs functional: grads rel %.2g" % rel(grads_fn, grads_ref))
    return gen_dense(args) or gen_pairs(args)


def write_tiny_dir(mdir, cfg, weights):
    os.makedirs(os.path.join(mdir, "1_Pooling"), exist_ok=True)
    er.safetensors_write(os.path.join(mdir, "model.safetensors"),
                         [(n, weights[n], "F32") for n in sorted(weights)],
                         metadata={"format": "pt"})
    er._write_json(os.path.join(mdir, "config.json"), cfg)
    er._write_json(os.path.join(mdir, "tokenizer_config.json"),
                   {"do_lower_case": True, "tokenizer_class": "BertTokenizer",
                    "model_max_length": 64})
    er._write_json(os.path.join(mdir, "modules.json"), [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}])
    er._write_json(os.path.join(mdir, "1_Pooling", "config.json"),
                   {"word_embedding_dimension": cfg["hidden_size"],
                    "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False})
    er._write_json(os.path.join(mdir, "sentence_bert_config.json"),
                   {"max_seq_length": 64, "do_lower_case": False})


if __name__ == "__main__":
    sys.exit(main())
