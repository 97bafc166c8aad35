"""Where the processes of one run meet: on this machine's loopback, never by host name.

A run is one node: the runner starts it on one machine (one container or one process
group), so every rank is on the same loopback. By default torchrun finds its rendezvous
by the machine's host name (`socket.getfqdn()`), and in a container started with
`network_mode=none` that name resolves to nothing: the ranks wait on a TCP store at an
address nobody can reach (`[c10d] The IPv6 network addresses of (<container id>, ...)
cannot be retrieved`) until the rendezvous times out. So the agent names 127.0.0.1
outright instead of opening a network:

- the built-in recipes' torchrun gets a c10d rendezvous at `127.0.0.1:0` and
  `--local-addr=127.0.0.1` (the address its workers get as MASTER_ADDR). Port 0: the
  store binds a port the kernel picks when it starts, so two runs on one host (process
  runner, or containers on the host network) never race for a fixed port;
- every multi-process run's environment, a declared recipe's own command included,
  gets MASTER_ADDR=127.0.0.1 and a free MASTER_PORT (for launchers that read them:
  `torch.multiprocessing.spawn` with `env://`, Accelerate, Lightning; torchrun sets its
  workers' own), and GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME set to the loopback
  interface, so gloo does not look its device up by host name and NCCL bootstraps over
  loopback (GPU to GPU traffic itself goes over NVLink/PCIe peer copies or shared memory,
  which NCCL picks inside one node; the run's container has a 1 GB /dev/shm).

Values the environment already holds win (an operator's NCCL_SOCKET_IFNAME on the host,
or a declared recipe's `env`, applied after these). A declared recipe that runs its own
`torchrun --standalone` still looks itself up by host name: the Docker runner makes a
run container's host name resolve to 127.0.0.1 for that (docker_runner.py).

Standard library only, like the agent.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping

LOOPBACK = "127.0.0.1"
_LOOPBACK_NAMES = ("lo", "lo0")  # Linux, macOS/BSD


def torchrun_args(nproc: int, run_id: str) -> list[str]:
    """torchrun's options for `nproc` ranks on this machine meeting over loopback."""
    return [
        "--nnodes=1",
        f"--nproc_per_node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={LOOPBACK}:0",
        f"--rdzv-id={run_id}",
        f"--local-addr={LOOPBACK}",
    ]


def rendezvous_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a multi-process run's environment gets besides `environ` (whose values win)."""
    wanted = {"MASTER_ADDR": LOOPBACK}
    interface = loopback_interface()
    if interface is not None:
        wanted.update(GLOO_SOCKET_IFNAME=interface, NCCL_SOCKET_IFNAME=interface)
    if "MASTER_PORT" not in environ:
        wanted["MASTER_PORT"] = str(free_port())
    return {name: value for name, value in wanted.items() if name not in environ}


def loopback_interface() -> str | None:
    """The loopback interface's name on this machine; None if it has neither usual name."""
    with contextlib.suppress(OSError):
        names = {name for _, name in socket.if_nameindex()}
        return next((name for name in _LOOPBACK_NAMES if name in names), None)
    return None


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the launcher binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])
