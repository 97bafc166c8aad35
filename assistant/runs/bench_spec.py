"""`/run bench serve model=... gpus=8` -> a validated benchmark `RunSpec` and its server.

The benchmark job's own parameters (model, url, profiles, in/out/c/n/rate, ...) are checked
against its registry entry, like a training recipe's. What only the host acts on (the
serving image, tensor parallelism, a context length) is checked here and kept apart in
`ServerConfig`: it becomes the server container's arguments, each one a separate word,
never a shell line. Arguments beyond these are the admin's (ASSISTANT_BENCH_SERVER_ARGS).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from assistant.errors import CommandError
from assistant.hoststats import HostStats
from assistant.jobs.bench.profiles import check_model_name, check_url, profiles_from_params
from assistant.jobs.recipes import BENCH_SERVE, ParamError, validate_params
from assistant.recipes.rules import IMAGE_REF
from assistant.recipes.run_params import RUN_PARAMS
from assistant.runs.spec import RunSpec, parse_assignments

SERVER_KEYS = {
    "image": "the serving image (default ASSISTANT_BENCH_IMAGE)",
    "tp": "tensor parallel size (--tensor-parallel-size); default: the run's GPUs",
    "max_len": "context length (--max-model-len)",
    "dtype": "weights dtype (--dtype): auto, bfloat16, float16",
}
DTYPES = ("auto", "bfloat16", "float16")

# A benchmark runs on the host network: a url= must not reach the host's link-local
# neighbours or a cloud provider's metadata service (instance credentials live there).
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
ALLOW_SETTING = "ASSISTANT_BENCH_ALLOW_LINK_LOCAL=true"


@dataclass(frozen=True)
class ServerConfig:
    """The serving container a benchmark starts when no url= is given."""

    image: str
    args: tuple[str, ...]  # after the image's entrypoint (vLLM: the `vllm serve` options)
    port: int | None = None  # chosen at start
    ref: str | None = None  # the container, once started

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "args": list(self.args)}


def _forbidden(address: str) -> str | None:
    """What `address` is when the host must not benchmark it, or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{ip}, a cloud metadata address"
    if any(ip in net for net in LINK_LOCAL):
        return f"{ip}, a link-local address"
    return None


def check_endpoint_host(url: str, *, allow_link_local: bool = False) -> None:
    """Refuse a url= whose host is, or resolves to, a link-local or metadata address.

    The name is resolved here, once, at validation: a name that does not resolve cannot
    be checked and is refused too. `allow_link_local` is the admin's setting.

    :raises CommandError: one line saying which address and what would be right.
    """
    if allow_link_local:
        return
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    fix = (
        "give the serving endpoint's own address (e.g. http://10.0.0.5:8000/v1); an admin"
        f" who means it sets {ALLOW_SETTING}"
    )
    if host in METADATA_NAMES:
        raise CommandError(f"url refused: {host} is a cloud metadata service, not a server; {fix}")
    what = _forbidden(host)
    if what is not None:
        raise CommandError(
            f"url refused: it points at {what}, which a benchmark may not reach; {fix}"
        )
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise CommandError(
            f"url refused: {host} does not resolve here ({exc}), so it cannot be checked;"
            " give an address, or a name this host resolves"
        ) from None
    for info in infos:
        what = _forbidden(str(info[4][0]))
        if what is not None:
            raise CommandError(
                f"url refused: {host} resolves to {what}, which a benchmark may not reach; {fix}"
            )


def _int(key: str, raw: str, low: int, high: int) -> int:
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise CommandError(f"{key}={raw!r} is not valid: a whole number from {low} to {high}")
    return int(raw)


def server_args(
    model: str, served: str, tp: int, max_len: int | None, dtype: str | None, admin: list[str]
) -> tuple[str, ...]:
    """The server's options; host and port are added at start, when the port is chosen."""
    args = ["--model", model, "--served-model-name", served, "--tensor-parallel-size", str(tp)]
    if max_len is not None:
        args += ["--max-model-len", str(max_len)]
    if dtype is not None:
        args += ["--dtype", dtype]
    return (*args, *admin)


def build_bench_spec(
    words: list[str],
    *,
    chat_id: str,
    run_image: str,
    server_image: str,
    server_admin_args: list[str],
    default_gpus: int,
    memory_mb: int,
    cpus: float,
    hardware: str,
    cluster_label: str,
    engine_known: bool,
    allow_link_local: bool = False,
) -> RunSpec:
    """Validate `/run bench serve` words into the job's spec (with, without url=, its server).

    :raises CommandError: naming the bad word and what is accepted; nothing starts.
    """
    given, run_values, host = parse_assignments(words, extra_keys=tuple(SERVER_KEYS))
    if "model" not in given:
        raise CommandError("say which model: model=<id>, e.g. model=Qwen/Qwen3-0.6B")
    try:
        check_model_name(given["model"])
        if given.get("url"):
            check_url(given["url"])
        if given.get("served_model_name"):
            check_model_name(given["served_model_name"])
        overrides: dict[str, Any] = validate_params(BENCH_SERVE, given)
        params = {**BENCH_SERVE.defaults(), **overrides}
        profiles_from_params(params)
    except (ParamError, ValueError) as exc:
        names = ", ".join([*(p.name for p in BENCH_SERVE.params), *SERVER_KEYS, *RUN_PARAMS])
        raise CommandError(f"{exc}. Accepted: {names}") from None
    params["served_model_name"] = params["served_model_name"] or params["model"]
    params["hardware"] = params["hardware"] or hardware
    params["cluster_label"] = params["cluster_label"] or cluster_label
    server: ServerConfig | None = None
    gpus = int(run_values.get("gpus", default_gpus))
    if params["url"]:
        if host:
            raise CommandError(
                f"{', '.join(sorted(host))} configure a server we start; with url= the"
                " endpoint is already running"
            )
        check_endpoint_host(str(params["url"]), allow_link_local=allow_link_local)
        gpus = int(run_values.get("gpus", 0))  # the endpoint's GPUs are not ours to hold
    else:
        if not engine_known:
            raise CommandError(
                "starting a serving container needs a Docker engine, and runs here use local"
                " processes; give url=http://host:port/v1 of a running server instead"
            )
        image = host.get("image", server_image)
        if not IMAGE_REF.fullmatch(image):
            raise CommandError(f"image={image!r} is not an image reference like repo/name:tag")
        tp = _int("tp", host["tp"], 1, 64) if "tp" in host else max(gpus, 1)
        max_len = _int("max_len", host["max_len"], 16, 10_000_000) if "max_len" in host else None
        dtype = host.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise CommandError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        served = str(params["served_model_name"])
        args = server_args(str(params["model"]), served, tp, max_len, dtype, server_admin_args)
        server = ServerConfig(image=image, args=args)
        params["engine_version"] = params["engine_version"] or _tag(image)
    return RunSpec(
        kind="bench",
        recipe=BENCH_SERVE.name,
        params=params,
        gpus=gpus,
        nproc=1,
        memory_mb=int(run_values.get("mem_mb", memory_mb)),
        cpus=float(run_values.get("cpus", cpus)),
        image=run_image,
        chat_id=chat_id,
        total=None,
        overrides=overrides,
        server=None if server is None else server.to_json(),
    )


def _tag(image: str) -> str:
    """The image's tag (vLLM's images are tagged with the version), or "" if none."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else ""


def hardware_label(host: HostStats, inventory: list[int]) -> str:
    """`8x NVIDIA H200`, as the reference labels results; `cpu` without GPUs."""
    gpus = host.gpus()
    if not inventory or not gpus:
        return "cpu"
    return f"{len(inventory)}x {gpus[0].name}"
