#!/usr/bin/env python3
"""PyTorch twin of runner's ProxylessNAS supernet for `runner bench` (see common.py for the
protocol), after the study's space/proxyless/{network,layers}.py: first conv 3x3 stride 2
(BN, ReLU6), an MBConv1 3x3 block, 21 choice cells of six MBConvs (1x1 expand-BN-ReLU6 when the
expansion exceeds 1, depthwise kxk-BN-ReLU6, 1x1-BN) plus Zero where the cell keeps its shape,
an identity shortcut exactly where stride is 1 and widths match, 1x1 feature mix (BN, ReLU6),
global average pool, linear. Only the chosen MBConv runs; Zero + x is x (the study adds fresh
zeros to x; runner skips that add, and so does this twin). Module names are runner's tensor
names (the study's state dict). The training step is ProxylessNAS's: the study's label smoothing
(eps / (K - 1) on wrong classes, eps 0.1), SGD lr 0.025 momentum 0.9 wd 5e-5, no clip.
Run: python3 proxyless_bench.py --spec JSON (the spec of a row of `runner bench --json`).
"""
import torch.nn as nn
import torch.nn.functional as F

import common

STAGES = [(24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1)]
OPS = [(3, 3), (3, 6), (5, 3), (5, 6), (7, 3), (7, 6)]  # op index 6 is Zero


def make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, stride, groups, act, bn):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, momentum=bn[0], eps=bn[1])
        self.act = act

    def forward(self, x):
        y = self.bn(self.conv(x))
        return F.relu6(y) if self.act else y


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, stride, e, bn):
        super().__init__()
        mid = round(cin * e)
        if e > 1:
            self.inverted_bottleneck = ConvBn(cin, mid, 1, 1, 1, True, bn)
        else:
            self.inverted_bottleneck = None
        self.depth_conv = ConvBn(mid, mid, k, stride, mid, True, bn)
        self.point_linear = ConvBn(mid, cout, 1, 1, 1, False, bn)

    def forward(self, x):
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class Choices(nn.Module):
    def __init__(self, cin, cout, stride, bn):
        super().__init__()
        self.choices = nn.ModuleList([MBConv(cin, cout, k, stride, e, bn) for k, e in OPS])


class Block(nn.Module):
    def __init__(self, conv, shortcut):
        super().__init__()
        self.mobile_inverted_conv = conv
        self.shortcut = shortcut

    def forward(self, x, op=None):
        if op is None:
            return self.mobile_inverted_conv(x)
        if op == 6:
            return x
        y = self.mobile_inverted_conv.choices[op](x)
        return y + x if self.shortcut else y


class Net(nn.Module):
    def __init__(self, width_mult, classes, bn):
        super().__init__()
        stem, first = make_divisible(32 * width_mult), make_divisible(16 * width_mult)
        self.first_conv = ConvBn(3, stem, 3, 2, 1, True, bn)
        blocks = [Block(MBConv(stem, first, 3, 1, 1, bn), False)]
        cin = first
        for width, n, s in STAGES:
            width = make_divisible(width * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                blocks.append(Block(Choices(cin, width, stride, bn), stride == 1 and cin == width))
                cin = width
        self.blocks = nn.ModuleList(blocks)
        last = make_divisible(1280 * width_mult) if width_mult > 1 else 1280
        self.feature_mix_layer = ConvBn(cin, last, 1, 1, 1, True, bn)
        self.classifier = nn.Module()
        self.classifier.linear = nn.Linear(last, classes)

    def forward(self, x, ops):
        x = self.blocks[0](self.first_conv(x))
        for b, op in zip(self.blocks[1:], ops):
            x = b(x, op)
        x = self.feature_mix_layer(x).mean((2, 3))
        return self.classifier.linear(x)


def build(spec):
    sp = spec["space"]
    net = Net(sp["width_mult"], spec["classes"], (sp["bn_momentum"], sp["bn_eps"]))
    keys = ["stage%d_cell%d" % (s, c) for s, (_, n, _) in enumerate(STAGES) for c in range(n)]
    ops = [int(spec["arch"][k]) for k in keys]
    return common.ImageBench(spec, net, lambda x, stochastic: (net(x, ops), None),
                             common.state_names(net))


if __name__ == "__main__":
    common.main(build)
