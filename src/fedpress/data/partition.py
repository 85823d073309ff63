"""Split a training set among clients, the ways the papers do.

Every partitioner returns ``list[torch.Tensor]``: one sorted int64 tensor of
indices into the training set per client. A client *is* its index tensor
(DESIGN rule 7). All randomness comes from the ``np.random.Generator`` passed
in; an int seed is turned into ``derive_numpy(seed, "partition")`` (rule 5), so
the same seed always gives the same split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedpress.rng import derive_numpy

RngLike = np.random.Generator | int
LDA_EPS = 1e-5  # Flower's exclude_classes_and_normalize eps: keeps every open class drawable


def as_generator(rng: RngLike) -> np.random.Generator:
    """A numpy Generator as given, or derived from an int seed for the "partition" purpose."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool):
        return derive_numpy(int(rng), "partition")
    raise TypeError(f"rng must be a numpy Generator or an int seed, not {type(rng).__name__}")


# --------------------------------------------------------------------------- helpers


def _require(ok: bool, partitioner: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{partitioner}: {message}")


def _check_clients(partitioner: str, n_samples: int, num_clients: int, per_client: int = 1) -> None:
    _require(
        isinstance(num_clients, int | np.integer) and num_clients >= 1,
        partitioner,
        f"num_clients must be a positive int, got {num_clients!r}",
    )
    _require(
        n_samples >= num_clients * per_client,
        partitioner,
        f"{n_samples} samples cannot give {num_clients} clients {per_client} sample(s) each",
    )


def _check_alpha(partitioner: str, alpha: float) -> None:
    _require(
        isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0,
        partitioner,
        f"alpha must be a finite number > 0, got {alpha!r}",
    )


def _labels_array(labels: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    """Labels as a 1-D int64 numpy array of non-negative class indices."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0)):
        raise ValueError(f"labels must be a 1-D array of non-negative ints, got shape {y.shape} dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def _to_tensors(groups: Sequence[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.sort(np.asarray(g, np.int64))) for g in groups]


def _split_by_assignment(assignment: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Group sample indices by their client id in O(n log n) (no loop over clients × samples)."""
    order = np.argsort(assignment, kind="stable")
    counts = np.bincount(assignment, minlength=num_clients)
    return np.split(order, np.cumsum(counts)[:-1])


# --------------------------------------------------------------------------- partitioners


def iid(n_samples: int, num_clients: int, rng: RngLike) -> list[torch.Tensor]:
    """Shuffle, then cut into ``num_clients`` parts whose sizes differ by at most one."""
    _check_clients("iid", n_samples, num_clients)
    perm = as_generator(rng).permutation(n_samples)
    return _to_tensors(np.array_split(perm, num_clients))


def dirichlet(
    labels: torch.Tensor | np.ndarray,
    num_clients: int,
    alpha: float,
    rng: RngLike,
    min_size: int = 1,
    max_retries: int = 1000,
) -> list[torch.Tensor]:
    """Per-class Dirichlet label skew (Hsu et al. 2019; the common FL benchmark split).

    For each class, proportions p ~ Dir(alpha·1) over the clients split that
    class's shuffled samples. Small alpha puts each class on few clients. The
    whole split is redrawn until every client has at least ``min_size`` samples;
    after ``max_retries`` draws a ValueError says which knob to turn.
    """
    y = _labels_array(labels)
    _check_alpha("dirichlet", alpha)
    _check_clients("dirichlet", y.size, num_clients, min_size)
    gen = as_generator(rng)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(max_retries):
        groups = _dirichlet_once(by_class, num_clients, alpha, gen)
        if min(len(g) for g in groups) >= min_size:
            return _to_tensors(groups)
    raise ValueError(
        f"dirichlet: after {max_retries} draws some client still had fewer than "
        f"min_size={min_size} samples ({y.size} samples, {num_clients} clients, alpha={alpha}); "
        "raise alpha, lower min_size or use fewer clients"
    )


def _dirichlet_once(
    by_class: list[np.ndarray], num_clients: int, alpha: float, gen: np.random.Generator
) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for members in by_class:
        shuffled = gen.permutation(members)
        proportions = gen.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
        for client, piece in enumerate(np.split(shuffled, cuts)):
            parts[client].append(piece)
    return [np.concatenate(p) for p in parts]


def lda_equal(labels: torch.Tensor | np.ndarray, num_clients: int, alpha: float, rng: RngLike) -> list[torch.Tensor]:
    """SparsyFed's equal-size LDA split (Flower's old ``create_lda_partitions``), spec §1.11.

    Every client gets exactly N / num_clients samples. Client c's class
    proportions are q_c ~ Dir(alpha·1); its samples are drawn from q_c without
    replacement; a class that runs out is removed and the proportions are
    renormalised (for this and later clients). alpha = 1000 acts as IID.
    """
    y = _labels_array(labels)
    _check_alpha("lda_equal", alpha)
    _check_clients("lda_equal", y.size, num_clients)
    _require(
        y.size % num_clients == 0,
        "lda_equal",
        f"{y.size} samples do not divide into {num_clients} equal clients",
    )
    gen = as_generator(rng)
    classes = np.unique(y)
    pools = [gen.permutation(np.flatnonzero(y == c)) for c in classes]
    left = np.array([len(p) for p in pools])
    proportions = gen.dirichlet(np.full(len(classes), float(alpha)), size=num_clients)
    size = y.size // num_clients
    groups = []
    for client in range(num_clients):
        counts = _draw_without_replacement(proportions[client], size, left, gen)
        # Take from the end of each shuffled pool: positions [0, left) are still unused.
        taken = [pool[k - n : k] for pool, k, n in zip(pools, left, counts, strict=True)]
        left -= counts
        groups.append(np.concatenate(taken))
    return _to_tensors(groups)


def _draw_without_replacement(p: np.ndarray, m: int, left: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Class counts of ``m`` one-at-a-time draws from ``p``, renormalised as classes run out.

    Drawing in batches is exact: sequential draws with exhausted classes removed
    equal a stream of iid draws from p in which draws of an exhausted class are
    rejected, so each batch keeps min(drawn, left) per class and redraws the rest
    from the classes still open.
    """
    counts = np.zeros_like(left)
    while (need := m - int(counts.sum())) > 0:
        room = left - counts
        q = np.where(room > 0, p + LDA_EPS, 0.0)
        counts += np.minimum(gen.multinomial(need, q / q.sum()), room)
    return counts


def shards(
    labels: torch.Tensor | np.ndarray, num_clients: int, classes_per_client: int, rng: RngLike
) -> list[torch.Tensor]:
    """Pathological non-IID split (McMahan et al. 2017): label-sorted shards, k per client.

    Samples are sorted by label (shuffled within a class), cut into
    num_clients·k near-equal shards, and each client gets k shards at random. A
    client sees at most k classes, exactly k when every shard holds one class and
    no client draws two shards of the same class.
    """
    y = _labels_array(labels)
    k = classes_per_client
    _require(
        isinstance(k, int | np.integer) and k >= 1,
        "shards",
        f"classes_per_client must be a positive int, got {k!r}",
    )
    _check_clients("shards", y.size, num_clients, k)
    gen = as_generator(rng)
    perm = gen.permutation(y.size)
    by_label = perm[np.argsort(y[perm], kind="stable")]
    pieces = np.array_split(by_label, num_clients * k)
    owners = gen.permutation(num_clients * k).reshape(num_clients, k)
    return _to_tensors([np.concatenate([pieces[s] for s in row]) for row in owners])


def power_law(n_samples: int, num_shards: int, alpha: float, rng: RngLike) -> list[torch.Tensor]:
    """Quantity skew of FLSim's PowerLawSharder (QAFeL CIFAR-10, spec §1.11); no label skew.

    Shard weights w ~ power(alpha) (numpy's ``Generator.power``). Rows
    0..num_shards-1 go one to each shard (so none is empty); every later row goes
    to shard j with probability w_j / sum(w).
    """
    _check_alpha("power_law", alpha)
    _check_clients("power_law", n_samples, num_shards)
    gen = as_generator(rng)
    weights = gen.power(alpha, size=num_shards)
    assignment = np.empty(n_samples, np.int64)
    assignment[:num_shards] = np.arange(num_shards)
    assignment[num_shards:] = gen.choice(num_shards, size=n_samples - num_shards, p=weights / weights.sum())
    return _to_tensors(_split_by_assignment(assignment, num_shards))


def contiguous(n_samples: int, num_clients: int, size: int | None = None) -> list[torch.Tensor]:
    """FLARE's split (spec §1.11): client c gets rows [size·c, size·(c+1)) in file order.

    Not random and not necessarily a full partition: FLARE uses 600-row slices
    of MNIST and only the first clients. ``size`` defaults to n_samples // num_clients.
    """
    _check_clients("contiguous", n_samples, num_clients)
    size = n_samples // num_clients if size is None else size
    _require(
        isinstance(size, int | np.integer) and size >= 1,
        "contiguous",
        f"size must be a positive int, got {size!r}",
    )
    _require(
        size * num_clients <= n_samples,
        "contiguous",
        f"{num_clients} clients × size {size} = {size * num_clients} rows > {n_samples} samples",
    )
    return [torch.arange(size * c, size * (c + 1), dtype=torch.int64) for c in range(num_clients)]


# --------------------------------------------------------------------------- dispatcher


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., list[torch.Tensor]]
    takes_labels: bool  # first argument: labels (True) or n_samples (False)
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    random: bool = True


PARTITIONERS: dict[str, _Entry] = {
    "iid": _Entry(iid, False),
    "dirichlet": _Entry(dirichlet, True, ("alpha",), ("min_size", "max_retries")),
    "lda_equal": _Entry(lda_equal, True, ("alpha",)),
    "shards": _Entry(shards, True, ("classes_per_client",)),
    "power_law": _Entry(power_law, False, ("alpha",)),
    "contiguous": _Entry(contiguous, False, (), ("size",), random=False),
}


def partition(
    name: str,
    labels: torch.Tensor | np.ndarray | int,
    num_clients: int,
    rng: RngLike,
    **params: object,
) -> list[torch.Tensor]:
    """Run partitioner ``name`` (a config's short name) on the training ``labels``.

    ``params`` are the partitioner's own (e.g. ``alpha=0.5``); a wrong name or
    parameter raises a ValueError listing what is allowed. Partitioners that
    ignore labels (iid, power_law, contiguous) also accept a sample count.
    """
    entry = PARTITIONERS.get(name)
    if entry is None:
        raise ValueError(f"unknown partitioner {name!r}; allowed: {', '.join(PARTITIONERS)}")
    allowed = entry.required + entry.optional
    described = ", ".join(allowed) if allowed else "no parameters"
    unknown = sorted(set(params) - set(allowed))
    missing = [p for p in entry.required if p not in params]
    if unknown or missing:
        problem = f"unknown parameter(s) {unknown}" if unknown else f"missing parameter(s) {missing}"
        raise ValueError(
            f"partitioner {name!r}: {problem}; it takes {described}"
            + (f" (required: {', '.join(entry.required)})" if entry.required else "")
        )
    if entry.takes_labels:
        _require(not isinstance(labels, int), name, "needs the training labels, not a sample count")
        first = _labels_array(labels)
    else:
        first = labels if isinstance(labels, int) else len(labels)
    if entry.random:
        return entry.fn(first, num_clients, rng=as_generator(rng), **params)
    return entry.fn(first, num_clients, **params)


# --------------------------------------------------------------------------- reports


def class_counts(parts: Sequence[torch.Tensor], labels: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """clients × classes matrix of sample counts."""
    y = _labels_array(labels)
    rows = [np.bincount(y[p.numpy()], minlength=num_classes)[:num_classes] for p in parts]
    return np.stack(rows) if rows else np.zeros((0, num_classes), np.int64)


def summary(
    parts: Sequence[torch.Tensor],
    labels: torch.Tensor | np.ndarray,
    num_classes: int,
    max_rows: int = 40,
) -> str:
    """A printable table: samples and number of classes per client, then totals and spread.

    With more than ``max_rows`` clients, the middle rows are elided.
    """
    counts = class_counts(parts, labels, num_classes)
    samples = counts.sum(axis=1)
    present = (counts > 0).sum(axis=1)
    width = max(7, len(str(int(samples.max(initial=0)))))
    lines = [f"{'client':>6}  {'samples':>{width}}  {'classes':>7}"]
    shown = range(len(parts))
    if len(parts) > max_rows:
        half = max_rows // 2
        shown = [*range(half), -1, *range(len(parts) - half, len(parts))]
    for c in shown:
        if c < 0:
            lines.append(f"{'...':>6}")
        else:
            lines.append(f"{c:>6}  {samples[c]:>{width}}  {present[c]:>7}")
    assigned = np.concatenate([p.numpy() for p in parts]) if parts else np.zeros(0, np.int64)
    lines.append(
        f"total: {len(parts)} clients, {int(samples.sum())} samples "
        f"({np.unique(assigned).size} distinct of {len(_labels_array(labels))})"
    )
    for title, values in (("samples", samples), ("classes", present)):
        if len(values):
            lines.append(
                f"{title} per client: min {values.min()}, median {float(np.median(values)):g}, max {values.max()}"
            )
    return "\n".join(lines)


def plot_summary(
    parts: Sequence[torch.Tensor],
    labels: torch.Tensor | np.ndarray,
    num_classes: int,
    path: str | Path,
) -> Path:
    """Save a stacked bar chart (one bar per client, one colour per class) as PNG.

    Uses matplotlib's Agg canvas directly, so it never touches pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = class_counts(parts, labels, num_classes)
    clients = np.arange(len(parts))
    fig = Figure(figsize=(min(4 + 0.15 * len(parts), 16), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = _class_colors(num_classes)
    bottom = np.zeros(len(parts))
    for k in range(num_classes):
        ax.bar(clients, counts[:, k], bottom=bottom, width=1.0, color=colors[k], label=str(k))
        bottom += counts[:, k]
    ax.set_xlabel("client")
    ax.set_ylabel("samples")
    ax.set_title(f"{len(parts)} clients, {int(counts.sum())} samples, {num_classes} classes")
    if num_classes <= 20:
        ax.legend(title="class", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def _class_colors(num_classes: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"]
    if num_classes <= 20:
        return [cmap(k) for k in range(num_classes)]
    return [cmap(k / max(num_classes - 1, 1)) for k in range(num_classes)]
