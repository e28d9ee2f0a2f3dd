"""Starts `tokenwise serve` on a free loopback port for the Python tests.

    with running_server(binary) as base: ...       # base = "http://127.0.0.1:PORT"

The server is stopped with SIGTERM at the end (killed if it does not exit in 30 s).
"""

import contextlib
import os
import signal
import subprocess

CACHE = os.environ.get("TOKENWISE_CACHE", os.path.expanduser("~/.cache/tokenwise"))
MODEL = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def start_server(binary, extra=()):
    if not os.path.exists(MODEL):
        raise SystemExit(f"{MODEL} is missing: run scripts/fetch_models.py --all-test")
    proc = subprocess.Popen(
        [binary, "serve", "--model", MODEL, "--port", "0", "--parallel", "4",
         "--ctx", "512", "--max-queue", "8", "-t", "2", "--model-name", "smollm2", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TOKENWISE_LOG": "warn"},
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"unexpected server output: {line!r}")
    return proc, line[len("listening on "):]


def stop_server(proc):
    """SIGTERM, then wait; returns True when the server exited by itself."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        return False


@contextlib.contextmanager
def running_server(binary, extra=()):
    proc, base = start_server(binary, extra)
    try:
        yield base
    finally:
        stop_server(proc)
