"""The device farm on a real local Ray cluster (`farm.local.LocalFarm`): a head started with
`ray start --head` and devices joined with `maedet-deploy worker`, each a process group of its own on
its own loopback address, the test process the driver."""

import json
import os
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from cli_helpers import run_cli
from nets import TINY
from maedet_deploy.errors import MaedetError
from maedet_deploy.search.farm.local import HEAD_IP, LocalFarm, free_port
from maedet_deploy.search.farm.task import TEMP_PREFIX, task_folder
from maedet_deploy.search import (LatencyTarget, MeasureLimits, TimingSettings, block_requests, network_requests,
                                  open_measurer)
from maedet_deploy.search.session import LatencySession

SIZE = (64, 64)
FAST = TimingSettings(visits=2, round_s=0.01, min_iterations=3, patience=0.0)
TARGET = LatencyTarget(threads=1)
DEVICE = "cpu-test"


def plan_session(measurer, walks: int = 2) -> LatencySession:
    """The profile a small search needs (about 20 blocks and networks at 64x64)."""
    return LatencySession(measurer, "k1kxk1", TINY, SIZE, "backbone", walks=walks)


def cache_keys(path: Path) -> set[tuple[str, str, str]]:
    return set(sqlite3.connect(path).execute("SELECT device, target, item FROM latency"))


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A head and two devices of one kind; the test process is the driver."""
    pytest.importorskip("ray")
    with LocalFarm(tmp_path_factory.mktemp("farm")) as local:
        for ip in ("127.0.0.3", "127.0.0.4"):
            local.add_worker(ip, DEVICE)
        yield local


def test_profile_command_on_the_farm_fills_the_cache_like_in_process(farm, monkeypatch, capsys, tmp_path, tiny_file):
    local = open_measurer(TARGET, str(tmp_path / "local.sqlite"), FAST)
    plan_session(local, walks=1).prepare()
    local.close()
    cache = tmp_path / "farm.sqlite"
    code, out, err = run_cli(monkeypatch, capsys, "profile", "--init", str(tiny_file), "--image-size", str(SIZE[0]),
                             "--threads", "1",
                             "--quiet-wait", "0", "--round-s", "0.03", "--profile-walks", "1", "--latency-cache",
                             str(cache),
                             "--farm", farm.address, "--device", DEVICE, "--json")
    assert code == 0, err
    expected = cache_keys(tmp_path / "local.sqlite")
    assert cache_keys(cache) == expected and len(expected) > 10
    summary = json.loads(out)
    measurements = summary["measurements"]
    assert summary["device"] == next(iter(expected))[0] and measurements["reference"] == 2
    assert measurements["measured"] + measurements["reference"] == len(expected)
    # Both devices measured, each thing once, and each cache row names its node.
    nodes = [json.loads(details)["farm_node"] for (details,) in sqlite3.connect(cache).execute(
        "SELECT details FROM latency")]
    assert len(nodes) == len(expected) and {node.split("@")[1].split("/")[0] for node in nodes} == {
        "127.0.0.3", "127.0.0.4"}
    code, _, err = run_cli(monkeypatch, capsys, "profile", "--image-size", "64", "--device", DEVICE)
    assert code == 2 and err.strip() == "error: --device: a device kind only applies to measuring on a farm"
    code, _, err = run_cli(monkeypatch, capsys, "search", "--out", str(tmp_path / "s"), "--layers", "91",
                           "--farm", farm.address)
    assert code == 2 and "--farm" in err and "--latency-ms" in err and not (tmp_path / "s").exists()


def test_a_killed_node_loses_nothing_and_counts_nothing_twice(farm, tmp_path):
    from maedet_deploy.search.farm import open_farm

    farm.add_worker("127.0.0.5", DEVICE)
    executor = open_farm(farm.address, DEVICE)
    assert len(executor.fleet.nodes) == 3
    measurer = open_measurer(TARGET, str(tmp_path / "c.sqlite"), FAST, executor=executor)
    plan = plan_session(measurer).plan
    requests = block_requests(plan.blocks[:9]) + network_requests(plan.networks[:3], SIZE, "backbone")
    windows = [requests[start:start + 2] for start in range(0, len(requests), 2)]
    victim, killed, seen = "127.0.0.5", False, []
    for request, entry in executor.run(measurer.target, FAST, MeasureLimits(window=2), windows):
        measurer.cache.put(request.item, entry)
        node = entry.details["farm_node"]
        seen.append((request.item, node))
        # Every device holds a window, except the one that just reported: if that is not the
        # victim, the victim is mid-window now.
        if not killed and victim not in node and executor.busy == executor.devices - 1:
            farm.kill(victim)
            killed = len(seen)
    assert killed and killed < len(requests)
    items = [item for item, _ in seen]
    assert sorted(items) == sorted(r.item for r in requests)       # nothing lost, nothing twice
    assert measurer.cache.get_many(items).keys() == set(items)
    assert executor.measured == len(requests)
    assert executor.status().startswith(f"{DEVICE}: 0 busy, 3 idle") and "measurements/min" in executor.status()
    measurer.close()
    executor.close()


def test_a_node_with_another_fingerprint_is_refused_by_name(farm):
    from maedet_deploy.search.farm import open_farm

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("pinning a node to one core changes its fingerprint only on a machine with several")
    farm.add_worker("127.0.0.6", DEVICE, cores="0")     # one usable core: its latencies are not the fleet's
    lines = []
    executor = open_farm(farm.address, DEVICE, warn=lines.append)
    pinned = [line for line in lines if "127.0.0.6" in line]
    assert len(pinned) == 1 and "usable_cores 1 vs 2" in pinned[0] and pinned[0].startswith("refused node")
    # Only the node killed by the test before may be refused besides, until Ray notices its death.
    assert all("127.0.0.5" in line and "did not answer" in line for line in lines if line not in pinned)
    assert all("127.0.0.6" not in node.label for node in executor.fleet.nodes)
    assert executor.report()["refused"] == lines and "\n" not in "".join(lines)
    windows = [network_requests([TINY], (32 + 8 * i, 32), "backbone") for i in range(2)]
    labels = {entry.details["farm_node"] for _, entry in executor.run(TARGET, FAST, MeasureLimits(), windows)}
    assert labels and all("127.0.0.6" not in label for label in labels)
    farm.kill("127.0.0.6")
    executor.close()


def test_a_window_past_the_timeout_is_retried_once_then_reported(farm):
    from maedet_deploy.search.farm import open_farm

    executor = open_farm(farm.address, DEVICE, timeout_s=0.05)
    windows = [network_requests([TINY], SIZE, "backbone")]
    with pytest.raises(MaedetError) as error:
        list(executor.run(TARGET, FAST, MeasureLimits(), windows))
    assert error.value.setting == "farm" and "hung past 0.05 s twice" in error.value.message
    assert windows[0][0].item in error.value.message and executor.timed_out == [windows[0][0].item]
    executor.close()


def test_unreachable_farm_and_version_mismatch_are_one_line(farm):
    from maedet_deploy.search.farm import open_farm

    start = time.perf_counter()
    with pytest.raises(MaedetError) as error:
        open_farm(f"{HEAD_IP}:{free_port()}")
    assert error.value.setting == "farm" and "cannot reach the farm" in error.value.message
    assert time.perf_counter() - start < 10
    other = _python_of_another_patch_release()
    if other is None:
        pytest.skip("no Python of another patch release of this minor version to make a real mismatch with")
    code = f"from maedet_deploy.search.farm import open_farm\nopen_farm({farm.address!r})"
    site = Path(sysconfig.get_paths()["purelib"])
    result = subprocess.run([other, "-S", "-c", _main_guarded(code)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": _child_path(site)})
    line = result.stdout.strip()
    assert result.returncode == 2 and len(line.splitlines()) == 1, result.stdout + result.stderr
    assert sys.version.split()[0] in line and "Python" in line and "the same" in line
    # A device joining with that Python: `ray start` refuses, the worker says so in one line.
    joining = subprocess.run([other, "-S", "-m", "maedet_deploy.cli.main", "worker", "--address", farm.address,
                              "--device", DEVICE, "--node-ip-address", "127.0.0.7"], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "PYTHONPATH": _child_path(site)})
    assert joining.returncode == 2 and "Traceback" not in joining.stderr + joining.stdout
    assert len(joining.stderr.strip().splitlines()) == 1 and sys.version.split()[0] in joining.stderr


def _python_of_another_patch_release() -> str | None:
    ours = sys.version_info[:3]
    for candidate in (f"/usr/bin/python{ours[0]}.{ours[1]}", f"/usr/local/bin/python{ours[0]}.{ours[1]}"):
        if Path(candidate).exists() and Path(candidate).resolve() != Path(sys.executable).resolve():
            version = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:3])"],
                                     capture_output=True, text=True).stdout.strip()
            if version and version != str(tuple(ours)):
                return candidate
    return None


def _main_guarded(code: str) -> str:
    """A child running `code` that prints a MaedetError as the CLI would (one line, exit 2)."""
    return ("import sys\nfrom maedet_deploy.errors import MaedetError\ndef main():\n"
            + textwrap.indent(textwrap.dedent(code), "    ")
            + "\ntry:\n    main()\nexcept MaedetError as exc:\n    print(exc.for_cli())\n    sys.exit(2)\n")


def _child_path(*extra: Path) -> str:
    """This checkout and its tests, then `extra` (site-packages): a child started with -S sees only these."""
    repo = Path(__file__).resolve().parents[1]
    return os.pathsep.join(str(p) for p in (repo, repo / "tests", *extra))


def test_without_ray_the_in_process_path_works_and_the_farm_says_what_to_install(tmp_path):
    """Ray hidden for real: a child Python without site-packages, given every package but Ray."""
    site = Path(sysconfig.get_paths()["purelib"])
    shadow = tmp_path / "site"
    shadow.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith("ray"):
            (shadow / entry.name).symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": _child_path(shadow)}
    code = textwrap.dedent(f"""
        import importlib.util
        assert importlib.util.find_spec("ray") is None
        from nets import TINY
        from maedet_deploy.search import LatencyTarget, TimingSettings, open_measurer
        measurer = open_measurer(LatencyTarget(threads=1), {str(tmp_path / "c.sqlite")!r},
                                 TimingSettings(visits=1, round_s=0.01, patience=0.0))
        print("in-process ms", measurer.networks([TINY], (32, 32), "backbone")[0] > 0)
        measurer.close()
        from maedet_deploy.search.farm import open_farm
        open_farm("{HEAD_IP}:6379")
    """)
    child = subprocess.run([sys.executable, "-S", "-c", _main_guarded(code)],
                           capture_output=True, text=True, timeout=300, env=env)
    lines = child.stdout.strip().splitlines()
    assert child.returncode == 2 and lines[0] == "in-process ms True", child.stdout + child.stderr
    assert lines[1] == ("--farm: the device farm needs Ray, which is not installed here: "
                        "pip install 'maedet-deploy[farm]'")
    worker = subprocess.run([sys.executable, "-S", "-m", "maedet_deploy.cli.main", "worker", "--address",
                             f"{HEAD_IP}:6379", "--device", DEVICE], capture_output=True, text=True, timeout=120, env=env)
    assert worker.returncode == 2 and "Traceback" not in worker.stderr
    assert len(worker.stderr.strip().splitlines()) == 1 and "pip install 'maedet-deploy[farm]'" in worker.stderr


def test_worker_checks_before_joining(farm, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "worker", "--address", farm.address, "--device", "orin-nx",
                             "--dry-run")
    from maedet_deploy.backends import fingerprint_id
    assert code == 0 and f"maedet:orin-nx:{fingerprint_id()}" in out and "--num-cpus 0" in out and "--block" in out
    code, out, err = run_cli(monkeypatch, capsys, "worker", "--address", farm.address, "--device", "orin-nx",
                             "--backend", "tensorrt")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "TensorRT" in err
    code, out, err = run_cli(monkeypatch, capsys, "worker", "--address", "nowhere", "--device", "orin-nx")
    assert code == 2 and err.strip().startswith("error: --address:")


def test_task_folder_is_removed_on_failure_and_stale_ones_are_swept(tmp_path):
    before = tempfile.gettempdir()
    with pytest.raises(RuntimeError):
        with task_folder(tmp_path) as folder:
            assert tempfile.mkdtemp().startswith(str(folder))     # every temporary file lands inside
            (folder / "model.onnx").write_bytes(b"x" * 1024)
            raise RuntimeError("export failed")
    assert not folder.exists() and tempfile.gettempdir() == before
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{TEMP_PREFIX}{dead.pid}-abc"
    (stale / "sub").mkdir(parents=True)
    alive = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-def"
    alive.mkdir()
    with task_folder(tmp_path):
        pass
    assert not stale.exists() and alive.exists()


def test_windows_mix_cheap_and_costly_requests_and_shrink_for_the_last_round():
    from maedet_deploy.search.farm.executor import deal_windows

    requests = list(range(79))          # a profile: blocks first, the costly networks last
    windows = deal_windows(requests, 8, 2)
    assert sorted(r for window in windows for r in window) == requests
    assert [len(w) for w in windows] == [8] * 8 + [4, 4, 4, 3]      # the last round shared by 4 windows
    assert all(max(window) >= 66 for window in windows[:8])          # every full window holds late ones
    assert deal_windows(requests[:2], 8, 3) == [[0], [1]] and deal_windows([], 8, 2) == []
