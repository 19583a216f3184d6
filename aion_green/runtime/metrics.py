"""What an operator watches of one engine, as Prometheus figures (issue 18).

``engine.metrics`` is an :class:`EngineMetrics`. The engine keeps its
figures itself, in plain counters, whether ``prometheus_client`` is
installed or not; the library (the ``metrics`` extra) is needed only to read
them out: :attr:`EngineMetrics.registry` is a ``CollectorRegistry`` of this
engine alone (never the process's default registry, so several engines in
one process, as in the test suite, never collide), and
:meth:`EngineMetrics.exposition` is what ``/metrics`` serves
(``transport/wsgi.py``).

======================================  ========  ===============================================
``aion_steps_started_total``            counter   step attempts begun (a retry is another attempt)
``aion_steps_completed_total``          counter   attempts recorded as ``StepCompleted``
``aion_steps_failed_total``             counter   attempts recorded as ``StepFailed`` (timeouts too)
``aion_step_duration_seconds``          hist.     an attempt, from its start to its outcome
``aion_commit_batch_size``              hist.     records (appends, creations) per group commit
``aion_commit_duration_seconds``        hist.     one group commit (``write_batch``)
``aion_runs{status}``                   gauge     runs in the store by status (one per workflow id)
``aion_hub_lag_seconds``                gauge     how late the hub's last periodic timer woke
``aion_queue_depth{queue}``             gauge     waiting work: ``writer``, ``reader``, ``steps``, ``hub``
``aion_timers_pending``                 gauge     timers of resident runs waiting in memory
``aion_resident_runs``                  gauge     runs held in memory (the run table)
``aion_evicted_runs``                   gauge     runs of this engine parked out of memory (evicted
                                                  or waiting for a place; replayed on their wake)
``aion_driving``                        gauge     1 when this engine drives: SQLite, it holds the
                                                  file's driver lock; PostgreSQL, its own lease
                                                  (its entry among the engines) is current
``aion_leased_runs``                    gauge     leased stores only: running runs leased to it
``aion_runs_purged_total``              counter   finished runs this engine purged (retention,
                                                  ``engine.purge``)
``aion_lease_renewals_total``           counter   PostgreSQL only: renewals of this engine's
                                                  leases tried (one per heartbeat that held runs)
``aion_lease_renewals_missed_total``    counter   PostgreSQL only: renewals that failed, or that
                                                  committed after the leases they extended had
                                                  run out (another engine may have taken them)
``aion_leases_lost_total``              counter   PostgreSQL only: runs dropped here because
                                                  another engine took their lease (or wrote them)
======================================  ========  ===============================================

The gauges describe a started engine (none before its first use, nor once
shut down). ``aion_runs`` is one count query through the reader (the status
index: no history is read), kept ``count_every`` seconds, waited for at most
``count_timeout`` seconds; when the store does not answer the family is
left out, not reported stale.

Why counters of our own, read by a collector at scrape time, rather than
``prometheus_client``'s ``Counter`` and ``Histogram`` updated on the hot
path: each of their updates takes a lock and runs several Python frames;
two counters and one histogram per step measured ~17 k instructions
(callgrind), 11 % of a workflow of 10 steps (bench/instructions.py). Here a
step costs ~2.5 k: a dict lookup, a bisect and a few additions, with no lock,
since each thread writes only figures of its own.

Thread contract:

- step figures: each thread that begins or ends a step attempt (a pool
  thread; the hub, which records a timeout) writes only its own
  :class:`StepFigures`, found by its thread ident in :attr:`EngineMetrics.steps`;
- commit figures: the store writer's thread only;
- hub lag: :meth:`EngineMetrics.watch_hub`, a greenlet on the hub;
- lease figures (:class:`LeaseFigures`): the hub thread only (the heartbeat
  of ``runtime/leases.py``; a run's greenlet that drops its run);
- reading (:meth:`exposition`, :attr:`registry`, the collector): any thread
  or greenlet except the hub thread (the store count waits on the reader).
  A reading sums numbers other threads may be adding to: it may count an
  attempt as ended whose duration it does not yet see, off by one until the
  next reading.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
import weakref
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Iterator, Optional

import gevent
import gevent.event
from gevent import monkey

from aion_green.core import events as ev
from aion_green.core.clock import monotonic as _monotonic
from aion_green.core.errors import AionError, ConfigurationError, EngineClosed, Timeout
from aion_green.hub_thread import Future

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch

log = logging.getLogger("aion_green.metrics")

_get_ident = monkey.get_original("_thread", "get_ident")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")

# Bucket bounds (upper, inclusive, as Prometheus's "le"). A step is anything
# from a microsecond of arithmetic to minutes of someone else's API.
STEP_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0, 300.0)
COMMIT_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)  # (ints: a size is one)

INSTALL = ("this server has no Prometheus client library: install the 'metrics' extra "
           "(pip install 'aion-green[metrics]', which brings prometheus_client)")


class Tally:
    """A histogram's buckets (not cumulative; the last one past every bound)
    and its sum, written by one thread."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0


class StepFigures:
    """The step attempts one thread began and ended (see the thread contract):
    the ended ones in two tallies of their duration, by outcome.

    The hot path (``runtime/runs.py``, once per attempt) updates these
    fields inline, as :meth:`ended` does: the call alone would add a few
    hundred instructions to the ~2.5 k the figures cost per attempt."""

    __slots__ = ("started", "completed", "failed")

    def __init__(self) -> None:
        self.started = 0
        self.completed = Tally(STEP_SECONDS)
        self.failed = Tally(STEP_SECONDS)

    def ended(self, event_type: str, seconds: float) -> None:
        """An attempt's outcome, ``seconds`` after the attempt began (wall
        clock: clamped at 0 if it stepped back)."""
        tally = self.completed if event_type == ev.STEP_COMPLETED else self.failed
        if seconds < 0.0:
            seconds = 0.0
        tally.counts[bisect_left(STEP_SECONDS, seconds)] += 1
        tally.sum += seconds


class LeaseFigures:
    """The renewals of this engine's leases, and the runs it lost (PostgreSQL):
    written on the hub thread only.

    A renewal *misses* when it fails, or when it commits after the leases it
    extends had run out: from then until the commit another engine could
    claim those runs (issue 21: "lease renewals never miss" under load).
    ``tightest`` is the least time any renewal had to spare before the
    leases it extended ran out (negative: a miss), None before the first."""

    __slots__ = ("renewals", "missed", "lost", "tightest")

    def __init__(self) -> None:
        self.renewals = 0
        self.missed = 0
        self.lost = 0
        self.tightest: Optional[float] = None

    def failed(self) -> None:
        """A renewal the store refused or did not answer."""
        self.renewals += 1
        self.missed += 1

    def renewed(self, spare: float) -> None:
        """A renewal committed ``spare`` seconds before the leases it
        extended ran out (negative: after)."""
        self.renewals += 1
        if spare < 0.0:
            self.missed += 1
        if self.tightest is None or spare < self.tightest:
            self.tightest = spare


class CommitFigures:
    """Group commits of the store writer (its thread only; ``StoreWriter._write``
    updates the tallies inline, once per commit)."""

    __slots__ = ("sizes", "seconds")

    def __init__(self) -> None:
        self.sizes = Tally(BATCH_SIZES)
        self.seconds = Tally(COMMIT_SECONDS)


class EngineMetrics:
    """The figures of one engine, for as long as it lives in this process
    (see the module docstring)."""

    def __init__(self, engine: "Engine", count_every: float = 5.0, count_timeout: float = 2.0,
                 lag_every: float = 0.5) -> None:
        # Weak: the engine owns this object, and its __del__ must not wait for the GC.
        self._engine = weakref.ref(engine)
        self.count_every = count_every
        self.count_timeout = count_timeout
        self.lag_every = lag_every
        # Step figures by the ident of the thread that writes them. A thread
        # that ended may leave its ident (and figures) to a new one: only
        # one live thread ever writes an entry. Invariant: never rebound
        # (the runner holds this dict's get).
        self.steps: dict[int, StepFigures] = {}
        self.commits = CommitFigures()
        self.leases = LeaseFigures()
        # Seconds the hub's last periodic timer woke late; None before the first.
        self.hub_lag: Optional[float] = None
        # The last store count: (monotonic time, runs by status, runs leased
        # here or None), and the count under way. Under _lock, held for no wait.
        self._counted: Optional[tuple[float, dict[str, int], Optional[int]]] = None
        self._counting: Optional[Future] = None
        self._lock = _allocate_lock()
        self._registry: Any = None
        # Runs purged by this engine (runtime/retention.py): written under
        # _lock by whichever thread purged (a caller's, the hub's).
        self.runs_purged = 0

    # -- writers ------------------------------------------------------------------------------
    def here(self) -> StepFigures:
        """The calling thread's step figures (made on its first use)."""
        ident = _get_ident()
        figures = self.steps.get(ident)
        if figures is None:
            figures = self.steps.setdefault(ident, StepFigures())
        return figures

    def count_purged(self, n: int) -> None:
        """Any thread: ``n`` more runs purged."""
        with self._lock:
            self.runs_purged += n

    def watch_hub(self) -> None:
        """The hub's lag probe (a greenlet on the hub, killed with it): a
        loop timer every ``lag_every`` seconds, and how late it fires. A hub
        held by a long batch of commands, or by a blocking call, fires late.

        A repeating timer whose callback runs in the loop, not a greenlet
        that sleeps: a sleep costs a new watcher, a waiter and two switches
        per wake, for the engine's whole life; this greenlet only parks
        (and, killed, stops the timer)."""
        interval = self.lag_every
        timer = gevent.get_hub().loop.timer(interval, interval, ref=False)
        due = _monotonic() + interval

        def fired() -> None:
            nonlocal due
            now = _monotonic()
            lag = now - due
            self.hub_lag = lag if lag > 0.0 else 0.0
            # The loop's own schedule: the last due time plus the interval,
            # or now when that is already past.
            due = due + interval if due + interval > now else now

        timer.start(fired)
        try:
            gevent.event.Event().wait()
        finally:
            timer.stop()
            timer.close()

    def after_fork(self) -> None:
        """In a forked child: a lock held by a parent's thread would never be freed."""
        self._lock = _allocate_lock()
        self._counting = None

    # -- readers ------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """Whether ``prometheus_client`` can be imported here."""
        return importlib.util.find_spec("prometheus_client") is not None

    @property
    def registry(self) -> Any:
        """A ``prometheus_client.CollectorRegistry`` holding this engine's
        figures (made on first use; register figures of your own there to
        serve them beside the engine's). Raises :class:`ConfigurationError`
        without ``prometheus_client``."""
        registry = self._registry
        if registry is None:
            try:
                from prometheus_client import CollectorRegistry
            except ImportError:
                raise ConfigurationError(INSTALL) from None
            registry = CollectorRegistry()
            registry.register(_Collector(self))
            with self._lock:
                if self._registry is None:
                    self._registry = registry
                registry = self._registry
        return registry

    def exposition(self, accept: Optional[str] = None) -> tuple[str, bytes]:
        """``(content type, body)`` of a scrape: the Prometheus text format,
        or OpenMetrics when ``accept`` (an HTTP Accept header) asks for it."""
        registry = self.registry
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        return content_type, encoder(registry)

    def _live_epoch(self) -> Optional["Epoch"]:
        engine = self._engine()
        if engine is None or engine._closed or engine._pid != os.getpid():
            return None
        return engine._epoch

    def store_counts(self, epoch: "Epoch") -> Optional[tuple[dict[str, int], Optional[int]]]:
        """Runs by status, and runs leased to this engine (PostgreSQL, else
        None): counted through the reader at most every ``count_every``
        seconds; None when the store gave no answer within ``count_timeout``."""
        now = _monotonic()
        submit = False
        with self._lock:
            counted = self._counted
            if counted is not None and now - counted[0] < self.count_every:
                return counted[1], counted[2]
            future = self._counting
            if future is None:
                future = self._counting = Future()
                submit = True
        if submit:
            engine = self._engine()
            owner = engine.engine_id if engine is not None and epoch.leased else None
            reader = epoch.reader
            try:
                reader.submit_call(functools.partial(_count, reader.store, owner),
                                   functools.partial(self._counted_now, future))
            except EngineClosed as exc:
                self._counted_now(future, None, exc)
        try:
            counts, leased = future.result(self.count_timeout)
        except Timeout:
            log.warning("metrics: the store did not count its runs within %g s; aion_runs is "
                        "left out of this scrape", self.count_timeout)
            return None
        except AionError as exc:
            log.warning("metrics: the store could not count its runs (%s); aion_runs is left "
                        "out of this scrape", exc)
            return None
        return counts, leased

    def _counted_now(self, future: Future, value: Any, error: Optional[BaseException]) -> None:
        # The reader's thread (or the caller's, when the reader is closed).
        with self._lock:
            if error is None:
                self._counted = (_monotonic(), value[0], value[1])
            if self._counting is future:
                self._counting = None
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)

    def families(self) -> Iterator[Any]:
        """The figures as ``prometheus_client`` metric families."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        steps = list(self.steps.values())
        completed = [f.completed for f in steps]
        failed = [f.failed for f in steps]
        yield CounterMetricFamily("aion_steps_started", "Step attempts begun (a retry is "
                                  "another attempt).", value=sum(f.started for f in steps))
        yield CounterMetricFamily("aion_steps_completed", "Step attempts recorded as "
                                  "StepCompleted.", value=sum(sum(t.counts) for t in completed))
        yield CounterMetricFamily("aion_steps_failed", "Step attempts recorded as StepFailed "
                                  "(timeouts included).", value=sum(sum(t.counts) for t in failed))
        yield _histogram(HistogramMetricFamily, "aion_step_duration_seconds",
                         "Step attempts, from their start to their outcome.",
                         completed + failed, STEP_SECONDS)
        yield CounterMetricFamily("aion_runs_purged", "Finished runs this engine purged "
                                  "(retention, engine.purge).", value=self.runs_purged)
        leases = self.leases
        yield CounterMetricFamily("aion_lease_renewals", "Renewals of this engine's leases "
                                  "(PostgreSQL).", value=leases.renewals)
        yield CounterMetricFamily("aion_lease_renewals_missed", "Lease renewals that failed or "
                                  "committed after the leases they extended ran out.",
                                  value=leases.missed)
        yield CounterMetricFamily("aion_leases_lost", "Runs dropped here because another engine "
                                  "took their lease.", value=leases.lost)
        yield _histogram(HistogramMetricFamily, "aion_commit_batch_size",
                         "Records (appends and creations) written by one group commit.",
                         [self.commits.sizes], BATCH_SIZES)
        yield _histogram(HistogramMetricFamily, "aion_commit_duration_seconds",
                         "Group commits of the store writer (one transaction each).",
                         [self.commits.seconds], COMMIT_SECONDS)
        epoch = self._live_epoch()
        if epoch is None:
            return
        counted = self.store_counts(epoch)
        if counted is not None:
            runs = GaugeMetricFamily("aion_runs", "Runs in the store by status (the current "
                                     "run of each workflow id).", labels=["status"])
            for status in sorted(set(ev.STATUSES) | set(counted[0])):
                runs.add_metric([status], counted[0].get(status, 0))
            yield runs
        if self.hub_lag is not None:
            yield GaugeMetricFamily("aion_hub_lag_seconds", "How late the hub's last periodic "
                                    "timer woke (a busy or blocked hub wakes late).",
                                    value=self.hub_lag)
        depth = GaugeMetricFamily("aion_queue_depth", "Work waiting: store writer and reader "
                                  "ops, steps for the pool, commands for the hub.",
                                  labels=["queue"])
        for name, n in (("writer", epoch.writer.queued()), ("reader", epoch.reader.queued()),
                        ("steps", epoch.steps.queued()), ("hub", epoch.hub.queued())):
            depth.add_metric([name], n)
        yield depth
        yield GaugeMetricFamily("aion_timers_pending", "Timers of resident runs waiting in "
                                "memory.", value=epoch.timers.pending())
        yield GaugeMetricFamily("aion_resident_runs", "Runs held in memory (the run table).",
                                value=len(epoch.runs))
        yield GaugeMetricFamily("aion_evicted_runs", "Runs of this engine parked out of memory "
                                "(replayed on their wake), or waiting for a place.",
                                value=epoch.residency.out_of_memory())
        if epoch.leased:
            driving = epoch.leases.lease_until > time.time()
        else:
            driving = epoch.sharing.driving
        yield GaugeMetricFamily("aion_driving", "1 when this engine drives runs (SQLite: it "
                                "holds the driver lock; leased stores: its lease is current).",
                                value=1 if driving else 0)
        if epoch.leased and counted is not None and counted[1] is not None:
            yield GaugeMetricFamily("aion_leased_runs", "Running runs leased to this engine.",
                                    value=counted[1])


def _count(store: Any, owner: Optional[str]) -> tuple[dict[str, int], Optional[int]]:
    """The reader's thread: one count of the runs, and of those ``owner`` leases."""
    counts = store.count_runs_by_status()
    return counts, None if owner is None else store.count_leased(owner, time.time())


def _histogram(family: Any, name: str, doc: str, tallies: list[Tally],
               bounds: tuple[float, ...]) -> Any:
    from prometheus_client.utils import floatToGoString

    buckets: list[tuple[str, float]] = []
    total = 0
    for i, bound in enumerate((*bounds, float("inf"))):
        total += sum(t.counts[i] for t in tallies)
        buckets.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
    return family(name, doc, buckets=buckets, sum_value=sum(t.sum for t in tallies))


class _Collector:
    """The engine's figures for a ``CollectorRegistry`` (its ``collect``
    runs at each scrape)."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self._metrics.families()
