"""VW workspaces that learn the same DSJSON lines progressively, each keeping what it scored before each update:
in the replay's own process (:class:`Learners`), or in a worker process of their own (:class:`Worker`).

A worker is ``python -m ranker.evaluation.learners READ_FD WRITE_FD``: it imports VW, numpy and this module only,
so it starts in about a tenth of a second (a multiprocessing "spawn" child imports the parent's ``__main__`` and
the whole package: half a second, a tenth of a 100,000-event replay on two cores). It talks over two
pipes of its own (not stdin and stdout, which VW may print to), in frames of an 8-byte little-endian length and
that many bytes. In: the groups as JSON (``[[multislot, [entry, ...]], ...]``), chunks of lines (the logged
action of each line as a JSON array, then the lines, all joined by ``"\\n"``), then an empty frame. Out:
``{"outputs": n}`` and each output's scores (float64) and counts (int64) as raw bytes, or ``{"error": text,
"type": the exception's class}``. A worker whose parent is gone reads the end of its pipe and exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import vowpalwabbit

from ranker.core import vwcalls

# (multi-slot, the entries that learn from one parse: a workspace's VW arguments, or the index of the entry whose
# regressor's scores it reports; see Learners)
Group = tuple[bool, Sequence[str | int]]
Chosen = int | list[int]  # a line's logged action: its ``_multi`` index, or each slot's for a multi-slot line
Output = tuple[array, array]  # scores, flat, and their count per line

F_SETPIPE_SZ = 1031  # fcntl (Linux)
PIPE_SIZE = 1 << 20  # the most an unprivileged process may ask for (/proc/sys/fs/pipe-max-size)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # where ``ranker`` is imported from


class Learners:
    """VW workspaces that learn the same lines, each keeping the scores it reported: flat, with their count per
    line (0 where VW refused the line), in ``outputs`` in the order of the groups' entries. A single-slot
    workspace keeps the PMF over the line's actions, a multi-slot one each slot's probability of the slot's
    logged action. Arguments VW does not take are a :class:`ValueError`.

    The single-slot workspaces of one group learn from one parse of each line: the first of them parses it, each
    learns it in turn, and the first hands the examples back. VW's parsing is most of the cost of a line, so the
    default evaluation (two policies and the reward model, one group) costs about half of parsing separately; the
    scores are the same (tests/test_replay.py compares them). A multi-slot workspace parses its own lines.

    An entry that is an index instead of arguments reports the scores of that entry's regressor, before its
    update: a ``--cb_adf`` reward model learns exactly what an epsilon-greedy policy's MTR regressor learns, so
    the policy's workspace can report both (:func:`ranker.evaluation.scheduling.regressor`): VW leaves every action
    example's score in place after an MTR update but the logged one's, which a prediction over the logged action
    alone gives first. The scores are the reward model's own (tests/test_replay.py).
    """

    def __init__(self, groups: Sequence[Group]):
        # per group: its kind, its workspaces, their outputs, and the (workspace, output) pairs of regressor scores
        self.groups: list[tuple[bool, list[vowpalwabbit.Workspace], list[Output], list[tuple[int, Output]]]] = []
        self.outputs: list[Output] = [(array("d"), array("q")) for _, entries in groups for _ in entries]
        outputs = iter(self.outputs)
        try:
            for multislot, entries in groups:
                workspaces: list[vowpalwabbit.Workspace] = []
                own: list[Output] = []
                regressors: list[tuple[int, Output]] = []
                self.groups.append((multislot, workspaces, own, regressors))
                index = {}  # entry -> workspace
                for i, entry in enumerate(entries):
                    if isinstance(entry, int):
                        regressors.append((index[entry], next(outputs)))
                        continue
                    try:
                        ws = vowpalwabbit.Workspace(f"{entry} --dsjson --quiet")
                    except RuntimeError as exc:  # VW's word for arguments it does not take
                        raise ValueError(f"VW does not take the arguments {entry!r}: {exc}") from None
                    index[i] = len(workspaces)
                    workspaces.append(ws)
                    own.append(next(outputs))
        except BaseException:
            self.close()
            raise

    def learn(self, lines: Sequence[str], chosen: Sequence[Chosen]) -> None:
        """Learn ``lines``, whose logged actions are ``chosen`` (as the replay read them)."""
        for multislot, workspaces, outputs, regressors in self.groups:
            if multislot:
                for ws, (scores, counts) in zip(workspaces, outputs, strict=True):
                    _learn_slots(ws, lines, chosen, scores, counts)  # type: ignore[arg-type]
            else:
                _learn_shared(workspaces, lines, chosen, outputs, regressors)  # type: ignore[arg-type]

    def close(self) -> None:
        for _, workspaces, _, _ in self.groups:
            for ws in workspaces:
                ws.finish()
        self.groups = []


def _learn_shared(
    workspaces: list[vowpalwabbit.Workspace],
    lines: Sequence[str],
    chosen: Sequence[int],
    outputs: list[Output],
    regressors: list[tuple[int, Output]],
) -> None:
    """Learn single-slot lines in workspaces of one group; keep each one's PMF from before its update, and for
    ``regressors`` (workspace, output) the workspace's regressor scores from before it."""
    parse, learn, finish = vwcalls.parse, vwcalls.learn_multi, vwcalls.finish_multi
    parser = workspaces[0]
    reads: list[list[Output]] = [[] for _ in workspaces]
    for k, output in regressors:
        reads[k].append(output)
    steps = list(zip(workspaces, outputs, reads, strict=True))
    every = outputs + [output for _, output in regressors]
    for line, logged in zip(lines, chosen, strict=True):
        # the calls pyvw's parse and learn make, without wrapping every example in Python
        try:
            examples = parse(parser, line)
        except RuntimeError:
            for _, counts in every:
                counts.append(0)
            continue
        try:
            for ws, (scores, counts), regressor in steps:
                values: list[float] = []
                try:
                    before = _logged_score(ws, examples, logged) if regressor else None
                    learn(ws, examples)
                    pmf = examples[0].get_action_scores()
                    if before is not None:
                        values = [example.get_partial_prediction() for example in examples[1:]]
                        values[logged] = before
                except RuntimeError:
                    pmf = ()
                scores.extend(pmf)
                counts.append(len(pmf))
                for values_out, values_counts in regressor:
                    values_out.extend(values)
                    values_counts.append(len(values))
        finally:
            finish(parser, examples)


def _logged_score(ws: vowpalwabbit.Workspace, examples: list, logged: int) -> float | None:
    """The score of the logged action's example (``examples[0]`` holds the shared features), predicted over that
    action alone; None when VW put the line's label on another example."""
    if not 0 <= logged < len(examples) - 1 or examples[1 + logged].get_cbandits_num_costs() != 1:
        return None
    vwcalls.predict_multi(ws, [examples[0], examples[1 + logged]])
    return examples[1 + logged].get_partial_prediction()


def _learn_slots(
    ws: vowpalwabbit.Workspace, lines: Sequence[str], chosen: list[list[int]], scores: array, counts: array
) -> None:
    """Learn multi-slot lines; keep, per slot, VW's probability of the logged action before the update."""
    parse, learn, finish = vwcalls.parse, vwcalls.learn_multi, vwcalls.finish_multi
    for line, logged in zip(lines, chosen, strict=True):
        try:
            examples = parse(ws, line)
        except RuntimeError:
            counts.append(0)
            continue
        try:
            learn(ws, examples)
            per_slot = [dict(slot) for slot in examples[0].get_decision_scores()]
        except RuntimeError:
            per_slot = []
        finally:
            finish(ws, examples)
        if len(per_slot) != len(logged) or any(a not in slot for a, slot in zip(logged, per_slot, strict=False)):
            counts.append(0)  # VW did not score every slot's logged action: it read another line than logged
            continue
        scores.extend(slot[a] for a, slot in zip(logged, per_slot, strict=True))
        counts.append(len(logged))


# -- worker processes ---------------------------------------------------------------------------------------


def _write(stream: BinaryIO, data: bytes) -> None:
    stream.write(len(data).to_bytes(8, "little"))
    stream.write(data)


def _read(stream: BinaryIO) -> bytes:
    size = int.from_bytes(_exactly(stream, 8), "little")
    return _exactly(stream, size)


def _exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the other end of a replay worker's pipe is gone")
    return data


class Worker:
    """:class:`Learners` in a process of their own, fed chunks of lines through a pipe while this one goes on.
    Raises the :class:`ValueError` the learners raise there (arguments VW does not take), and
    :class:`RuntimeError` when the process fails otherwise or dies."""

    def __init__(self, groups: Sequence[Group]):
        to_worker, self._lines_in = os.pipe()
        self._results_out, from_worker = os.pipe()
        # room for a few chunks ahead, so this process reads and learns on while the worker catches up
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._lines_in, F_SETPIPE_SZ, PIPE_SIZE)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(to_worker), str(from_worker)],
                pass_fds=(to_worker, from_worker),
                cwd=PACKAGE_ROOT,  # ``-m`` imports from the working folder first: this package, not another
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            os.close(self._lines_in)
            os.close(self._results_out)
            raise
        finally:
            os.close(to_worker)
            os.close(from_worker)
        self.lines = os.fdopen(self._lines_in, "wb")
        self.results = os.fdopen(self._results_out, "rb")
        try:  # sent at once, so the worker sets up its workspaces while this process starts reading
            self.send(json.dumps([[multislot, list(arguments)] for multislot, arguments in groups]).encode())
        except BaseException:
            self.close()
            raise

    def send(self, data: bytes) -> None:
        """Send a frame: the groups, or a chunk (its lines' logged actions as JSON, then the lines, by newlines)."""
        try:
            _write(self.lines, data)
            self.lines.flush()
        except OSError:
            raise self._failure() from None

    def end(self) -> None:
        """Say that the lines are all sent."""
        self.send(b"")

    def outputs(self) -> list[Output]:
        """The worker's outputs, once it has learned every line (after :meth:`end`)."""
        try:
            head = json.loads(_read(self.results))
            if "error" in head:
                raise _reported(head)
            outputs = []
            for _ in range(head["outputs"]):
                scores, counts = array("d"), array("q")
                scores.frombytes(_read(self.results))
                counts.frombytes(_read(self.results))
                outputs.append((scores, counts))
            return outputs
        except (OSError, EOFError) as exc:
            raise RuntimeError("a replay worker process died") from exc

    def _failure(self) -> Exception:
        """What to raise when the worker stopped reading: what it reported, or that it died."""
        try:
            return _reported(json.loads(_read(self.results)))
        except (OSError, EOFError, ValueError, KeyError):
            return RuntimeError("a replay worker process died")

    def close(self) -> None:
        for stream in (self.lines, self.results):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _reported(head: dict) -> Exception:
    """The exception a worker reported: a ValueError (bad input) as such, anything else as a RuntimeError."""
    if head["type"] == "ValueError":
        return ValueError(head["error"])
    return RuntimeError(f"replay worker: {head['error']}")


def main(read_fd: int, write_fd: int) -> None:
    """A worker process: learn the chunks read from ``read_fd``, then write the outputs to ``write_fd``."""
    # Ctrl-C in a terminal reaches the whole process group: the replay stops, and this process with it (the end
    # of its pipe), without a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    learners = None
    try:
        with os.fdopen(read_fd, "rb") as lines:
            groups = json.loads(_read(lines))
            learners = Learners([(multislot, arguments) for multislot, arguments in groups])
            while chunk := _read(lines):
                head, body = chunk.decode().split("\n", 1)
                learners.learn(body.split("\n"), json.loads(head))
        reply = [json.dumps({"outputs": len(learners.outputs)}).encode()]
        reply += [bytes(part) for output in learners.outputs for part in output]
    except EOFError:
        return  # the replay is gone
    except Exception as exc:  # reported to the replay, which raises it
        error = str(exc) if type(exc) is ValueError else repr(exc)
        reply = [json.dumps({"error": error, "type": type(exc).__name__}).encode()]
    finally:
        if learners is not None:
            learners.close()
    with contextlib.suppress(OSError), os.fdopen(write_fd, "wb") as results:  # OSError: the replay is gone
        for frame in reply:
            _write(results, frame)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
