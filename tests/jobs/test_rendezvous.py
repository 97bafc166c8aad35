"""Where a run's ranks meet: loopback, with what the environment already says kept."""

from __future__ import annotations

import socket

from assistant.jobs.rendezvous import LOOPBACK, rendezvous_env, torchrun_args


def test_torchrun_meets_on_loopback_at_a_port_the_kernel_picks() -> None:
    args = torchrun_args(4, "abc123")
    assert "--rdzv-endpoint=127.0.0.1:0" in args and "--local-addr=127.0.0.1" in args
    assert "--nproc_per_node=4" in args and "--rdzv-id=abc123" in args
    assert "--standalone" not in args  # it looks the host name up


def test_the_environment_gets_loopback_and_keeps_what_it_has() -> None:
    env = rendezvous_env({})
    assert env["MASTER_ADDR"] == LOOPBACK
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "lo"  # Linux
    with socket.socket() as sock:  # the port is free: it can be bound at once
        sock.bind((LOOPBACK, int(env["MASTER_PORT"])))
    kept = rendezvous_env({"NCCL_SOCKET_IFNAME": "ib0", "MASTER_PORT": "29500"})
    assert "NCCL_SOCKET_IFNAME" not in kept and "MASTER_PORT" not in kept
    assert kept["GLOO_SOCKET_IFNAME"] == "lo"
