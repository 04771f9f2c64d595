"""The console's default torch thread count depends on the cores the process may use, never on the load, so the
same command on the same machine trains the same weights whether the machine is idle or busy."""
from __future__ import annotations

import os

import pytest
import torch

from segexpr import cli


def _with_load(monkeypatch, one_minute: float) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (one_minute, one_minute, one_minute), raising=False)


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def two_cores(monkeypatch, restore_threads):
    """A process that may use 2 cores, with torch's default 2 (so a load of 2 would leave "1 free")."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    torch.set_num_threads(2)


def test_default_threads_ignore_the_load(monkeypatch, two_cores):
    _with_load(monkeypatch, 0.0)
    idle = cli.default_threads()
    _with_load(monkeypatch, 64.0)  # every core busy
    busy = cli.default_threads()
    assert idle == busy
    assert "load" not in idle[1].replace("not the load", "")  # the "why" line names no load figure


def test_default_threads_follow_the_cores_this_process_may_use(monkeypatch, restore_threads):
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this OS")
    torch.set_num_threads(8)  # torch's default caps the count: make it larger than the affinity below
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    _with_load(monkeypatch, 2.9)
    threads, why = cli.default_threads()
    assert threads == 3 and "3 core(s) this process may use" in why and "--threads N" in why


def _train_tiny(seed: int = 0) -> torch.Tensor:
    """A few SGD steps of a small conv net; its weights depend on the thread count's summation order."""
    generator = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(8, 3, 32, 32, generator=generator)
        optimiser.zero_grad()
        net(x).square().mean().backward()
        optimiser.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_same_command_same_weights_on_an_idle_and_a_busy_machine(monkeypatch, two_cores, capsys):
    runs = []
    for load in (0.0, 2.0):
        _with_load(monkeypatch, load)
        torch.set_num_threads(2)  # each run starts as a fresh process would
        threads = cli.set_threads(None)  # what the console does before every torch command
        runs.append((threads, _train_tiny()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])
    assert "not the load" in capsys.readouterr().err
