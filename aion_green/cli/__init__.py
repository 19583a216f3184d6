"""``aion-green`` command line (also ``python -m aion_green``).

    aion-green [--db URL] worker MODULE [MODULE...] [--http HOST:PORT] [--token T] [--retention AGE]
    aion-green [--db URL] start TYPE [ARG_JSON...] [--id ID] [--execution-timeout D]
                                [--wait [--timeout S]]
    aion-green [--db URL] signal ID NAME [PAYLOAD_JSON] [--key IDEMPOTENCY_KEY] [--run RUN_ID] [--timeout S]
    aion-green [--db URL] cancel ID [--reason R] [--run RUN_ID] [--timeout S]
    aion-green [--db URL] terminate ID [--reason R] [--run RUN_ID] [--timeout S]
    aion-green [--db URL] pause ID [--reason R] [--run RUN_ID] [--timeout S]
    aion-green [--db URL] unpause ID [--reason R] [--run RUN_ID] [--timeout S]
    aion-green [--db URL] query ID NAME [ARG_JSON...] [--run RUN_ID] [--timeout S]
    aion-green [--db URL] result ID [--run RUN_ID] [--timeout S]
    aion-green [--db URL] list [--status S] [--type T] [--started-after T] [--started-before T]
                               [--parent ID] [--prefix TEXT] [--attr NAME=VALUE]... [--limit N] [--after ID]
    aion-green [--db URL] count [the filters of list] [--by-status]
    aion-green [--db URL] show ID [--run RUN_ID] [--follow [--timeout S]]
    aion-green [--db URL] fork ID --from SEQ [--id NEW_ID] [--run RUN_ID] [--wait]
    aion-green [--db URL] resume ID [--from SEQ] [--wait]
    aion-green [--db URL] schedule create ID TYPE [ARG_JSON...] (--cron EXPR | --every S)
                                   [--start-at ISO] [--timezone Z] [--overlap P] [--catch-up P]
    aion-green [--db URL] schedule list [--all] | show ID | delete ID [--timeout S]
    aion-green [--db URL] schedule pause ID [--note N] | resume ID | trigger ID
    aion-green [--db URL] schedule update ID [--cron EXPR | --every S] [--args ARG_JSON...]
                                   [--start-at ISO] [--timezone Z] [--overlap P] [--catch-up P]
    aion-green [--db URL] purge --older-than AGE [--limit N]

``--db`` is a store URL (``sqlite:///path.db``, ``postgresql://...``;
default ``$AION_GREEN_DB`` or ``./aion.db``) or the HTTP address of a worker
started with ``--http`` (``http://HOST:PORT[/prefix]``, with ``--token`` or
``$AION_GREEN_TOKEN``). Arguments, payloads and answers are JSON values:
``5``, ``'"text"'``, ``'{"ok": true}'``. Every option may also come before
the command: ``--db``, ``--token``, ``--namespace``, ``--json`` (one JSON
document on stdout; errors also as ``{"error": TYPE, "message": ...}`` on
stderr) and ``--quiet`` (no progress on stderr).

``--namespace NS`` (or ``$AION_GREEN_NAMESPACE``): the namespace of the runs
and schedules a command names (``default`` if none; ids are unique per
namespace). A worker's ``--token`` is repeatable, each ``SECRET`` (every
namespace) or ``SECRET:ns1,ns2`` (those only), and ``$AION_GREEN_TOKEN``
takes several separated by spaces; a command sends the first one's secret.
A request for a namespace the token is not granted exits 2
(``NamespaceDenied``), nothing done.

``worker`` imports the modules (their ``@aion.workflow`` functions are
registered), drives runs until SIGTERM or SIGINT, then shuts down cleanly
(the runs it drove resume in the next worker). With ``--http`` it serves the
HTTP API (:mod:`aion_green.transport.wsgi`) too. Over a SQLite file a command
is a client of the worker that drives the runs: ``start`` creates the run,
``signal`` and ``cancel`` return once the worker recorded them (queued, if no
worker drives the file now: recorded when one starts), ``result``,
``start --wait`` and ``show --follow`` show the run's events as they are
recorded. Only the live run answers a query, so ask through the worker's
``--http`` address. ``list``, ``count`` and ``show`` only look. ``list`` and
``count`` filter by the current run's start (``--started-after`` and
``--started-before``, ISO-8601: ``2024-05-01``, ``2024-05-01T12:00:00Z``; no
offset is UTC), by the workflow id that started the runs as children
(``--parent``) and by search attributes (``--attr customer=c-1``, repeatable:
all must match; VALUE is matched against the attribute's text form, see
:mod:`aion_green.runtime.search`); ``count --by-status`` counts each status. ``fork`` starts a new
workflow id that replays a run's events 2..SEQ and then runs on; ``resume``
runs a failed or cancelled run again in place (its old run is archived),
reusing its outcomes but what failed (:mod:`aion_green.runtime.rewind`); both work
over a store URL and through a worker's HTTP API.

``start --execution-timeout D`` bounds the workflow's whole work (every run
of its chain): ``D`` is seconds, or a number with a unit (``90s``, ``15m``,
``2h``, ``7d``); past it the run ends with status ``timed_out``. ``pause``
holds a run (no step, timer or message until ``unpause``; its status stays
``running`` and ``show`` says ``paused``); with no worker driving a SQLite
file, a pause or unpause is queued as a cancel is.

``purge`` deletes the runs that ended more than AGE ago (``30d``, ``12h``,
``90m``, ``45s``, or a number of seconds), with everything the store holds of
them: never a running run (:mod:`aion_green.runtime.retention`). Over a store
URL or through a worker's HTTP API; ``worker --retention AGE`` purges so on
a timer.

A workflow id names a chain of runs (``continue_as_new`` begins the next
under the same id); ``start`` prints the run it created. ``--run RUN_ID``
names one run: ``show`` and ``result`` answer for it (an earlier run of a
chain ``continued``), and ``signal``, ``cancel``, ``terminate`` and
``query`` refuse it (exit 5, nothing recorded) unless it is the current run.

Exit codes, the same for every command:

====  ======================================================================
0     success
1     no workflow with that id
2     bad usage or input (nothing was recorded), a damaged store, a type
      the worker does not know, an id reused for other work
3     the workflow failed or was cancelled (``result``, ``start --wait``,
      ``show --follow``)
4     timeout: no end, answer or record within ``--timeout`` (the run goes on)
5     the run has finished: it takes no signal, cancel or query
6     the query could not be answered (the handler raised, an unknown
      name, or no live run here: use the worker's ``--http`` address)
7     the store or the worker's HTTP API is unavailable: try again later
8     that run continued as new: it has no result of its own (``result
      --run`` of an earlier run of a chain; the next run is named)
130   interrupted (Ctrl-C)
141   stdout was closed by its reader (``| head``), as for SIGPIPE
====  ======================================================================
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, NoReturn, Optional

from aion_green.core import events as ev
from aion_green.core.errors import (
    AionError,
    EngineClosed,
    QueryFailed,
    StoreUnavailable,
    Timeout,
    WorkflowCancelled,
    WorkflowContinuedAsNew,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowNotRunning,
)

_RUN_HELP = "the run it is for: refused, nothing recorded, unless it is the current run"

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_TIMEOUT = 4
EXIT_NOT_RUNNING = 5
EXIT_QUERY_FAILED = 6
EXIT_UNAVAILABLE = 7
EXIT_CONTINUED = 8
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def exit_code(error: BaseException) -> int:
    """The exit code of a command that ended with ``error``."""
    if isinstance(error, WorkflowNotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, WorkflowContinuedAsNew):
        return EXIT_CONTINUED
    if isinstance(error, WorkflowFailed):  # and WorkflowCancelled
        return EXIT_FAILED
    if isinstance(error, Timeout):
        return EXIT_TIMEOUT
    if isinstance(error, WorkflowNotRunning):
        return EXIT_NOT_RUNNING
    if isinstance(error, QueryFailed):
        return EXIT_QUERY_FAILED
    if isinstance(error, (StoreUnavailable, EngineClosed)):
        return EXIT_UNAVAILABLE
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_USAGE


class Output:
    """Where a command writes: its result on stdout (text, or one JSON
    document with ``--json``), progress and errors on stderr."""

    def __init__(self, json_mode: bool = False, quiet: bool = False) -> None:
        self.json = json_mode
        self.quiet = quiet

    def emit(self, doc: Any, text: Optional[str] = None) -> None:
        """The command's result: ``doc`` with --json, else ``text`` (if any)."""
        if self.json:
            print(json.dumps(doc), flush=True)
        elif text is not None:
            print(text, flush=True)

    def line(self, text: str) -> None:
        """A line of the human output on stdout (nothing with --json)."""
        if not self.json:
            print(text, flush=True)

    def progress(self, text: str) -> None:
        if not (self.json or self.quiet):
            print(text, file=sys.stderr, flush=True)

    def error(self, kind: str, message: str) -> None:
        if self.json:
            print(json.dumps({"error": kind, "message": message}), file=sys.stderr, flush=True)
        else:
            print(f"aion-green: {message}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    # With --json anywhere on the line, a usage error is a JSON object too.
    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            Output(json_mode=True).error("UsageError", f"{self.prog}: {message}")
            sys.exit(EXIT_USAGE)
        super().error(message)


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes, before or after its name (after it,
    they default to "not given", so they never undo what came before)."""
    dflt: Callable[[Any], Any] = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--db", default=dflt(os.environ.get("AION_GREEN_DB")), metavar="URL",
                        help="store URL, or a worker's http://HOST:PORT (default: ./aion.db)")
    parser.add_argument("--token", action=_Tokens, default=dflt(_env_tokens()),
                        help="bearer token of the HTTP API; a worker takes several (repeat "
                        "it), each SECRET (every namespace) or SECRET:ns1,ns2 (those only)")
    parser.add_argument("--namespace", default=dflt(os.environ.get("AION_GREEN_NAMESPACE")),
                        metavar="NS", help="the namespace of the runs a command names "
                        "(default: \"default\")")
    parser.add_argument("--json", action="store_true", default=dflt(False),
                        help="print one JSON document on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", default=dflt(False),
                        help="no progress on stderr")


class _Tokens(argparse.Action):
    """``--token``, repeatable: the first one given replaces the tokens of
    ``AION_GREEN_TOKEN``, the next ones join it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        given = getattr(namespace, "_tokens_given", False)
        tokens = list(getattr(namespace, self.dest, None) or []) if given else []
        tokens.extend(str(values).split())
        setattr(namespace, self.dest, tokens)
        namespace._tokens_given = True


def _env_tokens() -> Optional[list[str]]:
    """``AION_GREEN_TOKEN``: one or more tokens separated by spaces."""
    text = os.environ.get("AION_GREEN_TOKEN")
    return text.split() if text and text.split() else None


def client_token(tokens: Optional[list[str]]) -> Optional[str]:
    """The secret a command sends: the first token's (its grant part, which
    only a server reads, left off)."""
    if not tokens:
        return None
    return tokens[0].partition(":")[0]


def _timeout(parser: argparse.ArgumentParser, default: Optional[float], what: str) -> None:
    parser.add_argument("--timeout", type=_seconds, default=default, metavar="S",
                        help=f"give up after S seconds ({what}; exit 4)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds >= 0")
    return value


_AGE_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def age(text: str) -> float:
    """An age for ``purge --older-than`` and ``worker --retention``: a
    number and a unit (``30d``, ``12h``, ``90m``, ``45s``) or seconds."""
    number, unit = text.strip(), "s"
    if number[-1:].lower() in _AGE_UNITS:
        number, unit = number[:-1], number[-1].lower()
    try:
        value = float(number) * _AGE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age; give a number and a unit: 30d (days), 12h (hours), "
            "90m (minutes), 45s (seconds), or a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: an age is 0 or more (30d, 12h, 90m, 45s)")
    return value


def _duration(text: str) -> float:
    """``--execution-timeout``: an age (90, 90s, 15m, 2h, 7d) above 0."""
    value = age(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: an execution timeout is above zero")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: ask for at least 1")
    return value


def _filter_options(parser: argparse.ArgumentParser) -> None:
    """The filters ``list`` and ``count`` share."""
    parser.add_argument("--status", choices=ev.STATUSES)
    parser.add_argument("--type", dest="workflow_type")
    parser.add_argument("--started-after", type=_moment("--started-after"), metavar="TIME",
                        help="runs started at or after TIME (ISO-8601; no offset: UTC)")
    parser.add_argument("--started-before", type=_moment("--started-before"), metavar="TIME",
                        help="runs started before TIME (ISO-8601; no offset: UTC)")
    parser.add_argument("--parent", metavar="ID", help="the runs workflow ID started as children")
    parser.add_argument("--prefix", dest="id_prefix", metavar="TEXT",
                        help="the runs whose workflow id begins with TEXT")
    parser.add_argument("--attr", dest="attributes", action="append", type=_attribute,
                        default=[], metavar="NAME=VALUE",
                        help="a search attribute to match (repeatable: all must match)")


def _moment(option: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        from aion_green.transport.codec import parse_time

        try:
            return parse_time(text, option)
        except AionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _attribute(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE, like customer=c-1")
    try:
        ev.check_attribute_name(name, f"--attr {text!r}: the name")
        ev.check_attribute_value(value, f"--attr {text!r}: the value")
    except AionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name, value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aion-green", description="Run workflows and look into an aion_green "
                     "store.", epilog="exit codes: 0 ok, 1 not found, 2 bad usage or input, "
                     "3 workflow failed or cancelled, 4 timeout, 5 run finished, 6 query failed, "
                     "7 unavailable, 130 interrupted")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help, description=help)
        _common(cmd, top=False)
        return cmd

    worker = command("worker", "drive workflows until SIGTERM")
    worker.add_argument("modules", nargs="+", metavar="MODULE", help="modules that define the workflows")
    worker.add_argument("--http", metavar="HOST:PORT",
                        help="also serve the HTTP API there (port 0: any free port)")
    worker.add_argument("--http-connections", type=_positive, default=1000, metavar="N",
                        help="serve at most N HTTP connections at once (default 1000)")
    worker.add_argument("--http-read-timeout", type=_seconds, default=30.0, metavar="S",
                        help="close an HTTP connection that sends nothing for S seconds "
                             "(default 30; 0: never)")
    worker.add_argument("--grace", type=_seconds, default=30.0, metavar="S",
                        help="on SIGTERM, answer new requests 503 (Retry-After) and give the "
                             "requests and steps in flight up to S seconds to finish before "
                             "stopping (default 30)")
    worker.add_argument("--retention", type=age, metavar="AGE",
                        help="purge the runs that ended more than AGE ago (30d, 12h, 90m, 45s), "
                             "on a timer (default: keep every run)")

    start = command("start", "start a workflow run (idempotent by --id)")
    start.add_argument("workflow_type", metavar="TYPE", help="the workflow's registered name")
    start.add_argument("args", nargs="*", metavar="ARG_JSON", help="its arguments, each a JSON value")
    start.add_argument("--id", dest="workflow_id", metavar="ID", help="the workflow id (default: a new uuid)")
    start.add_argument("--execution-timeout", type=_duration, metavar="D",
                       help="end the workflow (status timed_out) if it has not finished after D: "
                            "seconds, or 90s, 15m, 2h, 7d; spans continue-as-new")
    start.add_argument("--wait", action="store_true",
                       help="wait for the end, show the events as they are recorded, exit by outcome")
    _timeout(start, None, "with --wait")

    signal = command("signal", "send a message to a run")
    signal.add_argument("workflow_id", metavar="ID")
    signal.add_argument("name", metavar="NAME")
    signal.add_argument("payload", nargs="?", metavar="PAYLOAD_JSON", help="a JSON value (default: null)")
    signal.add_argument("--key", help="idempotency key: the same key is recorded once")
    signal.add_argument("--run", dest="run_id", metavar="RUN_ID", help=_RUN_HELP)
    _timeout(signal, 30.0, "until the worker recorded it; default 30")

    cancel = command("cancel", "ask a run to cancel")
    cancel.add_argument("workflow_id", metavar="ID")
    cancel.add_argument("--reason", default="")
    cancel.add_argument("--run", dest="run_id", metavar="RUN_ID", help=_RUN_HELP)
    _timeout(cancel, 30.0, "until the worker recorded it; default 30")

    terminate = command("terminate", "end a run now, without cleanup (recorded as cancelled, "
                        "error type Terminated); for a run that cannot end otherwise")
    terminate.add_argument("workflow_id", metavar="ID")
    terminate.add_argument("--reason", default="")
    terminate.add_argument("--run", dest="run_id", metavar="RUN_ID", help=_RUN_HELP)
    _timeout(terminate, 30.0, "until it is recorded; default 30")

    for name, help in (("pause", "pause a run: no step, timer or message until unpause"),
                       ("unpause", "let a paused run go on (due timers fire, kept messages "
                                   "are delivered)")):
        pausing = command(name, help)
        pausing.add_argument("workflow_id", metavar="ID")
        pausing.add_argument("--reason", default="")
        pausing.add_argument("--run", dest="run_id", metavar="RUN_ID", help=_RUN_HELP)
        _timeout(pausing, 30.0, "until the worker recorded it; default 30")

    query = command("query", "ask a live run (through the worker's HTTP API)")
    query.add_argument("workflow_id", metavar="ID")
    query.add_argument("name", metavar="NAME")
    query.add_argument("args", nargs="*", metavar="ARG_JSON", help="the handler's arguments, JSON")
    query.add_argument("--run", dest="run_id", metavar="RUN_ID", help=_RUN_HELP)
    _timeout(query, 10.0, "default 10")

    result = command("result", "wait for a run's end and print its result")
    result.add_argument("workflow_id", metavar="ID")
    result.add_argument("--run", dest="run_id", metavar="RUN_ID",
                        help="that run's end (an earlier run of a chain: exit 8, continued as new)")
    _timeout(result, None, "default: wait for ever")

    listing = command("list", "list workflow runs")
    _filter_options(listing)
    listing.add_argument("--limit", type=_positive, default=100)
    listing.add_argument("--after", metavar="ID", help="the page after this workflow id")

    counting = command("count", "count workflow runs (the filters of list)")
    _filter_options(counting)
    counting.add_argument("--by-status", action="store_true", help="a count per status")

    show = command("show", "a run's status and its history")
    show.add_argument("workflow_id", metavar="ID")
    show.add_argument("--run", dest="run_id", help="an earlier run (continued as new) of the id")
    show.add_argument("--follow", action="store_true",
                      help="then show events as they are recorded, until the end; exit by outcome")
    _timeout(show, None, "with --follow")

    fork = command("fork", "start a new workflow id that reuses a run's outcomes up to --from SEQ")
    fork.add_argument("workflow_id", metavar="ID")
    fork.add_argument("--from", dest="from_seq", type=_positive, required=True, metavar="SEQ",
                      help="the last event copied (see `show ID`)")
    fork.add_argument("--id", dest="new_id", metavar="NEW_ID",
                      help="the new workflow id (default: ID/fork-<8 hex>)")
    fork.add_argument("--run", dest="run_id", help="fork an earlier run (continued as new) of ID")
    fork.add_argument("--wait", action="store_true", help="wait for the new run's end")
    _timeout(fork, None, "with --wait")

    resume = command("resume", "run a failed or cancelled run again in place, reusing its "
                     "outcomes (by default all but what failed)")
    resume.add_argument("workflow_id", metavar="ID")
    resume.add_argument("--from", dest="from_seq", type=_positive, metavar="SEQ",
                        help="the last event kept (default: before the failure)")
    resume.add_argument("--wait", action="store_true", help="wait for the run's end")
    _timeout(resume, None, "with --wait")

    from aion_green.cli import events, health

    events.add_parser(command)
    health.add_parsers(command)

    purge = command("purge", "delete the runs that ended more than AGE ago, with their "
                    "histories (never a running run)")
    purge.add_argument("--older-than", dest="older_than", type=age, required=True, metavar="AGE",
                       help="30d, 12h, 90m, 45s, or seconds")
    purge.add_argument("--limit", type=_positive, metavar="N",
                       help="purge at most N runs (default: every one that qualifies)")

    sched = command("schedule", "create, list, show, update, pause, resume, trigger or delete "
                    "schedules (cron or interval "
                    "triggers that start workflows)")
    ssub = sched.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        cmd = ssub.add_parser(name, help=help, description=help)
        _common(cmd, top=False)
        return cmd

    create = action("create", "create a schedule (idempotent by id and spec)")
    create.add_argument("schedule_id", metavar="ID")
    create.add_argument("workflow_type", metavar="TYPE", help="the workflow each fire starts")
    create.add_argument("args", nargs="*", metavar="ARG_JSON", help="its arguments, JSON")
    trigger = create.add_mutually_exclusive_group(required=True)
    trigger.add_argument("--cron", metavar="EXPR", help="five cron fields ('0 2 * * *')")
    trigger.add_argument("--every", type=_seconds, metavar="S", help="an interval in seconds")
    create.add_argument("--start-at", dest="start_at", metavar="ISO",
                        help="first fire at or after this time (2031-03-01T02:00:00Z)")
    create.add_argument("--timezone", metavar="ZONE", help="the cron's zone (default UTC)")
    create.add_argument("--overlap", default="skip",
                        choices=("skip", "buffer_one", "cancel_previous", "allow_all"))
    create.add_argument("--catch-up", dest="catch_up", default="one",
                        choices=("all", "one", "skip"))
    slist = action("list", "the schedules and their next fire times")
    slist.add_argument("--all", dest="include_deleted", action="store_true",
                       help="deleted ones too")
    slist.add_argument("--limit", type=_positive, default=100)
    slist.add_argument("--after", metavar="ID", help="the page after this schedule id")
    sshow = action("show", "one schedule")
    sshow.add_argument("schedule_id", metavar="ID")
    sdelete = action("delete", "unschedule: it fires no more (the runs it started go on)")
    sdelete.add_argument("schedule_id", metavar="ID")
    _timeout(sdelete, 30.0, "waiting for the schedule's end")
    spause = action("pause", "pause a schedule: it fires nothing until resumed")
    spause.add_argument("schedule_id", metavar="ID")
    spause.add_argument("--note", default="", help="why (shown by `schedule show`)")
    sresume = action("resume", "resume a paused schedule (missed fires: its catch-up policy)")
    sresume.add_argument("schedule_id", metavar="ID")
    strigger = action("trigger", "fire a schedule once now (under its overlap policy)")
    strigger.add_argument("schedule_id", metavar="ID")
    supdate = action("update", "change a schedule's spec: only the options given change")
    supdate.add_argument("schedule_id", metavar="ID")
    change = supdate.add_mutually_exclusive_group()
    change.add_argument("--cron", metavar="EXPR", help="a new cron (replaces an interval)")
    change.add_argument("--every", type=_seconds, metavar="S",
                        help="a new interval in seconds (replaces a cron)")
    supdate.add_argument("--args", nargs="*", metavar="ARG_JSON",
                         help="new arguments, JSON (none: no arguments)")
    supdate.add_argument("--start-at", dest="start_at", type=_aware, metavar="ISO",
                         help="first fire at or after this time (2031-03-01T02:00:00Z)")
    supdate.add_argument("--timezone", metavar="ZONE", help="the cron's zone")
    supdate.add_argument("--overlap", choices=("skip", "buffer_one", "cancel_previous",
                                               "allow_all"))
    supdate.add_argument("--catch-up", dest="catch_up", choices=("all", "one", "skip"))
    return parser


def _aware(text: str) -> str:
    """An ISO 8601 time with a zone (kept as text; parsed by the command)."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time "
                                         "(2031-03-01T02:00:00Z)") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no zone; add Z or +HH:MM")
    return text


def main(argv: Optional[list[str]] = None) -> int:
    from aion_green.cli.events import events as events_command
    from aion_green.cli.health import health as health_command
    from aion_green.cli.health import metrics as metrics_command
    from aion_green.cli.ops import HANDLERS, Target
    from aion_green.cli.worker import run_worker

    argv = sys.argv[1:] if argv is None else list(argv)
    _Parser.json_errors = "--json" in argv
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse ends "start TYPE --id X 1 2" at the option; the JSON
        # arguments after it belong to the command all the same.
        if args.command not in ("start", "query") or any(_option_like(x) for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.args = list(args.args) + extra
    out = Output(json_mode=args.json, quiet=args.quiet)
    if args.command == "worker":
        return run_worker(args, out)
    target: Optional[Target] = None
    try:
        target = Target(args.db, client_token(args.token), args.namespace)
        handlers = {**HANDLERS, "events": events_command, "health": health_command,
                    "metrics": metrics_command}
        return int(handlers[args.command](target, args, out))
    except KeyboardInterrupt:
        out.error("Interrupted", "interrupted; what was already recorded stays recorded")
        return EXIT_INTERRUPTED
    except AionError as exc:
        out.error(type(exc).__name__, _message(exc))
        return exit_code(exc)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, as a
        # Unix tool killed by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        if target is not None:
            target.close()


def _message(error: AionError) -> str:
    if isinstance(error, WorkflowCancelled):
        reason = error.error.get("reason") or error.message
        return f"workflow {error.workflow_id!r} was cancelled" + (f": {reason}" if reason else "")
    return str(error)


def _option_like(text: str) -> bool:
    if not text.startswith("-") or text == "-":
        return False
    try:
        json.loads(text)  # a negative number is an argument
        return False
    except ValueError:
        return True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
