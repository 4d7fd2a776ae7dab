#!/usr/bin/env python3
"""Writes the study's ImageNet file lists for an image folder laid out as `train/<wnid>/*` and
`val/<wnid>/*`: `augment_files.txt` (all of train), `test_files.txt` (all of val), and
`train_files.txt` / `val_files.txt`. Lines are `relative/path label`; labels are the indices of
the sorted class folders of `train` (the order of the study's tools/generate_imagenet_splits.py).

The study holds 50 images per class of train out as `val` (seeded with random.seed(0)); a set
with fewer than `--holdout` + 1 images in a class (the 30-per-class mini set) cannot, so with
`--no-holdout` train = augment and val = test, as shipped for data/imagenet-mini.

Usage: python3 scripts/imagenet_file_lists.py ROOT [--out DIR] [--no-holdout] [--holdout 50]
"""
import argparse
import os
import random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--out", default=None, help="folder for the lists (default: ROOT)")
    ap.add_argument("--no-holdout", action="store_true")
    ap.add_argument("--holdout", type=int, default=50)
    a = ap.parse_args()
    out = a.out or a.root
    random.seed(0)
    train_dir = os.path.join(a.root, "train")
    classes = sorted(os.listdir(train_dir))
    label = {c: i for i, c in enumerate(classes)}
    lists = {"train": [], "val": [], "augment": [], "test": []}
    for c in classes:
        files = sorted(os.listdir(os.path.join(train_dir, c)))
        if a.no_holdout:
            held = [False] * len(files)
        else:
            held = [True] * a.holdout + [False] * (len(files) - a.holdout)
            random.shuffle(held)
        for h, f in zip(held, files):
            entry = ("train/%s/%s" % (c, f), label[c])
            lists["augment"].append(entry)
            lists["val" if h else "train"].append(entry)
    for c in sorted(os.listdir(os.path.join(a.root, "val"))):
        for f in sorted(os.listdir(os.path.join(a.root, "val", c))):
            lists["test"].append(("val/%s/%s" % (c, f), label[c]))
    if a.no_holdout:
        lists["val"] = list(lists["test"])
    for name, entries in lists.items():
        with open(os.path.join(out, name + "_files.txt"), "w") as fh:
            for p, l in entries:
                fh.write("%s %d\n" % (p, l))


if __name__ == "__main__":
    main()
