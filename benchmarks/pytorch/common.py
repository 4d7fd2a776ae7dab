"""The harness shared by the PyTorch twins of `runner bench` (benchmarks/pytorch/<space>_bench.py).

A twin is started by `runner bench` as `python3 <space>_bench.py --device cpu|cuda --spec JSON
[--check NPZ]`; the
spec (runner's `run::bench::spec::Spec`) names the space's network settings (`space`, runner's
`[space]` table), the fixed architecture (`arch`, the benchmark JSON encoding), the shapes, the
training settings (`train`), the threads and the repeat counts. Without --check the twin builds
the model, runs `warmup` untimed and `repeats` timed training steps, then the same for the
architecture evaluation, and prints one JSON line:
  {"train_step": [ms...], "evaluate": [ms...], "train_peak_mib", "eval_peak_mib", "peak_reset",
   "threads", "torch"} (on CUDA also "train_gpu_peak_mib", "eval_gpu_peak_mib")
With --check NPZ [--check-after NPZ1] it loads runner's initial weights and batch from NPZ
(runner's tensor names; `bench.x`, `bench.y`, PTB also `bench.hidden`) into the twin built in
float64 (the reference) and in float32, runs two deterministic training steps (drop-path and
dropout off) on each and prints {"losses": [step 1 loss, step 1 gradient norm before clipping,
step 2 loss] (float64), "float32_losses": [...], "update_error_float32", "update_error_runner"},
the update errors being || params after step 1 - float64's || / || float64's update || for the
float32 twin and for runner's parameters after its first step (NPZ1).

What is timed, as in the study's trainers (matluster/anonymous-2102, trainers/*.py):
- training step: zero_grad (PyTorch 1.x semantics: gradients zeroed, not dropped, so that the
  optimizer treats parameters exactly as runner's default `unsampled = "pytorch1"`), forward of
  the fixed architecture, the space's loss, backward, loss.item() and the accuracy, gradient
  norm clip where the study clips, SGD step;
- evaluation: BatchNorm recalibration as the study's `set_running_statistics` (forward hooks
  record each BN input's batch mean and biased variance, averaged over the batches, in train mode
  under no_grad), then an eval-mode validation pass (loss and top-1/top-5), then the BN buffers
  restored (the study reloads a deep copy of the whole state dict; both sides here restore the
  buffers only).
Both sides compute on tensors already in memory (no data loading). Peak memory is the process's
RSS high-water mark (VmHWM of /proc/self/status, reset between the phases through
/proc/self/clear_refs, as runner's worker does; resource.getrusage where /proc is missing).

--device cuda (CUDA device 0): the twin is built on the CPU as always (same seeds, same
initial values) and then moved to the GPU with its inputs (`place`); every timed run is
bracketed by torch.cuda.synchronize(), and each phase also reports
torch.cuda.max_memory_allocated() (reset between the phases). TF32 is turned off, so that
float32 matrix products and convolutions are float32 as in candle (whose float32 GEMM does not
use TF32 unless asked to). The check then runs the float64 reference and the float32 twin on
the GPU too. The thread count still goes to torch.set_num_threads but only bounds host-side
work there.
The tests never need this file or PyTorch.
"""
import argparse
import json
import resource
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def peak_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def release_free_memory():
    """As runner's bench does between the phases: return free heap memory to the OS (glibc's
    malloc_trim), so that each phase's peak is its own."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def smoothed_cross_entropy(logits, y, eps):
    """The study's LabelSmoothingLoss (eps / (K - 1) on every wrong class); plain CE at eps 0."""
    if eps <= 0:
        return F.cross_entropy(logits, y)
    logp = logits.log_softmax(-1)
    dist = torch.full_like(logp, eps / (logits.shape[1] - 1))
    dist.scatter_(1, y.unsqueeze(1), 1.0 - eps)
    return torch.mean(torch.sum(-dist * logp, -1))


def clip(params, max_norm, stochastic):
    """Clips where the study clips; returns the norm before clipping (a check step measures it
    without clipping too)."""
    if max_norm > 0:
        return nn.utils.clip_grad_norm_(params, max_norm).item()
    if not stochastic:
        return nn.utils.clip_grad_norm_(params, float("inf"), norm_type=2.0).item()
    return None


def sgd(model, t):
    return torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"],
                           nesterov=t["nesterov"], weight_decay=t["weight_decay"])


def bn_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]


def save_buffers(model):
    return [(m, m.running_mean.clone(), m.running_var.clone()) for m in bn_layers(model)]


def restore_buffers(saved):
    for m, rm, rv in saved:
        m.running_mean.copy_(rm)
        m.running_var.copy_(rv)


def recalibrate(model, forward, steps):
    """The study's set_running_statistics: hooks average every BN input's per-batch mean and
    biased variance (weighted by the batch size) over `steps` train-mode forwards."""
    stats, handles = {}, []

    def hook(m, inputs, outputs):
        x = inputs[0]
        mean = x.mean((0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)
        n = x.size(0)
        s = stats.setdefault(m, [0.0, 0.0, 0])
        s[0] = s[0] + torch.squeeze(mean) * n
        s[1] = s[1] + torch.squeeze(var) * n
        s[2] += n

    for m in bn_layers(model):
        handles.append(m.register_forward_hook(hook))
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            forward()
        for m, (sm, sv, n) in stats.items():
            m.running_mean.copy_(sm / n)
            m.running_var.copy_(sv / n)
    for h in handles:
        h.remove()


def load_runner_weights(named, npz):
    """Copies runner's tensors into `named` (runner name -> twin tensor); the two name sets must
    be equal, so that a twin missing or adding a layer is refused."""
    theirs = {k for k in npz.files if not k.startswith("bench.")}
    ours = set(named)
    if theirs != ours:
        raise SystemExit("twin and runner tensors differ: only runner: %s; only twin: %s"
                         % (sorted(theirs - ours)[:8], sorted(ours - theirs)[:8]))
    with torch.no_grad():
        for k, t in named.items():
            v = torch.from_numpy(np.asarray(npz[k], dtype=np.float32))
            if tuple(v.shape) != tuple(t.shape):
                raise SystemExit("%s: runner %s, twin %s" % (k, tuple(v.shape), tuple(t.shape)))
            t.copy_(v)


def state_names(model, rename=lambda n: n):
    """Parameters and BN running statistics by (renamed) state-dict name."""
    out = {}
    for n, t in model.state_dict(keep_vars=True).items():
        if n.endswith("num_batches_tracked"):
            continue
        out[rename(n)] = t.data if isinstance(t, nn.Parameter) else t
    return out


class ImageBench:
    """An image classifier's step and evaluation. `forward(x, stochastic)` returns (logits,
    auxiliary logits or None); `named` maps runner's tensor names to the twin's tensors."""

    def __init__(self, spec, model, forward, named, aux_weight=0.0):
        self.spec, self.model, self.forward, self.named = spec, model, forward, named
        self.aux_weight = aux_weight
        self.t = spec["train"]
        self.opt = sgd(model, self.t)
        self.params = list(model.parameters())
        g = torch.Generator().manual_seed(spec["seed"])
        s, k = spec["image_size"], spec["classes"]
        self.x = torch.randn(spec["batch"], 3, s, s, generator=g)
        self.y = torch.randint(0, k, (spec["batch"],), generator=g)
        self.xr = torch.randn(max(1, spec["recal_batch"]), 3, s, s, generator=g)
        self.xv = torch.randn(spec["eval_batch"], 3, s, s, generator=g)
        self.yv = torch.randint(0, k, (spec["eval_batch"],), generator=g)

    def use_check_inputs(self, npz):
        self.x = torch.from_numpy(np.asarray(npz["bench.x"], dtype=np.float32))
        self.y = torch.from_numpy(np.asarray(npz["bench.y"]).astype(np.int64))

    def step(self, stochastic=True):
        eps = self.t["label_smoothing"]
        self.model.train()
        self.opt.zero_grad(set_to_none=False)
        logits, aux = self.forward(self.x, stochastic)
        loss = smoothed_cross_entropy(logits, self.y, eps)
        if aux is not None and self.aux_weight > 0:
            loss = loss + self.aux_weight * smoothed_cross_entropy(aux, self.y, eps)
        loss.backward()
        value = loss.item()
        (logits.detach().argmax(1) == self.y).sum().item()
        norm = clip(self.params, self.t["grad_clip"], stochastic)
        self.opt.step()
        return value, norm

    def evaluate(self):
        spec = self.spec
        saved = save_buffers(self.model)
        if spec["recal_steps"] > 0:
            recalibrate(self.model, lambda: self.forward(self.xr, True), spec["recal_steps"])
        self.model.eval()
        with torch.no_grad():
            for _ in range(spec["valid_batches"]):
                logits, _ = self.forward(self.xv, False)
                smoothed_cross_entropy(logits, self.yv, self.t["label_smoothing"]).item()
                top5 = logits.topk(min(5, logits.shape[1]), 1).indices
                hits = top5 == self.yv.unsqueeze(1)
                hits[:, :1].sum().item(), hits.sum().item()
        restore_buffers(saved)
        self.model.train()


def place(b, device):
    """Moves a built twin to `device`: its model, every tensor attribute (the inputs, PTB's
    hidden state), `named` rebound to the moved tensors, and the optimizer and parameter list
    made anew over the moved parameters (nothing has stepped yet, so no state is lost)."""
    if device.type == "cpu":
        return b
    return _move(b, lambda m: m.to(device), lambda t: t.to(device))


def _move(b, move_model, move_tensor):
    """`place`'s work with the conversions given (module -> moved in place, tensor -> moved
    tensor), so that the rebinding can be exercised on the CPU with a dtype conversion, which
    also makes new tensors."""
    model = b.model
    # `named` holds the tensors (`.data` of parameters, buffers) under runner's names; find
    # each one's state-dict key by its storage, to find it again after the move.
    before = model.state_dict(keep_vars=True)
    key_of = {}
    for k, t in before.items():
        key_of.setdefault(t.data_ptr(), k)
    keys = {}
    for name, t in b.named.items():
        if t.data_ptr() not in key_of:
            raise SystemExit("place: %s is not a tensor of the model" % name)
        keys[name] = key_of[t.data_ptr()]
    shared = len({t.data_ptr() for t in before.values()})
    move_model(model)
    after = model.state_dict(keep_vars=True)
    # A tied weight (PTB's decoder is its encoder) must stay one tensor.
    if len({t.data_ptr() for t in after.values()}) != shared:
        raise SystemExit("place: moving the model untied shared tensors")
    b.named = {name: (after[k].data if isinstance(after[k], nn.Parameter) else after[k])
               for name, k in keys.items()}
    for k, v in list(vars(b).items()):
        if isinstance(v, torch.Tensor):
            setattr(b, k, move_tensor(v))
    b.params = list(model.parameters())
    b.opt = sgd(model, b.t)
    return b


def _check_run(build, spec, npz, dtype, device):
    """Two deterministic steps of the twin built in `dtype` on `device` from runner's weights
    and batch: ([step 1 loss, step 1 gradient norm, step 2 loss], parameters after step 1, on
    the CPU)."""
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(spec["seed"])
        b = place(build(spec), device)
        load_runner_weights(b.named, npz)
        b.use_check_inputs(npz)
        for k, v in list(vars(b).items()):
            if isinstance(v, torch.Tensor):
                setattr(b, k, v.to(device, dtype) if v.is_floating_point() else v.to(device))
        l1, g1 = b.step(False)
        after = {k: v.detach().double().cpu().clone() for k, v in b.named.items()
                 if not k.endswith(("running_mean", "running_var"))}
        l2, _ = b.step(False)
        return [l1, g1, l2], after
    finally:
        torch.set_default_dtype(torch.float32)


def _update_error(x, ref, init):
    """|| x - ref || / || ref - init || over all parameters: how far an update is from the
    reference update, relative to the update's size."""
    num = sum(float(((x[k] - ref[k]) ** 2).sum()) for k in ref)
    den = sum(float(((ref[k] - init[k]) ** 2).sum()) for k in ref)
    return (num / den) ** 0.5 if den > 0 else float("nan")


def check(build, spec, path, after_path, device):
    """The check's PyTorch side: the twin in float64 is the reference; the twin in float32
    shows how far float32 arithmetic alone moves the same numbers (the noise floor runner's
    float32 results are judged against)."""
    npz = np.load(path)
    ref, ref_after = _check_run(build, spec, npz, torch.float64, device)
    f32, f32_after = _check_run(build, spec, npz, torch.float32, device)
    out = {"losses": ref, "float32_losses": f32}
    init = {k: torch.from_numpy(np.asarray(npz[k], dtype=np.float64)) for k in ref_after}
    out["update_error_float32"] = _update_error(f32_after, ref_after, init)
    if after_path:
        a = np.load(after_path)
        runner = {k: torch.from_numpy(np.asarray(a[k], dtype=np.float64)) for k in ref_after}
        out["update_error_runner"] = _update_error(runner, ref_after, init)
    return out


def _time(fn, n, sync):
    """Milliseconds of n runs of fn; `sync` waits for the device (CUDA queues kernels and
    returns), before the clock starts and before it is read."""
    out = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def use_device(name):
    """The torch device for --device, set up for a float32 comparison with runner; exits with
    one line where CUDA is asked for and this torch cannot use it."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: this PyTorch (%s) sees no CUDA device" % torch.__version__)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda", 0)


def main(build):
    """`build(spec)` returns an object with step(stochastic) -> (loss, gradient norm or None),
    evaluate(), named (runner name -> tensor) and use_check_inputs(npz)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", required=True, help="the row's spec (runner bench --json: rows[].spec)")
    ap.add_argument("--check", help="runner's initial weights and batch (.npz): run the check")
    ap.add_argument("--check-after", help="runner's weights after its first check step (.npz)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cpu, or cuda (CUDA device 0)")
    a = ap.parse_args()
    spec = json.loads(a.spec)
    device = use_device(a.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(spec["threads"])
    if a.check:
        print(json.dumps(check(build, spec, a.check, a.check_after, device)))
        return
    torch.manual_seed(spec["seed"])
    b = place(build(spec), device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mib = lambda: torch.cuda.max_memory_allocated(device) / 2.0 ** 20  # noqa: E731
    res = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    for _ in range(spec["warmup"]):
        b.step()
    res["train_step"] = _time(b.step, spec["repeats"], sync)
    res["train_peak_mib"] = peak_mib()
    release_free_memory()
    res["peak_reset"] = reset_peak()
    if cuda:
        res["train_gpu_peak_mib"] = mib()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(spec["warmup"]):
        b.evaluate()
    res["evaluate"] = _time(b.evaluate, spec["repeats"], sync)
    res["eval_peak_mib"] = peak_mib()
    if cuda:
        res["eval_gpu_peak_mib"] = mib()
    print(json.dumps(res))
