"""Profiles (the fixed matrix, custom extras, the selector) and the checks on user strings."""

from __future__ import annotations

import re
from typing import Any

import pytest

from assistant.jobs.bench.profiles import (
    STANDARD_PROFILES,
    Profile,
    check_model_name,
    check_url,
    custom_profile,
    parse_profiles,
    profiles_from_params,
)

LATENCY, SERVE, LONGCTX = STANDARD_PROFILES


def test_standard_matrix_is_the_reference_one() -> None:
    shapes = [
        (p.name, p.input_len, p.output_len, p.concurrency, p.num_prompts, p.request_rate)
        for p in STANDARD_PROFILES
    ]
    assert shapes == [
        ("latency-1024x256-c1", 1024, 256, 1, 20, None),
        ("serve-1024x256-c16", 1024, 256, 16, 200, None),
        ("longctx-8192x256-c4", 8192, 256, 4, 50, None),
    ]
    assert LATENCY.rate_label == "inf"


@pytest.mark.parametrize(
    ("args", "name", "rate_label"),
    [
        ((2048, 128, 8, 40, None), "custom-2048x128-c8", "inf"),
        ((512, 128, 8, 40, 2.5), "custom-512x128-c8-r2.5", 2.5),
        ((512, 128, 8, 40, 4), "custom-512x128-c8-r4", 4.0),
        ((1, 1, 1, 1, 10_000), "custom-1x1-c1-r10000", 10_000.0),
        ((131_072, 32_768, 1024, 100_000, None), "custom-131072x32768-c1024", "inf"),
    ],
)
def test_custom_profiles_are_named_by_their_shape(
    args: tuple[int, int, int, int, float | None], name: str, rate_label: object
) -> None:
    profile = custom_profile(*args)
    assert profile.name == name
    assert (
        profile.input_len,
        profile.output_len,
        profile.concurrency,
        profile.num_prompts,
    ) == args[:4]
    assert profile.rate_label == rate_label


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 128, 1, 1, None), "in=0 is out of range: input tokens per prompt must be 1..131072"),
        ((131_073, 128, 1, 1, None), "in=131073 is out of range"),
        ((8, 0, 1, 1, None), "out=0 is out of range: output tokens per request must be 1..32768"),
        ((8, 32_769, 1, 1, None), "out=32769"),
        ((8, 8, 0, 1, None), "c=0 is out of range: requests in flight must be 1..1024"),
        ((8, 8, 1025, 1, None), "c=1025"),
        ((8, 8, 1, 0, None), "n=0 is out of range: prompts must be 1..100000"),
        ((8, 8, 1, 100_001, None), "n=100001"),
        ((8, 8, 1, 1, 0.0), "rate=0.0 is out of range"),
        ((8, 8, 1, 1, -1.0), "rate=-1.0 is out of range"),
        ((8, 8, 1, 1, 10_000.5), "at most 10000"),
        ((8, 8, 1, 1, float("inf")), "rate=inf is out of range"),
        ((8.5, 8, 1, 1, None), "in (input tokens per prompt) must be a whole number"),
        ((True, 8, 1, 1, None), "must be a whole number"),
    ],
)
def test_custom_profile_bounds_are_refused_with_the_range(
    args: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        custom_profile(*args)


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("standard", ["latency-1024x256-c1", "serve-1024x256-c16", "longctx-8192x256-c4"]),
        ("latency-1024x256-c1,serve-1024x256-c16", ["latency-1024x256-c1", "serve-1024x256-c16"]),
        (
            " longctx-8192x256-c4 , latency-1024x256-c1 ",
            ["longctx-8192x256-c4", "latency-1024x256-c1"],
        ),
        (
            "serve-1024x256-c16,standard",
            ["serve-1024x256-c16", "latency-1024x256-c1", "longctx-8192x256-c4"],
        ),
        ("latency-1024x256-c1,latency-1024x256-c1,", ["latency-1024x256-c1"]),
        ("none", []),
        ("", []),
    ],
)
def test_selector_picks_standard_profiles_in_the_given_order(
    selector: str, names: list[str]
) -> None:
    assert [p.name for p in parse_profiles(selector)] == names


def test_unknown_profile_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        parse_profiles("latency-1024x256-c1,serve-1024x256-c32")
    message = str(info.value)
    assert "unknown profile 'serve-1024x256-c32'" in message
    for known in (
        "standard",
        "none",
        "latency-1024x256-c1",
        "serve-1024x256-c16",
        "longctx-8192x256-c4",
    ):
        assert known in message
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        parse_profiles("none,standard")


def test_params_give_the_standard_ones_then_the_custom_extra() -> None:
    params = {"profiles": "latency-1024x256-c1", "in": 64, "out": 8, "c": 2, "n": 6, "rate": 0.0}
    assert profiles_from_params(params) == [LATENCY, Profile("custom-64x8-c2", 64, 8, 2, 6, None)]
    params = {"profiles": "none", "in": 64, "out": 8, "c": 2, "n": 6, "rate": 3.0}
    assert profiles_from_params(params) == [Profile("custom-64x8-c2-r3", 64, 8, 2, 6, 3.0)]
    assert profiles_from_params(
        {"profiles": "standard", "in": 0, "out": 0, "c": 0, "n": 0}
    ) == list(STANDARD_PROFILES)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"profiles": "standard", "in": 64}, "missing: out, c, n"),
        ({"profiles": "none", "in": 64, "out": 8, "c": 2}, "missing: n"),
        ({"profiles": "none", "rate": 2.0}, "missing: in, out, c, n"),
        ({"profiles": "none"}, "nothing to run"),
        (
            {"profiles": "none", "in": 64, "out": 8, "c": 2, "n": 200_000},
            "n=200000 is out of range",
        ),
        ({"profiles": "bogus"}, "unknown profile 'bogus'"),
    ],
)
def test_incomplete_or_empty_selections_are_refused(
    params: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        profiles_from_params(params)


@pytest.mark.parametrize(
    "name",
    [
        "Qwen/Qwen3-0.6B",
        "meta-llama/Llama-3.1-8B-Instruct",
        "deepseek-ai/DeepSeek-V4-Flash",
        "org/model:fp8",
        "a_b.c",
        "x" * 200,
    ],
)
def test_model_names_like_hugging_face_ids_pass(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("--model", "must not start with '-'"),
        ("-x", "must not start with '-'"),
        ("/etc/passwd", "must not start with '/'"),
        ("a/../b", "must not contain '..'"),
        ("x; rm -rf /", "may hold only letters"),
        ("Qwen/Qwen3 0.6B", "may hold only letters"),
        ("model$(id)", "may hold only letters"),
        ("modèle", "may hold only letters"),
        ("", "empty"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_model_names_that_could_mislead_a_command_are_refused(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_model_name(name)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8000/v1",
        "http://127.0.0.1:8000",
        "https://vllm.internal.example.com/v1",
        "http://vllm-server:8000/",
        "http://[::1]:8000/v1",
        "HTTP://host/prefix/v1",
    ],
)
def test_plain_http_urls_pass(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://u:p@h", "credentials"),
        ("http://token@h:8000/v1", "credentials"),
        ("file:///etc/passwd", "http:// or https://"),
        ("ftp://h/v1", "http:// or https://"),
        ("h:8000/v1", "http:// or https://"),
        ("http://h:8000/v1?x=1", "query"),
        ("http://h:8000/v1#frag", "fragment"),
        ("http://h:8000/v1 --x", "whitespace"),
        ("http://h:8000/v1\n", "whitespace"),
        ("http://h:80000/v1", "invalid port"),
        ("http://h:0/v1", "invalid port"),
        ("http://h:abc/v1", "invalid port"),
        ("http:///v1", "no host"),
        ("http://bad_host:8000", "invalid host"),
        ("http://-h:8000", "invalid host"),
        ("http://h/v1/../admin", "'..'"),
        ("http://h/v1;rm", "may hold only"),
        ("http://h/%2e%2e/x", "may hold only"),
        ("", "empty"),
    ],
)
def test_urls_that_are_not_a_plain_endpoint_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_url(url)
