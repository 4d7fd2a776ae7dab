#!/usr/bin/env python3
"""PyTorch twin of `runner bench`: the same NAS-Bench-201 supernet path, the same step.

Times one training step (forward, backward, SGD Nesterov with weight decay) and one
architecture evaluation (BN recalibration over `recal_steps` batches + a validation pass), and
prints one JSON object with the medians in milliseconds. Used only by `runner bench`; the tests
never need PyTorch. Run: python3 nb201_bench.py --channels 16 --cells 5 --batch 256 ...
"""
import argparse, json, statistics, time
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--cells", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--arch", default='{"0_1":3,"0_2":3,"0_3":2,"1_2":4,"1_3":3,"2_3":1}')
    ap.add_argument("--recal-steps", type=int, default=4)
    ap.add_argument("--recal-batch", type=int, default=128)
    ap.add_argument("--valid-images", type=int, default=1000)
    ap.add_argument("--eval-batch", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    arch = json.loads(a.arch)
    net = Net(a.channels, a.cells, 10)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, 32, 32)
    y = torch.randint(0, 10, (a.batch,))

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(net(x, arch), y)
        loss.backward()
        opt.step()

    xr = torch.randn(a.recal_batch, 3, 32, 32)
    xv = torch.randn(a.eval_batch, 3, 32, 32)

    def evaluate():
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        saved = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
        net.train()
        with torch.no_grad():
            for _ in range(a.recal_steps):
                net(xr, arch)
            net.eval()
            for _ in range(max(1, a.valid_images // a.eval_batch)):
                net(xv, arch).argmax(1)
        for m, (rm, rv) in zip(bns, saved):
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
        net.train()

    res = {}
    for name, fn in (("train_step", step), ("evaluate", evaluate)):
        fn()  # warm-up
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        res[name] = statistics.median(times)
    res["torch"] = torch.__version__
    print(json.dumps(res))


if __name__ == "__main__":
    main()
