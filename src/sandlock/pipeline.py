"""Composition: `sb.cmd(args)` stages joined with `|` into a Pipeline.

    r = (Sandbox(...).cmd(["producer"]) | Sandbox(...).cmd(["consumer"])).run(timeout=30)

Each stage runs in its own sandbox (its own policy, supervisor and
process group); kernel pipes connect each stage's stdout to the next
stage's stdin, and all stages run at once. Stage 0 reads the caller's
stdin. The Result is the last stage's (its exit status, its stdout and
stderr); the stderr of every stage is captured, and `Pipeline.results`
holds each stage's own Result after a run (the reference SDK lets the
earlier stages' stderr through to the caller's fd 2 instead).

Gather (`a.as_("x") + b.as_("y") | consumer`) runs the producers at once,
each one's stdout a pipe to its own fd of the consumer, which reads them
with `sandlock.inputs` (see GatherPipeline).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .sandbox import Result, Sandbox


# The consumer's environment variable naming its inputs (sandlock.inputs
# reads it). Not imported from there: importing the module sandlock.inputs
# binds that name on the package, shadowing the `inputs` accessor.
GATHER_ENV = "_SANDLOCK_GATHER"


def _stage_args(args) -> list[str]:
    from .exceptions import PolicyError
    if isinstance(args, (str, bytes)):
        raise PolicyError(f"cmd: expected a list of arguments, not a string (got {args!r})")
    return list(args)


class Stage:
    """A command bound to a Sandbox; nothing runs until run() or a pipeline."""

    def __init__(self, sandbox: "Sandbox", args: Sequence[str]):
        self.sandbox = sandbox
        self.args = _stage_args(args)

    def as_(self, name: str) -> "NamedStage":
        """Name this stage's output, as a source of a gather."""
        return NamedStage(self, name)

    def run(self, timeout: float | None = None) -> "Result":
        """Run this stage alone (the same as sandbox.run(args, timeout))."""
        return self.sandbox.run(self.args, timeout=timeout)

    def __or__(self, other: "Stage | Pipeline") -> "Pipeline":
        if isinstance(other, Pipeline):
            return Pipeline([self, *other.stages])
        if isinstance(other, Stage):
            return Pipeline([self, other])
        return NotImplemented

    def __repr__(self) -> str:
        return f"Stage({self.args!r})"


class NamedStage:
    """A stage whose output is a named input of a gather consumer."""

    def __init__(self, stage: Stage, name: str):
        from .exceptions import PolicyError
        if not isinstance(name, str) or not name or any(c in name for c in ",:\0"):
            raise PolicyError(f"gather name: expected a non-empty name without ',' or ':' "
                              f"(got {name!r})")
        self.stage = stage
        self.name = name

    def __add__(self, other: "NamedStage | Gather") -> "Gather":
        if isinstance(other, Gather):
            return Gather([(self.name, self.stage), *other.sources])
        if isinstance(other, NamedStage):
            return Gather([(self.name, self.stage), (other.name, other.stage)])
        return NotImplemented


class Gather:
    """Named stages whose outputs a consumer reads (see sandlock.inputs)."""

    def __init__(self, sources: list[tuple[str, Stage]]):
        self.sources = list(sources)

    def __add__(self, other: "NamedStage | Gather") -> "Gather":
        if isinstance(other, Gather):
            return Gather(self.sources + other.sources)
        if isinstance(other, NamedStage):
            return Gather([*self.sources, (other.name, other.stage)])
        return NotImplemented

    def __or__(self, other: Stage) -> "GatherPipeline":
        if isinstance(other, Stage):
            return GatherPipeline(self.sources, other)
        return NotImplemented


class GatherPipeline:
    """Producers in parallel, each one's stdout a named input of the consumer.

    The last source is the consumer's stdin (fd 0), the others its fds 3,
    4, ... in declaration order; `_SANDLOCK_GATHER="name:fd,..."` in its
    environment names them, and `sandlock.inputs` reads them. Producers
    read /dev/null. The consumer's stdout and stderr make the Result;
    `results` holds every stage's own Result (producers first, then the
    consumer), stderr included."""

    def __init__(self, sources: list[tuple[str, Stage]], consumer: Stage):
        from .exceptions import PolicyError
        if not sources:
            raise PolicyError("gather: at least one source is needed")
        if not isinstance(consumer, Stage):
            raise TypeError(f"gather: the consumer must be a Stage (got {consumer!r})")
        names = [n for n, _ in sources]
        if len(set(names)) != len(names):
            raise PolicyError(f"gather: source names must be distinct (got {names!r})")
        self.sources = list(sources)
        self.consumer = consumer
        self.results: list[Result] = []

    def fd_map(self) -> dict[str, int]:
        """Each source's descriptor in the consumer."""
        *others, (last, _stage) = self.sources
        return {**{name: 3 + i for i, (name, _s) in enumerate(others)}, last: 0}

    def run(self, timeout: float | None = None) -> "Result":
        """Run the producers and the consumer at once and wait for all of
        them; the Result is the consumer's. With `timeout`, every stage
        still running then is killed and the reason is TIMEOUT."""
        from .sandbox import _check_timeout
        _check_timeout(timeout)
        results = _run_stages([s for _n, s in self.sources] + [self.consumer], None, timeout,
                              gather=self.fd_map())
        self.results = results
        return _overall(results, "Gather timed out")


class Pipeline:
    """Stages connected stdout → stdin by kernel pipes."""

    def __init__(self, stages: list[Stage]):
        stages = list(stages)
        if len(stages) < 2:
            raise ValueError("Pipeline requires at least 2 stages")
        if not all(isinstance(s, Stage) for s in stages):
            raise TypeError(f"Pipeline: every stage must be a Stage (got {stages!r})")
        self.stages = stages
        self.results: list[Result] = []

    def __or__(self, other: "Stage | Pipeline") -> "Pipeline":
        if isinstance(other, Pipeline):
            return Pipeline(self.stages + other.stages)
        if isinstance(other, Stage):
            return Pipeline([*self.stages, other])
        return NotImplemented

    def run(self, stdout: int | None = None, timeout: float | None = None) -> "Result":
        """Run every stage at once and wait for all of them. `stdout`: a file
        descriptor that receives the last stage's output as it is written
        (then `Result.stdout` is empty). With `timeout`, every stage still
        running when it expires is killed and the Result's reason is
        TIMEOUT. `results` then holds each stage's own Result (exit code,
        stderr)."""
        from .sandbox import _check_timeout
        _check_timeout(timeout)
        results = _run_stages(self.stages, stdout, timeout)
        self.results = results
        return _overall(results, "Pipeline timed out")


def _overall(results: list["Result"], timed_out: str) -> "Result":
    """The run's Result: the last stage's, or TIMEOUT if any stage timed out."""
    from .sandbox import ExitReason, Result
    last = results[-1]
    if any(r.reason == ExitReason.TIMEOUT for r in results):
        return Result(False, -1, last.stdout, last.stderr, error=timed_out,
                      reason=ExitReason.TIMEOUT, stages=list(results))
    return Result(last.success, last.exit_code, last.stdout, last.stderr, error=last.error,
                  reason=last.reason, signal=last.signal, changes=list(last.changes),
                  stages=list(results))


def _run_stages(stages: list[Stage], stdout: int | None, timeout: float | None,
                gather: dict[str, int] | None = None) -> list["Result"]:
    """Start every stage, then collect them all concurrently.

    Without `gather`: a chain, stage i's stdout is stage i+1's stdin and
    stage 0 reads the caller's stdin. With `gather` (name → fd in the
    consumer, see GatherPipeline.fd_map): every stage but the last is a
    producer reading /dev/null, whose stdout is a pipe to the last stage
    (the consumer) at that fd. The last stage's stdout goes to `stdout`
    or is captured; every stage's stderr is captured."""
    import dataclasses

    from . import launch
    from .plan import compile_plan
    from .protocol import Cmd
    from .sandbox import _collect_runs, _result
    if stdout is not None:
        launch.check_fd(stdout, "stdout")
    # A Sandbox runs one command at a time: each stage gets its own copy
    # (validated by compile_plan below), so one Sandbox may appear in
    # several stages.
    boxes = [s.sandbox._stage_copy() for s in stages]
    if gather is not None:
        mapping = ",".join(f"{name}:{fd}" for name, fd in gather.items())
        boxes[-1] = dataclasses.replace(boxes[-1], env={**boxes[-1].env, GATHER_ENV: mapping})
    plans = [compile_plan(box._policy(), s.args) for box, s in zip(boxes, stages, strict=True)]
    n = len(stages)
    # Every stage (but those with policy_fn: their supervisor is forked
    # from here) takes a supervisor of the launch server at once.
    launch.reserve(sum(plan.policy_fn is None for plan in plans))
    mine: list[int] = []     # fds the caller reads (stdout of the last stage, every stderr)
    theirs: list[int] = []   # child ends, closed once every stage has started
    runs: list = []
    try:
        null = None

        def devnull() -> int:
            nonlocal null
            if null is None:
                null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                theirs.append(null)
            return null

        out_r = None
        if stdout is None:
            out_r, last_out = os.pipe2(os.O_CLOEXEC)
            mine.append(out_r)
            theirs.append(last_out)
        else:
            last_out = stdout
        # (stdin, stdout, extra fds) of each stage
        wiring: list[tuple[int, int, list[int]]] = []
        links = []
        for _ in range(n - 1):
            r, w = os.pipe2(os.O_CLOEXEC)
            theirs += [r, w]
            links.append((r, w))
        if gather is None:
            try:
                os.fstat(0)
                first_in = 0
            except OSError:
                first_in = devnull()
            for i in range(n):
                wiring.append((first_in if i == 0 else links[i - 1][0],
                               last_out if i == n - 1 else links[i][1], []))
        else:
            for i in range(n - 1):
                wiring.append((devnull(), links[i][1], []))
            wiring.append((links[-1][0], last_out, [r for r, _w in links[:-1]]))
        errs = []
        for _ in range(n):
            r, w = os.pipe2(os.O_CLOEXEC)
            mine.append(r)
            theirs.append(w)
            errs.append((r, w))
        for i, (box, plan) in enumerate(zip(boxes, plans, strict=True)):
            stage_in, stage_out, extra = wiring[i]
            runs.append(box._start(plan, (stage_in, stage_out, errs[i][1]), timeout,
                                   extra_fds=extra))
    except BaseException:
        for box, run in zip(boxes, runs, strict=False):  # runs: those started
            run.send(Cmd.KILL)
            box._finish(run)
            _abandon(box, run)
        for fd in mine + theirs:
            os.close(fd)
        raise
    for fd in theirs:
        os.close(fd)

    try:
        # Every stage is collected at once (its result pipe, its stderr, and
        # the last stage's stdout): a stage writing more than a pipe holds
        # never waits for a reader busy with another stage.
        captured = _collect_runs([(run, out_r if i == n - 1 else None, errs[i][0])
                                  for i, run in enumerate(runs)], timeout)
    except BaseException:
        for run in runs:  # one stage's failure ends the whole run
            run.send(Cmd.KILL)
        for box, run in zip(boxes, runs, strict=True):
            box._finish(run)
            _abandon(box, run)
        raise
    finally:
        for box, run in zip(boxes, runs, strict=True):
            box._finish(run)
        for fd in mine:
            os.close(fd)
    out: list[Result] = []
    for box, run, (stdout_bytes, stderr_bytes) in zip(boxes, runs, captured, strict=True):
        # Each stage ends as a run of its own does: its workdir's branch
        # committed or aborted, its policy_fn's audit collected.
        out.append(box._settle(run, _result(run.result, stdout_bytes, stderr_bytes)))
    return out


def _abandon(box, run) -> None:
    """A stage of a pipeline that failed as a whole: settled as a failed run
    (a workdir's branch gets on_error)."""
    from .sandbox import Result
    try:
        box._settle(run, Result(False, -1, error="the pipeline failed"))
    except Exception:  # noqa: BLE001 - the pipeline's own error is the one to raise
        pass
