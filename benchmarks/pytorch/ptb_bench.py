#!/usr/bin/env python3
"""PyTorch twin of runner's DARTS-PTB language model for `runner bench` (see common.py for the
protocol), after the study's space/ptb/{network,rnn_utils}.py: EmbeddingDropout (whole rows of
the embedding matrix dropped, the masked matrix then looked up), LockedDropout on the embedding
output and on the RNN output, the cell (s0 from [x * x_mask, h * h_mask] @ W0 with
sigmoid/tanh; every one of the 8 steps reads its chosen state, (s * h_mask) @ W_i, sigmoid gate,
chosen activation; the output is the mean of states 1..8), decoder tied to the embedding. The
training step is trainers/ptb.py's: the hidden state carried (detached) from batch to batch,
cross-entropy + TAR (beta 1e-3; AR alpha 0), loss.item(), backward, gradient-norm clip 0.1,
SGD lr 40 without momentum, wd 8e-7 (the seq_len / bptt lr factor is 1 at the fixed length).
The evaluation is eval_one_arch: windows of bptt x eval batch from a zero hidden state, no
dropout, cross-entropy (and the next-token accuracy runner also counts). Parameter names are
runner's (the study's state dict).
Run: python3 ptb_bench.py --spec JSON (the spec of a row of `runner bench --json`).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

STEPS = 8
ACTS = [torch.tanh, torch.relu, torch.sigmoid, lambda x: x]


class Cell(nn.Module):
    def __init__(self, h, r):
        super().__init__()
        self.h = h
        self._W0 = nn.Parameter(torch.empty(2 * h, 2 * h).uniform_(-r, r))
        self._Ws = nn.ParameterList([nn.Parameter(torch.empty(h, 2 * h).uniform_(-r, r))
                                     for _ in range(STEPS)])

    def step(self, x, h_prev, xm, hm, acts, switches):
        if xm is not None:
            xh = torch.cat([x * xm, h_prev * hm], dim=-1)
        else:
            xh = torch.cat([x, h_prev], dim=-1)
        c0, h0 = torch.split(xh.mm(self._W0), self.h, dim=-1)
        states = [h_prev + torch.sigmoid(c0) * (torch.tanh(h0) - h_prev)]
        for i in range(STEPS):
            s = states[switches[i]]
            ch = (s * hm).mm(self._Ws[i]) if hm is not None else s.mm(self._Ws[i])
            c, hh = torch.split(ch, self.h, dim=-1)
            states.append(s + torch.sigmoid(c) * (ACTS[acts[i]](hh) - s))
        return torch.mean(torch.stack(states[1:], -1), -1)


def mask2d(n, c, p, device):
    """The study's create_mask2d: floor(U + keep) / keep, drawn on `device`."""
    keep = 1.0 - p
    return torch.floor(torch.rand(n, c, device=device) + keep) / keep


def locked(x, p):
    if p <= 0:
        return x
    m = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
    return m.expand_as(x) * x


class Model(nn.Module):
    def __init__(self, sp, vocab):
        super().__init__()
        h, r = sp["hidden"], sp["init_range"]
        self.sp = sp
        self.rnn = Cell(h, r)
        self.encoder = nn.Embedding(vocab, h)
        self.encoder.weight.data.uniform_(-r, r)
        self.decoder = nn.Linear(h, vocab)
        self.decoder.weight = self.encoder.weight
        self.decoder.bias.data.zero_()

    def forward(self, tokens, hidden, arch, dropout):
        sp = self.sp
        w = self.encoder.weight
        if dropout and sp["dropout_emb"] > 0:
            p = sp["dropout_emb"]
            mask = w.new_empty(w.size(0), 1).bernoulli_(1 - p).expand_as(w) / (1 - p)
            w = w * mask
        emb = F.embedding(tokens, w)
        if dropout:
            emb = locked(emb, sp["dropout_inp"])
        n, h = tokens.size(1), sp["hidden"]
        xm = mask2d(n, h, sp["dropout_rnn_x"], tokens.device) if dropout else None
        hm = mask2d(n, h, sp["dropout_rnn_h"], tokens.device) if dropout else None
        outs = []
        for t in range(tokens.size(0)):
            hidden = self.rnn.step(emb[t], hidden, xm, hm, arch[0], arch[1])
            outs.append(hidden)
        rnn_h = torch.stack(outs)
        dropped = locked(rnn_h, sp["dropout"]) if dropout else rnn_h
        logits = self.decoder(dropped.view(-1, h))
        return logits, hidden, rnn_h, dropped


class PtbBench:
    def __init__(self, spec):
        self.spec, sp = spec, spec["space"]
        v, self.t = spec["classes"], spec["train"]
        self.model = Model(sp, v)
        a = spec["arch"]
        self.arch = ([int(a["act/%d" % i]) for i in range(STEPS)],
                     [int(a["switch/%d" % i]) for i in range(STEPS)])
        self.opt = common.sgd(self.model, self.t)
        self.params = list(self.model.parameters())
        g = torch.Generator().manual_seed(spec["seed"])
        b, L = spec["batch"], spec["bptt"]
        self.x = torch.randint(0, v, (L, b), generator=g)
        self.y = torch.randint(0, v, (L, b), generator=g)
        self.valid = torch.randint(0, v, (spec["valid_batches"] * L + 1, spec["eval_batch"]),
                                   generator=g)
        self.hidden = torch.zeros(b, sp["hidden"])
        self.named = {"encoder.weight": self.model.encoder.weight.data,
                      "decoder.bias": self.model.decoder.bias.data,
                      "rnn._W0": self.model.rnn._W0.data}
        for i, w in enumerate(self.model.rnn._Ws):
            self.named["rnn._Ws.%d" % i] = w.data

    def use_check_inputs(self, npz):
        self.x = torch.from_numpy(np.asarray(npz["bench.x"]).astype(np.int64))
        self.y = torch.from_numpy(np.asarray(npz["bench.y"]).astype(np.int64))
        self.hidden = torch.from_numpy(np.asarray(npz["bench.hidden"], dtype=np.float32))

    def step(self, stochastic=True):
        sp = self.spec["space"]
        self.model.train()
        self.opt.zero_grad(set_to_none=False)
        logits, hidden, rnn_h, dropped = self.model(self.x, self.hidden, self.arch, stochastic)
        self.hidden = hidden.detach()
        loss = F.cross_entropy(logits, self.y.view(-1))
        loss.item()  # the study logs the plain cross-entropy
        if sp["alpha"] > 0:
            loss = loss + sp["alpha"] * dropped.pow(2).mean()
        if sp["beta"] > 0:
            loss = loss + sp["beta"] * (rnn_h[1:] - rnn_h[:-1]).pow(2).mean()
        value = loss.item()
        (logits.detach().argmax(1) == self.y.view(-1)).sum().item()
        loss.backward()
        norm = common.clip(self.params, self.t["grad_clip"], stochastic)
        self.opt.step()
        return value, norm

    def evaluate(self):
        L, n = self.spec["bptt"], self.spec["eval_batch"]
        self.model.eval()
        hidden = torch.zeros(n, self.spec["space"]["hidden"], device=self.valid.device)
        with torch.no_grad():
            for w in range(self.spec["valid_batches"]):
                x = self.valid[w * L:(w + 1) * L]
                y = self.valid[w * L + 1:(w + 1) * L + 1]
                logits, hidden, _, _ = self.model(x, hidden, self.arch, False)
                F.cross_entropy(logits, y.reshape(-1)).item()
                (logits.argmax(1) == y.reshape(-1)).sum().item()
        self.model.train()


if __name__ == "__main__":
    common.main(PtbBench)
