"""The network in a process of its own: same answers as in the worker thread, faults named,
the process gone when the server stops or dies."""

from __future__ import annotations

import pytest
import torch
from deploy_fixtures import cls_run

import rsvision
from rsvision.serve.executor import ChildProcess, InThread, WorkerDied
from rsvision.serve.runner import Runner


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return cls_run(tmp_path_factory)


def test_the_child_answers_as_the_worker_thread(run):
    runner = Runner(rsvision.load(run))
    images = [torch.randint(0, 256, (3, 20, 26), dtype=torch.uint8, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    child = ChildProcess(run, threads=1)
    child.start()
    try:
        for subnet in runner.subnets:
            here, there = InThread(runner).run(subnet, images), child.run(subnet, images)
            assert [a["index"] for a in here] == [a["index"] for a in there]
            assert [a["probability"] for a in here] == pytest.approx([a["probability"] for a in there], abs=1e-6)
        with pytest.raises(RuntimeError, match="KeyError"):  # a fault of one batch: named, and the child goes on
            child.run("no-such-subnet", images)
        assert len(child.run(next(iter(runner.subnets)), images[:1])) == 1
        process = child._process
    finally:
        child.close()
    assert process.poll() == 0  # closing the pipe ends it


def test_a_child_that_dies_is_reported_as_gone(run):
    child = ChildProcess(run, threads=1)
    child.start()
    try:
        child._process.kill()
        child._process.wait()
        with pytest.raises(WorkerDied, match="the network process exited"):
            child.run(next(iter(Runner(rsvision.load(run)).subnets)), [torch.zeros(3, 8, 8, dtype=torch.uint8)])
    finally:
        child.close()


def test_a_start_up_error_is_raised_in_the_server(tmp_path):
    child = ChildProcess(tmp_path / "missing", threads=1)
    with pytest.raises(RuntimeError, match="no such run folder"):
        child.start()
    assert child._process is None
