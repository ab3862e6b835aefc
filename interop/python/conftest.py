"""Fixtures for the mobilityhouse `ocpp` interop suite.

The agent under test is given by the environment (this is how .ci/interop.sh runs it):
  CHARGESITE_WS_URL  e.g. ws://127.0.0.1:PORT/ocpp   (chargers append /<chargePointId>)
  CHARGESITE_DB      the agent's SQLite file (read-only here)

Without them, the suite starts its own agent from CHARGESITE_BIN (default:
<repo>/target/debug/chargesite) on 127.0.0.1:0 in a temp dir, and stops it with SIGTERM
at the end (checking exit status 0), so `pytest interop/python` also works on its own.
"""

import os
import pathlib
import re
import signal
import subprocess
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


class Agent:
    def __init__(self, ws_url, db):
        self.ws_url = ws_url.rstrip("/")
        self.db = db

    def url(self, cp_id):
        return f"{self.ws_url}/{cp_id}"


def _start_own_agent(tmp):
    binary = os.environ.get("CHARGESITE_BIN", str(REPO / "target" / "debug" / "chargesite"))
    db = os.path.join(tmp, "cs.db")
    cfg = os.path.join(tmp, "chargesite.toml")
    with open(cfg, "w") as f:
        f.write(
            '[site]\nid = "site-001"\n'
            '[ocpp]\nlisten = "127.0.0.1:0"\nallow_unknown_chargers = true\n'
            "[auth]\nfree_vend = true\n"
            f'[store]\npath = "{db}"\n'
        )
    log = open(os.path.join(tmp, "agent.log"), "w")
    proc = subprocess.Popen(
        [binary, "run", "--config", cfg],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    deadline = time.monotonic() + 30
    port = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        raise RuntimeError(f"agent did not start; see {tmp}/agent.log")
    return proc, Agent(f"ws://127.0.0.1:{port}/ocpp", db)


@pytest.fixture(scope="session")
def agent():
    url = os.environ.get("CHARGESITE_WS_URL")
    db = os.environ.get("CHARGESITE_DB")
    if url and db:
        yield Agent(url, db)
        return
    with tempfile.TemporaryDirectory(prefix="interop-py-") as tmp:
        proc, a = _start_own_agent(tmp)
        try:
            yield a
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
            assert rc == 0, f"agent exited {rc} on SIGTERM"
