"""Split a training set among clients, the ways the papers do.

Every partitioner returns a `Partition`: all clients' sorted int64 indices into
the training set in one tensor, cut by offsets (CSR). ``parts[c]`` is client c's
index tensor: a client *is* its index slice (DESIGN rule 7), and a population of
100,000 clients is two tensors, not 100,000 Python objects (issue 21). All
randomness comes from the ``np.random.Generator`` passed in; an int seed is
turned into ``derive_numpy(seed, "partition")`` (rule 5), so the same seed always
gives the same split.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedpress.rng import derive_numpy

RngLike = np.random.Generator | int
LDA_EPS = 1e-5  # Flower's exclude_classes_and_normalize eps: keeps every open class drawable
MAX_BARS = 2000  # plot_summary draws one bar per client up to this many clients, stacked areas above


def as_generator(rng: RngLike) -> np.random.Generator:
    """A numpy Generator as given, or derived from an int seed for the "partition" purpose."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool):
        return derive_numpy(int(rng), "partition")
    raise TypeError(f"rng must be a numpy Generator or an int seed, not {type(rng).__name__}")


# --------------------------------------------------------------------------- the split


@dataclass(frozen=True, eq=False, repr=False)
class Partition:
    """Every client's sample indices, compressed (CSR): no Python object per client.

    ``order`` lists the indices into the training set client after client;
    client c holds ``order[offsets[c]:offsets[c + 1]]``. It reads like the list of
    index tensors it replaced: ``len(parts)``, ``parts[c]`` (a view into
    ``order``, found in O(1) whatever the population) and ``for p in parts``.
    Both tensors are int64 and 1-D; offsets start at 0, never decrease and end at
    ``len(order)``. Treat them as read-only: the views share their memory.
    """

    order: torch.Tensor
    offsets: torch.Tensor

    def __post_init__(self) -> None:
        order, offsets = (torch.as_tensor(t).detach().cpu() for t in (self.order, self.offsets))
        for name, t in (("order", order), ("offsets", offsets)):
            if t.dim() != 1 or t.dtype != torch.int64:
                raise ValueError(
                    f"Partition.{name} must be a 1-D int64 tensor, got shape {tuple(t.shape)} dtype {t.dtype}"
                )
        if offsets.numel() == 0 or offsets[0] != 0 or offsets[-1] != order.numel():
            raise ValueError(
                f"Partition.offsets must run from 0 to len(order) = {order.numel()}, got "
                f"{offsets[:1].tolist()} .. {offsets[-1:].tolist()}"
            )
        if bool((offsets.diff() < 0).any()):
            raise ValueError("Partition.offsets must never decrease (a client's size is offsets[c+1] - offsets[c])")
        object.__setattr__(self, "order", order.contiguous())
        object.__setattr__(self, "offsets", offsets.contiguous())

    @classmethod
    def from_groups(cls, groups: Sequence[torch.Tensor | np.ndarray | Sequence[int]]) -> Partition:
        """One group of indices per client (what a user's partitioner returns), kept in its order."""
        tensors = [g.detach().cpu() if isinstance(g, torch.Tensor) else torch.from_numpy(np.asarray(g)) for g in groups]
        for c, t in enumerate(tensors):
            integral = not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)
            if t.dim() != 1 or (t.numel() and not integral):  # an empty list comes as float64: let it be
                raise ValueError(
                    f"client {c}'s indices must be a 1-D tensor of ints, got shape {tuple(t.shape)} dtype {t.dtype}"
                )
        order = torch.cat([t.to(torch.int64) for t in tensors]) if tensors else torch.zeros(0, dtype=torch.int64)
        sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
        return cls(order, torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]))

    @classmethod
    def from_assignment(cls, assignment: np.ndarray, num_clients: int) -> Partition:
        """Sample i goes to client ``assignment[i]``; within a client, indices stay ascending.

        One stable argsort groups the samples by client in O(n log n), with no loop
        over clients.
        """
        a = np.asarray(assignment)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"assignment must be a 1-D array of client ids, got shape {a.shape} dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= num_clients):
            raise ValueError(f"assignment holds client ids {a.min()}..{a.max()}, outside 0..{num_clients - 1}")
        order = np.argsort(a, kind="stable").astype(np.int64, copy=False)
        offsets = np.zeros(num_clients + 1, np.int64)
        np.cumsum(np.bincount(a, minlength=num_clients), out=offsets[1:])
        return cls(torch.from_numpy(order), torch.from_numpy(offsets))

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, client: int) -> torch.Tensor:
        try:
            c = operator.index(client)
        except TypeError:
            raise TypeError(f"a Partition is indexed by a client number, not {type(client).__name__}") from None
        if not 0 <= c < len(self):
            raise IndexError(f"client {c} is not in this partition of {len(self)} clients (0..{len(self) - 1})")
        start, stop = self.offsets[c : c + 2].tolist()
        return self.order[start:stop]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.order.split(self.sizes().tolist()))

    def sizes(self) -> torch.Tensor:
        """(num_clients,) int64: each client's number of samples."""
        return self.offsets.diff()

    def __repr__(self) -> str:
        sizes = self.sizes()
        spread = f", sizes {int(sizes.min())}..{int(sizes.max())}" if len(self) else ""
        return f"Partition({len(self)} clients, {self.order.numel()} indices{spread})"


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


def _owners(sizes: np.ndarray) -> np.ndarray:
    """Piece j's owner repeated over its ``sizes[j]`` positions: ``[0]*sizes[0] + [1]*sizes[1] + ...``."""
    return np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)


def _array_split_sizes(n: int, parts: int) -> np.ndarray:
    """The sizes ``np.array_split(range(n), parts)`` cuts: the first n % parts get one more."""
    sizes = np.full(parts, n // parts, np.int64)
    sizes[: n % parts] += 1
    return sizes


# --------------------------------------------------------------------------- partitioners


def iid(n_samples: int, num_clients: int, rng: RngLike) -> Partition:
    """Shuffle, then cut into ``num_clients`` parts whose sizes differ by at most one."""
    _check_clients("iid", n_samples, num_clients)
    perm = as_generator(rng).permutation(n_samples)
    # Client c gets the c-th np.array_split chunk of the permutation; grouping by
    # owner (rather than slicing perm) sorts each client's indices.
    assignment = np.empty(n_samples, np.int64)
    assignment[perm] = _owners(_array_split_sizes(n_samples, num_clients))
    return Partition.from_assignment(assignment, num_clients)


def dirichlet(
    labels: torch.Tensor | np.ndarray,
    num_clients: int,
    alpha: float,
    rng: RngLike,
    min_size: int = 1,
    max_retries: int = 1000,
) -> Partition:
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
        assignment = _dirichlet_once(by_class, y.size, num_clients, alpha, gen)
        if np.bincount(assignment, minlength=num_clients).min() >= min_size:
            return Partition.from_assignment(assignment, num_clients)
    raise ValueError(
        f"dirichlet: after {max_retries} draws some client still had fewer than "
        f"min_size={min_size} samples ({y.size} samples, {num_clients} clients, alpha={alpha}); "
        "raise alpha, lower min_size or use fewer clients"
    )


def _dirichlet_once(
    by_class: list[np.ndarray], n_samples: int, num_clients: int, alpha: float, gen: np.random.Generator
) -> np.ndarray:
    """One draw: each sample's client."""
    assignment = np.empty(n_samples, np.int64)
    for members in by_class:
        shuffled = gen.permutation(members)
        proportions = gen.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
        # client j takes shuffled[cuts[j-1]:cuts[j]] (np.split's pieces, clamped like a slice)
        bounds = np.clip(np.concatenate([[0], cuts, [len(shuffled)]]), 0, len(shuffled))
        assignment[shuffled] = _owners(np.diff(bounds))
    return assignment


def lda_equal(labels: torch.Tensor | np.ndarray, num_clients: int, alpha: float, rng: RngLike) -> Partition:
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
    assignment = np.full(y.size, -1, np.int64)  # every sample is taken: a -1 left over would be refused
    # One client after the other: a class that runs out changes what later clients can draw.
    for client in range(num_clients):
        counts = _draw_without_replacement(proportions[client], size, left, gen)
        # Take from the end of each shuffled pool: positions [0, left) are still unused.
        for pool, k, n in zip(pools, left, counts, strict=True):
            assignment[pool[k - n : k]] = client
        left -= counts
    return Partition.from_assignment(assignment, num_clients)


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


def shards(labels: torch.Tensor | np.ndarray, num_clients: int, classes_per_client: int, rng: RngLike) -> Partition:
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
    shard_sizes = _array_split_sizes(y.size, num_clients * k)  # np.array_split's shards of by_label
    shards_of = gen.permutation(num_clients * k).reshape(num_clients, k)  # row c: the k shards client c gets
    owner = np.empty(num_clients * k, np.int64)
    owner[shards_of.ravel()] = _owners(np.full(num_clients, k))
    assignment = np.empty(y.size, np.int64)
    assignment[by_label] = np.repeat(owner, shard_sizes)
    return Partition.from_assignment(assignment, num_clients)


def power_law(n_samples: int, num_shards: int, alpha: float, rng: RngLike) -> Partition:
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
    return Partition.from_assignment(assignment, num_shards)


def contiguous(n_samples: int, num_clients: int, size: int | None = None) -> Partition:
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
    size = int(size)
    return Partition(
        torch.arange(size * num_clients, dtype=torch.int64), torch.arange(num_clients + 1, dtype=torch.int64) * size
    )


def iid_replacement(n_samples: int, num_clients: int, size: int, rng: RngLike) -> Partition:
    """Each client draws ``size`` rows uniformly *with replacement*: populations larger than the dataset.

    For population-scale runs (issue 21): 100,000 clients over MNIST's 60,000
    training rows cannot each hold rows of their own, so clients share samples.
    Every client gets exactly ``size`` row indices, drawn independently and
    uniformly from all ``n_samples`` rows (a row may even repeat within one
    client); with 100,000 clients of size 8, each row is held by about
    100,000 · 8 / 60,000 ≈ 13 clients, and a client's data is an iid sample of
    the training distribution (no label or quantity skew). The draw is one
    (num_clients × size) array from the generator, so memory is num_clients ·
    size indices and no Python object is made per client.
    """
    _require(
        isinstance(num_clients, int | np.integer) and num_clients >= 1,
        "iid_replacement",
        f"num_clients must be a positive int, got {num_clients!r}",
    )
    _require(
        isinstance(size, int | np.integer) and not isinstance(size, bool) and size >= 1,
        "iid_replacement",
        f"size (samples per client) must be a positive int, got {size!r}",
    )
    _require(n_samples >= 1, "iid_replacement", "needs at least one sample to draw from")
    rows = as_generator(rng).integers(0, n_samples, size=(num_clients, size), dtype=np.int64)
    rows.sort(axis=1)  # each client's indices ascending, like every other partitioner's
    return Partition(torch.from_numpy(rows.reshape(-1)), torch.arange(num_clients + 1, dtype=torch.int64) * int(size))


# --------------------------------------------------------------------------- dispatcher


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Partition | Sequence[torch.Tensor]]  # a user's partitioner may return a list
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
    "iid_replacement": _Entry(iid_replacement, False, ("size",)),
}


def partition(
    name: str,
    labels: torch.Tensor | np.ndarray | int,
    num_clients: int,
    rng: RngLike,
    **params: object,
) -> Partition:
    """Run partitioner ``name`` (a config's short name) on the training ``labels``.

    ``params`` are the partitioner's own (e.g. ``alpha=0.5``); a wrong name or
    parameter raises a ValueError listing what is allowed. Partitioners that
    ignore labels (iid, power_law, contiguous, iid_replacement) also accept a
    sample count. What a registered partitioner returns (a list of index
    tensors) becomes a `Partition`; it must hold ``num_clients`` clients and
    indices into the training set.
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
        made = entry.fn(first, num_clients, rng=as_generator(rng), **params)
    else:
        made = entry.fn(first, num_clients, **params)
    parts = made if isinstance(made, Partition) else Partition.from_groups(made)
    n, rows = (first if isinstance(first, int) else len(first)), parts.order.numpy()
    _require(len(parts) == num_clients, name, f"made {len(parts)} clients, not num_clients = {num_clients}")
    _require(
        rows.size == 0 or (rows.min() >= 0 and rows.max() < n),
        name,
        f"gave indices outside the training set's rows 0..{n - 1}",
    )
    return parts


# --------------------------------------------------------------------------- reports


def _as_partition(parts: Partition | Sequence[torch.Tensor]) -> Partition:
    return parts if isinstance(parts, Partition) else Partition.from_groups(parts)


def class_counts(
    parts: Partition | Sequence[torch.Tensor], labels: torch.Tensor | np.ndarray, num_classes: int
) -> np.ndarray:
    """clients × classes matrix of sample counts (labels >= num_classes are not counted)."""
    parts = _as_partition(parts)
    y = _labels_array(labels)[parts.order.numpy()]
    client = _owners(parts.sizes().numpy())
    keep = y < num_classes
    # one bincount over (client, class) pairs instead of one per client
    flat = np.bincount(client[keep] * num_classes + y[keep], minlength=len(parts) * num_classes)
    return flat.reshape(len(parts), num_classes)


def summary(
    parts: Partition | Sequence[torch.Tensor],
    labels: torch.Tensor | np.ndarray,
    num_classes: int,
    max_rows: int = 40,
) -> str:
    """A printable table: samples and number of classes per client, then totals and spread.

    With more than ``max_rows`` clients, the middle rows are elided.
    """
    parts = _as_partition(parts)
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
    lines.append(
        f"total: {len(parts)} clients, {int(samples.sum())} samples "
        f"({np.unique(parts.order.numpy()).size} distinct of {len(_labels_array(labels))})"
    )
    for title, values in (("samples", samples), ("classes", present)):
        if len(values):
            lines.append(
                f"{title} per client: min {values.min()}, median {float(np.median(values)):g}, max {values.max()}"
            )
    return "\n".join(lines)


def plot_summary(
    parts: Partition | Sequence[torch.Tensor],
    labels: torch.Tensor | np.ndarray,
    num_classes: int,
    path: str | Path,
) -> Path:
    """Save a stacked bar chart (one bar per client, one colour per class) as PNG.

    Uses matplotlib's Agg canvas directly, so it never touches pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parts = _as_partition(parts)
    counts = class_counts(parts, labels, num_classes)
    clients = np.arange(len(parts))
    fig = Figure(figsize=(min(4 + 0.15 * len(parts), 16), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = _class_colors(num_classes)
    if len(parts) > MAX_BARS:
        # one filled step outline per class: a bar per client would be millions of patches
        # (minutes to draw) for bars thinner than a pixel
        ax.stackplot(clients, counts.T, colors=colors, labels=[str(k) for k in range(num_classes)], step="post")
        ax.set_xlim(0, len(parts))
    else:
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
