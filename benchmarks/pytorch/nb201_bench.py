#!/usr/bin/env python3
"""PyTorch twin of runner's NAS-Bench-201 supernet for `runner bench` (see common.py for the
protocol): the same cell (nodes 0..3, op (j, i) on every edge; `none` multiplies by zero as the
study's Zero op; ReLU-conv-BN convs; average pool without padding counted), reduction blocks,
stem, BN-ReLU, global pool, linear; only the fixed architecture's ops run. The training step is
NB201's: cross-entropy, SGD Nesterov lr 0.1 momentum 0.9 wd 5e-4, no clip.
tests/fixtures/gen_nb201_net.py imports Net, Cell and Reduction from here.
Run: python3 nb201_bench.py --spec JSON (the spec of a row of `runner bench --json`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
EDGES = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


class ReLUConvBN(nn.Sequential):
    def __init__(self, cin, cout, k, stride, pad):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout))


class Cell(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.edges = nn.ModuleDict()
        for j, i in EDGES:
            self.edges[f"{j}_{i}"] = nn.ModuleDict({
                "nor_conv_1x1": ReLUConvBN(c, c, 1, 1, 0),
                "nor_conv_3x3": ReLUConvBN(c, c, 3, 1, 1),
            })

    def forward(self, x, arch):
        nodes = [x]
        for i in range(1, 4):
            s = 0
            for j in range(i):
                op = OPS[arch[f"{j}_{i}"]]
                h = nodes[j]
                if op == "none":
                    y = h.mul(0.0)
                elif op == "skip_connect":
                    y = h
                elif op == "avg_pool_3x3":
                    y = F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)
                else:
                    y = self.edges[f"{j}_{i}"][op](h)
                s = s + y
            nodes.append(s)
        return nodes[3]


class Reduction(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv_a = ReLUConvBN(cin, cout, 3, 2, 1)
        self.conv_b = ReLUConvBN(cout, cout, 3, 1, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


class Net(nn.Module):
    def __init__(self, c, n, classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        blocks, cp = [], c
        for s in range(3):
            cs = c << s
            if s > 0:
                blocks.append(Reduction(cp, cs))
            blocks += [Cell(cs) for _ in range(n)]
            cp = cs
        self.blocks = nn.ModuleList(blocks)
        self.last = nn.Sequential(nn.BatchNorm2d(cp), nn.ReLU())
        self.classifier = nn.Linear(cp, classes)

    def forward(self, x, arch):
        h = self.stem(x)
        for b in self.blocks:
            h = b(h, arch) if isinstance(b, Cell) else b(h)
        h = self.last(h)
        return self.classifier(h.mean((2, 3)))


def names(net):
    """Runner's tensor names -> the twin's tensors (parameters and BN running statistics)."""
    out = {}

    def rcb(prefix, seq):
        out[prefix + ".conv.weight"] = seq[1].weight
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[prefix + ".bn." + k] = getattr(seq[2], k)

    out["stem.conv.weight"] = net.stem[0].weight
    for k in ("weight", "bias", "running_mean", "running_var"):
        out["stem.bn." + k] = getattr(net.stem[1], k)
    for i, b in enumerate(net.blocks):
        p = f"blocks.{i}"
        if isinstance(b, Cell):
            for key, ops in b.edges.items():
                for op in ("nor_conv_1x1", "nor_conv_3x3"):
                    rcb(f"{p}.edge_{key}.{op}", ops[op])
        else:
            rcb(p + ".conv_a", b.conv_a)
            rcb(p + ".conv_b", b.conv_b)
            out[p + ".shortcut.weight"] = b.shortcut[1].weight
    for k in ("weight", "bias", "running_mean", "running_var"):
        out["last_bn." + k] = getattr(net.last[0], k)
    out["classifier.weight"] = net.classifier.weight
    out["classifier.bias"] = net.classifier.bias
    return {k: v.data if isinstance(v, nn.Parameter) else v for k, v in out.items()}


def build(spec):
    from common import ImageBench
    sp = spec["space"]
    net = Net(sp["channels"], sp["cells_per_stage"], spec["classes"])
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = sp["bn_momentum"]
    arch = spec["arch"]
    return ImageBench(spec, net, lambda x, stochastic: (net(x, arch), None), names(net))


if __name__ == "__main__":
    import common
    common.main(build)
