"""Benchmark profiles (the fixed matrix and custom extras) and checks on user-given strings.

The standard matrix is the contract that keeps results comparable across models: the
same three shapes every time. A custom profile is an extra run beside it, never a
replacement, and its name says its shape. Model names and URLs come from chat and end
up in HTTP requests and container commands, so they are checked here, strictly.

Standard library only: the host imports this to validate before anything starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Profile:
    """One traffic shape: prompt and output lengths, concurrency, prompt count, arrival rate."""

    name: str
    input_len: int
    output_len: int
    concurrency: int
    num_prompts: int
    request_rate: float | None = None  # requests/s with Poisson arrivals; None = all at once

    @property
    def rate_label(self) -> float | str:
        """The rate as `vllm bench serve` writes it: a number, or "inf" when unlimited."""
        return "inf" if self.request_rate is None else self.request_rate


STANDARD_PROFILES: tuple[Profile, ...] = (
    Profile("latency-1024x256-c1", 1024, 256, 1, 20),
    Profile("serve-1024x256-c16", 1024, 256, 16, 200),
    Profile("longctx-8192x256-c4", 8192, 256, 4, 50),
)
STANDARD_BY_NAME = {p.name: p for p in STANDARD_PROFILES}

# (name as the user types it, what it means, low, high)
_BOUNDS: dict[str, tuple[str, int, int]] = {
    "in": ("input tokens per prompt", 1, 131_072),
    "out": ("output tokens per request", 1, 32_768),
    "c": ("requests in flight", 1, 1024),
    "n": ("prompts", 1, 100_000),
}
MAX_RATE = 10_000.0


def _check_int(key: str, value: int) -> int:
    what, low, high = _BOUNDS[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} ({what}) must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{key}={value} is out of range: {what} must be {low}..{high}")
    return value


def _rate_text(rate: float) -> str:
    return str(int(rate)) if float(rate).is_integer() else repr(float(rate))


def custom_profile(
    input_len: int,
    output_len: int,
    concurrency: int,
    num_prompts: int,
    request_rate: float | None = None,
) -> Profile:
    """A profile named like the standard ones: `custom-{in}x{out}-c{c}[-r{rate}]`.

    :raises ValueError: a value is out of bounds; the message names it and the range.
    """
    _check_int("in", input_len)
    _check_int("out", output_len)
    _check_int("c", concurrency)
    _check_int("n", num_prompts)
    name = f"custom-{input_len}x{output_len}-c{concurrency}"
    if request_rate is not None:
        if (
            isinstance(request_rate, bool)
            or not isinstance(request_rate, int | float)
            or not math.isfinite(request_rate)
            or not 0 < request_rate <= MAX_RATE
        ):
            raise ValueError(
                f"rate={request_rate!r} is out of range: requests/s must be above 0 and at"
                f" most {_rate_text(MAX_RATE)} (leave it out for no limit)"
            )
        request_rate = float(request_rate)
        name += f"-r{_rate_text(request_rate)}"
    return Profile(name, input_len, output_len, concurrency, num_prompts, request_rate)


def _known() -> str:
    return ", ".join(("standard", "none", *STANDARD_BY_NAME))


def parse_profiles(selector: str) -> list[Profile]:
    """Standard profiles from `standard`, `none` (or empty), or a comma list of names.

    :raises ValueError: an unknown name (the message lists the known ones), or `none`
        combined with other names.
    """
    names = [part.strip() for part in selector.split(",") if part.strip()]
    if not names or names == ["none"]:
        return []
    if "none" in names:
        raise ValueError(f"profiles={selector!r}: 'none' cannot be combined with other names")
    chosen: list[Profile] = []
    for name in names:
        if name == "standard":
            picked = list(STANDARD_PROFILES)
        elif name in STANDARD_BY_NAME:
            picked = [STANDARD_BY_NAME[name]]
        else:
            raise ValueError(f"unknown profile {name!r}; known: {_known()}")
        chosen.extend(p for p in picked if p not in chosen)
    return chosen


def profiles_from_params(params: Mapping[str, object]) -> list[Profile]:
    """The profiles a `serve` run will execute: the selected standard ones, then the custom one.

    `in`, `out`, `c`, `n` and `rate` at 0 (or absent) mean no custom profile; once any is
    set, `in`, `out`, `c` and `n` are all needed (the name does not carry `n`, so it must
    be chosen, never guessed).

    :raises ValueError: an unknown profile name, an incomplete or out-of-bounds custom
        profile, or nothing to run at all.
    """
    chosen = parse_profiles(str(params.get("profiles", "standard")))
    raw = {key: params.get(key, 0) or 0 for key in ("in", "out", "c", "n", "rate")}
    if any(raw.values()):
        missing = [key for key in ("in", "out", "c", "n") if not raw[key]]
        if missing:
            raise ValueError(
                f"a custom profile needs in, out, c and n (missing: {', '.join(missing)});"
                " leave all of them at 0 for none"
            )
        ints = {key: _as_int(key, raw[key]) for key in ("in", "out", "c", "n")}
        rate = raw["rate"]
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise ValueError(f"rate must be a number, got {rate!r}")
        custom = custom_profile(
            ints["in"], ints["out"], ints["c"], ints["n"], float(rate) if rate else None
        )
        chosen.append(custom)
    if not chosen:
        raise ValueError(
            "nothing to run: profiles selects no standard profile and no custom profile"
            " (in, out, c, n) was given"
        )
    return chosen


def _as_int(key: str, value: object) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be a whole number, got {value!r}")
    return value


# ----------------------------------------------------------------------------- user strings

_MODEL_CHARS = re.compile(r"[A-Za-z0-9._:/-]+")
MAX_MODEL_LEN = 200


def check_model_name(name: str) -> str:
    """A Hugging Face style id (`Qwen/Qwen3-0.6B`); returns it unchanged.

    :raises ValueError: empty, too long, a character outside letters, digits and `._-/:`,
        a leading `-` (an option to a command) or `/` (a host path), or `..`.
    """
    if not name:
        raise ValueError("model name is empty")
    if len(name) > MAX_MODEL_LEN:
        raise ValueError(f"model name is longer than {MAX_MODEL_LEN} characters")
    if not _MODEL_CHARS.fullmatch(name):
        raise ValueError(
            f"model name {name!r} may hold only letters, digits and . _ - / : characters"
        )
    if name.startswith(("-", "/")):
        raise ValueError(f"model name {name!r} must not start with {name[0]!r}")
    if ".." in name:
        raise ValueError(f"model name {name!r} must not contain '..'")
    return name


_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")
_PATH = re.compile(r"(?:/[A-Za-z0-9._~-]*)*")
MAX_URL_LEN = 500


def check_url(url: str) -> str:
    """An http(s) base URL: host, optional port, optional plain path; returns it unchanged.

    :raises ValueError: another scheme, credentials, a query or fragment, whitespace or
        control characters, a malformed host or port, or `..` in the path.
    """
    if not url:
        raise ValueError("url is empty")
    if len(url) > MAX_URL_LEN:
        raise ValueError(f"url is longer than {MAX_URL_LEN} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError("url must not contain whitespace or control characters")
    if "?" in url or "#" in url:
        raise ValueError("url must not have a query (?) or fragment (#)")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    if "@" in parts.netloc:
        raise ValueError("url must not carry credentials (user:password@)")
    if not parts.netloc:
        raise ValueError(f"url {url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"url {url!r} has an invalid port") from None
    if port == 0:
        raise ValueError(f"url {url!r} has an invalid port")
    host = parts.hostname or ""
    if parts.netloc.startswith("["):
        if not _IPV6.fullmatch(host):
            raise ValueError(f"url {url!r} has an invalid IPv6 host")
    elif not host or not all(_HOST_NAME.fullmatch(label) for label in host.split(".")):
        raise ValueError(f"url {url!r} has an invalid host")
    if not _PATH.fullmatch(parts.path):
        raise ValueError(f"url path {parts.path!r} may hold only letters, digits and ._~-/")
    if ".." in parts.path.split("/"):
        raise ValueError("url path must not contain '..'")
    return url
