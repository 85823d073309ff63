"""A hidden-state downlink with catch-up: QAFeL's x̂, for every runtime.

The server keeps a hidden state x̂ that every synced client holds alike. Each broadcast
is a compressed difference q = C(x − x̂) (QAFeL, spec §5.2 step 5), and both sides apply
x̂ ← x̂ + decode(q), so what C leaves out stays in x − x̂ and goes down later: nothing
drifts. Clients train from their x̂.

Clients are not all sampled every round. A client that comes back after missing some
broadcasts is brought from the version it holds to the current one in whichever exact
form is smallest (`catch_up`):

    "q"        the q's it missed, in order (each encoded once, when it was made)
    "changed"  the coordinates of x̂ that changed since its version, with their current
               fp32 values (exact; far smaller than the q's when C is sparse and the
               same coordinates move again and again)
    "whole"    x̂ itself, dense fp32

A client that never held the model gets x̂ whole, or, with `init = "seeded"`, rebuilds
x̂_0 = x0 from the run seed at no cost and catches up from version 0. A client's first
download is counted JOIN (a downlink, shown alone as `initial_downlink_bytes`), the rest
DOWN; `post` counts each frame once per round with its number of receivers, so the
ledger has both views (once per round, and per receiving client).

The server's side is `HiddenState` (x̂, its version, the recent q's, the version at
which each coordinate last changed, the version each client holds): a dataclass of
tensors that the checkpoint keeps. A client needs only its copy and the `Catchup` it
receives (`apply`). `Replicas` keeps the simulator's client copies, one per version that
some client holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from fedpress import wire
from fedpress.compress import Codec, bf16, chain, fp16, fp32, minmax_affine, qsgd, random_k, top_k
from fedpress.layout import Layout
from fedpress.metrics.ledger import BROADCAST, DOWN, JOIN
from fedpress.runtime.transport import Transport
from fedpress.wire.message import Dense, Message

FORMS = ("q", "changed", "whole")
NONE = -1  # the version of a client that holds no copy


@dataclass(frozen=True)
class Catchup:
    """What one client receives to bring its copy of x̂ from `base` to `version`."""

    form: str  # "q" | "changed" | "whole" (FORMS)
    base: int  # the version the client holds (NONE: it holds no copy; the form is "whole")
    version: int  # the version it holds after applying this
    frames: tuple[bytes, ...]  # "q": the missed q's in version order; else one frame (none: up to date)
    first: bool = False  # its first download of the run (counted JOIN)

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.frames))


@dataclass(frozen=True)
class Downlink:
    """A run's hidden-state downlink, built from its [downlink] table."""

    codec: Codec | None  # C, stateless; None for QAFeL, whose q is its algorithm's server quantizer
    seeded: bool = False  # a client's first model is x0 rebuilt from the run seed (init = "seeded")


def codec_of(d) -> Codec:
    """The compressor C of a `[downlink]` table (config.DownlinkConfig): stateless, so a
    q depends on x − x̂ and the broadcast's generator only."""
    make = {"fp32": fp32, "fp16": fp16, "bf16": bf16, "top_k": lambda: top_k(d.ratio),
            "random_k": lambda: random_k(d.ratio), "qsgd": lambda: qsgd(d.levels, d.bucket or None),
            "minmax_affine": lambda: minmax_affine(d.bits)}
    stages = [make[name]() for name in d.stages]
    return stages[0] if len(stages) == 1 else chain(*stages)


def add_q(x_hat: torch.Tensor, q: Message, layout: Layout) -> torch.Tensor:
    """x̂ ← x̂ + q (spec §5.2 step 5), on both sides of the wire."""
    return x_hat + q.expand(layout)


@dataclass
class HiddenState:
    """The server's side of the hidden-state downlink (what a checkpoint keeps)."""

    x_hat: torch.Tensor  # (d,) x̂ of `version`, what every synced client holds
    version: int  # broadcasts applied: 0 is x0
    changed: torch.Tensor  # (d,) int64: the version at which each coordinate of x̂ last changed
    frames: dict[int, bytes] = field(default_factory=dict)  # v -> the q that made x̂_v (recent ones)
    held: dict[int, int] = field(default_factory=dict)  # client -> the version it holds
    seeded: bool = False  # every client holds x̂_0 = x0 without a download (init = "seeded")
    dense: int = 0  # len() of x̂ whole as a frame: what catching up may cost at most


def start(x0: torch.Tensor, layout: Layout, seeded: bool = False) -> HiddenState:
    """x̂_0 = x0, version 0."""
    dense = len(wire.encode(Message(layout.numel, Dense(x0)), layout))
    return HiddenState(x0.clone(), 0, torch.zeros(layout.numel, dtype=torch.int64), {}, {}, seeded, dense)


def advance(hs: HiddenState, q_frame: bytes, q: Message, layout: Layout, apply=add_q) -> HiddenState:
    """One broadcast: x̂ ← apply(x̂, q) (x̂ + q), the version moves on, and the q's frame is
    kept while the q's since the oldest kept one cost less than x̂ whole (past that, a
    client that far behind is cheaper to send x̂ or its changed coordinates)."""
    x_hat = apply(hs.x_hat, q, layout)
    version = hs.version + 1
    moved = x_hat.view(torch.int32) != hs.x_hat.view(torch.int32)  # bit for bit: -0.0 and NaN count as changes
    changed = torch.where(moved, version, hs.changed)
    frames = {**hs.frames, version: q_frame}
    while sum(map(len, frames.values())) >= hs.dense:
        del frames[min(frames)]
    return replace(hs, x_hat=x_hat, version=version, changed=changed, frames=frames)


def encode_step(hs: HiddenState, x: torch.Tensor, codec, layout: Layout, rng: torch.Generator
                ) -> tuple[HiddenState, bytes]:
    """The synchronous broadcast: q = C(x − x̂) with a stateless codec, encoded once (a
    WireError NON_FINITE if x is not finite), then `advance`. Returns the new state and
    q's frame."""
    msg, _ = codec.encode(x - hs.x_hat, layout, codec.init(layout), rng)
    frame = wire.encode(msg, layout)
    return advance(hs, frame, wire.decode(frame, layout), layout), frame


class Server:
    """Catch-ups for the clients of one server version, from a HiddenState. Frames made for
    one client are reused for the next at the same version (x̂ whole; the changed
    coordinates since a base), so clients that get the same bytes get the same object and
    `post` counts it once with its receivers. What it records (the version each client now
    holds) is in `self.hs`, a new HiddenState: the caller keeps it once what it sent has
    crossed, and drops it otherwise (the state it started from is left as it was)."""

    def __init__(self, hs: HiddenState, layout: Layout):
        self.hs, self.layout = replace(hs, held=dict(hs.held)), layout
        self._whole: dict[int, bytes] = {}
        self._changed: dict[tuple[int, int], bytes] = {}

    def whole(self) -> bytes:
        hs = self.hs
        if hs.version not in self._whole:
            self._whole = {hs.version: wire.encode(Message(self.layout.numel, Dense(hs.x_hat)), self.layout)}
        return self._whole[hs.version]

    def changed(self, base: int) -> bytes:
        """The coordinates of x̂ that changed after version `base`, with their values now."""
        hs = self.hs
        key = (hs.version, base)
        if key not in self._changed:
            idx = torch.nonzero(hs.changed > base).flatten()  # (n,) sorted
            msg = Message(self.layout.numel, Dense(hs.x_hat[idx]), indices=idx)
            self._changed = {k: v for k, v in self._changed.items() if k[0] == hs.version}
            self._changed[key] = wire.encode(msg, self.layout)
        return self._changed[key]

    def missed(self, base: int) -> tuple[bytes, ...] | None:
        """The q's after `base`, in order; None when some of them are no longer kept."""
        wanted = range(base + 1, self.hs.version + 1)
        if not all(v in self.hs.frames for v in wanted):
            return None
        return tuple(self.hs.frames[v] for v in wanted)

    def catch_up(self, client: int) -> Catchup:
        """The smallest exact catch-up for `client` (ties: q, then changed, then whole);
        the server then counts the client as holding the current version."""
        hs = self.hs
        held = hs.held.get(client)  # None: never sent anything; NONE: holds nothing now
        first = held is None
        base = (0 if hs.seeded else NONE) if held in (None, NONE) else held
        if base == NONE:
            got = Catchup("whole", NONE, hs.version, (self.whole(),), first)
        elif base == hs.version:
            got = Catchup("q", base, hs.version, (), first)  # up to date: nothing crosses
        else:
            options = []
            if (qs := self.missed(base)) is not None:
                options.append(Catchup("q", base, hs.version, qs, first))
            options.append(Catchup("changed", base, hs.version, (self.changed(base),), first))
            options.append(Catchup("whole", base, hs.version, (self.whole(),), first))
            got = min(options, key=lambda c: c.nbytes)  # min keeps the first of equals
        hs.held[client] = hs.version
        return got



def forget(hs: HiddenState, clients=None) -> HiddenState:
    """`clients` (default: every client the server has sent to) hold nothing we know of: a
    node answered with an error, or the server restarted and cannot know what the nodes
    kept. Next time each gets x̂ whole, or (seeded) catches up from x0."""
    held = dict(hs.held)
    held.update(dict.fromkeys(hs.held if clients is None else clients, NONE))
    return replace(hs, held=held)


def post(catchups: dict[int, Catchup], transport: Transport, round_: int) -> None:
    """Count the catch-ups of one round (or one start): each distinct frame once, with the
    number of clients it went to, JOIN for first downloads and DOWN for the rest."""
    groups: dict[tuple[int, str], list] = {}
    for client, c in catchups.items():
        direction = JOIN if c.first else DOWN
        for frame in c.frames:
            groups.setdefault((id(frame), direction), [frame, []])[1].append(client)
    for (_, direction), (frame, clients) in groups.items():
        if len(clients) == 1:
            transport.count(frame, round_, direction, clients[0])
        else:
            transport.count(frame, round_, direction, BROADCAST, receivers=len(clients))


def apply(copy: torch.Tensor | None, c: Catchup, layout: Layout, add=add_q) -> torch.Tensor:
    """The client's side: its copy of x̂ of version `c.base` brought to `c.version` from the
    bytes alone (WireError for frames that are not valid for the layout). `add` applies a
    q (x̂ + q; an algorithm's `apply_broadcast`)."""
    if c.form not in FORMS:
        raise ValueError(f"catch-up form {c.form!r}; allowed: {', '.join(FORMS)}")
    if c.form == "whole":
        (frame,) = c.frames
        return wire.decode(frame, layout).expand(layout)
    if copy is None:
        raise ValueError(f"a {c.form!r} catch-up from version {c.base} needs the copy of that version; "
                         f"the client holds none")
    if c.form == "changed":
        (frame,) = c.frames
        msg = wire.decode(frame, layout)
        out = copy.clone()
        if msg.indices is None:
            raise ValueError("a 'changed' catch-up must carry explicit indices")
        out[msg.indices] = msg.values.dequantize(layout)  # exact fp32 values of x̂ now
        return out
    for frame in c.frames:
        copy = add(copy, wire.decode(frame, layout), layout)
    return copy


@dataclass
class Replicas:
    """The simulator's clients' copies of x̂: one tensor per version some client holds
    (copies of one version are equal bit for bit), and the version each client holds."""

    held: dict[int, int] = field(default_factory=dict)  # client -> version
    copies: dict[int, torch.Tensor] = field(default_factory=dict)  # version -> x̂ of that version

    def receive(self, client: int, c: Catchup, layout: Layout, seed_model: torch.Tensor | None = None,
                add=add_q) -> torch.Tensor:
        """Client `client` applies `c` to its copy (x0 from the seed when it has none and the
        catch-up starts at version 0) and holds version c.version. A copy of a version that
        another client already rebuilt must equal it bit for bit: RuntimeError if not."""
        held = self.held.get(client)
        if held is None:  # no copy yet: x0 rebuilt from the seed (init = "seeded"), or none
            held, copy = (0, seed_model) if seed_model is not None else (NONE, None)
        else:
            copy = self.copies[held]
        if c.form != "whole" and c.base != held:  # x̂ whole replaces whatever the client holds
            raise RuntimeError(f"client {client} holds x̂ of version {held}, the catch-up is from version {c.base}")
        x = apply(copy, c, layout, add)
        if c.version in self.copies and x is not self.copies[c.version]:
            if not torch.equal(x.view(torch.int32), self.copies[c.version].view(torch.int32)):
                raise RuntimeError(f"client {client}: its x̂ of version {c.version} differs from another client's")
            x = self.copies[c.version]
        self.held[client] = c.version
        self.copies[c.version] = x
        return x

    def prune(self) -> None:
        """Forget the copies no client holds any more."""
        kept = set(self.held.values())
        for v in [v for v in self.copies if v not in kept]:
            del self.copies[v]
