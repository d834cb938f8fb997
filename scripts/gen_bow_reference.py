#!/usr/bin/python3
"""gen_bow_reference.py: PyTorch reference for embedd's bag-of-words
contrastive trainer (model/bowtrain.h).

Writes tests/fixtures/bow/ref.safetensors: a tiny fixed problem and what
torch computes for it.

  problem   E (V, D) word vectors, weight (V) fixed token weights (two of
            them 0, as [CLS] and [PAD] get), and B text pairs with repeated
            tokens, zero-weight tokens and one-token texts: ids (every token
            id, anchor 0, positive 0, anchor 1, ... back to back) and off
            (2B + 1 offsets), as emb_text_pairs lays them out.
  loss      symmetric InfoNCE of the batch: z = sum_t weight(t) E[t]
            (F.embedding_bag, mode "sum", per_sample_weights), cos through
            F.normalize, logits cos / temperature, the mean of
            F.cross_entropy over rows and over columns.
  grad      d loss / d E (V, D).
  adam      step_losses (3): the loss before each of 3 torch.optim.Adam
            steps (lr from the metadata, torch's defaults otherwise, no
            weight decay) on that batch; E3: E after them.

Two torch computations must agree before anything is written: the
embedding_bag one above and an explicit per-token sum with autograd.
Torch runs in float64 on the float32 values stored in the fixture.

Usage: scripts/gen_bow_reference.py [--out tests/fixtures/bow]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import embedd_ref as er  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

V, D = 12, 6
SETTINGS = dict(temperature=0.05, lr=0.01, steps=3)
# (anchor ids, positive ids); ids 0 and 1 have weight 0.
PAIRS = [([3, 5, 5, 0], [7, 3]),
         ([2, 8], [9, 10, 2, 1]),
         ([11], [4, 6, 11]),
         ([6, 7, 8, 9, 3], [5])]


def problem(seed):
    g = torch.Generator().manual_seed(seed)
    E = torch.randn((V, D), generator=g).float()
    weight = (0.1 + 0.9 * torch.rand(V, generator=g)).float()
    weight[0] = 0.0
    weight[1] = 0.0
    ids, off = [], [0]
    for a, b in PAIRS:
        for side in (a, b):
            ids += side
            off.append(len(ids))
    return E, weight, ids, off


def bags(E, weight, ids, off, which):
    """z (B, D) of the anchors (which 0) or the positives (which 1)."""
    flat, starts = [], []
    for k in range(len(PAIRS)):
        starts.append(len(flat))
        flat += ids[off[2 * k + which]:off[2 * k + which + 1]]
    flat = torch.tensor(flat)
    return F.embedding_bag(flat, E, torch.tensor(starts), mode="sum",
                           per_sample_weights=weight[flat])


def infonce(za, zb, tau):
    ua, ub = F.normalize(za, dim=-1, eps=1e-12), F.normalize(zb, dim=-1, eps=1e-12)
    sim = ua @ ub.t() / tau
    labels = torch.arange(len(za))
    return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2


def loss_bag(E, weight, ids, off, tau):
    return infonce(bags(E, weight, ids, off, 0), bags(E, weight, ids, off, 1), tau)


def loss_explicit(E, weight, ids, off, tau):
    z = []
    for s in range(2 * len(PAIRS)):
        acc = torch.zeros(D, dtype=E.dtype)
        for t in ids[off[s]:off[s + 1]]:
            acc = acc + weight[t] * E[t]
        z.append(acc)
    return infonce(torch.stack(z[0::2]), torch.stack(z[1::2]), tau)


def grad_of(fn, E0, weight, ids, off, tau):
    E = E0.clone().requires_grad_(True)
    loss = fn(E, weight, ids, off, tau)
    loss.backward()
    return loss.item(), E.grad.detach()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures", "bow"))
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    E32, w32, ids, off = problem(args.seed)
    E0, weight = E32.double(), w32.double()
    tau = SETTINGS["temperature"]

    loss, grad = grad_of(loss_bag, E0, weight, ids, off, tau)
    loss2, grad2 = grad_of(loss_explicit, E0, weight, ids, off, tau)
    assert abs(loss - loss2) <= 1e-12 * max(1.0, abs(loss)), (loss, loss2)
    assert float((grad - grad2).abs().max()) <= 1e-12, float((grad - grad2).abs().max())
    assert float(grad[0].abs().max()) == 0 and float(grad[1].abs().max()) == 0

    E = torch.nn.Parameter(E0.clone())
    opt = torch.optim.Adam([E], lr=SETTINGS["lr"])
    step_losses = []
    for _ in range(SETTINGS["steps"]):
        opt.zero_grad()
        step = loss_bag(E, weight, ids, off, tau)
        step.backward()
        opt.step()
        step_losses.append(step.item())
    assert abs(step_losses[0] - loss) <= 1e-12

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    f32 = lambda t: torch.as_tensor(t).detach().to(torch.float32)  # noqa: E731
    tensors = [("E", E32, "F32"), ("weight", w32, "F32"),
               ("ids", f32(ids), "F32"), ("off", f32(off), "F32"),
               ("loss", f32([loss]), "F32"), ("grad", f32(grad), "F32"),
               ("step_losses", f32(step_losses), "F32"), ("E3", f32(E), "F32")]
    meta = {k: repr(v) for k, v in SETTINGS.items()}
    meta.update(V=str(V), D=str(D), pairs=str(len(PAIRS)))
    er.safetensors_write(os.path.join(out, "ref.safetensors"), tensors, metadata=meta)
    print("wrote %s/ref.safetensors: loss %.6f, |grad| %.4f, losses over %d Adam steps %s"
          % (out, loss, float(grad.norm()), SETTINGS["steps"],
             ["%.6f" % x for x in step_losses]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
