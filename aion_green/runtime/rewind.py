"""Fork and resume: new runs that reuse a run's recorded outcomes up to a
chosen event (``Engine.fork``, ``Engine.resume``; ``aion-green fork/resume
ID --from SEQ``).

- **fork** starts a *new workflow id* of the same type and arguments whose
  history is a fresh ``WorkflowStarted`` (``forked_from``: workflow id, run
  id, seq, time) and copies of the source run's events 2..``from_seq``. The
  source, finished or running, is not changed. The default id is
  ``"<source id>/fork-<8 hex>"``.
- **resume** continues a run that ended *failed or cancelled* in place:
  the old run's history is archived (``engine.history(id, run_id=old)``
  reads it, as after ``continue_as_new``) and a new run of the same id
  begins with a ``WorkflowStarted`` (``resumed_from``: run id, seq, time)
  and copies of events 2..``from_seq``. Its default ``from_seq`` drops the
  terminal event and the trailing records of what failed, so a failed step
  runs again; a cancelled run resumes from before its cancel request (see
  ``_rewind.resume_point``). A resumed run keeps its run number, so its
  step idempotency keys and child ids are those of the old run.

Either new run is then driven by replay, like a run recovered after a
crash: the copied outcomes are returned as recorded (no step, send or
child start runs again), and past ``from_seq`` the run goes live. Which
cuts are refused, and why, is in ``_rewind.py``; a refusal writes nothing.

Who drives the new run: this engine at once when it drives its store's
runs (SQLite); the driving process when this one is its client (it sees
the run as new); any engine that knows the type where runs are leased
(PostgreSQL: the run is unowned and claimable, and the commit rings the
engines' doorbell).

Thread contract: :func:`fork` and :func:`resume` run on the caller's
thread (any but the hub's); :func:`_drive_when_free` runs on the hub.
"""
from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Optional

import gevent

from aion_green.core import clock as _clock
from aion_green.core.errors import ConfigurationError
from aion_green.store import RunInfo

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine, WorkflowHandle

# How long a new run of an id waits for the greenlet of that id's old run
# (ending as the resume came) to let go; past it, the driver's periodic
# sweep of unfinished runs picks the new run up.
_FREE_WAIT = 5.0


def fork(engine: "Engine", workflow_id: str, from_seq: int, new_id: Optional[str],
         run_id: Optional[str]) -> "WorkflowHandle[Any]":
    """``Engine.fork`` (see there)."""
    from aion_green.runtime.engine import WorkflowHandle

    _check_seq(from_seq, "fork")
    if new_id is not None and (not isinstance(new_id, str) or not new_id):
        raise ConfigurationError(f"fork of {workflow_id!r}: id must be a non-empty string, "
                                 f"got {new_id!r}")
    wid = new_id or f"{workflow_id}/fork-{uuid.uuid4().hex[:8]}"
    engine._ensure_started()
    info = engine._epoch.writer.call_or_refuse(engine._epoch.store.fork_run, workflow_id, from_seq, wid,
                                         uuid.uuid4().hex, time.time(), run_id)
    _hand_over(engine, info)
    return WorkflowHandle(engine, wid)


def resume(engine: "Engine", workflow_id: str, from_seq: Optional[int]) -> "WorkflowHandle[Any]":
    """``Engine.resume`` (see there)."""
    from aion_green.runtime.engine import WorkflowHandle

    if from_seq is not None:
        _check_seq(from_seq, "resume")
    engine._ensure_started()
    info = engine._epoch.writer.call_or_refuse(engine._epoch.store.restart_run, workflow_id, from_seq,
                                         uuid.uuid4().hex, time.time())
    _hand_over(engine, info)
    return WorkflowHandle(engine, workflow_id)


def _check_seq(from_seq: Any, what: str) -> None:
    if isinstance(from_seq, bool) or not isinstance(from_seq, int) or from_seq < 1:
        raise ConfigurationError(f"{what}: from_seq must be a seq of the history (an int from 1), "
                                 f"got {from_seq!r}; engine.history(id) lists them")


def _hand_over(engine: "Engine", info: RunInfo) -> None:
    """The new run is in the store: forget a finished outcome of its id
    kept here (queued on the hub before this returns, so a ``result()``
    asked after it never sees the old run's end), and drive it here if
    this engine drives its store's runs."""
    engine._epoch.recently_finished.pop(info.workflow_id, None)  # result() reads it from any thread
    engine._epoch.hub.call_soon(engine._epoch.recently_finished.pop, info.workflow_id, None)
    if engine.driving and not engine._epoch.leased:
        engine._epoch.hub.spawn(_drive_when_free, engine, info, name=f"rewind:{info.workflow_id}")


def _drive_when_free(engine: "Engine", info: RunInfo) -> None:
    """Hub thread: spawn the run once no greenlet of an older run of the
    id is left (a resumed run's old greenlet may still be unwinding)."""
    wid = info.workflow_id
    deadline = _clock.monotonic() + _FREE_WAIT
    while wid in engine._epoch.runs:
        if _clock.monotonic() > deadline:
            return
        gevent.sleep(0.01)
    engine._epoch.runner.spawn_run(wid, info)
