"""Fixtures for the mobilityhouse `ocpp` interop suites.

Two agents, one per OCPP version under test, given by the environment (this is how
.ci/interop.sh runs them):
  CHARGESITE_WS_URL, CHARGESITE_DB        the 1.6 agent (free vend, no uplink):
                                          ws://127.0.0.1:PORT/ocpp and its SQLite file
  CHARGESITE201_WS_URL, CHARGESITE201_DB  the 2.0.1 agent (free_vend = false, uplink on)
  CHARGESITE201_MQTT                      its broker, host:port (the test plays the BPP)
  CHARGESITE201_SITE                      its [site] id (topics chargesite/v1/<site>/...)
  CHARGESITE_CONFIG                       the 1.6 agent's config file, with a `[status]
                                          socket` (for `chargesite charger`, run from
                                          CHARGESITE_BIN); without it, the test that
                                          needs it is skipped
  CHARGESITE_TLS_SITE                     the security-profile suite's site (test_tls.py):
                                          the site.json interop/tls/make_site.sh wrote
  CHARGESITE_TLS_WSS_URL, CHARGESITE_TLS_WS_URL
                                          its agent's wss://127.0.0.1:PORT/ocpp and
                                          ws://127.0.0.1:PORT/ocpp

`power_agent` (the site power limit tests, SetChargingProfile on 1.6 and 2.0.1) always
starts an agent of its own per test, with `[site] max_power_kw`, from CHARGESITE_BIN;
`uplink_power_agent` (a limit lowered and lifted over MQTT, ClearChargingProfile) one
without it but with an uplink to a mosquitto of its own.

Without them, each fixture starts its own agent (test_tls.py: on a site it makes with
interop/tls/make_site.sh first) from CHARGESITE_BIN (default:
<repo>/target/debug/chargesite) on 127.0.0.1:0 in a temp dir (and, for 2.0.1, its own
`mosquitto` on a free port), and stops it with SIGTERM at the end (checking exit status
0), so `pytest interop/python` also works on its own.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def agent_bin():
    return os.environ.get("CHARGESITE_BIN", str(REPO / "target" / "debug" / "chargesite"))


class Agent:
    def __init__(self, ws_url, db, mqtt=None, site="site-001", config=None):
        self.ws_url = ws_url.rstrip("/")
        self.db = db
        self.mqtt = mqtt  # (host, port) of the agent's broker, or None
        self.site = site
        self.config = config  # its config file (1.6: with a [status] socket), or None
        self.bin = agent_bin()

    def url(self, cp_id):
        return f"{self.ws_url}/{cp_id}"


def _free_port():
    # below the ephemeral range, where nothing else picks ports on its own
    for _ in range(100):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 10000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _start_broker(tmp):
    port = _free_port()
    conf = os.path.join(tmp, "mosquitto.conf")
    with open(conf, "w") as f:
        user = "user root\n" if os.geteuid() == 0 else ""
        f.write(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = open(os.path.join(tmp, "mosquitto.log"), "w")
    proc = subprocess.Popen(["mosquitto", "-c", conf], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"mosquitto did not start; see {tmp}/mosquitto.log")


def _start_own_agent(tmp, site="site-001", auth="free_vend = true", uplink="", site_extra=""):
    binary = agent_bin()
    db = os.path.join(tmp, "cs.db")
    cfg = os.path.join(tmp, "chargesite.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[site]\nid = "{site}"\n{site_extra}'
            '[ocpp]\nlisten = "127.0.0.1:0"\nallow_unknown_chargers = true\n'
            f"[auth]\n{auth}\n"
            f'[store]\npath = "{db}"\n'
            # the local API on a socket only (no auth), for `chargesite charger`
            f'[status]\nlisten = ""\nsocket = "{tmp}/api.sock"\n'
            f"{uplink}"
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
    return proc, f"ws://127.0.0.1:{port}/ocpp", db, cfg


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
    assert rc == 0, f"agent exited {rc} on SIGTERM"


@pytest.fixture(scope="session")
def agent():
    """The OCPP 1.6 agent: free vend, no uplink."""
    url = os.environ.get("CHARGESITE_WS_URL")
    db = os.environ.get("CHARGESITE_DB")
    if url and db:
        yield Agent(url, db, config=os.environ.get("CHARGESITE_CONFIG"))
        return
    with tempfile.TemporaryDirectory(prefix="interop-py-") as tmp:
        proc, url, db, cfg = _start_own_agent(tmp)
        try:
            yield Agent(url, db, config=cfg)
        finally:
            _stop(proc)


@pytest.fixture(scope="session")
def agent201():
    """The agent the OCPP 2.0.1 suite drives: `free_vend = false` (an OTP is really
    checked), with an uplink to a broker through which the test provisions OTPs."""
    url = os.environ.get("CHARGESITE201_WS_URL")
    db = os.environ.get("CHARGESITE201_DB")
    mqtt = os.environ.get("CHARGESITE201_MQTT")
    if url and db and mqtt:
        host, port = mqtt.rsplit(":", 1)
        yield Agent(url, db, (host, int(port)), os.environ.get("CHARGESITE201_SITE", "site-001"))
        return
    with tempfile.TemporaryDirectory(prefix="interop-py201-") as tmp:
        broker, port = _start_broker(tmp)
        site = f"site-py201-{uuid.uuid4().hex[:6]}"
        try:
            proc, url, db, _cfg = _start_own_agent(
                tmp, site=site, auth="free_vend = false",
                uplink=f'[uplink]\nurl = "mqtt://127.0.0.1:{port}"\nkeepalive_secs = 5\n',
            )
            try:
                yield Agent(url, db, ("127.0.0.1", port), site)
            finally:
                _stop(proc)
        finally:
            broker.terminate()
            broker.wait(timeout=10)


def _print_log_tail(tmp, lines=60):
    """The tail of the agent's log, for pytest to show when the test failed."""
    with open(os.path.join(tmp, "agent.log")) as f:
        print("agent log (tail):\n" + "".join(f.readlines()[-lines:]))


# The site power limit of the `power_agent` fixture's agents, kW (`[site] max_power_kw`).
SITE_MAX_POWER_KW = 11


@pytest.fixture
def power_agent():
    """An agent of the test's own with a site power limit (`[site] max_power_kw = 11`:
    below the 22 kW a charger's connector is assumed to take, so the site is what bounds it),
    free vend, no uplink, for one charger of either version: each charger it sees is
    asked what it takes (1.6 GetConfiguration, 2.0.1 GetVariables) and sent
    SetChargingProfile CALLs, and every running session on the site shares the limit.
    So it is never the suites' shared agent (whose chargers mostly have no smart-charging
    handlers, and whose open sessions would take the shares), and never one given by the
    environment: always started here from CHARGESITE_BIN, stopped with SIGTERM (exit 0
    checked) after the test."""
    with tempfile.TemporaryDirectory(prefix="interop-pypower-") as tmp:
        proc, url, db, cfg = _start_own_agent(
            tmp, site="site-power", site_extra=f"max_power_kw = {SITE_MAX_POWER_KW}\n"
        )
        try:
            a = Agent(url, db, config=cfg)
            a.max_power_w = SITE_MAX_POWER_KW * 1000
            a.log = os.path.join(tmp, "agent.log")
            yield a
        finally:
            try:
                _stop(proc)
            finally:
                _print_log_tail(tmp)


@pytest.fixture
def uplink_power_agent():
    """An agent of the test's own with no `[site] max_power_kw` but an uplink to a
    mosquitto of its own, free vend: the test, as the BPP, lowers the site limit with
    `site.power_limit` (profiles are sent) and lifts it again with `max_power_kw` 0 (the
    profiles the agent installed are cleared: ClearChargingProfile). Stopped with SIGTERM
    (exit 0 checked) after the test."""
    with tempfile.TemporaryDirectory(prefix="interop-pylift-") as tmp:
        broker, port = _start_broker(tmp)
        site = f"site-pylift-{uuid.uuid4().hex[:6]}"
        try:
            proc, url, db, _cfg = _start_own_agent(
                tmp, site=site, uplink=f'[uplink]\nurl = "mqtt://127.0.0.1:{port}"\nkeepalive_secs = 5\n'
            )
            try:
                a = Agent(url, db, ("127.0.0.1", port), site)
                a.log = os.path.join(tmp, "agent.log")
                yield a
            finally:
                try:
                    _stop(proc)
                finally:
                    _print_log_tail(tmp)
        finally:
            broker.terminate()
            broker.wait(timeout=10)


class TlsSite:
    """A site with security profiles 2 and 3 (interop/tls/make_site.sh): `wss` and `ws` are
    its agent's two endpoints, `site` the parsed site.json, `db` its SQLite file."""

    def __init__(self, site_json, wss_url, ws_url):
        with open(site_json) as f:
            self.site = json.load(f)
        self.db = self.site["db"]
        self.config = self.site["config"]
        self.wss = Agent(wss_url, self.db, config=self.config)
        self.ws = Agent(ws_url, self.db, config=self.config)
        self.bin = agent_bin()

    def charger(self, role):
        """`p3`, `p3b` (profile 3), `p2`, `p2b` (profile 2): id, profile, and cert/key or
        password."""
        return self.site["chargers"][role]


def _start_own_tls_agent(tmp):
    binary = agent_bin()
    subprocess.run(
        ["bash", str(REPO / "interop" / "tls" / "make_site.sh"), binary, tmp, "PYTLS"],
        check=True, stdin=subprocess.DEVNULL,
    )
    site_json = os.path.join(tmp, "site.json")
    with open(site_json) as f:
        cfg = json.load(f)["config"]
    log = open(os.path.join(tmp, "agent.log"), "w")
    proc = subprocess.Popen(
        [binary, "run", "--config", cfg], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True
    )
    ports = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(ports) < 2:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.match(r"^(tls )?listening on 127\.0\.0\.1:(\d+)$", line.strip())
        if m:
            ports["wss" if m.group(1) else "ws"] = int(m.group(2))
    if len(ports) < 2:
        proc.kill()
        raise RuntimeError(f"agent did not report both ports ({ports}); see {tmp}/agent.log")
    return proc, site_json, f"wss://127.0.0.1:{ports['wss']}/ocpp", f"ws://127.0.0.1:{ports['ws']}/ocpp"


@pytest.fixture(scope="session")
def tls_site():
    """The agent of the security-profile suite (test_tls.py): wss:// with profile 2 and 3
    chargers, free vend."""
    site_json = os.environ.get("CHARGESITE_TLS_SITE")
    wss = os.environ.get("CHARGESITE_TLS_WSS_URL")
    ws = os.environ.get("CHARGESITE_TLS_WS_URL")
    if site_json and wss and ws:
        yield TlsSite(site_json, wss, ws)
        return
    with tempfile.TemporaryDirectory(prefix="interop-pytls-") as tmp:
        proc, site_json, wss, ws = _start_own_tls_agent(tmp)
        try:
            yield TlsSite(site_json, wss, ws)
        finally:
            _stop(proc)
