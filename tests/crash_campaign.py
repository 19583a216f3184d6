"""The crash campaign (issue 8), shared by ``test_crash_fuzz.py`` (bounded)
and ``bench/crash.py`` (long): the mix of ``crash_mix.py`` runs in a worker
process that is SIGKILLed at random points, again and again, each new
worker resuming what the last one left, until one finishes the whole mix;
then the store and the effects file are checked against an uncrashed
control run of the same mix.

A seed decides every kill: per epoch (one worker process), either a delay
after the worker's engine is up, or the Nth group commit of the store,
killed just before or just after it commits. After ``max_kills`` kills a
last worker runs uninterrupted; it must finish within ``timeout`` seconds.

The invariants checked after each campaign (:func:`check`), each finding a
line that names the run, key or seq:

1. Nothing is stuck: the last worker finished, no run is still running.
2. Results: the same workflow ids exist as in the control run (no child
   created twice or lost), each with the control's status, result and
   error type, and the same number of archived (continued-as-new) runs.
3. Histories: every history (current and archived) has seqs 1..head
   without gap or duplicate, one ``WorkflowStarted`` at seq 1, and one end
   (completed, failed, or, for an archived run, continued as new), last.
4. Steps (:func:`check_steps`): the effects file has one line per step
   execution, written (fsynced) when the execution begins. For each
   recorded step outcome (``StepCompleted``, or ``StepFailed`` of an
   attempt), the token in it names the execution it recorded. Rule:
   a. that execution is in the file, under the step's idempotency key and
      the recorded attempt;
   b. it is the last line of that key and attempt: no execution of a
      recorded outcome began after the one recorded. (The recording
      process commits before it dies; a later process replays the record;
      within one process an attempt runs once. So a later line is a
      recorded step run again.)
   c. every earlier line of that key and attempt is from an epoch that was
      killed, an earlier one than the recorded: a crash lost its record,
      and re-running it is allowed. No epoch runs the same attempt twice.
   So a key runs at most (kills + 1) times per attempt, and extra runs are
   counted as ``reruns``. Every key in the file must be recorded in the end
   (no execution outside the recorded histories).
5. Messages: across a workflow id's histories, no dedup id is recorded
   twice; every signal of the mix is recorded exactly once.
6. Children: a parent records each child id once started and once ended.
7. Replay: every current history replays against the mix's code without a
   divergence (``aion_green.testing.check_replay``).
"""
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

MIX = Path(__file__).with_name("crash_mix.py")
ROOT = Path(__file__).resolve().parent.parent
KILLED = -signal.SIGKILL
_ENDS = {"WorkflowCompleted", "WorkflowFailed", "WorkflowCancelled"}


@dataclass
class Epoch:
    number: int
    kill: str  # how it was to be killed: "after 0.123 s", "before batch 7", "none"
    returncode: int
    seconds: float


@dataclass
class Campaign:
    seed: int
    epochs: list = field(default_factory=list)
    findings: list = field(default_factory=list)
    results: dict = field(default_factory=dict)
    reruns: int = 0
    seconds: float = 0.0

    @property
    def kills(self) -> int:
        return sum(1 for e in self.epochs if e.returncode == KILLED)


@dataclass
class Control:
    results: dict
    runs: dict  # workflow id -> (status, result, error type, archived runs)
    span: float  # seconds from "up" to the end of an uninterrupted worker
    batches: int  # group commits of an uninterrupted worker


def worker_env(patched: bool) -> dict:
    """The environment of a child process: this checkout importable, gevent
    patched only if asked."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("AION_GEVENT_PATCH", None)
    if patched:
        env["AION_GEVENT_PATCH"] = "1"
    return env


def run_worker(db, effects, epoch, scale, patched, delay=None, die_at=0, after_commit=False,
               timeout=120.0, max_resident=None):
    """One worker process; SIGKILL it ``delay`` seconds after its engine is
    up (None: let it run). Returns ``(returncode, output or None, stderr,
    seconds from up to exit)``; a worker still running after ``timeout`` is
    killed and reported with returncode None (stuck)."""
    args = [sys.executable, str(MIX), "--db", str(db), "--effects", str(effects),
            "--epoch", str(epoch), "--scale", str(scale)]
    if die_at:
        args += ["--die-at-batch", str(die_at)] + (["--after-commit"] if after_commit else [])
    if max_resident:
        args += ["--max-resident", str(max_resident)]
    errors = Path(f"{db}.epoch-{epoch}.stderr")
    with open(errors, "w") as err:
        proc = subprocess.Popen(args, env=worker_env(patched), stdout=subprocess.PIPE, stderr=err,
                                text=True)
        proc.stdout.readline()  # "up", or "" if it died first
        up = time.monotonic()
        stuck = False
        try:
            proc.wait(timeout=timeout if delay is None else delay)
        except subprocess.TimeoutExpired:
            stuck = delay is None
            if stuck:  # its threads' stacks, to stderr (crash_mix registers faulthandler)
                proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        out = proc.stdout.read()
        proc.stdout.close()
    seconds = time.monotonic() - up
    stderr = errors.read_text()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    output = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    return (None if stuck else proc.returncode), output, stderr, seconds


def run_control(workdir, scale, patched, max_resident=None) -> Control:
    """The mix run once, uninterrupted, on a fresh file; it must pass every
    check itself."""
    db, effects = Path(workdir) / "control.db", Path(workdir) / "control.effects"
    _fresh(db, effects)
    rc, output, stderr, seconds = run_worker(db, effects, 0, scale, patched,
                                             max_resident=max_resident)
    if rc != 0:
        raise AssertionError(f"the control run failed (exit {rc}):\n{stderr[-3000:]}")
    if output["patched"] != patched:
        raise AssertionError("the control worker did not run in the requested gevent mode")
    control = Control(output["results"], read_runs(db), seconds, output["batches"])
    findings, _ = check(db, effects, [Epoch(0, "none", 0, seconds)], output["results"], control,
                       scale)
    if findings:
        raise AssertionError("the control run breaks the invariants:\n" + "\n".join(findings))
    return control


def run_campaign(workdir, seed, control, scale=1, max_kills=8, patched=False, timeout=120.0,
                 batch_share=0.3, kill_rate=6.0, max_resident=None) -> Campaign:
    """Kill workers of the mix at random (by ``seed``) until one finishes it
    (or ``max_kills`` kills, then one more run uninterrupted); check.

    A delay is drawn from an exponential law of mean ``span / kill_rate``
    (an uninterrupted worker's span), so a campaign usually takes several
    kills to get through the mix and its kills land in every phase of it,
    recovery included; a commit number likewise from the first third of an
    uninterrupted worker's commits."""
    rng = random.Random(seed)
    camp = Campaign(seed)
    db, effects = Path(workdir) / f"seed-{seed}.db", Path(workdir) / f"seed-{seed}.effects"
    _fresh(db, effects)
    started = time.monotonic()
    output = None
    for number in range(1, 10_000):
        delay, die_at, after = None, 0, False
        if camp.kills < max_kills:
            if rng.random() < batch_share:
                die_at = rng.randint(1, max(2, round(3 * control.batches / kill_rate)))
                after = rng.random() < 0.5
                how = f"{'after' if after else 'before'} commit {die_at}"
            else:
                delay = min(rng.expovariate(kill_rate / control.span), control.span)
                how = f"after {delay:.3f} s"
        else:
            how = "none"
        rc, output, stderr, seconds = run_worker(db, effects, number, scale, patched, delay, die_at,
                                                 after, timeout, max_resident)
        camp.epochs.append(Epoch(number, how, rc, seconds))
        if rc == KILLED:
            continue
        if rc is None:
            camp.findings.append(f"epoch {number} ({how}): stuck, not done after {timeout} s:\n"
                                 f"{stderr[-2000:]}")
        elif rc != 0:
            camp.findings.append(f"epoch {number} ({how}): the worker exited {rc}:\n{stderr[-2000:]}")
        break
    camp.results = output["results"] if output else {}
    findings, camp.reruns = check(db, effects, camp.epochs, camp.results, control, scale)
    camp.findings += findings
    camp.seconds = time.monotonic() - started
    return camp


def _fresh(db, effects):
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    for path in Path(db).parent.glob(Path(db).name + "*"):
        path.unlink()
    Path(effects).unlink(missing_ok=True)


# -- reading the store ----------------------------------------------------------------------

def read_runs(db) -> dict:
    """workflow id -> (status, result, error type, archived runs), read directly."""
    conn = sqlite3.connect(str(db))
    try:
        archived = Counter(wid for wid, _ in conn.execute(
            "SELECT DISTINCT workflow_id, run_id FROM archived_events"))
        return {wid: (status, json.loads(result) if result else None,
                      json.loads(error).get("type") if error else None, archived[wid])
                for wid, status, result, error in conn.execute(
                    "SELECT workflow_id, status, result, error FROM runs")}
    finally:
        conn.close()


def read_histories(db) -> dict:
    """(workflow id, run id or "" for the current run) -> [(seq, type, data)]."""
    conn = sqlite3.connect(str(db))
    try:
        histories = defaultdict(list)
        for wid, seq, etype, data in conn.execute(
                "SELECT workflow_id, seq, type, data FROM events ORDER BY workflow_id, seq"):
            histories[(wid, "")].append((seq, etype, json.loads(data)))
        for wid, rid, seq, etype, data in conn.execute(
                "SELECT workflow_id, run_id, seq, type, data FROM archived_events "
                "ORDER BY workflow_id, run_id, seq"):
            histories[(wid, rid)].append((seq, etype, json.loads(data)))
        # A run's head is the seq of its last event (None: a run row without events).
        heads = dict(conn.execute("SELECT workflow_id, (SELECT max(seq) FROM events e "
                                  "WHERE e.workflow_id = runs.workflow_id) FROM runs"))
        running = [wid for (wid,) in conn.execute("SELECT workflow_id FROM runs WHERE status = 'running'")]
        return histories, heads, running
    finally:
        conn.close()


def read_effects(effects) -> list:
    """[(key, epoch, attempt, token)] in file order."""
    if not Path(effects).exists():
        return []
    lines = []
    for line in Path(effects).read_text().splitlines():
        key, epoch, attempt, token = line.split(" ")
        lines.append((key, int(epoch), int(attempt), token))
    return lines


# -- the checks ------------------------------------------------------------------------------

def check(db, effects, epochs, results, control, scale):
    """Every invariant of the module docstring; returns (findings, reruns)."""
    from crash_mix import signals

    findings = []
    histories, heads, running = read_histories(db)
    findings += [f"{wid}: still running at the end (stuck)" for wid in running]
    if results != control.results:
        diff = sorted(k for k in set(results) | set(control.results)
                      if results.get(k) != control.results.get(k))
        findings.append(f"top-level results differ from the control run: {diff}: "
                        f"{[results.get(k) for k in diff]} != {[control.results.get(k) for k in diff]}")
    runs = read_runs(db)
    for wid in sorted(set(runs) | set(control.runs)):
        if runs.get(wid) != control.runs.get(wid):
            findings.append(f"{wid}: (status, result, error, archived runs) {runs.get(wid)} != "
                            f"control {control.runs.get(wid)}")
    findings += check_histories(histories, heads)
    step_findings, reruns = check_steps(histories, read_effects(effects), epochs)
    findings += step_findings
    findings += check_messages(histories, signals(scale))
    findings += check_children(histories)
    findings += check_replays(db)
    return findings, reruns


def check_histories(histories, heads):
    findings = [f"{wid}: a run without events" for wid, head in sorted(heads.items()) if head is None]
    for (wid, rid), events in sorted(histories.items()):
        name = f"{wid}" + (f" (archived run {rid})" if rid else "")
        seqs = [seq for seq, _, _ in events]
        if seqs != list(range(1, len(seqs) + 1)):
            findings.append(f"{name}: seqs are not 1..{len(seqs)} without gap: {seqs}")
        if not rid and heads.get(wid) != len(events):
            findings.append(f"{name}: last seq {heads.get(wid)} but {len(events)} events")
        types = [etype for _, etype, _ in events]
        if types[:1] != ["WorkflowStarted"] or types.count("WorkflowStarted") != 1:
            findings.append(f"{name}: not one WorkflowStarted at seq 1: {types}")
        ends = _ENDS if not rid else {"WorkflowContinuedAsNew"}
        if sum(t in ends or t == "WorkflowContinuedAsNew" for t in types) != 1 or types[-1] not in ends:
            findings.append(f"{name}: not exactly one end, last: {types}")
    return findings


_TOKEN = re.compile(r"\[(\d+\.\d+)\]$")


def _run_key(wid, events):
    generation = events[0][2].get("generation", 1) if events else 1
    return wid if generation <= 1 else f"{wid}/run-{generation}"


def check_steps(histories, lines, epochs):
    """Rule 4 of the module docstring; returns (findings, reruns)."""
    findings, reruns = [], 0
    killed = {e.number for e in epochs if e.returncode == KILLED}
    where = {token: i for i, (_, _, _, token) in enumerate(lines)}
    by_attempt = defaultdict(list)  # (key, attempt) -> line indexes, in file order
    for i, (key, _, attempt, _) in enumerate(lines):
        by_attempt[(key, attempt)].append(i)
    recorded = set()
    for (wid, _), events in histories.items():
        prefix = _run_key(wid, events)
        for seq, etype, data in events:
            if etype == "StepCompleted":
                token = data["result"]["t"]
            elif etype == "StepFailed":
                match = _TOKEN.search(data["error"].get("message", ""))
                if not match:
                    continue  # not an effect of the mix
                token = match.group(1)
            else:
                continue
            key, attempt = f"{prefix}/step-{data['step']}", data["attempt"]
            what = f"{wid} seq {seq}: {etype} of {key} attempt {attempt} (token {token})"
            recorded.add(key)
            if token not in where:
                findings.append(f"{what}: no such execution in the effects file")
                continue
            line = lines[where[token]]
            if (line[0], line[2]) != (key, attempt):
                findings.append(f"{what}: the token belongs to {line}")
                continue
            indexes = by_attempt[(key, attempt)]
            later = [lines[i] for i in indexes if i > where[token]]
            if later:
                findings.append(f"{what}: ran again after the execution recorded: {later}")
            earlier = [lines[i] for i in indexes if i < where[token]]
            for _, epoch, _, _ in earlier:
                if epoch not in killed or epoch >= line[1]:
                    findings.append(f"{what}: also ran in epoch {epoch}, which no kill explains "
                                    f"(recorded in epoch {line[1]}; killed: {sorted(killed)})")
            reruns += len(earlier)
            epochs_seen = Counter(lines[i][1] for i in indexes)
            twice = [e for e, n in epochs_seen.items() if n > 1]
            if twice:
                findings.append(f"{what}: ran more than once in epoch(s) {twice}")
    stray = sorted({key for key, _, _, _ in lines} - recorded)
    if stray:
        findings.append(f"steps executed but recorded in no history: {stray}")
    return findings, reruns


def check_messages(histories, signals):
    findings = []
    dedups = defaultdict(Counter)  # workflow id -> dedup id -> times recorded
    for (wid, _), events in histories.items():
        for _seq, etype, data in events:
            if etype == "MessageReceived" and data.get("dedup"):
                dedups[wid][data["dedup"]] += 1
    for wid, counts in sorted(dedups.items()):
        for dedup, n in counts.items():
            if n > 1:
                findings.append(f"{wid}: message {dedup} recorded {n} times")
    for wid, _, key, _ in signals:
        if dedups[wid][f"signal/{key}"] != 1:
            findings.append(f"{wid}: signal {key} recorded {dedups[wid][f'signal/{key}']} times")
    return findings


def check_children(histories):
    findings = []
    for (wid, rid), events in sorted(histories.items()):
        started = Counter(d["id"] for _, t, d in events if t == "ChildStarted")
        ended = Counter(d["id"] for _, t, d in events
                        if t in ("ChildCompleted", "ChildFailed"))
        for child in sorted(set(started) | set(ended)):
            if started[child] != 1 or ended[child] != 1:
                findings.append(f"{wid}{' ' + rid if rid else ''}: child {child} started "
                                f"{started[child]} and ended {ended[child]} times")
            if (child, "") not in histories:
                findings.append(f"{wid}: child {child} was started but does not exist")
    return findings


def check_replays(db):
    """Replay every current history in a process of its own (a replay
    engine in the campaign's process would share its gevent mode)."""
    code = ("import sys; sys.path.insert(0, sys.argv[2]); import crash_mix; "
            "from aion_green.testing import check_replay; "
            "print(check_replay(sys.argv[1], workflows=crash_mix.WORKFLOWS))")
    proc = subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}", str(MIX.parent)],
                          env=worker_env(False), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return [f"replay check failed:\n{proc.stderr[-3000:]}"]
    return []
