"""chargesite over wss:// with OCPP security profiles 2 and 3, driven by mobilityhouse
`ocpp` on `websockets` with a standard-library `ssl.SSLContext`: the site CA (ca.pem) as
the only trust anchor, hostname checking on, and for profile 3 the charger's own
certificate and key (`load_cert_chain`).

The site (fixture `tls_site`) is made with the agent's CLI by interop/tls/make_site.sh
(`hash-password`, `tls init --name localhost --name 127.0.0.1`, `tls issue`,
`check-config`) and runs free vend, so the 1.6 flow is test_interop.py's own
(`full_transaction_flow`) and the 2.0.1 one needs no BPP. Chargers: PYTLS-P3 (profile 3,
bound to a serial), PYTLS-P3B (profile 3), PYTLS-P2 and PYTLS-P2B (profile 2, Basic auth
with user = charger id).

Refusals: another charger's certificate, no certificate, a certificate with the right
subject from another CA, plain ws:// for profile 2 and 3, a wrong, missing or borrowed
password, an unlisted id, a BootNotification with the wrong serial; then the agent's
`security.event` log of them.
"""

import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import re
import socket
import ssl
import stat
import uuid

import pytest
import websockets
from websockets.asyncio.client import connect

from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

import test_interop as v16
import test_v201 as v201

OCPP16 = "ocpp1.6"
OCPP201 = "ocpp2.0.1"
TIMEOUT = 10

# The kinds of `security.event` the refusals below should have caused, in order (the agent
# sends at most a few a minute per address upstream: the recorded ones are a subsequence).
EXPECTED_SECURITY_EVENTS = []


# --------------------------------------------------------------------------- helpers


def tls_context(site, role=None, cert=None, key=None):
    """What a charger configures: the site CA, and for profile 3 its certificate chain."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=site.site["ca"])
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    if role:
        c = site.charger(role)
        cert, key = c["cert"], c["key"]
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def basic(user, password):
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def profile3(site, role):
    """connect() arguments for a profile-3 charger."""
    return {"ssl": tls_context(site, role)}


def profile2(site, role):
    """connect() arguments for a profile-2 charger: server-authenticated TLS + Basic auth."""
    c = site.charger(role)
    return {"ssl": tls_context(site), "additional_headers": basic(c["id"], c["password"])}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def refused_status(url, **kwargs):
    """The HTTP status a refused upgrade is answered with."""
    with pytest.raises(websockets.InvalidStatus) as e:
        async with connect(url, subprotocols=[OCPP16], open_timeout=TIMEOUT, **kwargs):
            pass
    return e.value.response.status_code


def decode_cert(path):
    # the standard library's own PEM decoder (what `getpeercert()` returns), no extra package
    return ssl._ssl._test_decode_cert(path)


def subject(cert):
    return {k: v for rdn in cert["subject"] for k, v in rdn}


def issuer(cert):
    return {k: v for rdn in cert["issuer"] for k, v in rdn}


def pem_blocks(path):
    with open(path) as f:
        text = f.read()
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)


def security_events(db):
    return v16.events(db, ["security.event"])


# --------------------------------------------------------------------------- the site


def test_the_cli_made_the_site(tls_site):
    """What `tls init` / `tls issue` wrote, as a field engineer would check it before
    loading ca.pem and the client certificates into chargers."""
    s = tls_site.site
    d = s["tls_dir"]
    # private keys: not open to other users (tls init writes 0600)
    keys = [os.path.join(d, "ca.key"), os.path.join(d, "server.key")]
    keys += [s["chargers"][r]["key"] for r in ("p3", "p3b")]
    for k in keys:
        mode = stat.S_IMODE(os.stat(k).st_mode)
        assert mode & 0o077 == 0, f"{k} is mode {mode:o}"
        assert mode == 0o600, f"{k} is mode {mode:o} (tls init/issue write 0600)"

    # the CA: one certificate; the fingerprint `tls init` printed is its SHA-256
    ca_blocks = pem_blocks(s["ca"])
    assert len(ca_blocks) == 1, s["ca"]
    der = ssl.PEM_cert_to_DER_cert(ca_blocks[0])
    fp = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert s["fingerprint"] == fp, open(s["tls_init_output"]).read()
    ca = decode_cert(s["ca"])
    assert subject(ca).get("organizationName") == s["cpo_name"], ca

    # server.pem is the chain: the leaf for the names given with --name, then the CA
    chain = pem_blocks(os.path.join(d, "server.pem"))
    assert len(chain) == 2, "server.pem: leaf + CA expected"
    assert chain[1].strip() == ca_blocks[0].strip(), "server.pem's second certificate is not ca.pem"
    leaf = decode_cert(os.path.join(d, "server.pem"))  # the first certificate
    sans = set(leaf.get("subjectAltName", ()))
    assert {("DNS", "localhost"), ("IP Address", "127.0.0.1")} <= sans, sans
    assert issuer(leaf) == subject(ca), (leaf, ca)

    # client certificates: CN = charger id, O = cpo_name, serialNumber from the config
    for role in ("p3", "p3b"):
        c = s["chargers"][role]
        cert = decode_cert(c["cert"])
        sub = subject(cert)
        assert sub.get("commonName") == c["id"], sub
        assert sub.get("organizationName") == s["cpo_name"], sub
        assert sub.get("serialNumber") == c["serial"], sub  # None: no serial configured
        assert issuer(cert) == subject(ca), cert
        not_after = dt.datetime.strptime(cert["notAfter"], "%b %d %H:%M:%S %Y %Z")
        assert not_after > dt.datetime.utcnow() + dt.timedelta(days=365), cert["notAfter"]

    # the impostor's certificate names PYTLS-P3 exactly as ours does
    imp = decode_cert(s["impostor"]["cert"])
    assert subject(imp) == subject(decode_cert(s["chargers"]["p3"]["cert"]))
    assert issuer(imp) != subject(ca)


def test_server_certificate_names_and_tls_versions(tls_site):
    """The server certificate verifies for both --name values; a TLS 1.2-only charger
    with the security whitepaper's ECDHE-ECDSA AES-GCM suite gets in; a charger that
    expects another host name refuses the server (its handshake aborts)."""
    port = int(tls_site.wss.ws_url.rsplit(":", 1)[1].split("/")[0])
    p2 = tls_site.charger("p2")

    async def go():
        seen = {}
        for host in ("127.0.0.1", "localhost"):
            # `localhost` may resolve to ::1 first; the agent listens on 127.0.0.1 only
            async with connect(
                f"wss://{host}:{port}/ocpp/{p2['id']}", subprotocols=[OCPP16], open_timeout=TIMEOUT,
                **profile2(tls_site, "p2"),
                family=socket.AF_INET,
            ) as ws:
                assert ws.subprotocol == OCPP16
                obj = ws.transport.get_extra_info("ssl_object")
                seen[host] = obj.version()
                assert subject(ws.transport.get_extra_info("peercert")).get("commonName") == "localhost"
        assert set(seen.values()) <= {"TLSv1.3", "TLSv1.2"}, seen

        ctx = tls_context(tls_site)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        async with connect(
            f"{tls_site.wss.url(p2['id'])}", subprotocols=[OCPP16], open_timeout=TIMEOUT,
            ssl=ctx, additional_headers=basic(p2["id"], p2["password"]),
        ) as ws:
            obj = ws.transport.get_extra_info("ssl_object")
            assert obj.version() == "TLSv1.2"
            assert obj.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256", obj.cipher()

        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(
                tls_site.wss.url(p2["id"]), subprotocols=[OCPP16], open_timeout=TIMEOUT,
                server_hostname="gateway.example", **profile2(tls_site, "p2"),
            ):
                pass
        EXPECTED_SECURITY_EVENTS.append(("tls_refused", None))

    run(go())


# --------------------------------------------------------------------------- the flows


def test_profile3_full_transaction_flow_16(tls_site):
    """test_interop.py's whole 1.6 flow, over mutual TLS, with the bound serial."""
    c = tls_site.charger("p3")
    run(v16.full_transaction_flow(tls_site.wss, c["id"], serial=c["serial"], **profile3(tls_site, "p3")))
    connected = [e for e in v16.events(tls_site.db, ["charger.connected"]) if e["cp_id"] == c["id"]]
    assert connected and connected[0]["ocpp_version"] in ("1.6", "ocpp1.6"), connected


def test_profile2_full_transaction_flow_16(tls_site):
    """The same flow with Basic auth over server-authenticated TLS."""
    c = tls_site.charger("p2")
    run(v16.full_transaction_flow(tls_site.wss, c["id"], **profile2(tls_site, "p2")))


async def flow_201(site, cp_id, **connect_kwargs):
    """A 2.0.1 session (test_v201.py's helpers) on a free-vend site: BootNotification,
    StatusNotification, Heartbeat, Authorize, TransactionEvent Started/Updated/Ended."""
    tx_id = f"PYTLSTX-{uuid.uuid4().hex[:10]}"
    card = {"idToken": "04A1B2C3D4E5F6", "type": "ISO14443"}
    async with v201.station(site.wss, cp_id, **connect_kwargs) as (cp, wire):
        before = v201.now()
        res = await v201.boot(cp, model="PyOCPP-201-TLS")
        assert res.status == "Accepted"
        assert v201.RFC3339_MS_UTC.match(res.current_time), res.current_time
        assert abs((v201.parse_ts(res.current_time) - before).total_seconds()) < 60
        r = await cp.call(
            call201.StatusNotification(timestamp=v201.ts(v201.now()), connector_status="Available", evse_id=1, connector_id=1),
            suppress=False,
        )
        assert isinstance(r, result201.StatusNotification)
        hb = await cp.call(call201.Heartbeat(), suppress=False)
        assert abs((v201.parse_ts(hb.current_time) - v201.now()).total_seconds()) < 60
        auth = await cp.call(call201.Authorize(id_token=card), suppress=False)
        assert auth.id_token_info["status"] == "Accepted", auth  # free vend

        t0 = v201.minutes(v201.now(), -20)
        started_res = await cp.call(
            v201.tx_event(
                "Started", 0, t0, tx_id, "Authorized",
                meter=[v201.register(1000, "Transaction.Begin")],
                info={"chargingState": "Charging"},
                evse={"id": 1, "connectorId": 1},
                id_token=card,
            ),
            suppress=False,
        )
        assert started_res.id_token_info and started_res.id_token_info["status"] == "Accepted", started_res
        started = v201.session_started(site.db, cp_id, tx_id)
        sid = started["session_id"]
        assert started["evse_id"] == 1 and started["meter_start_wh"] == 1000, started
        await cp.call(
            v201.tx_event(
                "Updated", 1, v201.minutes(t0, 10), tx_id, "MeterValuePeriodic",
                meter=[v201.sv(2500, "Energy.Active.Import.Register", "Wh"), v201.sv(7400, "Power.Active.Import", "W")],
            ),
            suppress=False,
        )
        samples = v201.samples_of(site.db, sid)
        assert any(s.get("energy_wh") == 2500 and s.get("power_w") == 7400 for s in samples), samples
        t1 = v201.minutes(t0, 20)
        ended = await cp.call(
            v201.tx_event(
                "Ended", 2, t1, tx_id, "EVDeparted",
                meter=[v201.register(3000, "Transaction.End")],
                info={"chargingState": "Idle", "stoppedReason": "EVDisconnected"},
            ),
            suppress=False,
        )
        assert isinstance(ended, result201.TransactionEvent)
        stopped = v201.events(site.db, ["session.stopped"], sid)
        assert len(stopped) == 1 and stopped[0]["energy_wh"] == 2000, stopped
        assert stopped[0]["reason"] == "EVDisconnected", stopped
        assert v201.parse_ts(stopped[0]["stopped_at"]) == v201.parse_ts(v201.ts(t1)), stopped
        assert not wire.call_errors(), wire.received
    connected = [e for e in v201.events(site.db, ["charger.connected"]) if e.get("cp_id") == cp_id]
    assert connected and connected[-1]["ocpp_version"] == "2.0.1", connected


def test_profile3_session_201(tls_site):
    run(flow_201(tls_site, tls_site.charger("p3b")["id"], **profile3(tls_site, "p3b")))


def test_profile2_session_201(tls_site):
    run(flow_201(tls_site, tls_site.charger("p2b")["id"], **profile2(tls_site, "p2b")))


def make_csr(tmp_path, cn, o):
    """A P-256 CSR as a charger makes one for SignCertificate (openssl, which ships with
    Debian's ca-certificates; skipped without it)."""
    import shutil
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("no openssl to make a CSR with")
    key, csr = tmp_path / f"{cn}.key", tmp_path / f"{cn}.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", f"/CN={cn}/O={o}", "-keyout", str(key), "-out", str(csr)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )
    return csr.read_text()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_sign_certificate_over_mutual_tls(tls_site, tmp_path, version):
    """Certificate renewal on profile 3: a CSR naming the charger (CN = its id, O =
    cpo_name) is Accepted and goes upstream as `charger.csr` as sent; a CSR naming another
    charger is Rejected (a `security.event` `csr_refused`). 1.6 (security extension:
    SignCertificate with `csr` only) on PYTLS-P3, 2.0.1 on PYTLS-P3B."""
    role = "p3" if version == "1.6" else "p3b"
    c, other = tls_site.charger(role), tls_site.charger("p3b" if role == "p3" else "p3")
    mine = make_csr(tmp_path, c["id"], tls_site.site["cpo_name"])
    theirs = make_csr(tmp_path, other["id"], tls_site.site["cpo_name"])

    async def go():
        if version == "1.6":
            async with v16.charger(tls_site.wss, c["id"], **profile3(tls_site, role)) as (cp, wire):
                assert (await v16.boot(cp, c["serial"])).status == "Accepted"
                ok = await cp.call(v16.call.SignCertificate(csr=mine), suppress=False)
                bad = await cp.call(v16.call.SignCertificate(csr=theirs), suppress=False)
                errors = [f for f in wire.received if json.loads(f)[0] == 4]
        else:
            async with v201.station(tls_site.wss, c["id"], **profile3(tls_site, role)) as (cp, wire):
                assert (await v201.boot(cp, model="PyOCPP-201-TLS")).status == "Accepted"
                ok = await cp.call(call201.SignCertificate(csr=mine, certificate_type="ChargingStationCertificate"), suppress=False)
                bad = await cp.call(call201.SignCertificate(csr=theirs, certificate_type="ChargingStationCertificate"), suppress=False)
                errors = wire.call_errors()
        return ok, bad, errors

    ok, bad, errors = run(go())
    assert ok.status == "Accepted", ok
    assert bad.status == "Rejected", bad
    assert not errors, errors
    EXPECTED_SECURITY_EVENTS.append(("csr_refused", c["id"]))
    csrs = [e for e in v16.events(tls_site.db, ["charger.csr"]) if e.get("cp_id") == c["id"]]
    assert [e["csr"].strip() for e in csrs] == [mine.strip()], csrs
    expected_type = "ChargePointCertificate" if version == "1.6" else "ChargingStationCertificate"
    assert csrs[0]["certificate_type"] == expected_type, csrs


# --------------------------------------------------------------------------- refusals


def test_another_chargers_certificate_is_refused_with_401(tls_site):
    """PYTLS-P3B's valid certificate does not open PYTLS-P3."""
    p3 = tls_site.charger("p3")
    status = run(refused_status(tls_site.wss.url(p3["id"]), **profile3(tls_site, "p3b")))
    assert status == 401
    EXPECTED_SECURITY_EVENTS.append(("certificate_mismatch", p3["id"]))


def test_profile3_without_a_certificate_is_refused_with_401(tls_site):
    p3 = tls_site.charger("p3")
    status = run(refused_status(tls_site.wss.url(p3["id"]), ssl=tls_context(tls_site)))
    assert status == 401
    EXPECTED_SECURITY_EVENTS.append(("certificate_missing", p3["id"]))


def test_the_right_subject_from_another_ca_is_refused_in_the_tls_handshake(tls_site):
    """A certificate with PYTLS-P3's exact subject, signed by another site's CA: the
    agent's TLS layer refuses it before any HTTP (no status, the connection fails)."""
    imp = tls_site.site["impostor"]
    ctx = tls_context(tls_site, cert=imp["cert"], key=imp["key"])

    async def go():
        try:
            async with connect(tls_site.wss.url(imp["id"]), subprotocols=[OCPP16], open_timeout=TIMEOUT, ssl=ctx) as ws:
                await ws.recv()  # TLS 1.3: the client may learn of the alert only now
        except websockets.InvalidStatus as e:
            pytest.fail(f"the handshake reached HTTP: {e.response.status_code}")
        except (ssl.SSLError, OSError, EOFError, websockets.InvalidHandshake, websockets.ConnectionClosed) as e:
            print(f"impostor refused: {type(e).__name__}: {e!r} (cause {e.__cause__!r})")
            return e
        pytest.fail("an impostor certificate opened a connection")

    err = run(go())
    # rustls answers an unknown issuer with the unknown_ca alert (48); TLS 1.3 clients may
    # see it only as the connection failing after their Finished
    text = f"{type(err).__name__}: {err!r} {err.__cause__!r}"
    assert re.search(r"UNKNOWN_CA|unknown ca|BAD_CERTIFICATE|reset|EOF|closed", text, re.I), text
    EXPECTED_SECURITY_EVENTS.append(("tls_refused", None))


@pytest.mark.parametrize("role", ["p3", "p2"])
def test_plain_ws_for_profile_2_and_3_is_refused_with_401(tls_site, role):
    """A downgrade: the right charger id on ws://, even with the right password."""
    c = tls_site.charger(role)
    headers = basic(c["id"], c["password"]) if role == "p2" else {}
    status = run(refused_status(tls_site.ws.url(c["id"]), additional_headers=headers))
    assert status == 401
    EXPECTED_SECURITY_EVENTS.append(("profile_downgrade", c["id"]))


@pytest.mark.parametrize(
    "case", ["wrong-password", "no-credentials", "another-chargers-credentials"]
)
def test_profile2_bad_credentials_are_refused_with_401(tls_site, case):
    p2, p2b = tls_site.charger("p2"), tls_site.charger("p2b")
    headers, kind = {
        "wrong-password": (basic(p2["id"], p2["password"] + "x"), "auth_failed"),
        "no-credentials": ({}, "auth_missing"),
        # PYTLS-P2B's own, valid user and password do not open PYTLS-P2
        "another-chargers-credentials": (basic(p2b["id"], p2b["password"]), "auth_failed"),
    }[case]
    status = run(refused_status(tls_site.wss.url(p2["id"]), ssl=tls_context(tls_site), additional_headers=headers))
    assert status == 401
    EXPECTED_SECURITY_EVENTS.append((kind, p2["id"]))


def test_an_unlisted_charger_over_wss_is_refused_with_404(tls_site):
    """`allow_unknown_chargers = false`: TLS alone opens nothing."""
    cp_id = f"PYTLS-UNLISTED-{uuid.uuid4().hex[:6]}"
    status = run(refused_status(tls_site.wss.url(cp_id), ssl=tls_context(tls_site)))
    assert status == 404
    EXPECTED_SECURITY_EVENTS.append(("unknown_charger", cp_id))


def test_a_boot_with_another_serial_is_closed_1008(tls_site):
    """PYTLS-P3 is bound to its serial (config and certificate): a BootNotification that
    reports another one gets no answer, the socket is closed with 1008 (policy)."""
    c = tls_site.charger("p3")

    async def go():
        async with connect(tls_site.wss.url(c["id"]), subprotocols=[OCPP16], open_timeout=TIMEOUT, **profile3(tls_site, "p3")) as ws:
            boot = {"chargePointVendor": "InteropVendor", "chargePointModel": "PyOCPP-CP", "chargePointSerialNumber": "SN-SOMEONE-ELSE"}
            await ws.send(json.dumps([2, "boot-1", "BootNotification", boot]))
            with pytest.raises(websockets.ConnectionClosed) as e:
                frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
                pytest.fail(f"answered: {frame}")
            return e.value.rcvd

    rcvd = run(go())
    assert rcvd is not None and rcvd.code == 1008, rcvd
    EXPECTED_SECURITY_EVENTS.append(("serial_mismatch", c["id"]))

    # and the charger itself still gets in afterwards
    async def again():
        async with v16.charger(tls_site.wss, c["id"], **profile3(tls_site, "p3")) as (cp, _wire):
            res = await v16.boot(cp, c["serial"])
            assert res.status == "Accepted"

    run(again())


def test_refusals_are_security_events(tls_site):
    """Each refusal above is a `security.event` (rate-limited per address upstream, so the
    recorded ones are the expected ones in order, possibly with the later ones held back),
    with the charger id where the agent knew it and the remote address; no key material."""
    if not EXPECTED_SECURITY_EVENTS:
        pytest.skip("no refusal ran in this session")
    recorded = [e for e in security_events(tls_site.db) if e.get("kind") != "charger_reported"]
    assert recorded, "no security.event recorded"
    got = [(e.get("kind"), e.get("cp_id")) for e in recorded]
    it = iter(EXPECTED_SECURITY_EVENTS)
    assert all(g in it for g in got), f"recorded {got}, expected a subsequence of {EXPECTED_SECURITY_EVENTS}"
    assert got[0] == EXPECTED_SECURITY_EVENTS[0], (got, EXPECTED_SECURITY_EVENTS)
    for e in recorded:
        # the handshake's refusals carry the address; csr_refused (from a CALL handler, which
        # does not have it) does not
        if e.get("kind") != "csr_refused":
            assert e.get("remote") == "127.0.0.1", e
        blob = json.dumps(e)
        assert "PRIVATE KEY" not in blob and "BEGIN CERTIFICATE" not in blob, e
        for role in ("p2", "p2b"):
            assert tls_site.charger(role)["password"] not in blob, e
