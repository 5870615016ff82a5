"""JupyterLab smoke test: what a learner does after ``make setup`` and ``jupyter lab``.

Starts JupyterLab on 127.0.0.1 (a free port, a random token, no browser), opens notebook 01
through the REST API, starts a ``python3`` kernel session for it, runs a cell that imports
``course_lib`` over the kernel's websocket, then shuts the server down through the API and
checks that the process exits cleanly. Every wait is bounded.
"""
from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import websocket  # websocket-client, a dependency of jupyter_server

from conftest import NOTEBOOKS, ROOT

NOTEBOOK = "notebooks/01_probability.ipynb"
START_TIMEOUT = 90     # seconds for the server to answer
EXECUTE_TIMEOUT = 120  # seconds for the kernel to start and run the cell
EXIT_TIMEOUT = 30      # seconds for the server to exit after POST /api/shutdown


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A JupyterLab process and a tiny REST client for it."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.log_path = tmp / "jupyterlab.log"
        # Private config/data/runtime folders: no user setting or user kernelspec can
        # replace the course venv's python3 kernel (installed under sys.prefix).
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "config"),
                   JUPYTER_DATA_DIR=str(tmp / "data"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
                   JUPYTER_PLATFORM_DIRS="1", JUPYTER_NO_CONFIG="1")
        env.pop("PYTHONPATH", None)  # the kernel must import the installed course_lib
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={ROOT}",
            "--ServerApp.allow_root=True", "--MappingKernelManager.default_kernel_name=python3",
            "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30):
        """(status, parsed JSON or text) of one authenticated request."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path), data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw, kind = resp.status, resp.read().decode(), resp.headers.get_content_type()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        return status, (json.loads(raw) if kind == "application/json" and raw else raw)

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                status, body = self.request("GET", "/api/status", timeout=5)
                if status == 200:
                    return body
            except OSError:
                pass
            time.sleep(0.25)
        pytest.fail(f"jupyter lab did not answer within {START_TIMEOUT} s:\n{self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self):
        """Last resort, if the test failed before the clean shutdown."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.close()


def execute(ws_url: str, code: str) -> tuple[dict, str]:
    """Run ``code`` in a kernel through its websocket; (execute_reply content, stdout)."""
    session, msg_id = uuid.uuid4().hex, uuid.uuid4().hex
    request = {
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session,
                   "username": "test", "version": "5.3",
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }
    deadline = time.monotonic() + EXECUTE_TIMEOUT
    ws = websocket.create_connection(ws_url, timeout=EXECUTE_TIMEOUT)
    try:
        ws.send(json.dumps(request))
        stdout, reply, idle = [], None, False
        while not (reply and idle):
            ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                msg = json.loads(ws.recv())
            except websocket.WebSocketTimeoutException:
                pytest.fail(f"no answer from the kernel within {EXECUTE_TIMEOUT} s; stdout so far: {stdout}")
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream" and msg["content"]["name"] == "stdout":
                stdout.append(msg["content"]["text"])
            elif kind == "error":
                pytest.fail("the cell raised:\n" + "\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return reply, "".join(stdout)
    finally:
        ws.close()


@pytest.mark.slow
def test_jupyterlab_opens_notebook_01_and_runs_course_lib(tmp_path):
    assert (NOTEBOOKS / "01_probability.ipynb").is_file(), f"{NOTEBOOK} is missing"
    server = Server(tmp_path)
    start = time.perf_counter()
    try:
        server.wait_ready()
        started = time.perf_counter() - start

        status, page = server.request("GET", "/lab")
        assert status == 200 and "jupyter-config-data" in page, "JupyterLab's page is not served"
        status, specs = server.request("GET", "/api/kernelspecs")
        assert status == 200 and "python3" in specs["kernelspecs"], specs

        status, model = server.request("GET", f"/api/contents/{NOTEBOOK}")
        assert status == 200, model
        assert model["type"] == "notebook"
        assert model["content"]["metadata"]["kernelspec"]["name"] == "python3"
        assert model["content"]["cells"][0]["source"].startswith("# 01 · ")

        status, session = server.request("POST", "/api/sessions", {
            "path": NOTEBOOK, "name": Path(NOTEBOOK).name, "type": "notebook",
            "kernel": {"name": "python3"}})
        assert status == 201, session
        kernel = session["kernel"]
        assert kernel["name"] == "python3"

        ws_url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel['id']}/channels?token={server.token}"
        code = ("import os, sys, course_lib\n"
                "from course_lib import runtime\n"
                "rt = runtime.detect()\n"
                "print('course_lib', course_lib.__version__, rt.backend, rt.scale)\n"
                "print('prefix', sys.prefix)\n"
                "print('cwd', os.getcwd())\n")
        reply, stdout = execute(ws_url, code)
        assert reply["status"] == "ok", reply
        lines = dict(line.split(" ", 1) for line in stdout.splitlines())
        version = lines["course_lib"].split()[0]
        assert version == _package_version(), stdout
        assert lines["prefix"] == sys.prefix, "the python3 kernel is not the course environment's"
        assert Path(lines["cwd"]) == NOTEBOOKS, "the kernel does not start beside its notebook"
        ran = time.perf_counter() - start

        status, _ = server.request("DELETE", f"/api/sessions/{session['id']}")
        assert status == 204
        status, _ = server.request("POST", "/api/shutdown")
        assert status == 200
        try:
            exit_code = server.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"jupyter lab still running {EXIT_TIMEOUT} s after POST /api/shutdown")
        assert exit_code == 0, f"jupyter lab exited with {exit_code}:\n{server.logs()}"
        print(f"\njupyterlab: ready in {started:.1f} s, cell ran at {ran:.1f} s, "
              f"shut down at {time.perf_counter() - start:.1f} s")
    finally:
        server.stop()


def _package_version() -> str:
    init = (ROOT / "course_lib" / "__init__.py").read_text()
    return next(line.split('"')[1] for line in init.splitlines() if line.startswith("__version__"))
