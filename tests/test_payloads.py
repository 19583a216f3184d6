"""Payloads (issue 20): values beyond JSON's own types go into history and
come back as the declared type, live and on replay; a type of the user's
with a registered converter; a codec over the encoded bytes (compression
here, and an encrypting one that seals the same value differently each
time); a size limit; a value nothing can encode refused at the call with
nothing recorded. On the suite's store."""
import base64
import dataclasses
import enum
import os
import weakref
import zlib
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Optional
from uuid import UUID, uuid4

import pytest
from conftest import wait_until

import aion_green as aion
from aion_green.core import events as ev
from aion_green.testing import check_replay


class Tier(enum.Enum):
    GOLD = "gold"
    SILVER = "silver"


@dataclasses.dataclass
class Line:
    sku: str
    price: Decimal


@dataclasses.dataclass
class Order:
    id: UUID
    placed: datetime
    due: date
    tier: Tier
    lines: list[Line]
    note: Optional[str] = None


class Money:
    """A type of the user's, not a dataclass: needs a converter."""

    def __init__(self, amount, currency):
        self.amount, self.currency = amount, currency

    def __eq__(self, other):
        return (self.amount, self.currency) == (other.amount, other.currency)


ORDER = Order(UUID("12345678-1234-5678-1234-567812345678"),
              datetime(2026, 12, 4, 10, 30, tzinfo=timezone(timedelta(hours=2))),
              date(2026, 12, 24), Tier.GOLD,
              [Line("a-1", Decimal("19.99")), Line("b-2", Decimal("0.10"))])
SEEN = []


def total(order: Order) -> Decimal:
    SEEN.append(type(order))
    return sum((line.price for line in order.lines), Decimal(0))


def stamp(order: Order) -> tuple[datetime, UUID]:
    return order.placed + timedelta(days=1), uuid4()


def lines_of(order: Order) -> list[Line]:
    return order.lines


def price(order: Order) -> Money:
    return Money(Decimal("20.09"), "EUR")


@dataclasses.dataclass
class Receipt:
    total: Decimal
    when: datetime
    approved: datetime
    tier: Tier
    cost: Money


@aion.workflow(name="payloads.checkout")
def checkout(ctx, order: Order, extra: Optional[Decimal] = None) -> Receipt:
    assert isinstance(order, Order) and isinstance(order.lines[0], Line)
    assert isinstance(order.placed, datetime) and order.placed.utcoffset() == timedelta(hours=2)
    sum_ = ctx.step(total, order)
    assert isinstance(sum_, Decimal), type(sum_)
    when, token = ctx.step(stamp, order)
    assert isinstance(when, datetime) and isinstance(token, UUID)
    lines = ctx.step(lines_of, order)
    assert all(isinstance(line, Line) for line in lines)
    cost = ctx.step(price, order)
    assert isinstance(cost, Money)
    approved_at = ctx.receive("approved", as_type=datetime)
    assert isinstance(approved_at, datetime)
    return Receipt(sum_ + (extra or 0), when, approved_at, order.tier, cost)


@aion.workflow(name="payloads.returns_order")
def returns_order(ctx, order: Order) -> Order:
    return order


@aion.workflow(name="payloads.inspect")
def inspect_order(ctx, order: Order) -> list:
    """What the workflow's code received, by type."""
    return [type(order).__name__, type(order.placed).__name__, str(order.placed.utcoffset()),
            str(order.lines[0].price + Decimal("0.01")), order.tier.name]


@aion.workflow(name="payloads.parent")
def parent(ctx) -> list:
    child = ctx.start_child(returns_order, ORDER, id=f"{ctx.workflow_id}/child")
    got = child.result()
    assert isinstance(got, Order) and got == ORDER
    return [got.tier, got.due]


@aion.workflow(name="payloads.untyped")
def untyped(ctx, value):
    return ctx.step(_identity, value)


def _identity(value):
    return value


@aion.workflow(name="payloads.bad_result")
def bad_result(ctx):
    return ctx.step(_not_json)


def _not_json():
    return object()


@pytest.fixture(autouse=True)
def clean_payload_settings():
    aion.payloads.reset()
    aion.payloads.register(Money, to_json=lambda m: [str(m.amount), m.currency],
                           from_json=lambda d: Money(Decimal(d[0]), d[1]))
    yield
    aion.payloads.reset()


def run_checkout(engine, wid):
    handle = engine.start(checkout, ORDER, Decimal("0.01"), id=wid)
    wait_until(lambda: engine.describe(wid).head_seq >= 5, what="the run to wait for approval")
    engine.signal(wid, "approved", datetime(2026, 12, 5, 9, 0, tzinfo=timezone.utc))
    return handle.result(timeout=30)


def test_values_round_trip_to_their_declared_types_live_and_on_replay(make_engine, db_url):
    SEEN.clear()
    engine = make_engine(checkout)
    result = run_checkout(engine, "p-1")
    assert result == Receipt(Decimal("20.10"), ORDER.placed + timedelta(days=1),
                             datetime(2026, 12, 5, 9, 0, tzinfo=timezone.utc), Tier.GOLD,
                             Money(Decimal("20.09"), "EUR"))
    assert SEEN == [Order]  # the step ran once, with the decoded order
    # What history holds is plain JSON a client in any language reads.
    started = engine.history("p-1")[0].data
    assert started["args"][0]["placed"] == "2026-12-04T10:30:00+02:00"
    assert started["args"][0]["lines"][0] == {"sku": "a-1", "price": "19.99"}
    assert started["args"][1] == "0.01"
    steps = [e.data["result"] for e in engine.history("p-1") if e.type == ev.STEP_COMPLETED]
    assert steps[0] == "20.09" and steps[3] == ["20.09", "EUR"]
    # A replay of that history decodes the same values (the asserts inside hold).
    assert check_replay(db_url, ["p-1"], workflows=[checkout]) == 1


def test_a_typed_workflow_result_and_a_childs_come_back_as_declared(make_engine):
    engine = make_engine(returns_order, parent)
    got = engine.start(returns_order, ORDER, id="r-1").result(timeout=30)
    assert got == ORDER and isinstance(got.lines[0].price, Decimal)
    # By id, with no function to read the declaration from: its JSON.
    raw = engine.result("r-1", timeout=5)
    assert raw["id"] == str(ORDER.id) and raw["tier"] == "gold"
    assert engine.start(parent, id="pa-1").result(timeout=30) == ["gold", "2026-12-24"]


def test_undeclared_values_come_back_as_json(make_engine):
    engine = make_engine(untyped)
    value = {"when": datetime(2026, 1, 2, tzinfo=timezone.utc), "n": Decimal("1.5"),
             "tags": {"b", "a"}, "tier": Tier.SILVER}
    assert engine.start(untyped, value, id="u-1").result(timeout=30) == {
        "when": "2026-01-02T00:00:00+00:00", "n": "1.5", "tags": ["a", "b"], "tier": "silver"}


def test_a_value_nothing_can_encode_is_refused_at_the_call_and_nothing_is_recorded(make_engine):
    engine = make_engine(untyped, bad_result)
    with pytest.raises(aion.SerializationError, match="argument 1.*object.*register a converter"):
        engine.start(untyped, object(), id="x-1")
    with pytest.raises(aion.WorkflowNotFound):
        engine.describe("x-1")
    with pytest.raises(aion.SerializationError, match="Decimal NaN is not a finite number"):
        engine.start(untyped, Decimal("NaN"), id="x-2")
    handle = engine.start(untyped, 1, id="x-3")
    handle.result(timeout=30)
    with pytest.raises(aion.SerializationError, match="payload of message 'm'"):
        engine.signal("x-3", "m", object())
    # A step returning one fails (for good: the same value would come again).
    with pytest.raises(aion.WorkflowFailed, match="cannot be recorded"):
        engine.start(bad_result, id="x-4").result(timeout=30)


def test_a_codec_seals_payloads_and_opens_them_for_readers(make_engine, db_url):
    aion.payloads.configure(codec=aion.payloads.ZlibCodec())
    engine = make_engine(checkout, untyped)
    result = run_checkout(engine, "z-1")
    assert result.total == Decimal("20.10") and result.cost == Money(Decimal("20.09"), "EUR")
    started = engine.history("z-1")[0].data
    sealed = started["args"][0]
    assert set(sealed) == {aion.payloads.ENVELOPE, "data"} and sealed[aion.payloads.ENVELOPE] == "zlib"
    assert b"a-1" in zlib.decompress(base64.b64decode(sealed["data"]))
    completed = [e for e in engine.history("z-1") if e.type == ev.STEP_COMPLETED][0]
    assert aion.payloads.ENVELOPE in completed.data["result"]
    # describe() and result() answer the values, out of their envelopes.
    assert engine.describe("z-1").args[1] == "0.01"
    assert engine.result("z-1", timeout=5)["tier"] == "gold"
    assert check_replay(db_url, ["z-1"], workflows=[checkout]) == 1
    # A process without the codec cannot read them, and says so.
    aion.payloads.configure()
    with pytest.raises(aion.SerializationError, match="codec 'zlib'"):
        engine.result("z-1", timeout=5)
    # Rotation: written with a new codec, the old one kept for reading.
    aion.payloads.configure(codec=Sealer(), codecs=[aion.payloads.ZlibCodec()])
    assert engine.result("z-1", timeout=5)["tier"] == "gold"
    assert engine.start(untyped, {"k": "v"}, id="z-2").result(timeout=30) == {"k": "v"}
    assert engine.history("z-2")[0].data["args"][0][aion.payloads.ENVELOPE] == "sealer"


class Sealer:
    """A stand-in for encryption: the same value sealed differently each time."""

    name = "sealer"

    def encode(self, data):
        pad = os.urandom(8)
        return pad + bytes(b ^ pad[i % 8] for i, b in enumerate(data))

    def decode(self, data):
        pad, body = data[:8], data[8:]
        return bytes(b ^ pad[i % 8] for i, b in enumerate(body))


def test_an_encrypting_codec_keeps_starts_idempotent(make_engine):
    aion.payloads.configure(codec=Sealer())
    engine = make_engine(untyped)
    first = engine.start(untyped, {"secret": 1}, id="s-1")
    again = engine.start(untyped, {"secret": 1}, id="s-1")  # the same start, sealed anew
    assert again.run_id == first.run_id
    with pytest.raises(aion.WorkflowIdConflict):
        engine.start(untyped, {"secret": 2}, id="s-1")
    assert first.result(timeout=30) == {"secret": 1}


def test_a_payload_over_the_limit_is_refused_at_the_call(make_engine):
    aion.payloads.configure(max_bytes=1000)
    engine = make_engine(untyped)
    with pytest.raises(aion.SerializationError, match=r"\d+ bytes once encoded; the payload size "
                                                      r"limit is 1000 bytes"):
        engine.start(untyped, "x" * 2000, id="big")
    with pytest.raises(aion.WorkflowNotFound):
        engine.describe("big")
    assert engine.start(untyped, "x" * 500, id="small").result(timeout=30) == "x" * 500


def test_bad_configuration_is_refused():
    with pytest.raises(aion.ConfigurationError, match="not a payload codec"):
        aion.payloads.configure(codec=object())
    with pytest.raises(aion.ConfigurationError, match="max_bytes"):
        aion.payloads.configure(max_bytes=0)
    with pytest.raises(aion.ConfigurationError, match="pass a class"):
        aion.payloads.register("Money", to_json=str, from_json=str)


def test_a_workflows_parameter_types_are_read_once_not_per_run(monkeypatch):
    """Each run decodes its arguments as the workflow's parameters declare
    them; the declaration comes from the function's signature once per
    function and ``skip``, not once per run (issue 21: ``inspect.signature``
    per run was ~15 % of the hub's CPU), and a caller that changes the list
    it got changes nothing kept."""
    import inspect

    from aion_green.core import payloads

    def typed(ctx, order: Order, *tiers: Tier):
        pass

    read = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda fn, *a, **k: read.append(fn) or real(fn, *a, **k))
    first = payloads.parameter_hints(typed, skip=1)
    assert first == [Order, payloads._Repeat(Tier)]
    first.append(str)
    assert payloads.parameter_hints(typed, skip=1) == [Order, payloads._Repeat(Tier)]
    assert read == [typed]
    assert payloads.parameter_hints(typed) == [None, Order, payloads._Repeat(Tier)]
    assert read == [typed, typed]


class _Held:
    """Something a step's closure holds."""


_HELD: list = []


@aion.workflow(name="payloads.closures")
def closures(ctx, n) -> Decimal:
    total = Decimal(0)
    for i in range(n):
        held = _Held()
        _HELD.append(weakref.ref(held))
        ctx.step(lambda h=held: len([h]))  # a new lambda each time, as steps are written

        def quarter(k: int = i) -> Decimal:  # a new annotated function each time
            return Decimal(k) / 4

        total += ctx.step(quarter)
    return total


def test_steps_written_as_new_functions_are_not_kept_and_still_decode_as_declared(make_engine):
    """A step's function is made anew at each call (a lambda, a nested
    def): its return type is read from its code, once, and neither the
    function nor what its closure holds outlives the run (every one was
    kept, and its type hints read, per step: issue 21)."""
    import gc

    from aion_green.core import payloads

    _HELD.clear()
    engine = make_engine(closures)
    assert engine.start(closures, 50, id="closures").result(30) == Decimal(50 * 49) / 8
    assert check_replay(engine.url, ["closures"], [closures]) == 1
    gc.collect()
    assert [ref() for ref in _HELD if ref() is not None] == []
    assert sum(code.co_name == "quarter" for code in payloads._HINTS_BY_CODE) == 1


@aion.workflow(name="payloads.queried")
def queried(ctx):
    ctx.set_query("state", lambda: {"since": datetime(2026, 1, 1, tzinfo=timezone.utc),
                                    "tier": Tier.GOLD, "paid": Decimal("1.50")})
    return ctx.receive("stop", timeout=60)


def test_a_query_answers_in_json_form(make_engine):
    engine = make_engine(queried)
    engine.start(queried, id="q-1")
    wait_until(lambda: engine.describe("q-1").head_seq >= 2, what="q-1 to wait")
    assert engine.query("q-1", "state") == {"since": "2026-01-01T00:00:00+00:00", "tier": "gold",
                                            "paid": "1.50"}
    engine.signal("q-1", "stop", None)
    engine.result("q-1", timeout=30)


def test_pydantic_models_round_trip(make_engine):
    import pydantic

    class Address(pydantic.BaseModel):
        city: str
        since: date

    class Customer(pydantic.BaseModel):
        id: UUID
        name: str
        address: Address
        balance: Decimal

    def move(customer: Customer) -> Customer:
        return customer.model_copy(update={"address": Address(city="Lyon", since=date(2026, 12, 1))})

    @aion.workflow(name="payloads.pydantic")
    def relocate(ctx, customer: Customer) -> Customer:
        assert isinstance(customer, Customer) and isinstance(customer.address.since, date)
        moved = ctx.step(move, customer)
        assert isinstance(moved, Customer)
        return moved

    engine = make_engine(relocate)
    ana = Customer(id=uuid4(), name="Ana", address=Address(city="Oslo", since=date(2020, 1, 1)),
                   balance=Decimal("10.50"))
    moved = engine.start(relocate, ana, id="c-1").result(timeout=30)
    assert isinstance(moved, Customer) and moved.address.city == "Lyon"
    assert moved.balance == Decimal("10.50") and moved.id == ana.id
    recorded = engine.history("c-1")[0].data["args"][0]
    assert recorded["address"] == {"city": "Oslo", "since": "2020-01-01"}
    assert recorded["balance"] == "10.50"


def test_a_client_in_another_language_sends_and_reads_plain_json(make_engine):
    """Over HTTP: arguments as JSON (an ISO 8601 string for a datetime, a
    string for a Decimal) reach the workflow as its declared types; its
    typed result answers as JSON."""
    from werkzeug.test import Client

    from aion_green.transport.wsgi import WSGIApp

    engine = make_engine(returns_order, inspect_order)
    http = Client(WSGIApp(engine))
    order = {"id": str(ORDER.id), "placed": "2026-12-04T10:30:00+02:00", "due": "2026-12-24",
             "tier": "gold", "lines": [{"sku": "a-1", "price": "19.99"}], "note": None}
    reply = http.post("/v1/workflows", json={"workflow": "payloads.returns_order",
                                             "args": [order], "id": "h-1"})
    assert reply.status_code == 200, reply.json
    result = http.get("/v1/workflows/h-1/result", query_string={"timeout": "30"}).json
    assert result["result"] == order
    reply = http.post("/v1/workflows", json={"workflow": "payloads.inspect", "args": [order],
                                             "id": "h-2"})
    assert reply.status_code == 200, reply.json
    result = http.get("/v1/workflows/h-2/result", query_string={"timeout": "30"}).json
    assert result["result"] == ["Order", "datetime", "2:00:00", "20.00", "GOLD"]
