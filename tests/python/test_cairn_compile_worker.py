"""A WebAssembly policy loaded from Python compiles in a child interpreter, ``sys.executable -m
cairn._compile``, so the ``[sandbox]`` compile deadline and memory limit can stop it (Cranelift cannot
be stopped in a thread). In-process compilation has no deadline: a 1 ms ``compile_timeout_ms`` that
stops the load shows the worker ran; the same component then loads, and once cached loads under that
deadline too (a cache hit starts no worker). A compile bomb (a component whose compilation asks for
gigabytes) stops at ``compile_memory_mib`` in the worker, and this process does not grow by it.
"""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, needs_native

pytestmark = needs_native


def job(tmp_path, wasm: str, sandbox: str) -> str:
    path = tmp_path / "job.toml"
    path.write_text(
        "[checkpoint]\n"
        f'save_interval = {{ wasm = "{wasm}", config = {{ n = 2 }} }}\n'
        f"[sandbox]\n{sandbox}\n"
    )
    return str(path)


def saver(tmp_path, config: str):
    import cairn

    return cairn.Saver(folder=str(tmp_path / "ckpts"), config=config, max_duration="4ba", run_name="w", rng=False)


def artifacts(cache) -> list:
    """The compiled components in the compile cache."""
    return sorted(f for _, _, files in os.walk(cache) for f in files if f.endswith(".cwasm"))


def test_a_component_compiles_in_a_python_worker_that_the_deadline_stops(tmp_path, monkeypatch, policies):
    import cairn
    import torch

    every_n = policies("every_n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAIRN_CACHE_DIR", str(cache))
    # A folder named `cairn` in the working directory does not shadow the package in the worker
    # (PYTHONSAFEPATH, Python 3.11+).
    if sys.version_info >= (3, 11):
        (tmp_path / "cairn").mkdir()
        (tmp_path / "cairn" / "__init__.py").write_text("raise ImportError('the decoy was imported')\n")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(cairn.PolicyError) as e:
        saver(tmp_path, job(tmp_path, every_n, "compile_timeout_ms = 1"))
    assert e.value.kind == "compile-timeout", (e.value.kind, str(e.value))
    assert "every_n.wasm" in str(e.value) and "deadline of 1 ms" in str(e.value)
    assert "compile_timeout_ms" in str(e.value)
    assert artifacts(cache) == [], "nothing compiled"

    # Without the deadline the worker compiles it for the cache, and the policy decides.
    s = saver(tmp_path, job(tmp_path, every_n, ""))
    assert len(artifacts(cache)) == 1, "the worker's artifact is in the compile cache"
    saved = [s.step({"w": torch.zeros(2)}) for _ in range(4)]
    s.close()
    assert [p is not None for p in saved] == [False, True, False, True], saved

    # Cached: loads under the 1 ms deadline, for no worker is started.
    s = saver(tmp_path, job(tmp_path, every_n, "compile_timeout_ms = 1"))
    s.close()


def test_the_worker_module_answers_a_bad_request_with_its_exit_status(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cairn._compile"],
        input=b"not a request",
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 3, out
    assert b"cairn compile worker: stdin does not hold a cairn compile request" in out.stderr, out.stderr


def compile_bomb(tmp_path) -> str:
    """The testkit's loop-of-diamonds compile bomb (40 000 locals through 6 000 merges: Cranelift asks
    for a 26 GB table), written by a Rust example: Python has no component-model assembler."""
    out = tmp_path / "bomb.wasm"
    made = subprocess.run(
        ["cargo", "run", "-q", "-p", "cairn-testkit", "--example", "hostile_component", "--",
         "loop-diamonds", "40000", "6000", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    return str(out)


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_a_compile_bomb_stops_at_the_compile_memory_limit_in_the_python_worker(tmp_path, monkeypatch):
    import cairn
    import torch  # noqa: F401  (cairn.Saver imports it: imported first, it is not counted below)

    bomb = compile_bomb(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAIRN_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bomb.toml"
    config.write_text(f'[checkpoint]\nsave_interval = {{ wasm = "{bomb}" }}\n[sandbox]\ncompile_memory_mib = 96\n')
    before = peak_rss_bytes()
    with pytest.raises(cairn.PolicyError) as e:
        saver(tmp_path, str(config))
    assert e.value.kind == "compile-memory", (e.value.kind, str(e.value))
    message = str(e.value)
    assert "bomb.wasm" in message and "memory limit of 96 MiB" in message and "compile_memory_mib" in message
    assert artifacts(cache) == [], "nothing compiled"
    # The compiler ran in the worker: this process's peak did not move by the bomb's gigabytes.
    assert peak_rss_bytes() - before < 200 << 20
