"""A vectorized executor (`executor = "vmap"`): a round's clients trained at once with torch.func.

`Vectorized().run(model, jobs, spec)` gives what `Sequential` gives (`local.train` for
each job), up to the float summation order of batched kernels, by training every client of
the batch in one vmapped step over stacked state:

* **Same data, same order.** Each client's generator is asked exactly what `train` asks
  it, in the same order: the dropout seed (`torch.randint(0, 2**62, (1,))`, drawn and
  unused, as nothing here draws randomness), then `local.batches(n, batch_size, steps)`.
  A client with no samples or no steps draws nothing and returns `(x0, 0, nan)`.
* **Stacked per client** (a leading client dimension, on `spec.device`): the parameters
  (one tensor per named parameter), the momentum velocity, `grad_offset` (zeros where a
  client has none), `grad_mask` (ones where none), `Proximal` anchors and coefficients
  (coefficient 0 where none), `plan.lr`, the number of steps, `momentum_reset_step` and
  `penalty_steps`. `momentum`, `weight_decay` and `batch_size` come from the shared spec.
  The clients' samples are concatenated once on the device, and each step gathers its
  (clients, batch) block through index tensors made once per batch.
* **Ragged work is masked, not dropped.** Clients are ordered by their number of steps
  (longest first), so the clients still training at step s are a prefix of the stack:
  the step runs on that prefix (views, no copies) and a finished client is not touched
  again, its parameters and velocity frozen bit for bit. A minibatch shorter than the
  batch size (the end of a pass over a client's data) is padded with one of the client's
  own samples and its loss is sum(per-sample loss * real) / (number of real samples), so
  its gradient is the unpadded mean's.
* **One step.** The active clients' minibatch losses come from one `vmap` of
  `functional_call` over the stacked parameters, and one `torch.autograd.grad` of their
  sum gives each client its own gradient (a client's parameters are its own slice of the
  stacked leaves). Then `train`'s update in `train`'s order: + the penalty's gradient
  2c(w - anchor) (steps < penalty_steps), + grad_offset, * grad_mask, + weight_decay * w,
  velocity = momentum * velocity + g (zeroed first at momentum_reset_step), w -= lr *
  velocity (or g). The loss reported is the mean of the per-step minibatch losses,
  without the penalty, as `train` reports it.
* **Results** come back to the CPU as `LocalResult(x, steps, loss)`, in the jobs' order.

What it cannot stack trains the whole batch through `Sequential` instead, after a
one-line notice on stderr (`executor.notice`: once per reason per process);
`Vectorized.last_fallback` holds the reason of the latest `run` (None: it vectorized).
The list was decided by trying each case under `vmap(grad(...))` with torch 2.13:

* a model with buffers: BatchNorm's running statistics (`buffer_layout.numel > 0`) are
  updated in place by the forward pass (vmap runs it, but `train` carries them in the
  flat state), and any other buffer may be state the forward mutates;
* Powerprop and SWAT layers (`fedpress.models.powerprop`): activation pruning reads a
  weight density with `.item()` (vmap refuses), SWAT's custom autograd function has no
  vmap rule, and both keep per-client threshold caches keyed to the parameter object;
* dropout layers with p > 0 (`executor.draws_randomness`), and any other random op in the
  forward (SimpleConvNet's functional dropout): vmap's default randomness="error" raises
  on it, the generators are rolled back and the batch falls back;
* a plan with a `MaskedDistance` penalty (per-client masks of different sizes), a
  `CompressedPoint` or any callable `grad_at` (a codec run per client on the CPU), or a
  penalty that is not exactly `Proximal`;
* clients whose samples differ in shape or dtype;
* a device other than the CPU or CUDA (vmap is untried there);
* anything else that raises while training under vmap: the generators are rolled back,
  the notice names the exception, and Sequential raises it again if it is not vmap's.

Tolerance. The tests assert |x_vmap - x_seq| <= 1e-5 * (1 + |x_seq|) elementwise and
mean losses within 1e-5 relative. Measured on gaussian data (MLP, LeNet-5 on 1x16x16 and
1x28x28; momentum 0.9, weight decay, Proximal, plan.lr, ragged clients, 2 to 42 steps):
at most 4e-7 for x and 3e-7 for the loss. The differences are the summation order of
batched matmuls and grouped convolutions, and of the padded minibatch's loss. On MNIST
with LeNet-5 a few clients in a hundred differ more (3e-6 in 20 of 61,706 coordinates
after one step, up to 4e-4 after an epoch of 19 steps): images have max-pool windows whose
two largest values are within 1e-6 of each other, a different summation order can pick
the other one, and the gradient then flows to another unit; training amplifies that.

Speed. On a CPU vmap pays off when per-step overhead dominates (tiny_config's MLP: 2.4x
Sequential at 10 clients, 11x at 100) and lost when the convolutions did (LeNet-5 on
MNIST, batch 32, 2 threads: 0.77x at 10 clients, 0.56x at 100): vmap runs a convolution
with per-client weights as one grouped convolution in NCHW, which oneDNN computes 2-4x
slower than the same work as separate dense ones at LeNet's channel counts. So on a CPU
a model that `runtime/stacked.py` can write out (convolutions, linear layers, ReLU,
max-pooling, flatten: LeNet-5, the CNNs, the MLPs) runs as channels_last grouped
convolutions and batched matmuls instead of through vmap (same loss, same gradients up to
summation order); anything else goes through torch.func.vmap as before.
"""

from __future__ import annotations

import weakref

import torch
from torch.func import functional_call, vmap
from torch.nn.utils.rnn import pad_sequence

from fedpress.local import CompressedPoint, FlatModel, LocalResult, Proximal, TrainSpec, batches, loss_of, num_steps
from fedpress.models.powerprop import PowerpropConv2d, PowerpropLinear, SwatConv2d, SwatLinear
from fedpress.runtime.executor import Job, Sequential, draws_randomness, notice
from fedpress.runtime.stacked import StackedForward

_stacked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> StackedForward | None


def stacked_forward(module) -> StackedForward | None:
    """The module's stacked forward (traced once per module), or None: vmap runs it."""
    if module not in _stacked:
        _stacked[module] = StackedForward.of(module)
    return _stacked[module]

_REPARAMETERISED = (PowerpropLinear, PowerpropConv2d, SwatLinear, SwatConv2d)


def model_reason(model: FlatModel, device: torch.device) -> str | None:
    """Why the model cannot train under vmap on `device`; None when it can."""
    if device.type not in ("cpu", "cuda"):
        return f"device {device.type!r} (vmap is only tried on cpu and cuda)"
    if model.buffer_layout.numel > 0:
        return "the model has floating buffers (BatchNorm running statistics)"
    if any(True for _ in model.module.buffers()):
        return "the model has buffers"
    for m in model.module.modules():
        if isinstance(m, _REPARAMETERISED):
            return "Powerprop/SWAT layers (custom autograd functions, per-client caches)"
    if draws_randomness(model.module):
        return "dropout layers draw randomness"
    return None


def plan_reason(job: Job) -> str | None:
    """Why a job's plan cannot be stacked; None when it can."""
    plan = job.plan
    if isinstance(plan.grad_at, CompressedPoint):
        return "a CompressedPoint gradient point (grad_at)"
    if plan.grad_at is not None:
        return "a callable grad_at"
    if plan.penalty is not None and type(plan.penalty) is not Proximal:
        return f"a {type(plan.penalty).__name__} penalty (only Proximal stacks)"
    return None


# On a CPU a vmapped step of 10 clients ran LeNet-5 on MNIST at 1.58-1.64x sequential, one of all
# 100 clients of a round at 0.96-1.06x (25: 1.43-1.48x, 50: 1.12-1.24x; 5 rounds, 2 repeats,
# docs/results.md "vmap in chunks"; why one large stack is slower was not measured).
CPU_CHUNK = 10


class Vectorized(Sequential):
    """Executor: the jobs' local training at once, vmapped over stacked client state
    (`Sequential`'s `of`, `close` and `with`; its `run` is the fallback).

    `max_clients` bounds how many clients one vmapped step holds (None: the whole batch);
    larger batches are trained in consecutive chunks of that size. From a config: chunks of
    CPU_CHUNK on a CPU, the whole batch on a GPU.
    """

    @classmethod
    def of(cls, exp) -> Vectorized:
        return cls(CPU_CHUNK if exp.device.type == "cpu" else None)

    def __init__(self, max_clients: int | None = None):
        if max_clients is not None and max_clients < 1:
            raise ValueError(f"Vectorized: max_clients must be positive, got {max_clients!r}")
        self.max_clients = max_clients
        self.last_fallback: str | None = None

    def run(self, model: FlatModel, jobs: list[Job], spec: TrainSpec) -> list[LocalResult]:
        self.last_fallback = None
        if len(jobs) < 2:  # nothing to vectorize (a virtual-clock batch of one): exactly Sequential
            return super().run(model, jobs, spec)
        reason = model_reason(model, spec.device) or next(filter(None, map(plan_reason, jobs)), None)
        if reason is None and jobs:
            shapes = {(tuple(j.inputs.shape[1:]), j.inputs.dtype, j.targets.dtype) for j in jobs}
            if len(shapes) > 1:
                reason = "the clients' samples differ in shape or dtype"
        if reason is not None:
            return self._fall_back(reason, model, jobs, spec)
        results: list[LocalResult | None] = [None] * len(jobs)
        live = []
        for i, job in enumerate(jobs):
            if job.targets.numel() == 0 or num_steps(job.targets.numel(), spec, job.plan) == 0:
                results[i] = LocalResult(job.plan.x0.clone(), 0, float("nan"))  # as train: no draws
            else:
                live.append(i)
        states = [jobs[i].rng.get_state() for i in live]
        size = self.max_clients or max(len(live), 1)
        try:
            for at in range(0, len(live), size):
                chunk = live[at : at + size]
                for i, result in zip(chunk, train_stacked(model, [jobs[i] for i in chunk], spec), strict=True):
                    results[i] = result
        except Exception as e:  # vmap could not run it: undo the draws, train sequentially
            for i, state in zip(live, states, strict=True):
                jobs[i].rng.set_state(state)
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            if "random operation" in message:
                reason = "the model draws randomness in its forward (dropout)"
            else:
                reason = f"vmap failed: {type(e).__name__}: {message[:160]}"
            return self._fall_back(reason, model, jobs, spec)
        return results

    def _fall_back(self, reason: str, model: FlatModel, jobs: list[Job], spec: TrainSpec) -> list[LocalResult]:
        self.last_fallback = reason
        notice(f"executor = vmap: {reason}; these clients train one after another")
        return super().run(model, jobs, spec)


def _stack_split(model: FlatModel, rows: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """(P,) rows, one per client, as one contiguous (C, *shape) tensor per named parameter."""
    flat = torch.stack([r.detach().to(device=device, dtype=torch.float32) for r in rows])  # (C, P)
    C = flat.shape[0]
    return [flat[:, e.offset : e.stop].reshape(C, *e.shape).clone(memory_format=torch.contiguous_format)
            for e in model.param_layout.entries]


def _per_client(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def _column(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (k,) per-client vector shaped to broadcast against a (k, *shape) stacked tensor."""
    return t.view(-1, *([1] * (like.dim() - 1)))


def train_stacked(model: FlatModel, jobs: list[Job], spec: TrainSpec) -> list[LocalResult]:
    """`local.train` of every job at once; each job has samples and at least one step."""
    device, bs, P = spec.device, spec.batch_size, model.num_params
    C = len(jobs)
    # --- the generators, asked what train asks them, in the jobs' order
    steps, drawn = [], []
    for job in jobs:
        n = job.targets.numel()
        s = num_steps(n, spec, job.plan)
        torch.randint(0, 2**62, (1,), generator=job.rng)  # train's dropout seed (nothing here is random)
        drawn.append(list(batches(n, bs, s, job.rng)))
        steps.append(s)
    # --- longest first: the clients still training at step s are the prefix [:active[s]]
    order = sorted(range(C), key=lambda c: -steps[c])
    S = steps[order[0]]
    active = [sum(1 for c in order if steps[c] > s) for s in range(S)]
    sizes = [jobs[c].targets.numel() for c in order]
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()[:-1]]
    X = torch.cat([jobs[c].inputs for c in order]).to(device)  # (N, ...) every client's samples
    Y = torch.cat([jobs[c].targets for c in order]).to(device)  # (N,)
    index = torch.full((S, C, bs), -1, dtype=torch.long)  # -1: padding (or a finished client)
    for j, c in enumerate(order):
        padded = pad_sequence(drawn[c], batch_first=True, padding_value=-1)  # (steps_c, <= bs)
        index[: steps[c], j, : padded.shape[1]] = padded
    real = index >= 0
    first = torch.tensor(offsets).view(1, C, 1)
    index = torch.where(real, index + first, first).to(device)  # padding: the client's first sample
    counts = real.sum(-1).clamp(min=1).to(device=device, dtype=torch.float32)  # (S, C) real samples
    real = real.to(device=device, dtype=torch.float32)

    # --- the stacked state and plan terms
    plans = [jobs[c].plan for c in order]
    params = _stack_split(model, [p.x0[:P] for p in plans], device)
    names = model.param_layout.names
    velocity = [torch.zeros_like(p) for p in params] if spec.momentum else None
    lrs = [spec.lr if p.lr is None else p.lr for p in plans]
    lr = _per_client(lrs, device) if len(set(lrs)) > 1 else None  # None: all clients share spec's
    zero = torch.zeros(P)
    offset = (_stack_split(model, [zero if p.grad_offset is None else p.grad_offset for p in plans], device)
              if any(p.grad_offset is not None for p in plans) else None)
    gmask = (_stack_split(model, [torch.ones(P) if p.grad_mask is None else p.grad_mask for p in plans], device)
             if any(p.grad_mask is not None for p in plans) else None)
    anchor = coefficient = penalty_steps = penalized = None
    if any(p.penalty is not None for p in plans):
        anchor = _stack_split(model, [zero if p.penalty is None else p.penalty.anchor for p in plans], device)
        coefficient = _per_client([0.0 if p.penalty is None else float(p.penalty.coefficient) for p in plans], device)
        until = [S if p.penalty_steps is None else p.penalty_steps for p in plans]
        penalty_steps = torch.tensor(until, device=device)
        penalized = [any(p.penalty is not None and p.penalty.coefficient != 0 and s < until[j]
                         for j, p in enumerate(plans[: active[s]])) for s in range(S)]
    resets = {}  # step -> the stack positions whose velocity is zeroed before it (train's order)
    for j, p in enumerate(plans):
        if p.momentum_reset_step is not None and 0 <= p.momentum_reset_step < steps[order[j]]:
            resets.setdefault(p.momentum_reset_step, []).append(j)
    total = torch.zeros(C, device=device)

    module = model.module
    module.train()

    def client_loss(w: dict[str, torch.Tensor], x, y, weight, count):
        """One client's minibatch loss: the mean over its real samples."""
        return (loss_of(functional_call(module, w, (x,)), y, reduction="none") * weight).sum() / count

    losses_of = vmap(client_loss)  # randomness="error": a random op in the forward raises
    # on a CPU, a model made of the layers runtime/stacked.py writes out runs as channels_last grouped
    # convolutions and batched matmuls, which oneDNN computes faster than vmap's NCHW grouped ones
    stacked = stacked_forward(module) if device.type == "cpu" else None
    for s in range(S):
        k = active[s]
        w = [p[:k] for p in params]  # views: the update below writes into the stack
        idx = index[s, :k]  # (k, bs)
        # the clients' parameters are disjoint slices of the stacked leaves, so the gradient
        # of the sum of their losses is each client's own gradient (times an exact 1)
        leaves = [t.detach().requires_grad_(True) for t in w]
        if stacked is not None:
            logits = stacked(dict(zip(names, leaves, strict=True)), X[idx])  # (k, bs, outputs)
            per_sample = loss_of(logits.reshape(-1, logits.shape[-1]), Y[idx].reshape(-1), reduction="none")
            loss = (per_sample.view(k, -1) * real[s, :k]).sum(1) / counts[s, :k]  # (k,) each client's mean
        else:
            loss = losses_of(dict(zip(names, leaves, strict=True)), X[idx], Y[idx], real[s, :k], counts[s, :k])
        g = list(torch.autograd.grad(loss.sum(), leaves))
        with torch.no_grad():
            total[:k] += loss.detach()
            if anchor is not None and penalized[s]:  # d/dw c ||w - a||^2 = 2c (w - a), steps < penalty_steps
                c2 = 2 * torch.where(penalty_steps[:k] > s, coefficient[:k], 0.0)
                for gi, wi, ai in zip(g, w, anchor, strict=True):
                    gi.add_((wi - ai[:k]) * _column(c2, wi))
            if offset is not None:
                torch._foreach_add_(g, [o[:k] for o in offset])
            if gmask is not None:
                torch._foreach_mul_(g, [m[:k] for m in gmask])
            if spec.weight_decay:
                torch._foreach_add_(g, w, alpha=spec.weight_decay)
            if velocity is not None:
                for j in resets.get(s, ()):
                    for v in velocity:
                        v[j].zero_()
                v = [v[:k] for v in velocity]
                torch._foreach_mul_(v, spec.momentum)
                torch._foreach_add_(v, g)
                g = v
            if lr is None:
                torch._foreach_add_(w, g, alpha=-lrs[0])
            else:
                for wi, gi in zip(w, g, strict=True):
                    wi.sub_(gi * _column(lr[:k], gi))

    flat = torch.cat([p.reshape(C, -1) for p in params], dim=1).cpu()  # (C, P): no buffers to append
    total = total.cpu()
    results: list[LocalResult | None] = [None] * C
    for j, c in enumerate(order):
        results[c] = LocalResult(flat[j].clone(), steps[c], float(total[j]) / steps[c])
    return results


__all__ = ["Vectorized", "model_reason", "plan_reason", "train_stacked"]
