"""hosts.toml as an admin writes it, and where the pool places queued runs.

The placement rules are checked on `PoolPlan` with real `DockerRunner`s that are never
connected (nothing here reaches an engine); tests/runs/test_pool.py runs them on two
real engines.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from assistant.config import Settings
from assistant.errors import CapacityError, ConfigError, NotFoundError
from assistant.runs.pool import HostPool, build_pool, probe_gpus, split_ref
from assistant.runs.pool_config import load_hosts
from assistant.runs.select import choose_runner
from tests.support.run_records import record

GOOD = """
[hosts.local]
engine = "unix:///var/run/docker.sock"
gpus = [0, 1]
labels = ["a100"]

[hosts.gpu2]
engine = "ssh://ml@gpu2"
gpus = [0, 1, 2, 3]
labels = ["h100", "big"]

[hosts.cpu]
engine = "tcp://10.0.0.9:2376"
gpus = "none"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    return path


def pool_of(tmp_path: Path, text: str = GOOD) -> HostPool:
    found = load_hosts(write(tmp_path, text))
    assert found is not None
    return build_pool(
        found,
        source=tmp_path / "hosts.toml",
        image="assistant-run:latest",
        instance="pool-config-test",
        run_uid=64000,
        home=tmp_path,
        host_home=None,
        lost_after_s=600,
        zone=ZoneInfo("UTC"),
    )


def test_a_pool_file_is_read_in_its_order_with_gpus_and_labels(tmp_path: Path) -> None:
    pool = pool_of(tmp_path)
    assert [(h.name, h.gpus, h.labels) for h in pool.hosts] == [
        ("local", [0, 1], ("a100",)),
        ("gpu2", [0, 1, 2, 3], ("h100", "big")),
        ("cpu", [], ()),
    ]
    assert pool.hosts[1].runner.base_url == "ssh://ml@gpu2"
    assert not pool.hosts[1].shares_folders and pool.hosts[0].shares_folders
    assert pool.gpu_count == 4


def test_no_file_means_no_pool(tmp_path: Path) -> None:
    assert load_hosts(tmp_path / "absent.toml") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[hosts.a]\nengine = "unix:///x.sock"\ngpu = [0]\n', "hosts.a.gpu: unknown key"),
        ("[hosts.a]\ngpus = [0]\n", 'hosts.a.engine: missing (e.g. engine = "ssh://user@gpu2")'),
        ('[hosts.a]\nengine = "http://gpu2"\n', "hosts.a.engine: DOCKER_HOST"),
        ('[hosts.a]\nengine = "unix:///x.sock"\ngpus = "all"\n', 'use "auto", "none" or a list'),
        ('[hosts.a]\nengine = "unix:///x.sock"\ngpus = [0, 0]\n', "each GPU index once"),
        ('[hosts.A2]\nengine = "unix:///x.sock"\n', "'A2' is not a host name"),
        (
            '[hosts.a]\nengine = "unix:///x.sock"\n[hosts.b]\nengine = "unix:///x.sock"\n',
            "hosts a and b name the same engine (unix:///x.sock); give each engine once",
        ),
        (
            '[hosts.a]\nengine = "unix:///x.sock"\nlabels = ["b"]\n[hosts.b]\nengine = "ssh://b"\n',
            "label 'b' is also a host's name",
        ),
        ("hosts = 1\n", "hosts:"),
        ("[hosts\n", "not valid TOML"),
    ],
)
def test_a_bad_pool_file_is_an_error_naming_the_key_and_the_fix(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_hosts(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


async def test_a_bad_pool_file_stops_the_start(tmp_path: Path, settings: Settings) -> None:
    settings.assistant_home.mkdir(parents=True, exist_ok=True)
    write(settings.assistant_home, '[hosts.a]\nengine = "unix:///x.sock"\ngpus = "many"\n')
    with pytest.raises(ConfigError, match=r"hosts\.toml: hosts\.a\.gpus: use"):
        await choose_runner(settings.model_copy(update={"runner": "auto"}))


async def test_a_pool_beside_process_runs_is_refused(tmp_path: Path, settings: Settings) -> None:
    settings.assistant_home.mkdir(parents=True, exist_ok=True)
    write(settings.assistant_home, '[hosts.a]\nengine = "unix:///x.sock"\n')
    with pytest.raises(ConfigError, match=r"ASSISTANT_RUNNER=process, but .* remove one"):
        await choose_runner(settings)  # the test settings say process


async def test_a_pool_where_no_host_answers_is_an_error_at_start(
    tmp_path: Path, settings: Settings
) -> None:
    settings.assistant_home.mkdir(parents=True, exist_ok=True)
    write(settings.assistant_home, f'[hosts.a]\nengine = "unix://{tmp_path}/none.sock"\n')
    with pytest.raises(ConfigError) as info:
        await choose_runner(settings.model_copy(update={"runner": "auto"}))
    text = str(info.value)
    assert "no host of the pool answers (a: " in text and "docker info" in text


# ---- placement ---------------------------------------------------------------------------


def queued(run_id: str, gpus: int, **more: object) -> object:
    return record(id=run_id, state="queued", gpus_wanted=gpus, started_at=None, **more)


def test_a_run_goes_where_it_fits_most_tightly_in_the_order_asked(tmp_path: Path) -> None:
    pool = pool_of(tmp_path)
    # local holds one GPU for a live run: 1 of 2 free; gpu2 has 4 free
    live = [record(id="l1", host="local", gpus=[0], gpus_wanted=1)]
    plan = pool.plan(live, max_cpu_runs=2)
    first = plan.take(queued("q1", 1))  # type: ignore[arg-type]
    second = plan.take(queued("q2", 1))  # type: ignore[arg-type]
    third = plan.take(queued("q3", 3))  # type: ignore[arg-type]
    assert first is not None and (first.host, first.gpus) == ("local", [1])
    assert second is not None and (second.host, second.gpus) == ("gpu2", [0])
    assert third is not None and (third.host, third.gpus) == ("gpu2", [1, 2, 3])
    # nothing is left anywhere: a run that fits nowhere waits, and holds back later ones
    assert plan.take(queued("q4", 1)) is None  # type: ignore[arg-type]


def test_host_asks_for_a_host_or_a_label(tmp_path: Path) -> None:
    pool = pool_of(tmp_path)
    plan = pool.plan([], max_cpu_runs=2)
    pinned = plan.take(queued("q1", 1, host_asked="gpu2"))  # type: ignore[arg-type]
    labelled = plan.take(queued("q2", 2, host_asked="a100"))  # type: ignore[arg-type]
    assert pinned is not None and pinned.host == "gpu2"
    assert labelled is not None and (labelled.host, labelled.gpus) == ("local", [0, 1])
    with pytest.raises(NotFoundError, match="no host or label 'gpu9' in the pool"):
        pool.check(1, "gpu9")
    with pytest.raises(CapacityError, match=r"asks for 3 GPU\(s\) but host a100 has 2"):
        pool.check(3, "a100")
    with pytest.raises(CapacityError, match="but the largest host has 4"):
        pool.check(5, None)


def test_a_run_waiting_holds_back_later_ones_only_on_its_hosts(tmp_path: Path) -> None:
    pool = pool_of(tmp_path)
    live = [record(id="l1", host="gpu2", gpus=[0, 1, 2], gpus_wanted=3)]
    plan = pool.plan(live, max_cpu_runs=2)
    # 2 GPUs pinned to gpu2 (1 free there): it waits, and gpu2 is held for it
    assert plan.take(queued("q1", 2, host_asked="gpu2")) is None  # type: ignore[arg-type]
    later = plan.take(queued("q2", 1))  # type: ignore[arg-type]
    assert later is not None and later.host == "local"  # not gpu2's last free GPU
    reason = pool.waiting(queued("q1", 2, host_asked="gpu2"), live)  # type: ignore[arg-type]
    assert reason == "waiting for 2 GPU(s): gpu2 1/4 GPUs free"


def test_silent_hosts_and_missing_images_are_skipped_and_said(tmp_path: Path) -> None:
    pool = pool_of(tmp_path)
    local, gpu2, _ = pool.hosts
    pool.failed(gpu2, OSError("connection refused"))
    local.images["assistant-run:latest"] = False
    run = queued("q1", 1, image="assistant-run:latest")
    assert pool.plan([], 2).take(run) is None  # type: ignore[arg-type]
    reason = pool.waiting(run, [])  # type: ignore[arg-type]
    assert reason is not None
    assert reason.startswith("waiting for 1 GPU(s): local lacks image assistant-run:latest,")
    assert ", gpu2 not answering since " in reason
    # a live run on the silent host is unknown, not failed
    on_gpu2 = record(id="r1", host="gpu2", state="running")
    unknown = pool.unknown(on_gpu2)
    assert unknown is not None and unknown.startswith("unknown: host gpu2 not answering since ")
    assert pool.unknown(record(id="r2", host="local", state="running")) is None


def test_cpu_runs_take_a_slot_per_host_and_a_resume_goes_back(tmp_path: Path) -> None:
    pool = pool_of(tmp_path)
    live = [record(id=f"c{i}", host="local", gpus_wanted=0) for i in range(2)]
    cpu = pool.plan(live, max_cpu_runs=2).take(queued("q1", 0))  # type: ignore[arg-type]
    assert cpu is not None and cpu.host == "gpu2"  # local's 2 slots are taken
    resumed = record(id="p1", state="queued", host="cpu", gpus_wanted=0)  # started before
    again = pool.plan([], 2).take(resumed)
    assert again is not None and again.host == "cpu"  # its checkpoints are there


def test_a_pooled_handle_names_its_host() -> None:
    assert split_ref("gpu2/abc123") == ("gpu2", "abc123")
    assert split_ref("abc123") == ("", "abc123")  # from before the pool


async def test_auto_gpus_on_an_engine_without_the_nvidia_runtime_are_none(tmp_path: Path) -> None:
    pool = pool_of(tmp_path, '[hosts.a]\nengine = "unix:///x.sock"\ngpus = "auto"\n')
    (host,) = pool.hosts
    assert host.gpus_auto and host.gpus == []
    await probe_gpus(host)  # never connected: no runtime is known, so no probe container
    assert host.gpus == [] and host.gpu_note == "auto: the engine has no NVIDIA runtime"
    assert "(auto: the engine has no NVIDIA runtime)" in pool.status_lines([])[1]
