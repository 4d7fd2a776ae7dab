#!/usr/bin/env python3
"""PyTorch twin of runner's NAS-Bench-101 (1Shot1 space 3) supernet for `runner bench` (see
common.py for the protocol), after the study's space/nb101/{base_ops,network}.py: stem
conv3x3-BN-ReLU, stacks of cells with a 2x2 max-pool and doubled channels before every stack
but the first, global average pool, linear (the study's dropout is 0). A cell's vertex t = 1..5
sums its chosen inputs among [its own 1x1 conv-BN-ReLU projection of the cell input, vertex 1,
..., vertex t-1] (in vertex order) and applies its op (conv3x3-BN-ReLU, conv1x1-BN-ReLU,
maxpool 3x3); the output vertex concatenates its two chosen vertices. As in the study (and
runner), every vertex computes its projection in training and BN recalibration whether or not
it is chosen; in evaluation runner skips an unchosen projection (its output goes nowhere), and
so does this twin, although the study's code computes it there too. Module names are runner's
tensor names. The training step is NB101's: cross-entropy, SGD lr 0.1 momentum 0.9 wd 1e-4,
gradient-norm clip 5.
Run: python3 nb101_bench.py --spec JSON (the spec of a row of `runner bench --json`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

OPS = 5  # op vertices


class ConvBnRelu(nn.Module):
    def __init__(self, cin, cout, k, momentum, eps):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=eps, momentum=momentum)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Vertex(nn.Module):
    def __init__(self, cin, c, momentum, eps):
        super().__init__()
        self.input = ConvBnRelu(cin, c, 1, momentum, eps)
        self.conv3x3 = ConvBnRelu(c, c, 3, momentum, eps)
        self.conv1x1 = ConvBnRelu(c, c, 1, momentum, eps)


class Cell(nn.Module):
    def __init__(self, cin, cout, momentum, eps):
        super().__init__()
        for t in range(1, OPS + 1):
            setattr(self, "vertex%d" % t, Vertex(cin, cout // 2, momentum, eps))

    def forward(self, x, arch):
        states = []
        for t in range(1, OPS + 1):
            v = getattr(self, "vertex%d" % t)
            mask = arch["input%d" % t]
            proj = v.input(x) if (mask[0] or self.training) else None
            chosen = [proj if j == 0 else states[j - 1] for j in range(t) if mask[j]]
            h = chosen[0]
            for c in chosen[1:]:
                h = h + c
            op = arch["op%d" % t].index(1)
            if op == 0:
                y = v.conv3x3(h)
            elif op == 1:
                y = v.conv1x1(h)
            else:
                y = F.max_pool2d(h, 3, 1, 1)
            states.append(y)
        out = arch["input%d" % (OPS + 1)]
        return torch.cat([states[j - 1] for j in range(1, OPS + 1) if out[j]], 1)


class Net(nn.Module):
    def __init__(self, channels, stacks, cells_per_stack, classes, momentum, eps):
        super().__init__()
        self.stem = ConvBnRelu(3, channels, 3, momentum, eps)
        cells, self.downsample_before = [], set()
        cin = cout = channels
        for s in range(stacks):
            if s > 0:
                self.downsample_before.add(len(cells))
                cout *= 2
            for _ in range(cells_per_stack):
                cells.append(Cell(cin, cout, momentum, eps))
                cin = cout
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(cout, classes)

    def forward(self, x, arch):
        h = self.stem(x)
        for i, c in enumerate(self.cells):
            if i in self.downsample_before:
                h = F.max_pool2d(h, 2, 2)
            h = c(h, arch)
        return self.classifier(h.mean((2, 3)))


def build(spec):
    sp = spec["space"]
    net = Net(sp["channels"], sp["stacks"], sp["cells_per_stack"], spec["classes"],
              sp["bn_momentum"], sp["bn_eps"])
    arch = spec["arch"]
    return common.ImageBench(spec, net, lambda x, stochastic: (net(x, arch), None),
                             common.state_names(net))


if __name__ == "__main__":
    common.main(build)
