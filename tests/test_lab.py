"""`make lab` serves the notebooks as root, without a display, and when its port is taken.

The last test starts the very command the Makefile's ``lab`` target runs, with the port it asks for
already taken, reads the address it prints, lists ``notebooks/`` through Jupyter's contents API,
and stops it by its process id (a few seconds).
"""

import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("jupyterlab")


def load_lab():
    spec = importlib.util.spec_from_file_location("clipedu_lab_launcher", ROOT / "tools" / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lab = load_lab()


def make_lab_recipe() -> str:
    """The command line of the Makefile's ``lab`` target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("lab:"))
    return next(line for line in lines[start + 1:] if line.startswith("\t")).strip()


def test_make_lab_runs_the_launcher():
    assert make_lab_recipe() == "$(PY) tools/lab.py notebooks/ $(LAB_ARGS)"


def test_command_line_for_root_and_no_display():
    command = lab.lab_command("notebooks/", 9000, root=True, display=False, extra=["--ip=0.0.0.0"])
    assert command[:4] == [sys.executable, "-m", "jupyterlab", "notebooks/"]
    assert {"--ServerApp.port=9000", "--ServerApp.port_retries=0", "--allow-root", "--no-browser"} <= set(command)
    assert command[-1] == "--ip=0.0.0.0"  # what the student added, last, so it wins
    plain = lab.lab_command("notebooks/", 8888, root=False, display=True, extra=[])
    assert "--allow-root" not in plain and "--no-browser" not in plain


def test_display_detection():
    assert not lab.has_display({}, "linux")
    assert lab.has_display({"DISPLAY": ":0"}, "linux") and lab.has_display({"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert lab.has_display({}, "darwin") and lab.has_display({}, "win32")


def test_a_taken_port_is_skipped():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not lab.port_is_free(port)
        other = lab.choose_port(port)
        assert other != port and lab.port_is_free(other)
    assert lab.choose_port(other) == other


def test_make_lab_serves_the_notebooks(tmp_path):
    token = "clipedu-test-token"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(JUPYTER_TOKEN=token, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = open(tmp_path / "jupyter.log", "w")  # noqa: SIM115 (closed in finally)
    with socket.socket() as taken:  # the port asked for is in use, as by a second JupyterLab
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        asked = taken.getsockname()[1]
        recipe = make_lab_recipe().replace("$(PY)", shlex.quote(sys.executable))
        command = shlex.split(recipe.replace("$(LAB_ARGS)", f"--port {asked}"))
        launcher = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                    start_new_session=True)
        printed: list[str] = []
        reader = threading.Thread(target=lambda: printed.extend(launcher.stdout), daemon=True)
        reader.start()
        try:
            pattern, address = re.compile(r"http://localhost:(\d+)/lab\?token=(\S+)"), None
            deadline = time.monotonic() + 120
            while address is None and time.monotonic() < deadline and launcher.poll() is None:
                address = next(filter(None, map(pattern.search, list(printed))), None)
                time.sleep(0.2)
            server_log = (tmp_path / "jupyter.log").read_text()[-2000:]
            assert address is not None, f"no address printed; output {printed}, server log {server_log}"
            port = int(address.group(1))
            assert address.group(2) == token and port != asked
            output = "".join(printed)
            assert f"port {asked} is taken" in output and "no display here" in output
            assert ("--allow-root" in output) == lab.is_root()

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/?token={token}", timeout=30) as r:
                listing = json.load(r)
            served = {item["name"] for item in listing["content"]}
            notebooks = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
            assert notebooks and notebooks <= served
        finally:
            launcher.send_signal(signal.SIGTERM)  # by its process id; it stops the server it started
            try:
                launcher.wait(timeout=30)
            finally:
                if launcher.poll() is None:
                    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's own process group: nothing else
                log.close()
    assert launcher.returncode is not None
    with socket.socket() as probe:  # the server is gone with it
        assert probe.connect_ex(("127.0.0.1", port)) != 0
