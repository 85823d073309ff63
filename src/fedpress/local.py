"""Local training over a flat model state with torch.func.functional_call.

A model's state travels as one flat fp32 vector: its parameters, then its floating
buffers (BatchNorm running statistics), laid out by a `Layout`. `FlatModel` pairs the
module (used only as a function) with that layout. `train` runs minibatch SGD from a
`LocalPlan`, the data an algorithm hands the executor: where to start, how many steps,
and the hooks the methods need (a penalty such as FedProx's or FLARE's regulariser, a
gradient offset such as Scaffnew's control variate, a point at which to take gradients
such as FedComLoc-Local's compressed model). Because a plan is data and training is a
pure function of (plan, data, generator), an executor may run clients one by one, in a
batch, or in other processes.

The loss is cross-entropy over the model's logits, or, for a model with one output, the
binary logistic loss on labels in {0, 1} (QAFeL's logistic regression, spec §5.4); with
`TrainSpec.weight_decay = λ` the local objective is the ℓ2-regularised f_i(x) + λ/2 ||x||².
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

try:  # the binding torch.func.functional_call makes on every call, to hold it for a whole loop
    from torch.nn.utils.stateless import _reparametrize_module
except ImportError:  # pragma: no cover - a torch without it falls back to per-step binding
    _reparametrize_module = None

from fedpress.compress.codec import Codec
from fedpress.layout import Layout


@dataclass(frozen=True)
class FlatModel:
    """A module used as a pure function of a flat state vector [parameters | buffers]."""

    module: nn.Module
    layout: Layout  # parameters first, then floating buffers
    param_layout: Layout
    buffer_layout: Layout

    @classmethod
    def of(cls, module: nn.Module) -> FlatModel:
        params = [(n, tuple(p.shape)) for n, p in module.named_parameters()]
        buffers = [(n, tuple(b.shape)) for n, b in module.named_buffers() if b.dtype.is_floating_point]
        return cls(module, Layout.from_shapes(params + buffers), Layout.from_shapes(params),
                   Layout.from_shapes(buffers))

    @property
    def num_params(self) -> int:
        """Length of the trainable prefix of the flat vector."""
        return self.param_layout.numel

    def initial(self) -> torch.Tensor:
        """The module's current state as one flat vector (d,)."""
        state = dict(self.module.named_parameters())
        state.update({n: b for n, b in self.module.named_buffers() if b.dtype.is_floating_point})
        return self.layout.flatten(state)

    def counters(self) -> dict[str, torch.Tensor]:
        """Fresh zeros for the integer buffers (BatchNorm's num_batches_tracked): bound per
        client, so no count leaks from one client's training into the next through the module."""
        return {n: torch.zeros_like(b) for n, b in self.module.named_buffers() if not b.dtype.is_floating_point}

    def tensors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views into a flat state, for functional_call."""
        P = self.num_params
        return {**self.param_layout.unflatten(x[:P]), **self.buffer_layout.unflatten(x[P:])}


def loss_of(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy; for one logit per sample, the binary logistic loss
    log(1 + exp(z)) − y z with y in {0, 1} (QAFeL's `log_reg_utils.f`)."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], targets.to(logits.dtype), reduction=reduction)
    return F.cross_entropy(logits, targets, reduction=reduction)


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes: argmax, or z > 0 for one logit."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


@dataclass(frozen=True)
class TrainSpec:
    """Local optimiser settings shared by all clients of a run."""

    lr: float = 0.05
    batch_size: int = 32
    epochs: int = 1
    steps: int | None = None  # if set, a fixed number of minibatch steps instead of epochs
    momentum: float = 0.0
    weight_decay: float = 0.0
    # where the model and the batches live while training; the plan comes from and the
    # result goes back to the CPU, where states and messages stay
    device: torch.device = torch.device("cpu")


# --- what a plan may ask of local training, as data -------------------------------------
#
# A plan holds tensors, numbers and these small frozen dataclasses, never closures, so it
# pickles (a process pool), and a round's plans can be stacked (a vectorized executor).
# Each is evaluated here; an algorithm only fills in its fields.


@dataclass(frozen=True)
class Proximal:
    """coefficient · ||w − anchor||² on the parameters: FedProx's (μ/2)||w − x_t||² (spec §1.10)
    with coefficient μ/2, EC + FedProx's τ_r||y − w||² (spec §6.3) with coefficient τ_r."""

    anchor: torch.Tensor  # (P,)
    coefficient: float

    def __call__(self, w: torch.Tensor, step: int) -> torch.Tensor:
        return self.coefficient * (w - self.anchor).square().sum()


@dataclass(frozen=True)
class MaskedDistance:
    """coefficient · Σ_{j in mask} |w_j − target_j|^power: FLARE's regulariser (spec §6.2 step 2),
    τ_r Σ M |y − (w + e)| with the round's τ_r = τ0 / c^(r+1) as coefficient."""

    mask: torch.Tensor  # (P,) bool
    target: torch.Tensor  # (mask.sum(),) the masked coordinates of w + e
    coefficient: float
    power: int = 1  # 1: l1 (the reference code), 2: squared l2

    def __call__(self, w: torch.Tensor, step: int) -> torch.Tensor:
        diff = w[self.mask] - self.target
        return self.coefficient * (diff.square().sum() if self.power == 2 else diff.abs().sum())


@dataclass(frozen=True)
class CompressedPoint:
    """Gradients taken at C(w) instead of w (FedComLoc-Local, spec §4: g_i = ∇f_i(C(x_i))).
    C is a stateless codec on the parameter layout; its draws come from one generator seeded
    with `seed` at the start of local training and advanced step by step."""

    codec: Codec
    layout: Layout  # the parameters' layout
    seed: int  # derive_seed(run seed, "local_compress", round, client)

    def start(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The point function of one local training: w (P,) -> C(w) (P,)."""
        rng = torch.Generator()
        rng.manual_seed(self.seed)

        def at(w: torch.Tensor) -> torch.Tensor:
            # the codec and its generator live on the CPU; the point goes back to w's device
            msg, _ = self.codec.encode(w.cpu(), self.layout, self.codec.init(self.layout), rng)
            return msg.expand(self.layout).to(w.device)

        return at


Penalty = Callable[[torch.Tensor, int], torch.Tensor]  # (w (P,), step) -> scalar: Proximal, MaskedDistance


@dataclass(frozen=True)
class LocalPlan:
    """What an algorithm asks one client's local training to do: data only (see above)."""

    x0: torch.Tensor  # (d,) start point: parameters then buffers
    steps: int | None = None  # overrides TrainSpec (Scaffnew's random L)
    lr: float | None = None  # overrides TrainSpec (a schedule's value this round)
    # penalty(w, step) -> scalar added to the loss; w is the flat (P,) parameter vector
    penalty: Penalty | None = None  # Proximal, MaskedDistance (any callable runs in-process)
    penalty_steps: int | None = None  # the penalty applies to steps < penalty_steps (None: all)
    grad_offset: torch.Tensor | None = None  # (P,) added to every gradient (Scaffnew: -h_i)
    grad_at: CompressedPoint | Callable[[torch.Tensor], torch.Tensor] | None = None  # (P,) -> (P,) gradient point
    momentum_reset_step: int | None = None  # zero the momentum before this step (FLARE reference code)
    grad_mask: torch.Tensor | None = None  # (P,) multiplies every gradient: fixed-mask training (FLASH)


def on_device(obj, device: torch.device):
    """A plan (or one of its terms) with every tensor on `device`; the same object when they
    are there already (on the CPU, nothing is copied)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type | Codec | Layout):
        changes = {f.name: on_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj)}
        if all(changes[k] is getattr(obj, k) for k in changes):
            return obj
        return dataclasses.replace(obj, **changes)
    return obj


@dataclass(frozen=True)
class LocalResult:
    x: torch.Tensor  # (d,) end point
    steps: int
    loss: float  # mean training loss over the local steps


def num_steps(n: int, spec: TrainSpec, plan: LocalPlan) -> int:
    if plan.steps is not None:
        return plan.steps
    if spec.steps is not None:
        return spec.steps
    return spec.epochs * math.ceil(n / spec.batch_size)


def batches(n: int, batch_size: int, steps: int, rng: torch.Generator):
    """Minibatch index tensors: successive reshuffled passes over the n local samples."""
    perm, at = torch.randperm(n, generator=rng), 0
    for _ in range(steps):
        if at >= n:
            perm, at = torch.randperm(n, generator=rng), 0
        yield perm[at : at + batch_size]
        at += batch_size


@contextmanager
def bound(module: nn.Module, tensors: dict[str, torch.Tensor]):
    """Within the block, `module(x)` computes `functional_call(module, tensors, (x,))`.

    functional_call swaps the tensors in and out on every call; local training binds them
    once per client instead (the tensors are updated in place between steps), which
    removes about 5% of a small CNN's step time.
    """
    if _reparametrize_module is None:  # pragma: no cover
        yield lambda x: functional_call(module, tensors, (x,))
        return
    with _reparametrize_module(module, tensors):
        yield module


def _forked_rng(device: torch.device):
    """torch's global generators forked for the block: the CPU's, and the device's if not the CPU."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)


def _seed_global(device: torch.device, seed: int) -> None:
    """The CPU's global generator seeded, and the device's if it is not the CPU: what
    `torch.manual_seed` does for them, without its calls for every other backend (on a
    machine where CUDA is not initialised each of those is queued with a formatted stack
    trace, never run: 0.4 ms and a few KB held for every client trained)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def train(
    model: FlatModel,
    plan: LocalPlan,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    spec: TrainSpec,
    rng: torch.Generator,
) -> LocalResult:
    """Minibatch SGD (momentum, weight decay, plan hooks) on one client's data, from plan.x0."""
    n = targets.numel()
    steps = num_steps(n, spec, plan)
    if n == 0 or steps == 0:
        return LocalResult(plan.x0.clone(), 0, float("nan"))
    device = spec.device
    plan = on_device(plan, device)  # the same plan on the CPU: nothing is copied
    inputs, targets = inputs.to(device), targets.to(device)
    P = model.num_params
    names = model.param_layout.names
    # Parameters train as separate leaf tensors, as in an nn.Module: autograd writes each
    # gradient into its own tensor (views of one flat leaf would make every backward
    # scatter into a fresh (P,) buffer). The flat vector is rebuilt once at the end.
    params = [t.clone().requires_grad_(True) for t in model.param_layout.unflatten(plan.x0[:P]).values()]
    buffers = plan.x0[P:].clone()  # (B,) BatchNorm updates it in place in train mode
    state = {**dict(zip(names, params, strict=True)), **model.buffer_layout.unflatten(buffers),
             **model.counters()}
    offset = None if plan.grad_offset is None else list(model.param_layout.unflatten(plan.grad_offset).values())
    gmask = None if plan.grad_mask is None else list(model.param_layout.unflatten(plan.grad_mask).values())
    velocity = [torch.zeros_like(p) for p in params] if spec.momentum else None
    lr = spec.lr if plan.lr is None else plan.lr
    grad_at = plan.grad_at.start() if isinstance(plan.grad_at, CompressedPoint) else plan.grad_at
    total = torch.zeros((), device=device)
    model.module.train()
    # Dropout and other in-model randomness draw from torch's global generator (the
    # device's, on a GPU): seed it from this client's generator inside a fork, so nothing
    # leaks out and runs repeat.
    with _forked_rng(device):
        _seed_global(device, int(torch.randint(0, 2**62, (1,), generator=rng)))
        with bound(model.module, state) as forward:
            for step, idx in enumerate(batches(n, spec.batch_size, steps, rng)):
                if velocity is not None and step == plan.momentum_reset_step:
                    velocity = [torch.zeros_like(p) for p in params]
                if grad_at is None:
                    point, logits = params, forward(inputs[idx])
                else:  # gradient taken at another point, applied to w (FedComLoc-Local)
                    moved = grad_at(_flat([p.detach() for p in params]))  # (P,)
                    point = [t.clone().requires_grad_(True) for t in model.param_layout.unflatten(moved).values()]
                    logits = functional_call(model.module, {**state, **dict(zip(names, point, strict=True))},
                                             (inputs[idx],))
                loss = loss_of(logits, targets[idx])
                penalized = plan.penalty is not None and (plan.penalty_steps is None or step < plan.penalty_steps)
                objective = loss + plan.penalty(_flat(point), step) if penalized else loss
                grads = list(torch.autograd.grad(objective, point))
                with torch.no_grad():
                    total += loss
                    if offset is not None:
                        torch._foreach_add_(grads, offset)
                    if gmask is not None:
                        torch._foreach_mul_(grads, gmask)
                    if spec.weight_decay:
                        torch._foreach_add_(grads, params, alpha=spec.weight_decay)
                    if velocity is not None:
                        torch._foreach_mul_(velocity, spec.momentum)
                        torch._foreach_add_(velocity, grads)
                        grads = velocity
                    torch._foreach_add_(params, grads, alpha=-lr)
    x = torch.cat([_flat([p.detach() for p in params]), buffers]).cpu()  # (d,)
    return LocalResult(x, steps, float(total) / steps)


@torch.no_grad()
def evaluate(model: FlatModel, x: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
             batch_size: int = 2000, device: torch.device | None = None) -> tuple[float, float]:
    """(accuracy, mean loss) of the model state x on a labelled set (the loss of `loss_of`),
    computed on `device` (default: where x is)."""
    if targets.numel() == 0:
        return float("nan"), float("nan")
    device = x.device if device is None else device
    model.module.eval()
    state = model.tensors(x.to(device))
    correct, loss = 0, 0.0
    for at in range(0, targets.numel(), batch_size):
        logits = functional_call(model.module, state, (inputs[at : at + batch_size].to(device),))
        y = targets[at : at + batch_size].to(device)
        loss += float(loss_of(logits, y, reduction="sum"))
        correct += int((predictions(logits) == y).sum())
    return correct / targets.numel(), loss / targets.numel()
