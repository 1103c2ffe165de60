"""A vLLM engine whose frontend is SIGKILLed must not outlive it: EngineCore and its worker otherwise stay
for good, holding their memory (seen after a killed test run: a SmolLM2 worker kept 2.0 GB)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow

FRONTEND = """
import asyncio, os, sys
import psutil
from polya.engines.base import EngineConfig, Sampling
from polya.engines.vllm_engine import VLLMEngine
engine = VLLMEngine(EngineConfig(model=sys.argv[1], kind="vllm", dtype="float32", max_model_len=256))
asyncio.run(engine.generate(["hi"], Sampling(max_tokens=2)))
print("PIDS", *(c.pid for c in psutil.Process().children(recursive=True)), flush=True)
asyncio.run(asyncio.sleep(600))
"""


def test_engine_processes_die_with_a_killed_frontend(tiny_model):
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.Popen([sys.executable, "-c", FRONTEND, str(tiny_model)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = next(line for line in proc.stdout if line.startswith("PIDS"))  # vLLM logs to stdout too
        pids = [int(p) for p in line.split()[1:]]
        names = [psutil.Process(p).name() for p in pids]
        assert any("EngineCore" in n for n in names) and any("Worker" in n for n in names), names
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.time() + 30
    alive = pids
    while alive and time.time() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.5)
    for p in alive:  # leave nothing behind for the rest of the suite, then fail
        os.kill(p, signal.SIGKILL)
    assert alive == [], f"vLLM processes {alive} outlived their frontend"
