"""The public API as a strictly typed user sees it (issue 20).

Never run: ``mypy --strict tests/typecheck`` checks it (the tox ``lint``
environment). Two kinds of line prove the types:

- ``assert_type(expr, T)`` fails unless mypy infers exactly ``T``: an ``Any``
  where a type is promised fails it too;
- ``# type: ignore[code]`` on a call that must be rejected: under
  ``--strict`` (``warn_unused_ignores``) an ignore that nothing needed is an
  error, so a check that got lax (an ``Any`` result, unchecked arguments)
  fails the run.

typing_extensions, not typing: ``assert_type`` is in typing from 3.11 only,
and mypy knows typing_extensions without it being installed.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from typing_extensions import assert_type

import aion_green as aion
from aion_green import errors, testing
from aion_green.transport.client import Client, RemoteHandle

# -- steps and workflows of a typed code base -----------------------------------------------


def price(order_id: str, quantity: int = 1) -> int:
    return 100 * quantity


def charge(order_id: str, amount: int) -> str:
    return f"receipt-{order_id}-{amount}"


def total(*amounts: int) -> float:
    return float(sum(amounts))


def ping() -> None:
    return None


@aion.workflow
def ship(ctx: aion.WorkflowContext, order_id: str) -> str:
    return ctx.step(charge, order_id, 0)


@aion.workflow(name="audit")
def audit(ctx: aion.WorkflowContext) -> None:
    return None


@aion.workflow
def checkout(ctx: aion.WorkflowContext, order_id: str) -> dict[str, str]:
    # ctx.step: typed as the step function's result; its arguments checked
    # against the function's parameters; the options by their own types.
    amount = ctx.step(price, order_id)
    assert_type(amount, int)
    assert_type(ctx.step(price, order_id, 2), int)
    assert_type(ctx.step(total, 1, 2, 3), float)
    assert_type(ctx.step(ping), None)
    assert_type(ctx.step(lambda: "x"), str)
    receipt = ctx.step(charge, order_id, amount, retry=aion.Retry(max_attempts=5),
                       name="charge", timeout=timedelta(seconds=30))
    assert_type(receipt, str)
    ctx.step(price, order_id, timeout=2.5)

    # What a typed step must reject (each ignore is needed, or mypy fails).
    wrong: str = ctx.step(price, order_id)  # type: ignore[assignment]
    ctx.step(price, 42)  # type: ignore[arg-type]
    ctx.step(price)  # type: ignore[arg-type]
    ctx.step(price, order_id, 1, 2)  # type: ignore[arg-type]
    ctx.step(price, order_id, retry=3)  # type: ignore[arg-type]
    ctx.step(price, order_id, timeout="soon")  # type: ignore[arg-type]
    ctx.step(price, order_id, attempts=3)  # type: ignore[call-arg]

    # Durable time, messages, determinism.
    ctx.sleep(timedelta(hours=1))
    ctx.sleep(5)
    ctx.sleep_until(datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert_type(ctx.now(), datetime)
    assert_type(ctx.random(), float)
    assert_type(ctx.uuid4(), uuid.UUID)
    assert_type(ctx.is_replaying, bool)
    assert_type(ctx.workflow_id, str)
    assert_type(ctx.run_id, str)
    assert_type(ctx.namespace, str)
    approval = ctx.receive("approval", timeout=timedelta(days=2))
    assert_type(approval, Any)  # a payload is JSON, whatever the sender sent
    ctx.send("order-2", "nudge", {"n": 1})
    ctx.set_query("amount", lambda: amount)
    assert_type(ctx.patched("new-pricing"), bool)
    ctx.upsert_search_attributes({"customer": "c-1", "amount": amount})
    assert_type(ctx.search_attributes, dict[str, Any])
    with ctx.timeout(timedelta(minutes=5)):
        pass

    # Children: the handle is generic in the child workflow's result.
    child = ctx.start_child(ship, order_id)
    assert_type(child, aion.ChildHandle[str])
    assert_type(child.result(), str)
    assert_type(ctx.start_child(ship, order_id, id="ship-1").workflow_id, str)
    assert_type(ctx.start_child(audit), aion.ChildHandle[None])
    assert_type(ctx.start_child("billing.invoice", order_id, 3), aion.ChildHandle[Any])
    ctx.start_child(ship)  # type: ignore[arg-type, call-arg]
    ctx.start_child(ship, 7)  # type: ignore[arg-type]
    ctx.start_child(price, order_id)  # type: ignore[arg-type]
    late: int = ctx.start_child(ship, order_id).result()  # type: ignore[assignment]

    # Fan-out: aion.Step is checked like ctx.step; results are a list of
    # whatever the items give (Any: a list mixes the items' types).
    step = aion.Step(price, order_id, retry=aion.Retry(), name="price", timeout=3)
    assert_type(step, aion.Step[int])
    aion.Step(price, 42)  # type: ignore[arg-type]
    assert_type(ctx.parallel([step, aion.Step(charge, order_id, 1), child]), list[Any])
    assert_type(ctx.race([step, child]), tuple[int, Any])

    # Supervision: specs checked against the child's parameters; the
    # restart types and strategies are literals.
    specs = [aion.ChildSpec(ship, order_id, restart="transient", id="ship-a"),
             aion.ChildSpec("billing.invoice", order_id, restart="temporary",
                            shutdown=timedelta(seconds=1))]
    assert_type(ctx.supervise(specs, strategy="one_for_all", intensity=2,
                              period=timedelta(seconds=10)), list[Any])
    aion.ChildSpec(ship, 7)  # type: ignore[arg-type]
    aion.ChildSpec(ship, order_id, restart="sometimes")  # type: ignore[call-overload]
    ctx.supervise(specs, strategy="all_for_none")  # type: ignore[arg-type]

    if ctx.patched("restart"):
        ctx.continue_as_new(order_id)  # NoReturn: nothing after it is reachable
    return {"receipt": receipt, "tracking": child.result(), "wrong": wrong, "late": str(late)}


def in_a_step() -> int:
    info = aion.step_info()
    assert_type(info, aion.StepInfo)
    assert_type(info.attempt, int)
    assert_type(info.idempotency_key, str)
    return info.step


# -- the engine and its handles -----------------------------------------------------------


def engine_api(tmp: Path) -> None:
    aion.Retyr(max_attempts=3)  # type: ignore[attr-defined]  # (the lazy names hide no typo)
    assert_type(checkout.__name__, str)  # the decorator keeps the function as it is
    with aion.Engine(f"sqlite:///{tmp / 'orders.db'}", workflows=[checkout, ship, audit],
                     step_workers=4, max_resident=1000) as engine:
        assert_type(engine, aion.Engine)
        handle = engine.start(checkout, "o-1", id="order-o-1", execution_timeout=3600)
        assert_type(handle, aion.WorkflowHandle[dict[str, str]])
        assert_type(handle.result(timeout=30), dict[str, str])
        assert_type(handle.workflow_id, str)
        assert_type(engine.start(audit).result(), None)
        by_name = engine.start("audit", namespace="tenant-a")
        assert_type(by_name, aion.WorkflowHandle[Any])
        assert_type(engine.handle("order-o-1"), aion.WorkflowHandle[Any])
        engine.start(checkout)  # type: ignore[arg-type, call-arg]
        engine.start(checkout, 1)  # type: ignore[arg-type]
        engine.start(price, "o-1")  # type: ignore[arg-type]
        engine.start(checkout, "o-1", id=5)  # type: ignore[call-overload]
        count: int = engine.start(checkout, "o-2").result()  # type: ignore[assignment]

        assert_type(engine.signal("order-o-1", "approval", {"ok": True}), int)
        assert_type(engine.query("order-o-1", "amount"), Any)
        engine.cancel("order-o-1", "changed my mind")
        assert_type(engine.result("order-o-1", timeout=1.0), Any)
        info = engine.describe("order-o-1")
        assert_type(info, aion.RunInfo)
        assert_type(info.status, str)
        assert_type(info.finished, bool)
        assert_type(engine.list(status="running", limit=10), list[aion.RunInfo])
        events = engine.history("order-o-1")
        assert_type(events, list[aion.Event])
        assert_type(events[0].seq, int)
        assert_type(events[0].type, str)
        engine.poke()

        # Schedules: the arguments checked as for start; the policies are literals.
        assert_type(engine.schedule("nightly", checkout, "o-1", cron="0 3 * * *",
                                    overlap="buffer_one", catch_up="skip"), aion.WorkflowHandle[Any])
        engine.schedule("hourly", "audit", every=timedelta(hours=1))
        engine.schedule("nightly", checkout, 1, cron="0 3 * * *")  # type: ignore[arg-type]
        engine.schedule("nightly", checkout, "o-1", overlap="queue")  # type: ignore[call-overload]
        engine.update_schedule("nightly", catch_up="all")
        engine.update_schedule("nightly", catch_up="most")  # type: ignore[arg-type]
        print(count)


def errors_api() -> None:
    assert issubclass(aion.WorkflowFailed, aion.AionError)
    try:
        pass
    except aion.WorkflowFailed as exc:
        assert_type(exc.workflow_id, str)
        assert_type(exc.error_type, str)
        assert_type(exc.message, str)
    except aion.StepError as exc:
        assert_type(exc.step, int)
        assert_type(exc.attempts, int)
    except aion.NonDeterminismError as exc:
        assert_type(exc.seq, int | None)
    except errors.SequenceConflict as exc:
        assert_type(exc.expected_seq, int)
    except aion.Cancelled as exc:  # a BaseException: `except Exception` does not stop it
        assert_type(exc.reason, str)
    retry = aion.Retry(max_attempts=5, initial_interval=timedelta(seconds=1), backoff=2.0,
                       non_retryable=(ValueError,))
    assert_type(retry.delay(2), float)
    aion.Retry(max_attempts="5")  # type: ignore[arg-type]


# -- the HTTP client ----------------------------------------------------------------------------


def client_api() -> None:
    client = Client("http://127.0.0.1:8000", token="s3cret", namespace="tenant-a")
    handle = client.start(checkout, "o-1", id="order-o-1")
    assert_type(handle, RemoteHandle[dict[str, str]])
    assert_type(handle.result(timeout=30), dict[str, str])
    assert_type(client.start("checkout", "o-1"), RemoteHandle[Any])
    assert_type(client.start(checkout, "o-1", wait=2.5).result(), dict[str, str])
    assert_type(client.handle("order-o-1"), RemoteHandle[Any])
    assert_type(client.result("order-o-1"), Any)
    assert_type(client.describe("order-o-1"), aion.RunInfo)
    assert_type(client.history("order-o-1"), list[aion.Event])
    assert_type(client.signal("order-o-1", "approval", {"ok": True}), int)
    client.start(checkout, 1)  # type: ignore[arg-type]
    client.schedule("nightly", checkout, "o-1", cron="0 3 * * *", overlap="allow_all")
    client.schedule("nightly", checkout, cron="0 3 * * *")  # type: ignore[arg-type, call-arg]
    wrong: int = client.start(checkout, "o-1").result()  # type: ignore[assignment]
    print(wrong)


# -- the pytest plugin --------------------------------------------------------------------------


def test_checkout(aion_engine: aion.Engine, aion_time: testing.TimeTravel) -> None:
    handle = aion_engine.start(checkout, "o-1")
    aion_time.advance(timedelta(hours=1))
    assert_type(aion_time.now(), datetime)
    assert_type(handle.result(timeout=10), dict[str, str])
    assert_type(testing.check_replay("sqlite:///orders.db", workflows=[checkout]), int)



# -- @aion.step and ctx.info ------------------------------------------------------------------


@aion.step(retry=aion.Retry(max_attempts=3), timeout=30)
def declared_price(order_id: str) -> int:
    return 100


@aion.step
def declared_plain(order_id: str) -> str:
    return order_id


@aion.workflow
def uses_declared(ctx: aion.WorkflowContext, order_id: str) -> int:
    assert_type(declared_price(order_id), int)
    assert_type(declared_plain(order_id), str)
    assert_type(ctx.step(declared_price, order_id), int)
    info = ctx.info
    assert_type(info, aion.WorkflowInfo)
    assert_type(info.attempt, int)
    assert_type(info.parent_id, "str | None")
    assert_type(info.started_at, datetime)
    return declared_price(order_id)


aion.step(retry=3)  # type: ignore[call-overload]


@aion.workflow
def receives_typed(ctx: aion.WorkflowContext) -> datetime:
    when = ctx.receive("at", as_type=datetime)
    assert_type(when, datetime)
    assert_type(ctx.receive("any"), Any)
    return when


aion.payloads.register(uuid.UUID, to_json=str, from_json=uuid.UUID)
aion.payloads.configure(codec=aion.payloads.ZlibCodec(), max_bytes=1 << 20)


def times(engine: aion.Engine) -> None:
    run = engine.describe("x")
    assert_type(run.started, datetime)
    assert_type(run.ended, "datetime | None")
    assert_type(run.steps_running[0].started, datetime)
    assert_type(engine.events(0).events[0].time, datetime)
