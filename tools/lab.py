"""Start JupyterLab on the course's notebooks wherever a student runs ``make lab``.

``make lab`` runs ``python tools/lab.py notebooks/``. Three places where a plain ``jupyter lab``
leaves a student with nothing served, and what this does about each:

- **as root** (Docker images, many cloud notebooks): JupyterLab refuses to start without
  ``--allow-root``; it is passed, with one line saying why;
- **without a display** (a server, a container, SSH): there is no browser to open, so none is
  tried, and the address to open is printed plainly once the server answers;
- **the port is taken** (another JupyterLab is running): the next free port is used, and said.

Other arguments go to JupyterLab unchanged: ``make lab LAB_ARGS="--port 9000 --ip 0.0.0.0"``.
The server's token is ``$JUPYTER_TOKEN`` when set, else a fresh random one. Stop it with Ctrl-C,
or by sending SIGTERM to this process, which stops the server with it.
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request

DEFAULT_PORT = 8888
PORTS_TO_TRY = 50  # JupyterLab's own default number of retries


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def has_display(environ=os.environ, platform: str = sys.platform) -> bool:
    """Whether a browser could open here: always on macOS and Windows, on Linux only with X11 or Wayland."""
    if platform.startswith("linux") or "bsd" in platform:
        return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))
    return True


def port_is_free(port: int) -> bool:
    """Whether ``port`` is free on localhost, where JupyterLab listens: IPv4 and, where there is one, IPv6."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here
            continue
        with s:
            try:
                s.bind((host, port))
            except OSError as err:
                if err.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                if family == socket.AF_INET:
                    raise
    return True


def choose_port(preferred: int, tries: int = PORTS_TO_TRY) -> int:
    """``preferred`` if it is free, else the next free one after it, else any free port."""
    for port in range(preferred, min(preferred + tries, 65536)):
        if port_is_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_command(folder: str, port: int, root: bool, display: bool, extra: list[str]) -> list[str]:
    """The JupyterLab command line: on ``port`` exactly (the address printed must be the real one)."""
    command = [sys.executable, "-m", "jupyterlab", folder, f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if root:
        command.append("--allow-root")
    if not display:
        command.append("--no-browser")
    return command + extra


def wait_until_serving(url: str, server: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll the server's status until it answers; False if it exits or does not answer in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.25)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default="notebooks/")
    parser.add_argument("--port", type=int, default=int(os.environ.get("JUPYTER_PORT", DEFAULT_PORT)))
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    args, extra = parser.parse_known_args(argv)

    def say(line: str) -> None:
        print(f"[make lab] {line}", flush=True)

    root, display = is_root(), has_display() and not args.no_browser
    if root:
        say("running as root (as in Docker and many cloud notebooks): passing --allow-root, "
            "which JupyterLab needs to start as root.")
    if not has_display():
        say("no display here, so no browser will open: open the address printed below yourself.")
    port = choose_port(args.port)
    if port != args.port:
        say(f"port {args.port} is taken (another JupyterLab?), so this one uses port {port}.")
    env = dict(os.environ)
    token = env.setdefault("JUPYTER_TOKEN", secrets.token_hex(24))
    server = subprocess.Popen(lab_command(args.folder, port, root, display, extra), env=env)

    def stop(signum, frame):  # SIGTERM to this process stops the server too
        server.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server itself, which asks to confirm
    if wait_until_serving(f"http://127.0.0.1:{port}/api/status?token={token}", server):
        address = f"http://localhost:{port}/lab?token={token}"
        rule = "=" * min(100, len(address) + 8)
        print(f"\n{rule}\n  JupyterLab is serving {args.folder}. Open this address in your browser:\n\n"
              f"      {address}\n\n  Stop it with Ctrl-C (twice).\n{rule}\n", flush=True)
    elif server.poll() is None:
        say(f"JupyterLab has not answered on port {port} yet; its own log above says why.")
    try:
        return server.wait()
    finally:
        if server.poll() is None:  # this process is going away: never leave the server behind
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
