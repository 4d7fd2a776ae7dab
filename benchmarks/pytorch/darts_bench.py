#!/usr/bin/env python3
"""PyTorch twin of runner's DARTS-CIFAR10 supernet for `runner bench` (see common.py for the
protocol). The network is tests/fixtures/darts_torch.py, the twin written from the study's
space/darts/{network,ops}.py for the parity fixtures (imported, not copied): stem, cells with
preprocessing, one op set per (node, slot) applied at stride 2 to a reduction cell's inputs,
drop-path on every op output but an identity skip (a Bernoulli(keep) mask per sample, as the
study's drop_path), the auxiliary head in train mode (BN recalibration included), the 7x7
final pool, linear. The training step is DARTS's: cross-entropy + 0.4 x the auxiliary head's,
SGD lr 0.025 momentum 0.9 wd 3e-4, gradient-norm clip 5, drop-path at the spec's probability.
Run: python3 darts_bench.py --spec JSON (the spec of a row of `runner bench --json`).
"""
import os
import sys

import torch

import common

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests", "fixtures"))
from darts_torch import Net, arch_from_json, runner_name  # noqa: E402


def build(spec):
    sp = spec["space"]
    if sp["auxiliary_weight"] <= 0 or sp["final_pool"] != "avg7":
        raise SystemExit("darts_bench.py: the twin has the auxiliary head and the 7x7 final pool")
    net = Net(sp["channels"], sp["layers"], spec["classes"])
    arch = arch_from_json(spec["arch"])
    p = spec["train"]["drop_path"]

    def forward(x, stochastic):
        drop = None
        if stochastic and net.training and p > 0:
            keep = 1.0 - p
            n = x.size(0)
            # The mask is drawn where x lives (the study drew it on the GPU too).
            drop = lambda: (keep, torch.bernoulli(torch.full((n,), keep, device=x.device)))  # noqa: E731
        return net(x, arch, drop)

    return common.ImageBench(spec, net, forward, common.state_names(net, runner_name),
                             aux_weight=sp["auxiliary_weight"])


if __name__ == "__main__":
    common.main(build)
