"""The contract every algorithm keeps. A test class inherits `AlgorithmContract` and lists
its `cases` (a registry name, hyperparameters, and what the tiny task needs); each test
here then runs for each case, and a step-, channel- or state-wise test only for the
steps, messages and states the case's algorithm has:

    pure      every step, called again on the inputs it had in a round, returns equal
              outputs and modifies none of its inputs in place
    wire      every message it emits (broadcast, uplinks, reply; join, dispatch, flush)
              survives `wire.encode` / `wire.decode`: it expands to the same vector bit for bit
    state     its server and client states survive the checkpoint format (`state.save` /
              `load`) and Flower's (`to_bytes` / `from_bytes`), field by field
    plan      a plan is data: unpickled, it trains to a bit-identical `LocalResult`
    learns    a few seeded rounds (server steps) through the simulator lower the test
              loss, and the same seed twice gives identical metrics

What an algorithm has is read off two rounds (server steps) of it from a fresh start
(`trace`), every step called by hand as the runtimes call it, so steps are checked on
fresh and on warm states (residuals, control variates, FLASH's fixed mask, QAFeL's
hidden state). A reply step exists only for an algorithm whose `reply` sends something, the buffered
steps only for buffered algorithms, `apply_broadcast` only when `flush` broadcasts: no
test is collected for a step an algorithm does not take, so nothing is skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pickle
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn

from fedpress import state, wire
from fedpress.algorithms import RoundContext, Uplink, build
from fedpress.algorithms.registry import REGISTRY
from fedpress.local import LocalPlan, evaluate, train
from fedpress.runtime.executor import Sequential
from fedpress.runtime.experiment import Experiment
from fedpress.runtime.turn import client_context, client_job, train_spec
from fedpress.sim import asynchronous, sample_clients, setup
from fedpress.sim.rounds import run_round
from tests.sim.conftest import synthetic_dataset, tiny_config
from tests.sim.test_async import async_config
from tests.sim.test_run import fresh_progress

DATASET = synthetic_dataset()  # 4 gaussian classes in 16 dimensions: chance is 0.25


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True, eq=False)
class Case:
    """One algorithm on the tiny task: `name` from the registry, its hyperparameters, and
    the config overrides (dotted keys) its family needs; `steps` rounds (server steps) for
    the learning check."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 3
    label: str = ""  # tells apart several cases of one algorithm

    @property
    def id(self) -> str:
        return f"{self.name}:{self.label}" if self.label else self.name

    @property
    def buffered(self) -> bool:
        return REGISTRY[self.name].runtime == "buffered"


def configure(case: Case):
    """The case's config: the simulator's tiny task (tests/sim), evaluated every round."""
    algorithm = build(case.name, case.params)  # a ConfigError here names a wrong hyperparameter
    table = {"name": case.name, **case.params}
    if case.buffered and "buffer_size" in REGISTRY[case.name].params:
        table.setdefault("buffer_size", 3)  # a server step every 3 arrivals, as in tests/sim/test_async.py
    over = {"algorithm": table, "rounds": case.steps, "eval_every": 1, "checkpoint_every": 0}
    if algorithm.plain_sgd:  # declared by the algorithm: its control variates refuse momentum
        over["train.momentum"] = 0.0
    over.update(case.config)
    return async_config(**over) if case.buffered else tiny_config(**over)


def experiment(case: Case) -> Experiment:
    """A fresh experiment of the case on the synthetic dataset (no files)."""
    cfg = configure(case)
    with mock.patch("fedpress.runtime.experiment.load", lambda name, normalize=True: DATASET):
        return asynchronous.setup(cfg) if case.buffered else setup(cfg)


# ---------------------------------------------------------------------------- comparing trees


class Opaque:
    """A leaf that is neither a tensor, a scalar nor a container (a module, a function):
    compared by type only."""

    def __init__(self, obj):
        self.type = type(obj)

    def __eq__(self, other):
        return isinstance(other, Opaque) and self.type is other.type

    def __repr__(self):
        return f"<{self.type.__qualname__}>"


def freeze(obj: Any) -> Any:
    """A deep copy of a tree of states, messages, plans and contexts: tensors cloned,
    containers and dataclasses rebuilt as (type, children), anything else by its type."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    if isinstance(obj, nn.Module | torch.Generator) or callable(obj) and not dataclasses.is_dataclass(obj):
        return Opaque(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj), tuple((f.name, freeze(getattr(obj, f.name))) for f in dataclasses.fields(obj)))
    if isinstance(obj, tuple | list):
        return (type(obj), tuple(freeze(x) for x in obj))
    if isinstance(obj, dict):
        return (dict, tuple((k, freeze(v)) for k, v in obj.items()))
    return Opaque(obj)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes: equal bits, so -0.0 != 0.0 and a NaN equals itself."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two frozen trees differ ([] when equal): tensors by dtype, shape and bits."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [f"{path or '.'}: {type(a).__name__} vs {type(b).__name__}"]
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{path or '.'}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"]
        return [] if torch.equal(bits(a), bits(b)) else [f"{path or '.'}: values differ"]
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == 2 == len(b) and isinstance(a[0], type):
        if a[0] is not b[0]:
            return [f"{path or '.'}: {a[0].__qualname__} vs {getattr(b[0], '__qualname__', b[0])}"]
        kids_a, kids_b = a[1], b[1]
        if len(kids_a) != len(kids_b):
            return [f"{path or '.'}: {len(kids_a)} vs {len(kids_b)} items"]
        if dataclasses.is_dataclass(a[0]) or a[0] is dict:
            out = []
            for (ka, va), (kb, vb) in zip(kids_a, kids_b, strict=True):
                out += [f"{path}: key {ka!r} vs {kb!r}"] if ka != kb else differences(va, vb, f"{path}.{ka}")
            return out
        pairs = enumerate(zip(kids_a, kids_b, strict=True))
        return [d for i, (x, y) in pairs for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if type(a) is type(b) and a == b else [f"{path or '.'}: {a!r} vs {b!r}"]


def assert_same(a: Any, b: Any, what: str) -> None:
    diff = differences(freeze(a), freeze(b))
    assert not diff, f"{what}: " + "; ".join(diff[:5])


def assert_unchanged(before: Any, obj: Any, what: str) -> None:
    """`obj` still equals `before`, the deep copy `freeze(obj)` took earlier."""
    diff = differences(before, freeze(obj))
    assert not diff, f"{what}: " + "; ".join(diff[:5])


# ---------------------------------------------------------------------------- one round, traced


@dataclass(frozen=True)
class Call:
    """One step as a runtime called it: its inputs (and a deep copy of them taken before
    the call) and what it returned."""

    step: str
    fn: Callable
    args: tuple
    before: Any  # freeze(args) before the call
    out: Any  # freeze(what it returned), right after the call
    changed: list[str]  # what of its inputs the call itself modified (should be nothing)


@dataclass
class Trace:
    exp: Experiment
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, list] = field(default_factory=dict)  # channel -> [Message], only those sent
    states: dict[str, list] = field(default_factory=dict)  # "server" / "client" -> [state], None left out
    plans: list[tuple] = field(default_factory=list)  # (plan, round, client, version, frozen result)

    def call(self, step: str, fn: Callable, *args):
        before = freeze(args)
        out = fn(*args)
        self.calls.append(Call(step, fn, args, before, freeze(out), differences(before, freeze(args))))
        return out

    def sent(self, channel: str, message) -> torch.Tensor | None:
        """A message through the wire, as its receiver has it (None: nothing sent)."""
        if message is None:
            return None
        if not any(m is message for m in self.messages.setdefault(channel, [])):
            self.messages[channel].append(message)
        return wire.decode(wire.encode(message, self.exp.wire), self.exp.wire)

    def keep(self, kind: str, obj) -> None:
        if obj is not None:
            self.states.setdefault(kind, []).append(obj)

    def steps(self) -> list[str]:
        return list(dict.fromkeys(c.step for c in self.calls))

    def client(self, store: dict, c: int, received, ctx, round_: int, version: int):
        """One client's begin, training and end, as `runtime.turn.client_turns` runs them;
        its new state (if any) joins `store`. Returns its upload."""
        alg = self.exp.algorithm
        own = store[c] if c in store else alg.init_client(self.exp.model.layout)
        plan = self.call("client_begin", alg.client_begin, own, received, ctx)
        result = self.train(plan, round_, c, version)
        up, new = self.call("client_end", alg.client_end, own, plan, result, ctx)
        self.keep("client", new)
        if new is not None:
            store[c] = new
        return up

    def train(self, plan: LocalPlan, round_: int, client: int, version: int):
        job = client_job(self.exp, plan, round_, client)
        result = train(self.exp.model, plan, job.inputs, job.targets, train_spec(self.exp, version), job.rng)
        self.plans.append((plan, round_, client, version, freeze(result)))
        return result


def trace_rounds(exp: Experiment, rounds: int = 2) -> Trace:
    """Rounds 0 and 1 of a synchronous algorithm by hand, from a fresh start, every step
    called as `sim.rounds.server_round` and `sim.clients.InProcessClients` call it: round 0
    from fresh states, round 1 from warm ones (residuals, control variates, a fixed mask)."""
    cfg, alg, layout, wl = exp.config, exp.algorithm, exp.model.layout, exp.wire
    tr = Trace(exp)
    server = tr.call("init_server", alg.init_server, exp.x0, layout)
    tr.keep("server", server)
    tr.keep("client", tr.call("init_client", alg.init_client, layout))
    store = {}  # the client store: only clients that have state
    for t in range(rounds):
        sampled = sample_clients(cfg, t)
        rctx = RoundContext(t, cfg.seed, sampled, exp.model, cfg.data.num_clients)
        down, sent = tr.call("broadcast", alg.broadcast, server, rctx)
        uplinks = []
        for c in sampled:
            got = tr.sent("broadcast", down.get(c) if isinstance(down, dict) else down)
            received = None if got is None else got.expand(wl)
            ctx = client_context(exp, t, c)
            up = tr.client(store, c, received, ctx, t, t)
            uplinks.append(Uplink(c, tr.sent("uplink", up), float(ctx.num_samples)))
        after = tr.call("aggregate", alg.aggregate, sent, uplinks, rctx)
        tr.keep("server", after)
        if alg.reply(after, rctx) is not None:  # only an algorithm that answers its uploaders has these steps
            x_bar = tr.sent("reply", tr.call("reply", alg.reply, after, rctx)).expand(wl)
            for u in uplinks:
                store[u.client] = tr.call("client_reply", alg.client_reply, store[u.client], x_bar,
                                          client_context(exp, t, u.client))
                tr.keep("client", store[u.client])
        tr.call("round_metrics", alg.round_metrics, sent, after, uplinks, rctx)
        tr.call("model", alg.model, after)
        server = after
    return tr


def trace_buffered(exp: Experiment, steps: int = 2) -> Trace:
    """Two server steps of a buffered algorithm by hand, from a fresh start, every step
    called as `sim.asynchronous.Engine` calls it: clients join (the first time), are
    dispatched, train and arrive with several stalenesses until the buffer is ready; the
    server flushes, and its broadcast (if any) moves the clients' synced copy."""
    cfg, alg, layout, wl = exp.config, exp.algorithm, exp.model.layout, exp.wire
    tr = Trace(exp)
    server = tr.call("init_server", alg.init_server, exp.x0, layout)
    tr.keep("server", server)
    tr.keep("client", tr.call("init_client", alg.init_client, layout))
    store, joined, copy, seq = {}, set(), None, 0
    for v in range(steps):
        while True:
            c = seq % cfg.data.num_clients
            rctx = RoundContext(v, cfg.seed, (c,), exp.model, cfg.data.num_clients)
            if c not in joined:
                joined.add(c)
                first = tr.sent("join", tr.call("join", alg.join, server, rctx))
                if first is not None:
                    copy = first.expand(wl)
            ctx = client_context(exp, seq, c, v)
            down, server = tr.call("dispatch", alg.dispatch, server, ctx)
            got = tr.sent("dispatch", down)
            received = copy if got is None else got.expand(wl)
            up = tr.client(store, c, received, ctx, seq, v)
            tau = seq % 3  # arrivals of several stalenesses, weighted 1/sqrt(1 + tau)
            uplink = Uplink(c, tr.sent("uplink", up), float(ctx.num_samples), tau, 1 / math.sqrt(1 + tau))
            server = tr.call("receive", alg.receive, server, uplink, rctx)
            tr.keep("server", server)
            seq += 1
            if tr.call("ready", alg.ready, server):
                break
            assert seq < 100 * cfg.data.num_clients, f"{alg.name}: the buffer is never ready"
        server, q = tr.call("flush", alg.flush, server, RoundContext(v, cfg.seed, (), exp.model,
                                                                     cfg.data.num_clients))
        tr.keep("server", server)
        arrived = tr.sent("flush", q)
        if arrived is not None:  # only a server that broadcasts after its step has this client step
            copy = tr.call("apply_broadcast", alg.apply_broadcast, copy, arrived, wl)
        tr.call("model", alg.model, server)
    return tr


@contextmanager
def one_thread():
    """torch on one thread while a tiny model trains: two threads on a shared 2-core machine
    spin against each other (a 0.3 s run took 16 s), and the models here gain nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.cache
def _trace(case_id: str, case: Case) -> Trace:
    exp = experiment(case)
    with one_thread():
        return trace_buffered(exp) if case.buffered else trace_rounds(exp)


def trace(case: Case) -> Trace:
    return _trace(case.id, case)


def run(case: Case) -> tuple[list[dict], torch.Tensor, tuple[float, float]]:
    """The case through the simulator from scratch: its metrics rows (without wall time),
    its final model, and the (accuracy, loss) of the initial model on the test set."""
    exp = experiment(case)
    before = evaluate(exp.model, exp.x0, DATASET.x_test, DATASET.y_test)
    if case.buffered:
        p = asynchronous.fresh(exp)
        engine = asynchronous.Engine(exp, p, Sequential())
        rows = [engine.step() for _ in range(case.steps)]
    else:
        p = fresh_progress(exp)
        rows = [run_round(exp, p, Sequential(), t) for t in range(case.steps)]
    rows = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]
    return rows, exp.algorithm.model(p.server), before


# ---------------------------------------------------------------------------- the contract


class AlgorithmContract:
    cases: list[Case] = []

    def pytest_generate_tests(self, metafunc):
        """Each test once per case; `step`, `channel` and `kind` over what the case's
        algorithm has in its traced round (a case whose trace fails gets one test that
        fails with the error)."""
        names = metafunc.fixturenames
        ids = [c.id for c in self.cases]
        assert len(set(ids)) == len(ids), f"{type(self).__name__}: two cases with one id: {ids}"
        if not {"step", "channel", "kind"} & set(names):
            metafunc.parametrize("case", self.cases, ids=ids)
            return
        arg = next(n for n in ("step", "channel", "kind") if n in names)
        params, labels = [], []
        for case in self.cases:
            try:
                tr = trace(case)
                have = {"step": tr.steps(), "channel": list(tr.messages), "kind": list(tr.states)}[arg]
            except Exception:  # reported by the test itself (trace(case) raises again), not at collection
                have = ["trace"]
            params += [(case, h) for h in have]
            labels += [f"{case.id}-{h}" for h in have]
        metafunc.parametrize(("case", arg), params, ids=labels)

    @pytest.fixture(autouse=True)
    def _one_thread(self):
        with one_thread():
            yield

    # -------------------------------------------------------------------- 1. pure steps

    def test_step_is_pure(self, case, step):
        calls = [c for c in trace(case).calls if c.step == step]
        assert calls, f"{case.id}: no {step} in its round"
        for n, call in enumerate(calls):
            where = f"{case.id}: {step} (call {n + 1})"
            assert not call.changed, f"{where} modified its inputs in place: " + "; ".join(call.changed[:5])
            # a later step that modified these inputs (an alias it was handed) fails its own test;
            # here the step is called again on its inputs as they are now
            now = freeze(call.args)
            untouched = not differences(call.before, now)
            again = call.fn(*call.args)
            assert_unchanged(now, call.args, f"{where} modified its inputs in place when called again")
            if untouched:
                diff = differences(call.out, freeze(again))
                assert not diff, f"{where} gave another output on the same inputs: " + "; ".join(diff[:5])
            assert_same(call.fn(*call.args), again, f"{where} gave another output on the same inputs")

    # -------------------------------------------------------------------- 2. the wire

    def test_messages_survive_the_wire(self, case, channel):
        tr = trace(case)
        layout = tr.exp.wire
        for n, msg in enumerate(tr.messages[channel]):
            data = wire.encode(msg, layout)
            back = wire.decode(data, layout)
            where = f"{case.id}: {channel} message {n + 1}"
            assert back.d == msg.d == layout.numel, where
            assert torch.equal(bits(back.expand(layout)), bits(msg.expand(layout))), f"{where} decodes differently"
            assert wire.encode(back, layout) == data, f"{where}: the decoded message encodes to other bytes"

    # -------------------------------------------------------------------- 3. states

    def test_states_survive_checkpoints_and_bytes(self, case, kind, tmp_path):
        for n, obj in enumerate(trace(case).states[kind]):
            where = f"{case.id}: {kind} state {n + 1} ({type(obj).__name__})"
            state.save(obj, tmp_path / f"{n}.pt")
            assert_same(state.load(tmp_path / f"{n}.pt"), obj, f"{where} through state.save / load")
            assert_same(state.from_bytes(state.to_bytes(obj)), obj, f"{where} through to_bytes / from_bytes")

    # -------------------------------------------------------------------- 4. plans are data

    def test_plan_is_data(self, case):
        tr = trace(case)
        assert tr.plans, f"{case.id}: no client trained"
        for plan, round_, client, version, result in tr.plans:
            copy = pickle.loads(pickle.dumps(plan))
            job = client_job(tr.exp, copy, round_, client)  # the same generator seed as the traced run
            again = train(tr.exp.model, copy, job.inputs, job.targets, train_spec(tr.exp, version), job.rng)
            diff = differences(result, freeze(again))  # x bit for bit, steps, loss
            assert not diff, f"{case.id}: the plan of client {client} trains to another result once unpickled: {diff}"

    # -------------------------------------------------------------------- 5. it learns, and repeats

    def test_learns_and_repeats_with_its_seed(self, case):
        rows, x, (acc0, loss0) = run(case)
        last = rows[-1]
        assert last["test_loss"] < 0.95 * loss0, (
            f"{case.id}: test loss {loss0:.3f} -> {last['test_loss']:.3f} after {case.steps} steps "
            f"(accuracy {acc0:.2f} -> {last['test_accuracy']:.2f})")
        rows_again, x_again, _ = run(case)
        assert_same(rows_again, rows, f"{case.id}: the same seed gave other metrics")
        assert torch.equal(bits(x_again), bits(x)), f"{case.id}: the same seed gave another model"
