"""Where the server's batches run: in the worker thread, or in a process of their own.

The server's worker thread takes each batch from the scheduler and hands it to an executor,
which returns one answer per image (the JSON fields of :func:`rsvision.serve.runner.answer_fields`):

- :class:`InThread` runs the batch in the worker thread itself. The network then shares the
  interpreter with the event loop and the decoding threads: each time a PyTorch operator
  returns, the worker needs the GIL back, and a busy event loop holds it for up to the
  interpreter's switch interval (5 ms). Under load a batch takes several times its quiet time
  (measured here: 3x on a ResNet-8 at batch 16). For tests and for embedding.
- :class:`ChildProcess` runs it in a child process (``python -m rsvision.serve.executor``) that
  loads the model itself (``rsvision serve``'s default): the network has an interpreter and
  intra-op threads of its own, so the time of a batch does not depend on the HTTP traffic.
  Images go over a pipe as uint8 arrays (a 146 x 194 RGB view is 85 kB), answers come back
  as JSON fields. The child is started as a fresh interpreter on this module, not through
  multiprocessing's spawn, which would import the server's main script again. It ignores
  SIGINT and SIGTERM (the server stops it once its requests are answered) and exits when its
  pipe closes, so it never outlives the server.

Either way the worker times the executor's ``run``: the latency table covers the hand-over to
the network and back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rsvision.serve.runner import Runner, answer_fields

#: How long a stopping child may take to exit before it is killed (seconds).
STOP_S = 30.0


class WorkerDied(RuntimeError):
    """The process that runs the batches is gone: no later batch can run."""


class InThread:
    """Batches run in the calling thread, the server's worker (module docstring)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def start(self) -> None:
        """Nothing to start: the worker thread is the executor."""

    def run(self, subnet: str, images: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        return [answer_fields(r) for r in self.runner.run(subnet, images)]

    def close(self) -> None:
        """Nothing to stop."""


def _child(conn, source: str, device: str | None, name: str | None, threads: int | None, plugins: tuple[str, ...]) -> None:
    """The child's loop: load the model, say ready, then run every batch that arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        from rsvision.deploy.load import load
        from rsvision.registry import load_plugins

        load_plugins(plugins)
        if threads:
            torch.set_num_threads(threads)
        runner = Runner(load(source) if device is None else load(source, device), name, threads)
    except BaseException as exc:  # reported by the parent at start-up
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the server is gone
            return
        if message is None:
            conn.close()
            return
        subnet, arrays = message
        try:
            answers = [answer_fields(r) for r in runner.run(subnet, [torch.from_numpy(a) for a in arrays])]
        except Exception as exc:  # a fault of this batch: the server answers it 500 and goes on
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        else:
            conn.send(("ok", answers))


class ChildProcess:
    """Batches run in a child process holding its own copy of the model (module docstring).
    ``source``, ``device``, ``name``, ``threads``: as for :class:`Runner` and ``rsvision.load``;
    ``plugins``: plugin files or modules the child loads first (``--plugin``)."""

    def __init__(self, source: str | Path, device: str | torch.device | None = None, name: str | None = None, threads: int | None = None,
                 plugins: Sequence[str | Path] = ()) -> None:
        self.args = (str(source), None if device is None else str(device), name, threads, tuple(str(p) for p in plugins))
        self._conn = None
        self._process = None

    def start(self) -> None:
        """Start the child and wait until its model is loaded; its start-up error is raised here."""
        self._conn, theirs = Pipe()
        try:
            self._process = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno()), json.dumps(self.args)],
                                             pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        status, detail = self._receive()
        if status != "ready":
            self.close()
            raise RuntimeError(detail)

    def _gone(self) -> WorkerDied:
        return WorkerDied(f"the network process exited (code {self._process.poll()})")

    def _receive(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None

    def run(self, subnet: str, images: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        try:
            self._conn.send((subnet, [np.ascontiguousarray(image.numpy()) for image in images]))
        except (BrokenPipeError, OSError):
            raise self._gone() from None
        status, detail = self._receive()
        if status != "ok":
            raise RuntimeError(detail)
        return detail

    def close(self) -> None:
        """Stop the child: close its pipe, wait for it, kill it if it does not exit."""
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._conn.close()
            self._conn = None
        if self._process is not None:
            try:
                self._process.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


if __name__ == "__main__":
    _child(Connection(int(sys.argv[1])), *json.loads(sys.argv[2]))
