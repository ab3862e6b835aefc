"""chargesite driven by an independent OCPP 2.0.1 charging station: mobilityhouse `ocpp`
(`ocpp.v201.ChargePoint`).

The library validates every CALL it sends and every CALLRESULT it receives against the
official OCPP 2.0.1 JSON schemas that ship with it (`ocpp/v201/schemas`), so each
`cp.call(...)` below fails if the agent answers with a schema-invalid payload.

The agent (fixture `agent201`) runs with `free_vend = false` and an MQTT uplink: the test
plays the BPP (`bpp.Bpp`, PyPI `paho-mqtt`) and provisions each OTP with an
`authorization.upsert` command, waiting for its `cmd/result` `ok: true` before the charger
presents the OTP as an idToken of type `KeyCode`.

Every frame on the wire is recorded, so CALLERROR codes are checked as the agent spelled
them: OCPP-J 2.0.1 spells `FormatViolation` and `OccurrenceConstraintViolation` (1.6 had
`FormationViolation` and `OccurenceConstraintViolation`).
"""

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import random
import re
import sqlite3
import uuid

import pytest
import websockets
from websockets.asyncio.client import connect

from ocpp import exceptions as ocpp_exc
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result

from bpp import Bpp

OCPP201 = "ocpp2.0.1"
OCPP16 = "ocpp1.6"
TIMEOUT = 10
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# the 1.6 spellings must never appear on a 2.0.1 connection
SPELLINGS_16 = {"FormationViolation", "OccurenceConstraintViolation"}


# --------------------------------------------------------------------------- helpers


def ts(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_ts(s):
    t = dt.datetime.fromisoformat(s)
    assert t.tzinfo is not None, f"timestamp without offset: {s!r}"
    return t


def now():
    return dt.datetime.now(dt.timezone.utc)


def minutes(t, m):
    return t + dt.timedelta(minutes=m)


def new_cp_id(tag):
    return f"PY201-{tag}-{uuid.uuid4().hex[:8]}"


def new_otp():
    return str(random.SystemRandom().randrange(10_000_000, 100_000_000))  # 8 digits


def other_otp(otp):
    while True:
        wrong = new_otp()
        if wrong != otp:
            return wrong


def key_code(otp):
    return {"idToken": otp, "type": "KeyCode"}


class Wire:
    """The websocket as the library sees it, with every text frame recorded."""

    def __init__(self, ws):
        self.ws = ws
        self.sent = []
        self.received = []

    async def send(self, message):
        self.sent.append(message)
        await self.ws.send(message)

    async def recv(self):
        message = await self.ws.recv()
        self.received.append(message)
        return message

    def answer_to(self, unique_id):
        for raw in self.received:
            frame = json.loads(raw)
            if isinstance(frame, list) and len(frame) >= 2 and frame[1] == unique_id and frame[0] in (3, 4):
                return frame
        raise AssertionError(f"no answer to {unique_id!r} on the wire; received {self.received}")

    def call_errors(self):
        return [f for f in map(json.loads, self.received) if f[0] == 4]


class Station(ChargePoint):
    """A plain OCPP 2.0.1 charging station; the library routes answers to `call()`, and
    validates the central system's CALLs against the 2.0.1 request schemas before a
    handler sees them (and its answers against the response schemas)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.stop_requests = []
        self.status_requests = []

    @on("GetTransactionStatus")
    def on_get_transaction_status(self, **kwargs):
        self.status_requests.append(kwargs)
        return call_result.GetTransactionStatus(messages_in_queue=False, ongoing_indicator=True)

    @on("RequestStopTransaction")
    def on_request_stop_transaction(self, transaction_id, **kwargs):
        self.stop_requests.append({"transaction_id": transaction_id, **kwargs})
        return call_result.RequestStopTransaction(status="Accepted")


@contextlib.asynccontextmanager
async def station(agent, cp_id, station_class=None, **connect_kwargs):
    """`connect_kwargs` go to `websockets` `connect` as they are (test_tls.py: `ssl`, and
    `additional_headers` for Basic auth); `station_class` defaults to `Station`."""
    async with connect(agent.url(cp_id), subprotocols=[OCPP201], open_timeout=TIMEOUT, **connect_kwargs) as ws:
        assert ws.subprotocol == OCPP201, f"agent negotiated {ws.subprotocol!r}"
        wire = Wire(ws)
        cp = (station_class or Station)(cp_id, wire, response_timeout=TIMEOUT)
        reader = asyncio.create_task(cp.start())
        try:
            yield cp, wire
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


async def raw_call(cp, wire, unique_id, text):
    async with cp._call_lock:
        await wire.send(text)
        parsed = await cp._get_specific_response(unique_id, TIMEOUT)
    return parsed, wire.answer_to(unique_id)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


def events(db, types, session_id=None):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        marks = ",".join("?" * len(types))
        rows = con.execute(
            f"SELECT seq, type, at, body FROM events WHERE type IN ({marks}) ORDER BY seq", list(types)
        ).fetchall()
    finally:
        con.close()
    out = []
    for seq, typ, at, body in rows:
        b = json.loads(body)
        if session_id is None or b.get("session_id") == session_id:
            out.append({"seq": seq, "type": typ, "at": at, **b})
    return out


def session_started(db, cp_id, transaction_id):
    found = [
        e
        for e in events(db, ["session.started"])
        if e.get("cp_id") == cp_id and e.get("transaction_id") == transaction_id
    ]
    assert len(found) == 1, f"expected one session.started for {cp_id}/{transaction_id!r}, got {found}"
    return found[0]


def session_events(db, sid):
    return events(db, ["session.started", "session.meter", "session.stopped", "session.interrupted", "session.resumed"], sid)


def samples_of(db, sid):
    return [s for e in events(db, ["session.meter"], sid) for s in e["samples"]]


def sv(value, measurand=None, unit=None, phase=None, context="Sample.Periodic", location=None, multiplier=None):
    v = {"value": value, "context": context}
    if measurand:
        v["measurand"] = measurand
    if unit is not None or multiplier is not None:
        v["unitOfMeasure"] = {k: x for k, x in (("unit", unit), ("multiplier", multiplier)) if x is not None}
    if phase:
        v["phase"] = phase
    if location:
        v["location"] = location
    return v


def register(wh, context="Sample.Periodic"):
    return sv(wh, "Energy.Active.Import.Register", "Wh", context=context)


def tx_event(event_type, seq_no, t, tx_id, trigger, meter=None, **extra):
    """A TransactionEvent; `meter` is a list of sampledValues read at `t`."""
    info = {"transactionId": tx_id}
    info.update(extra.pop("info", {}))
    return call.TransactionEvent(
        event_type=event_type,
        timestamp=ts(t),
        trigger_reason=trigger,
        seq_no=seq_no,
        transaction_info=info,
        meter_value=[{"timestamp": ts(t), "sampledValue": meter}] if meter else None,
        **extra,
    )


async def boot(cp, model="PyOCPP-201", serial="SN-PY201-0001"):
    res = await cp.call(
        call.BootNotification(
            charging_station={
                "model": model,
                "vendorName": "InteropVendor",
                "serialNumber": serial,
                "firmwareVersion": "2.1.0",
            },
            reason="PowerUp",
        ),
        suppress=False,
    )
    assert isinstance(res, call_result.BootNotification)
    return res


@pytest.fixture(scope="module")
def bpp(agent201):
    b = Bpp(*agent201.mqtt, agent201.site)
    try:
        b.wait_online()
        yield b
    finally:
        b.close()


def provision(bpp, cp_id, otp=None, **extra):
    """An OTP for `cp_id` EVSE 1, provisioned over MQTT; returns (otp, order_id)."""
    otp = otp or new_otp()
    order = f"order-{uuid.uuid4().hex[:10]}"
    res = bpp.upsert_otp(order, otp, cp_id, 1, **extra)
    assert res.get("ok") is True, f"authorization.upsert refused: {res}"
    return otp, order


# --------------------------------------------------------------------------- handshake


@pytest.mark.parametrize(
    "offered",
    [[OCPP201], [OCPP201, OCPP16], [OCPP16, OCPP201]],
    ids=["2.0.1-only", "2.0.1-then-1.6", "1.6-then-2.0.1"],
)
def test_handshake_negotiates_ocpp201(agent201, offered):
    """CONTRACT 3: `ocpp2.0.1` when offered, also next to `ocpp1.6` in either order."""

    async def go():
        async with connect(agent201.url(new_cp_id("hs")), subprotocols=offered) as ws:
            assert ws.subprotocol == OCPP201
            # and the connection is usable as 2.0.1
            cp = Station("hs", Wire(ws), response_timeout=TIMEOUT)
            reader = asyncio.create_task(cp.start())
            try:
                hb = await cp.call(call.Heartbeat(), suppress=False)
                assert hb.current_time
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                    await reader

    run(go())


def test_handshake_without_subprotocol_is_completed_then_closed(agent201):
    """OCPP-J (2.0.1 Part 4, 3.1.2 and 1.6 4.1.2): a charger offering no subprotocol is not
    guessed at: the handshake completes without a Sec-WebSocket-Protocol header and the
    central system closes the connection. (The agent guesses 1.6 only with
    `[ocpp] assume_subprotocol = "ocpp1.6"`, which this agent does not set.)"""

    async def go():
        async with connect(agent201.url(new_cp_id("nosub")), open_timeout=TIMEOUT) as ws:
            assert ws.subprotocol is None
            assert ws.response.headers.get("Sec-WebSocket-Protocol") is None
            with pytest.raises(websockets.ConnectionClosed):
                # nothing may come but the close; a Heartbeat is not answered
                await ws.send('[2,"nosub-1","Heartbeat",{}]')
                while True:
                    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
                    assert json.loads(frame)[1] != "nosub-1", f"answered without a subprotocol: {frame}"

    run(go())


def test_control_schema_validation_is_active():
    """Control: against a fake CSMS that answers BootNotification without the required
    `interval`, the library must refuse the answer. Proves that the 2.0.1 CALLRESULT
    validation every other test relies on is switched on."""
    from websockets.asyncio.server import serve

    async def fake_csms(ws):
        async for raw in ws:
            _, uid, _, _ = json.loads(raw)
            await ws.send(json.dumps([3, uid, {"status": "Accepted", "currentTime": "2026-01-01T00:00:00.000Z"}]))

    async def go():
        async with serve(fake_csms, "127.0.0.1", 0, subprotocols=[OCPP201]) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/ocpp/CONTROL", subprotocols=[OCPP201]) as ws:
                assert ws.subprotocol == OCPP201
                cp = Station("CONTROL", Wire(ws), response_timeout=TIMEOUT)
                reader = asyncio.create_task(cp.start())
                try:
                    # the library maps a missing required field to ProtocolError (see README)
                    with pytest.raises(ocpp_exc.ProtocolError):
                        await boot(cp)
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                        await reader

    run(go())


def test_control_inbound_call_validation_is_active():
    """Control for the reverse direction: a fake CSMS sends a RequestStopTransaction without
    the required `transactionId`; the library must refuse it with a CALLERROR before the
    handler runs. Proves that the validation the budget-stop test relies on is on."""
    from websockets.asyncio.server import serve

    got = []

    async def fake_csms(ws):
        await ws.send('[2,"ctl-1","RequestStopTransaction",{}]')
        got.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))

    async def go():
        async with serve(fake_csms, "127.0.0.1", 0, subprotocols=[OCPP201]) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/ocpp/CONTROL", subprotocols=[OCPP201]) as ws:
                cp = Station("CONTROL", Wire(ws), response_timeout=TIMEOUT)
                reader = asyncio.create_task(cp.start())
                try:
                    for _ in range(100):
                        if got:
                            break
                        await asyncio.sleep(0.05)
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                        await reader
                assert got and got[0][0] == 4 and got[0][1] == "ctl-1", got
                assert cp.stop_requests == [], cp.stop_requests

    run(go())


# --------------------------------------------------------------------------- a session with an OTP


def test_full_session_with_a_keycode_otp(agent201, bpp):
    cp_id = new_cp_id("flow")
    otp, order = provision(bpp, cp_id)
    tx_id = f"PYTX-{uuid.uuid4().hex[:12]}"

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            # BootNotification
            before = now()
            res = await boot(cp)
            assert res.status == "Accepted"
            assert RFC3339_MS_UTC.match(res.current_time), res.current_time
            assert abs((parse_ts(res.current_time) - before).total_seconds()) < 60, res.current_time
            assert isinstance(res.interval, int) and res.interval > 0

            # StatusNotification, Heartbeat
            r = await cp.call(
                call.StatusNotification(timestamp=ts(now()), connector_status="Available", evse_id=1, connector_id=1),
                suppress=False,
            )
            assert isinstance(r, call_result.StatusNotification)
            hb = await cp.call(call.Heartbeat(), suppress=False)
            assert abs((parse_ts(hb.current_time) - now()).total_seconds()) < 60

            # a wrong code is refused: the OTP really is checked (free_vend = false)
            bad = await cp.call(call.Authorize(id_token=key_code(other_otp(otp))), suppress=False)
            assert bad.id_token_info["status"] == "Invalid", bad

            # the right one is accepted, and Authorize does not use it up
            auth = await cp.call(call.Authorize(id_token=key_code(otp)), suppress=False)
            assert auth.id_token_info["status"] == "Accepted", auth

            await cp.call(
                call.StatusNotification(timestamp=ts(now()), connector_status="Occupied", evse_id=1, connector_id=1),
                suppress=False,
            )

            # Started, 30 minutes ago by the station's clock
            t0 = minutes(now(), -30)
            started_res = await cp.call(
                tx_event(
                    "Started", 0, t0, tx_id, "Authorized",
                    meter=[register(1000, "Transaction.Begin")],
                    info={"chargingState": "Charging"},
                    evse={"id": 1, "connectorId": 1},
                    id_token=key_code(otp),
                ),
                suppress=False,
            )
            assert isinstance(started_res, call_result.TransactionEvent)
            assert started_res.id_token_info and started_res.id_token_info["status"] == "Accepted", started_res
            # durable before acknowledged
            started = session_started(agent201.db, cp_id, tx_id)
            sid = started["session_id"]
            assert started["evse_id"] == 1, started
            assert started["meter_start_wh"] == 1000, started
            assert started["auth_method"] == "otp", started
            assert started["order_id"] == order, started
            assert parse_ts(started["started_at"]) == parse_ts(ts(t0)), started

            # Updated: three-phase readings, register in Wh
            await cp.call(
                tx_event(
                    "Updated", 1, minutes(t0, 10), tx_id, "MeterValuePeriodic",
                    meter=[
                        sv(2500, "Energy.Active.Import.Register", "Wh", location="Outlet"),
                        sv(11000, "Power.Active.Import", "W"),
                        sv(16.0, "Current.Import", "A", "L1"),
                        sv(16.2, "Current.Import", "A", "L2"),
                        sv(15.8, "Current.Import", "A", "L3"),
                        sv(230.1, "Voltage", "V", "L1-N"),
                        sv(229.9, "Voltage", "V", "L2-N"),
                        sv(230.0, "Voltage", "V", "L3-N"),
                        sv(40, "SoC", "Percent", location="EV"),
                    ],
                ),
                suppress=False,
            )
            # Updated: register in kWh, power as W with a unitOfMeasure multiplier of 3
            await cp.call(
                tx_event(
                    "Updated", 2, minutes(t0, 20), tx_id, "MeterValuePeriodic",
                    meter=[
                        sv(4.2, "Energy.Active.Import.Register", "kWh"),
                        sv(10.5, "Power.Active.Import", "W", multiplier=3),
                        sv(55, "SoC", "Percent", location="EV"),
                    ],
                ),
                suppress=False,
            )
            samples = samples_of(agent201.db, sid)
            s1 = next((s for s in samples if s.get("energy_wh") == 2500), None)
            assert s1, samples
            assert s1["power_w"] == 11000, s1
            assert s1["current_a"] == pytest.approx(16.0, abs=0.01), s1  # mean of the phases
            assert s1["voltage_v"] == pytest.approx(230.0, abs=0.01), s1
            assert s1["soc_pct"] == pytest.approx(40), s1
            s2 = next((s for s in samples if s.get("energy_wh") == 4200), None)
            assert s2, samples
            assert s2["power_w"] == 10500, s2
            assert s2["soc_pct"] == pytest.approx(55), s2

            # Ended
            t1 = minutes(t0, 30)
            ended = await cp.call(
                tx_event(
                    "Ended", 3, t1, tx_id, "EVDeparted",
                    meter=[register(5200, "Transaction.End")],
                    info={"chargingState": "Idle", "stoppedReason": "EVDisconnected"},
                ),
                suppress=False,
            )
            assert isinstance(ended, call_result.TransactionEvent)
            stopped = events(agent201.db, ["session.stopped"], sid)
            assert len(stopped) == 1, stopped
            st = stopped[0]
            assert st["energy_wh"] == 4200, st
            assert st["meter_stop_wh"] == 5200, st
            assert st["reason"] == "EVDisconnected", st
            assert parse_ts(st["stopped_at"]) == parse_ts(ts(t1)), st

            seqs = [e["seq"] for e in session_events(agent201.db, sid)]
            assert seqs == sorted(seqs) and seqs[0] == started["seq"] and seqs[-1] == st["seq"], seqs

            # a single-use OTP is used up by the session it started
            again = await cp.call(call.Authorize(id_token=key_code(otp)), suppress=False)
            assert again.id_token_info["status"] != "Accepted", again

            assert not wire.call_errors(), wire.received

        connected = [e for e in events(agent201.db, ["charger.connected"]) if e.get("cp_id") == cp_id]
        assert connected and connected[0]["ocpp_version"] == "2.0.1", connected
        booted = [e for e in events(agent201.db, ["charger.booted"]) if e.get("cp_id") == cp_id]
        assert booted and booted[0]["vendor"] == "InteropVendor" and booted[0]["model"] == "PyOCPP-201", booted
        checked = [e for e in events(agent201.db, ["auth.checked"]) if e.get("cp_id") == cp_id]
        results = [(e.get("method"), e.get("result")) for e in checked]
        assert ("otp", "invalid") in results and ("otp", "accepted") in results, checked
        # CONTRACT: the OTP itself is never in an event
        con = sqlite3.connect(f"file:{agent201.db}?mode=ro", uri=True, timeout=10)
        try:
            leaked = con.execute("SELECT seq, type FROM events WHERE instr(body, ?) > 0", (otp,)).fetchall()
        finally:
            con.close()
        assert not leaked, f"the OTP appears in events {leaked}"

    run(go())


def test_cable_first_then_the_otp(agent201, bpp):
    """The common 2.0.1 order: the cable is plugged in first (Started, CablePluggedIn, no
    idToken), the driver then types the OTP (Updated,
    Authorized, idToken KeyCode), charging follows. The session is the OTP's."""
    cp_id = new_cp_id("cable")
    otp, order = provision(bpp, cp_id)
    tx_id = f"PYTX-CABLE-{uuid.uuid4().hex[:8]}"
    t0 = minutes(now(), -20)

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            await boot(cp)
            started = await cp.call(
                tx_event("Started", 0, t0, tx_id, "CablePluggedIn", meter=[register(30_000, "Transaction.Begin")],
                         info={"chargingState": "EVConnected"}, evse={"id": 1, "connectorId": 1}),
                suppress=False,
            )
            assert isinstance(started, call_result.TransactionEvent)
            auth = await cp.call(
                tx_event("Updated", 1, minutes(t0, 1), tx_id, "Authorized", info={"chargingState": "Charging"},
                         id_token=key_code(otp)),
                suppress=False,
            )
            assert auth.id_token_info and auth.id_token_info["status"] == "Accepted", auth
            await cp.call(tx_event("Updated", 2, minutes(t0, 10), tx_id, "MeterValuePeriodic", meter=[register(31_000)]),
                          suppress=False)
            await cp.call(
                tx_event("Ended", 3, minutes(t0, 19), tx_id, "EVDeparted", meter=[register(32_000, "Transaction.End")],
                         info={"chargingState": "Idle", "stoppedReason": "EVDisconnected"}),
                suppress=False,
            )
            assert not wire.call_errors(), wire.received

        st = session_started(agent201.db, cp_id, tx_id)
        assert st["order_id"] == order and st["auth_method"] == "otp", st
        assert st["meter_start_wh"] == 30_000, st
        stopped = events(agent201.db, ["session.stopped"], st["session_id"])
        assert len(stopped) == 1 and stopped[0]["energy_wh"] == 2000, stopped

    run(go())


def test_readings_real_stations_send(agent201, bpp):
    """Shapes the schema allows and three-phase stations do send: a timestamp with a UTC
    offset and no fraction, `numberOfPhasesUsed`/`cableMaxCurrent`, per-phase energy
    registers beside the total (the total is the register, not their sum nor a phase), an
    export register, a signed meter value, two meterValue entries in one event, and an
    Ended that carries no meterValue (energy from the last register)."""
    cp_id = new_cp_id("shapes")
    otp, _ = provision(bpp, cp_id)
    tx_id = f"PYTX-SHAPES-{uuid.uuid4().hex[:8]}"
    day = (now() - dt.timedelta(days=1)).date().isoformat()

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            await boot(cp)
            res = await cp.call(
                call.TransactionEvent(
                    event_type="Started", timestamp=f"{day}T10:00:00+05:30", trigger_reason="Authorized", seq_no=0,
                    transaction_info={"transactionId": tx_id, "chargingState": "Charging"},
                    meter_value=[{"timestamp": f"{day}T10:00:00+05:30", "sampledValue": [register(40_000, "Transaction.Begin")]}],
                    evse={"id": 1, "connectorId": 1}, id_token=key_code(otp), number_of_phases_used=3, cable_max_current=32,
                ),
                suppress=False,
            )
            assert res.id_token_info["status"] == "Accepted", res
            await cp.call(
                tx_event("Updated", 1, dt.datetime.fromisoformat(f"{day}T04:40:00+00:00"), tx_id, "MeterValuePeriodic", meter=[
                    sv(41_200, "Energy.Active.Import.Register", "Wh"),
                    sv(13_700, "Energy.Active.Import.Register", "Wh", "L1"),
                    sv(13_700, "Energy.Active.Import.Register", "Wh", "L2"),
                    sv(13_800, "Energy.Active.Import.Register", "Wh", "L3"),
                    sv(5, "Energy.Active.Export.Register", "Wh"),
                    dict(sv(41_200, "Energy.Active.Import.Register", "Wh", location="Outlet"), signedMeterValue={
                        "signedMeterData": "AAECAw==", "signingMethod": "ECDSA-secp256r1-SHA256",
                        "encodingMethod": "OCMF", "publicKey": "BAQEBA=="}),
                ]),
                suppress=False,
            )
            t2, t3 = (dt.datetime.fromisoformat(f"{day}T04:{m}:00+00:00") for m in (50, 55))
            await cp.call(
                call.TransactionEvent(
                    event_type="Updated", timestamp=ts(t3), trigger_reason="MeterValuePeriodic", seq_no=2,
                    transaction_info={"transactionId": tx_id},
                    meter_value=[
                        {"timestamp": ts(t2), "sampledValue": [register(41_800)]},
                        {"timestamp": ts(t3), "sampledValue": [register(42_100)]},
                    ],
                ),
                suppress=False,
            )
            await cp.call(
                call.TransactionEvent(
                    event_type="Ended", timestamp=f"{day}T04:59:00Z", trigger_reason="EVDeparted", seq_no=3,
                    transaction_info={"transactionId": tx_id, "stoppedReason": "EVDisconnected"},
                ),
                suppress=False,
            )
            assert not wire.call_errors(), wire.received

        st = session_started(agent201.db, cp_id, tx_id)
        assert st["started_at"] == f"{day}T04:30:00.000Z", st
        energies = [x.get("energy_wh") for x in samples_of(agent201.db, st["session_id"])]
        assert 41_200 in energies and 41_800 in energies and 42_100 in energies, energies
        assert not {13_700, 13_800, 5} & set(energies), f"a phase or export register taken as the total: {energies}"
        stopped = events(agent201.db, ["session.stopped"], st["session_id"])
        assert len(stopped) == 1, stopped
        assert stopped[0]["energy_wh"] == 2100, stopped
        assert stopped[0]["stopped_at"] == f"{day}T04:59:00.000Z", stopped

    run(go())


def test_two_transactions_each_from_seqno_0(agent201, bpp):
    """seqNo counts per transaction: the second transaction on the same EVSE starts at 0
    again and must not be taken for replays of the first."""
    cp_id = new_cp_id("twotx")
    t0 = minutes(now(), -60)

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            await boot(cp)
            for n, base in ((0, 50_000), (1, 51_000)):
                otp, _ = provision(bpp, cp_id)
                tx = f"PYTX-TWO{n}-{uuid.uuid4().hex[:8]}"
                t = minutes(t0, 30 * n)
                await cp.call(tx_event("Started", 0, t, tx, "Authorized", meter=[register(base, "Transaction.Begin")],
                                       info={"chargingState": "Charging"}, evse={"id": 1, "connectorId": 1},
                                       id_token=key_code(otp)), suppress=False)
                await cp.call(tx_event("Updated", 1, minutes(t, 10), tx, "MeterValuePeriodic", meter=[register(base + 400)]),
                              suppress=False)
                await cp.call(tx_event("Ended", 2, minutes(t, 20), tx, "EVDeparted", meter=[register(base + 700, "Transaction.End")],
                                       info={"stoppedReason": "EVDisconnected"}), suppress=False)
                st = session_started(agent201.db, cp_id, tx)
                stopped = events(agent201.db, ["session.stopped"], st["session_id"])
                assert len(stopped) == 1 and stopped[0]["energy_wh"] == 700, (n, stopped)
                assert 400 + base in [x.get("energy_wh") for x in samples_of(agent201.db, st["session_id"])]
            assert not wire.call_errors(), wire.received

    run(go())


def test_events_for_a_transaction_the_agent_never_saw(agent201):
    """A station whose Started the agent never got (another CSMS, a lost database): its
    schema-valid Updated and Ended are still acknowledged (never a CALLERROR, or the station
    retries them forever and stalls its queue)."""
    cp_id = new_cp_id("orphan")
    tx_id = f"PYTX-ORPHAN-{uuid.uuid4().hex[:8]}"
    t0 = minutes(now(), -15)

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            await boot(cp)
            for ev in (
                tx_event("Updated", 5, t0, tx_id, "MeterValuePeriodic", meter=[register(7_000)]),
                tx_event("Ended", 6, minutes(t0, 5), tx_id, "EVDeparted", meter=[register(7_500, "Transaction.End")],
                         info={"stoppedReason": "EVDisconnected"}),
            ):
                res = await cp.call(ev, suppress=False)
                assert isinstance(res, call_result.TransactionEvent)
            assert not wire.call_errors(), wire.received

    run(go())


def test_otp_scope_revocation_and_lockout(agent201, bpp):
    """CONTRACT OTP rules on 2.0.1: an OTP works only on its charger and EVSE, not after
    `authorization.revoke`, and five wrong codes lock OTP entry on that charger (the right
    code is then refused too, reported as `blocked`)."""
    cp_a, cp_b, cp_lock = new_cp_id("scopeA"), new_cp_id("scopeB"), new_cp_id("lock")
    otp, order = provision(bpp, cp_a)
    revoked, revoked_order = provision(bpp, cp_a)
    lock_otp, _ = provision(bpp, cp_lock)

    async def go():
        async with station(agent201, cp_b) as (cp, _):
            r = await cp.call(call.Authorize(id_token=key_code(otp)), suppress=False)
            assert r.id_token_info["status"] != "Accepted", f"another charger's OTP accepted: {r}"
        async with station(agent201, cp_a) as (cp, wire):
            started = await cp.call(
                tx_event("Started", 0, now(), f"PYTX-EVSE2-{uuid.uuid4().hex[:6]}", "Authorized",
                         meter=[register(1, "Transaction.Begin")], evse={"id": 2, "connectorId": 1}, id_token=key_code(otp)),
                suppress=False,
            )
            assert started.id_token_info["status"] != "Accepted", f"EVSE 1's OTP accepted on EVSE 2: {started}"
            res = await asyncio.to_thread(
                bpp.command, {"id": f"revoke-{uuid.uuid4().hex[:8]}", "type": "authorization.revoke", "order_id": revoked_order}
            )
            assert res.get("ok") is True, res
            r = await cp.call(call.Authorize(id_token=key_code(revoked)), suppress=False)
            assert r.id_token_info["status"] != "Accepted", f"a revoked OTP accepted: {r}"
            r = await cp.call(call.Authorize(id_token=key_code(otp)), suppress=False)
            assert r.id_token_info["status"] == "Accepted", r
            assert not wire.call_errors(), wire.received
        async with station(agent201, cp_lock) as (cp, wire):
            for _ in range(5):
                r = await cp.call(call.Authorize(id_token=key_code(other_otp(lock_otp))), suppress=False)
                assert r.id_token_info["status"] != "Accepted", r
            r = await cp.call(call.Authorize(id_token=key_code(lock_otp)), suppress=False)
            assert r.id_token_info["status"] != "Accepted", f"accepted while locked out: {r}"
            assert not wire.call_errors(), wire.received
        results = [e.get("result") for e in events(agent201.db, ["auth.checked"]) if e.get("cp_id") == cp_lock]
        assert results[-1] == "blocked", results

    run(go())


def test_connector_status_reaches_the_retained_topic(agent201, bpp):
    """StatusNotification and NotifyEvent (AvailabilityState) of a 2.0.1 station become the
    retained `<root>/connectors/<cp_id>/<evse_id>` topic (CONTRACT §4), with the EVSE's
    connectors listed."""
    cp_id = new_cp_id("status")
    topic = f"{bpp.root}/connectors/{cp_id}/1"

    def seen(status):
        return bpp.wait_for(
            f"{topic} {status}",
            lambda t, b: t == topic and isinstance(b, dict) and b.get("status") == status,
        )

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            await boot(cp)
            await cp.call(call.StatusNotification(timestamp=ts(now()), connector_status="Occupied", evse_id=1, connector_id=1),
                          suppress=False)
            body = await asyncio.to_thread(seen, "Occupied")
            assert body.get("charger_online") is True, body
            assert {"connector_id": 1, "status": "Occupied"} in body.get("connectors", []), body
            await cp.call(
                _payload("NotifyEvent", {"generatedAt": ts(now()), "seqNo": 0, "tbc": False, "eventData": [{
                    "eventId": 7, "timestamp": ts(now()), "trigger": "Delta", "actualValue": "Unavailable",
                    "eventNotificationType": "HardWiredNotification",
                    "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 1}},
                    "variable": {"name": "AvailabilityState"}}]}),
                suppress=False,
            )
            body = await asyncio.to_thread(seen, "Unavailable")
            assert {"connector_id": 1, "status": "Unavailable"} in body.get("connectors", []), body
            assert not wire.call_errors(), wire.received

    run(go())


def test_reconnect_with_an_open_transaction(agent201, bpp):
    """A station that loses its connection mid-transaction and reconnects without a
    BootNotification carries on (CONTRACT §3); the agent asks it for the transaction's
    status with GetTransactionStatus (issue 9: "for an open transaction after a
    reconnect"), which the library validates before its handler answers; the session shows
    the interruption and is billed as one."""
    cp_id = new_cp_id("recon")
    otp, _ = provision(bpp, cp_id)
    tx_id = f"PYTX-RECON-{uuid.uuid4().hex[:8]}"
    t0 = minutes(now(), -20)

    async def go():
        async with station(agent201, cp_id) as (cp, _):
            await boot(cp)
            await cp.call(tx_event("Started", 0, t0, tx_id, "Authorized", meter=[register(70_000, "Transaction.Begin")],
                                   info={"chargingState": "Charging"}, evse={"id": 1, "connectorId": 1},
                                   id_token=key_code(otp)), suppress=False)
        async with station(agent201, cp_id) as (cp, wire):
            for _ in range(100):
                if cp.status_requests:
                    break
                await asyncio.sleep(0.1)
            agent_calls = [f for f in map(json.loads, wire.received) if f[0] == 2]
            refused = [f for f in map(json.loads, wire.sent) if f[0] == 4]
            assert not refused, f"the station refused the agent's CALLs {agent_calls}: {refused}"
            await cp.call(tx_event("Updated", 1, minutes(t0, 10), tx_id, "MeterValuePeriodic", meter=[register(70_900)]),
                          suppress=False)
            await cp.call(tx_event("Ended", 2, minutes(t0, 19), tx_id, "EVDeparted", meter=[register(71_500, "Transaction.End")],
                                   info={"stoppedReason": "EVDisconnected"}), suppress=False)
            assert not wire.call_errors(), wire.received
            sid = session_started(agent201.db, cp_id, tx_id)["session_id"]
            stopped = events(agent201.db, ["session.stopped"], sid)
            assert len(stopped) == 1 and stopped[0]["energy_wh"] == 1500, stopped
            kinds = [e["type"] for e in events(agent201.db, ["session.interrupted", "session.resumed"], sid)]
            assert kinds == ["session.interrupted", "session.resumed"], kinds
            assert cp.status_requests == [{"transaction_id": tx_id}], f"no GetTransactionStatus for {tx_id}; the agent sent {agent_calls}"

    run(go())


# --------------------------------------------------------------------------- offline replay


def test_offline_replay_with_a_duplicated_seqno(agent201, bpp):
    """A station that charged while offline replays its queued TransactionEvents with
    `offline: true` and their own (older) timestamps; one of them is sent twice with the
    same seqNo (the station did not see the first answer). Every one is acknowledged, the
    duplicate changes nothing, and the session is billed on the metered energy."""
    cp_id = new_cp_id("offline")
    otp, order = provision(bpp, cp_id)
    tx_id = f"PYTX-OFF-{uuid.uuid4().hex[:8]}"
    t0 = minutes(now(), -120)

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            await boot(cp)
            queued = [
                tx_event("Started", 0, t0, tx_id, "Authorized", meter=[register(10_000, "Transaction.Begin")],
                         info={"chargingState": "Charging"}, evse={"id": 1, "connectorId": 1},
                         id_token=key_code(otp), offline=True),
                # the EVSE is given by the first event only
                tx_event("Updated", 1, minutes(t0, 10), tx_id, "MeterValuePeriodic", meter=[register(11_000)], offline=True),
                tx_event("Updated", 1, minutes(t0, 10), tx_id, "MeterValuePeriodic", meter=[register(11_000)], offline=True),
                tx_event("Updated", 2, minutes(t0, 20), tx_id, "MeterValuePeriodic", meter=[register(12_500)], offline=True),
                tx_event("Ended", 3, minutes(t0, 30), tx_id, "StopAuthorized", meter=[register(13_000, "Transaction.End")],
                         info={"chargingState": "EVConnected", "stoppedReason": "Local"}, offline=True),
            ]
            for ev in queued:
                res = await cp.call(ev, suppress=False)
                assert isinstance(res, call_result.TransactionEvent)
            assert not wire.call_errors(), wire.received

        started = session_started(agent201.db, cp_id, tx_id)
        sid = started["session_id"]
        assert started["meter_start_wh"] == 10_000, started
        assert started["order_id"] == order, started
        assert started["evse_id"] == 1, started
        assert parse_ts(started["started_at"]) == parse_ts(ts(t0)), started
        samples = samples_of(agent201.db, sid)
        assert [s.get("energy_wh") for s in samples].count(11_000) == 1, f"duplicate seqNo counted twice: {samples}"
        assert [s.get("energy_wh") for s in samples].count(12_500) == 1, samples
        stopped = events(agent201.db, ["session.stopped"], sid)
        assert len(stopped) == 1, stopped
        assert stopped[0]["energy_wh"] == 3000, stopped
        assert stopped[0]["meter_stop_wh"] == 13_000, stopped
        assert parse_ts(stopped[0]["stopped_at"]) == parse_ts(ts(minutes(t0, 30))), stopped
        assert len(events(agent201.db, ["session.started"], sid)) == 1

    run(go())


# --------------------------------------------------------------------------- late event after Ended


TARIFF = {"currency": "INR", "energy_minor_per_kwh": 1800, "service_fee_minor": 0, "timezone": "Asia/Kolkata"}


def test_late_event_after_ended_changes_nothing(agent201, bpp):
    """`Ended` is final: an Updated with a higher seqNo that arrives after it (and a replay
    of the Ended itself) is acknowledged and never applied: one session.stopped, the same
    energy and cost, no session event after it."""
    cp_id = new_cp_id("late")
    otp, _ = provision(bpp, cp_id, tariff=TARIFF)
    tx_id = f"PYTX-LATE-{uuid.uuid4().hex[:8]}"
    t0 = minutes(now(), -40)

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            await boot(cp)
            await cp.call(
                tx_event("Started", 0, t0, tx_id, "Authorized", meter=[register(20_000, "Transaction.Begin")],
                         info={"chargingState": "Charging"}, evse={"id": 1, "connectorId": 1}, id_token=key_code(otp)),
                suppress=False,
            )
            await cp.call(tx_event("Updated", 1, minutes(t0, 10), tx_id, "MeterValuePeriodic", meter=[register(20_800)]),
                          suppress=False)
            ended_event = tx_event("Ended", 2, minutes(t0, 20), tx_id, "EVDeparted", meter=[register(21_500, "Transaction.End")],
                                   info={"chargingState": "Idle", "stoppedReason": "EVDisconnected"})
            ended = await cp.call(ended_event, suppress=False)
            sid = session_started(agent201.db, cp_id, tx_id)["session_id"]
            stopped = events(agent201.db, ["session.stopped"], sid)
            assert len(stopped) == 1, stopped
            before = stopped[0]
            assert before["energy_wh"] == 1500, before
            assert before.get("cost", {}).get("total_minor") == 2700, before  # 1.5 kWh at 18.00

            # the late Updated and a replayed Ended: acknowledged, schema-valid answers
            late = await cp.call(
                tx_event("Updated", 3, minutes(t0, 30), tx_id, "MeterValuePeriodic", meter=[register(22_500)]),
                suppress=False,
            )
            assert isinstance(late, call_result.TransactionEvent)
            again = await cp.call(ended_event, suppress=False)
            assert isinstance(again, call_result.TransactionEvent)
            assert not wire.call_errors(), wire.received

            stopped = events(agent201.db, ["session.stopped"], sid)
            assert stopped == [before], f"the session changed after Ended: {stopped}"
            after = [e for e in session_events(agent201.db, sid) if e["seq"] > before["seq"]]
            assert not after, f"session events after Ended: {after}"
            assert 22_500 not in [s.get("energy_wh") for s in samples_of(agent201.db, sid)]
            # "recorded, never applied": the agent's journal of TransactionEvents (schema 5)
            con = sqlite3.connect(f"file:{agent201.db}?mode=ro", uri=True, timeout=10)
            try:
                journal = con.execute(
                    "SELECT seq_no, event_type, applied FROM tx_events WHERE cp_id = ? AND charger_tx_id = ? ORDER BY seq_no",
                    (cp_id, tx_id),
                ).fetchall()
            finally:
                con.close()
            assert [(n, t, bool(a)) for n, t, a in journal] == [
                (0, "Started", True), (1, "Updated", True), (2, "Ended", True), (3, "Updated", False)
            ], journal

            # CONTRACT / issue 9: the Ended answer carries the cost when a tariff applies
            assert ended.total_cost == pytest.approx(27.0), ended

    run(go())


def test_session_stop_command_sends_request_stop_transaction(agent201, bpp):
    """The BPP's `session.stop` for a running 2.0.1 session: the agent sends
    RequestStopTransaction (validated by the library against the official request schema
    before the handler answers Accepted), the station ends the transaction (RemoteStop) and
    the session stops with reason Remote."""
    cp_id = new_cp_id("stop")
    otp, _ = provision(bpp, cp_id)
    tx_id = f"PYTX-STOP-{uuid.uuid4().hex[:8]}"
    t0 = minutes(now(), -10)

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            await boot(cp)
            await cp.call(tx_event("Started", 0, t0, tx_id, "Authorized", meter=[register(60_000, "Transaction.Begin")],
                                   info={"chargingState": "Charging"}, evse={"id": 1, "connectorId": 1},
                                   id_token=key_code(otp)), suppress=False)
            sid = session_started(agent201.db, cp_id, tx_id)["session_id"]
            result = await asyncio.to_thread(
                bpp.command, {"id": f"stop-{uuid.uuid4().hex[:8]}", "type": "session.stop", "session_id": sid}
            )
            assert result.get("ok") is True, (result, [f for f in wire.received if json.loads(f)[0] == 2])
            assert cp.stop_requests and cp.stop_requests[0]["transaction_id"] == tx_id, (cp.stop_requests, wire.received)
            await cp.call(tx_event("Ended", 1, now(), tx_id, "RemoteStop", meter=[register(61_000, "Transaction.End")],
                                   info={"chargingState": "EVConnected", "stoppedReason": "Remote"}), suppress=False)
            answers = [f for f in map(json.loads, wire.sent) if f[0] == 4]
            assert not answers, f"the station refused a CALL from the agent: {answers}"
            assert not wire.call_errors(), wire.received
        stopped = events(agent201.db, ["session.stopped"], sid)
        assert len(stopped) == 1 and stopped[0]["energy_wh"] == 1000 and stopped[0]["reason"] == "Remote", stopped

    run(go())


# --------------------------------------------------------------------------- the other station messages


def _at():
    return ts(now())


STATION_MESSAGES = [
    # (action, payload (camelCase), what the answer must contain); each CALL is validated by
    # the library against its 2.0.1 request schema, and the answer against its response schema
    ("MeterValues", lambda: {"evseId": 0, "meterValue": [{"timestamp": _at(), "sampledValue": [
        {"value": 99999, "context": "Sample.Clock", "measurand": "Energy.Active.Import.Register"}]}]}, {}),
    ("NotifyEvent", lambda: {"generatedAt": _at(), "seqNo": 0, "tbc": False, "eventData": [{
        "eventId": 1, "timestamp": _at(), "trigger": "Delta", "actualValue": "Unavailable",
        "eventNotificationType": "HardWiredNotification",
        "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 1}},
        "variable": {"name": "AvailabilityState"}}]}, {}),
    ("SecurityEventNotification", lambda: {"type": "StartupOfTheDevice", "timestamp": _at(), "techInfo": "interop"}, {}),
    ("NotifyReport", lambda: {"requestId": 1, "generatedAt": _at(), "seqNo": 0, "tbc": False, "reportData": [{
        "component": {"name": "ChargingStation"}, "variable": {"name": "Model"},
        "variableAttribute": [{"type": "Actual", "value": "PyOCPP-201", "mutability": "ReadOnly"}]}]}, {}),
    ("FirmwareStatusNotification", lambda: {"status": "Installed"}, {}),
    ("LogStatusNotification", lambda: {"status": "Idle"}, {}),
    ("DataTransfer", lambda: {"vendorId": "com.example.interop", "messageId": "ping", "data": "x"}, {"status": "UnknownVendorId"}),
    ("NotifyChargingLimit", lambda: {"chargingLimit": {"chargingLimitSource": "EMS"}}, {}),
    ("ClearedChargingLimit", lambda: {"chargingLimitSource": "EMS"}, {}),
    ("ReservationStatusUpdate", lambda: {"reservationId": 1, "reservationUpdateStatus": "Expired"}, {}),
    ("NotifyEVChargingNeeds", lambda: {"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase"}}, {}),
    ("NotifyDisplayMessages", lambda: {"requestId": 1}, {}),
    ("NotifyMonitoringReport", lambda: {"requestId": 1, "seqNo": 0, "generatedAt": _at()}, {}),
    ("NotifyCustomerInformation", lambda: {"data": "x", "seqNo": 0, "generatedAt": _at(), "requestId": 1}, {}),
    ("PublishFirmwareStatusNotification", lambda: {"status": "Idle"}, {}),
    ("StatusNotification", lambda: {"timestamp": _at(), "connectorStatus": "Unavailable", "evseId": 1, "connectorId": 2}, {}),
]


@pytest.mark.parametrize("action,payload,expected", STATION_MESSAGES, ids=[m[0] for m in STATION_MESSAGES])
def test_other_station_messages_get_schema_valid_answers(agent201, action, payload, expected):
    """Every other message a 2.0.1 station sends, schema-valid as the library checks it: a
    CALLRESULT that is valid against the official response schema, never a CALLERROR."""

    async def go():
        async with station(agent201, new_cp_id("msg")) as (cp, wire):
            await boot(cp)
            uid = f"msg-{action}"[:36]
            res = await cp.call(_payload(action, payload()), suppress=False, unique_id=uid)
            frame = wire.answer_to(uid)
            assert frame[0] == 3, f"agent answered {frame}"
            for k, v in expected.items():
                assert frame[2].get(k) == v, frame
            assert res is not None

    run(go())


@pytest.mark.parametrize(
    "action,payload",
    [
        ("GetCertificateStatus", {"ocspRequestData": {"hashAlgorithm": "SHA256", "issuerNameHash": "a" * 64,
                                                      "issuerKeyHash": "b" * 64, "serialNumber": "01", "responderURL": "http://ocsp.example"}}),
    ],
    ids=["GetCertificateStatus"],
)
def test_station_actions_not_built_yet_are_not_supported(agent201, action, payload):
    """2.0.1 actions the agent recognizes but does not support yet (certificates): OCPP-J
    2.0.1 says `NotSupported` ("recognized but not supported"), not `NotImplemented`."""

    async def go():
        async with station(agent201, new_cp_id("nyet")) as (cp, wire):
            uid = f"nyet-{action}"[:36]
            with pytest.raises(ocpp_exc.NotSupportedError):
                await cp.call(_payload(action, payload), suppress=False, unique_id=uid)
            assert wire.answer_to(uid)[2] == "NotSupported"

    run(go())


def test_sign_certificate_with_an_unreadable_csr_is_rejected(agent201):
    """SignCertificate is built now (security profile 3, b6144ac): a CSR that does not
    parse gets a schema-valid CALLRESULT `Rejected` (no CALLERROR) and a `security.event`
    `csr_refused`; nothing goes upstream as `charger.csr`. A CSR that names the charger is
    test_tls.py's."""
    cp_id = new_cp_id("csr")

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            res = await cp.call(
                call.SignCertificate(
                    csr="-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----",
                    certificate_type="ChargingStationCertificate",
                ),
                suppress=False,
            )
            assert res.status == "Rejected", res
            assert not wire.call_errors(), wire.received

    run(go())
    assert not [e for e in events(agent201.db, ["charger.csr"]) if e.get("cp_id") == cp_id]
    refused = [e for e in events(agent201.db, ["security.event"]) if e.get("cp_id") == cp_id]
    assert [e["kind"] for e in refused] == ["csr_refused"], refused


# --------------------------------------------------------------------------- budget stop


def test_budget_stop_by_request_stop_transaction(agent201, bpp):
    """The reverse direction: an OTP with a prepaid budget and a tariff; each answer carries
    the running `totalCost`; when the cost nears the budget the agent sends
    RequestStopTransaction, which the library validates against the official 2.0.1 request
    schema before the handler answers it; the station ends the transaction and the session
    stops with reason `BudgetReached` and a settlement."""
    cp_id = new_cp_id("budget")
    tariff = {"currency": "INR", "energy_minor_per_kwh": 1600, "service_fee_minor": 0, "timezone": "Asia/Kolkata"}
    otp, order = provision(bpp, cp_id, tariff=tariff, budget={"currency": "INR", "amount_minor": 5000})
    tx_id = f"PYTX-BUDGET-{uuid.uuid4().hex[:8]}"
    t0 = minutes(now(), -30)

    async def go():
        async with station(agent201, cp_id) as (cp, wire):
            await boot(cp)
            res = await cp.call(
                tx_event("Started", 0, t0, tx_id, "Authorized", meter=[register(10_000, "Transaction.Begin")],
                         info={"chargingState": "Charging"}, evse={"id": 1, "connectorId": 1}, id_token=key_code(otp)),
                suppress=False,
            )
            assert res.id_token_info["status"] == "Accepted", res
            costs = [res.total_cost]
            reg = 10_000
            seq = 0
            # 500 Wh a minute (30 kW): 16.00/kWh reaches the 50.00 budget at 3125 Wh
            while not cp.stop_requests and seq < 10:
                seq += 1
                reg += 500
                r = await cp.call(
                    tx_event("Updated", seq, minutes(t0, seq), tx_id, "MeterValuePeriodic", meter=[register(reg)]),
                    suppress=False,
                )
                costs.append(r.total_cost)
                await asyncio.sleep(0.3)  # room for the agent's RequestStopTransaction
            assert cp.stop_requests, f"no RequestStopTransaction by {reg - 10_000} Wh; totalCost {costs}"
            assert cp.stop_requests[0]["transaction_id"] == tx_id, cp.stop_requests
            assert reg - 10_000 <= 3125, f"stopped only at {reg - 10_000} Wh, past the budget"
            assert all(isinstance(c, (int, float)) for c in costs), f"totalCost missing: {costs}"
            assert costs == sorted(costs), f"the running cost went down: {costs}"
            assert costs[-1] == pytest.approx((reg - 10_000) * 1.6 / 100), costs

            seq += 1
            ended = await cp.call(
                tx_event("Ended", seq, minutes(t0, seq), tx_id, "RemoteStop", meter=[register(reg, "Transaction.End")],
                         info={"chargingState": "EVConnected", "stoppedReason": "Remote"}),
                suppress=False,
            )
            stop_frames = [f for f in map(json.loads, wire.received) if f[0] == 2 and f[2] == "RequestStopTransaction"]
            answers = [f for f in map(json.loads, wire.sent) if f[0] in (3, 4) and f[1] in {x[1] for x in stop_frames}]
            assert answers and all(f[0] == 3 for f in answers), f"the station refused the agent's CALL: {answers}"
            assert not wire.call_errors(), wire.received

        sid = session_started(agent201.db, cp_id, tx_id)["session_id"]
        stopped = events(agent201.db, ["session.stopped"], sid)
        assert len(stopped) == 1, stopped
        st = stopped[0]
        assert st["reason"] == "BudgetReached", st
        assert st["energy_wh"] == reg - 10_000, st
        total = round((reg - 10_000) * 1600 / 1000)
        assert st["cost"]["total_minor"] == total, st
        assert st["settlement"] == {"prepaid_minor": 5000, "charged_minor": total, "refund_minor": 5000 - total, "topup_minor": 0}, st
        assert ended.total_cost == pytest.approx(total / 100), ended

    run(go())


# --------------------------------------------------------------------------- CALLERRORs


@dataclasses.dataclass
class FrobnicateWidget:  # an action OCPP 2.0.1 does not have
    widget: str = "x"


@dataclasses.dataclass
class StartTransaction:  # a 1.6 action, not a 2.0.1 one
    connector_id: int = 1
    id_tag: str = "T"
    meter_start: int = 0
    timestamp: str = "2026-01-01T00:00:00.000Z"


@dataclasses.dataclass
class RequestStartTransaction:  # a CSMS -> station action, sent the wrong way
    id_token: dict = dataclasses.field(default_factory=lambda: {"idToken": "X", "type": "Central"})
    remote_start_id: int = 1


def _te(**overrides):
    base = {
        "event_type": "Updated",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "trigger_reason": "MeterValuePeriodic",
        "seq_no": 1,
        "transaction_info": {"transactionId": "ERR-TX"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _payload(name, fields):
    """An instance of a dataclass named `name` (the library takes the action from it)."""
    cls = dataclasses.make_dataclass(
        name, [(k, object, dataclasses.field(default_factory=lambda v=v: v)) for k, v in fields.items()]
    )
    return cls()


EITHER = ("OccurrenceConstraintViolation", "FormatViolation")

CALLERROR_CASES = [
    # (case id, payload, acceptable codes on the wire as OCPP-J 2.0.1 spells them)
    ("unknown-action", FrobnicateWidget(), ("NotImplemented",)),
    ("1.6-only-action", StartTransaction(), ("NotImplemented",)),
    ("csms-action-sent-by-station", RequestStartTransaction(), ("NotSupported",)),
    ("transactionevent-without-transactionInfo", _payload("TransactionEvent", _te(transaction_info=None)), EITHER),
    ("transactionevent-without-seqNo", _payload("TransactionEvent", _te(seq_no=None)), EITHER),
    ("bootnotification-without-model", _payload("BootNotification", {"charging_station": {"vendorName": "V"}, "reason": "PowerUp"}), EITHER),
    ("transactionevent-seqNo-string", _payload("TransactionEvent", _te(seq_no="1")), ("TypeConstraintViolation",)),
    ("transactionevent-eventType-not-in-enum", _payload("TransactionEvent", _te(event_type="Paused")), ("PropertyConstraintViolation",)),
    ("heartbeat-unknown-field", _payload("Heartbeat", {"bogus": 1}), ("FormatViolation",)),
]

EXC = {
    "NotImplemented": ocpp_exc.NotImplementedError,
    "NotSupported": ocpp_exc.NotSupportedError,
    "OccurrenceConstraintViolation": ocpp_exc.OccurrenceConstraintViolationError,
    "FormatViolation": ocpp_exc.FormatViolationError,
    "TypeConstraintViolation": ocpp_exc.TypeConstraintViolationError,
    "PropertyConstraintViolation": ocpp_exc.PropertyConstraintViolationError,
}


@pytest.mark.parametrize("case,payload,codes", CALLERROR_CASES, ids=[c[0] for c in CALLERROR_CASES])
def test_callerror_through_the_library(agent201, case, payload, codes):
    """Invalid CALLs sent with the library (its own validation skipped): the CALLERROR must
    be spelled as OCPP-J 2.0.1 spells it, and raised by the library as that code's class."""

    async def go():
        async with station(agent201, new_cp_id("err")) as (cp, wire):
            uid = f"e201-{case}"[:36]
            with pytest.raises(ocpp_exc.OCPPError) as e:
                await cp.call(payload, suppress=False, unique_id=uid, skip_schema_validation=True)
            frame = wire.answer_to(uid)
            assert frame[0] == 4 and len(frame) == 5, frame
            assert frame[2] not in SPELLINGS_16, f"1.6 spelling on a 2.0.1 connection: {frame}"
            assert frame[2] in codes, f"agent answered {frame}; OCPP-J 2.0.1: {' or '.join(codes)}"
            assert isinstance(frame[3], str) and isinstance(frame[4], dict)
            assert type(e.value) is EXC[frame[2]], f"library raised {type(e.value).__name__}"
            hb = await cp.call(call.Heartbeat(), suppress=False)
            assert hb.current_time

    run(go())


RAW_CASES = [
    # (case id, message id, raw text, acceptable codes on the wire)
    ("not-json", "r201-1", '[2,"r201-1","Heartbeat",{', ("RpcFrameworkError",)),
    ("call-with-5-elements", "r201-2", '[2,"r201-2","Heartbeat",{},{}]', ("RpcFrameworkError",)),
    ("unknown-message-type", "r201-3", '[5,"r201-3",{}]', ("MessageTypeNotSupported",)),
    ("payload-not-object", "r201-4", '[2,"r201-4","Heartbeat",[]]', ("FormatViolation",)),
    ("transactionevent-seqNo-float", "r201-5",
     '[2,"r201-5","TransactionEvent",{"eventType":"Updated","timestamp":"2026-01-01T00:00:00.000Z",'
     '"triggerReason":"MeterValuePeriodic","seqNo":1.5,"transactionInfo":{"transactionId":"RAW"}}]',
     ("TypeConstraintViolation",)),
    ("transactionevent-empty-sampledValue", "r201-6",
     '[2,"r201-6","TransactionEvent",{"eventType":"Updated","timestamp":"2026-01-01T00:00:00.000Z",'
     '"triggerReason":"MeterValuePeriodic","seqNo":1,"transactionInfo":{"transactionId":"RAW"},'
     '"meterValue":[{"timestamp":"2026-01-01T00:00:00.000Z","sampledValue":[]}]}]',
     EITHER),
    ("authorize-without-idToken-type", "r201-7", '[2,"r201-7","Authorize",{"idToken":{"idToken":"1234"}}]', EITHER),
]


@pytest.mark.parametrize("case,uid,text,codes", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_callerror_for_raw_frames(agent201, case, uid, text, codes):
    """Frames the library would never send, written straight to the websocket."""

    async def go():
        async with station(agent201, new_cp_id("raw")) as (cp, wire):
            parsed, frame = await raw_call(cp, wire, uid, text)
            assert frame[0] == 4 and frame[1] == uid and len(frame) == 5, frame
            assert frame[2] not in SPELLINGS_16, f"1.6 spelling on a 2.0.1 connection: {frame}"
            assert frame[2] in codes, f"agent answered {frame} to {text}; OCPP-J 2.0.1: {' or '.join(codes)}"
            if frame[2] in ("RpcFrameworkError", "MessageTypeNotSupported"):
                # ocpp 2.1.0 has no class for these two 2.0.1 codes (see README)
                with pytest.raises(ocpp_exc.UnknownCallErrorCodeError):
                    parsed.to_exception()
            else:
                assert parsed.to_exception().code == frame[2]
            hb = await cp.call(call.Heartbeat(), suppress=False)
            assert hb.current_time

    run(go())


# ----------------------------------------------------------- fleet cards on local lists


class ListStation(Station):
    """A station that keeps a local authorization list (LocalAuthListCtrlr, 2 items a
    message). The library validates the agent's GetLocalListVersion, GetVariables and
    SendLocalList against the 2.0.1 request schemas before these handlers see them."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.list_version = 0
        self.lists = []

    @on("GetLocalListVersion")
    def on_get_local_list_version(self, **kwargs):
        return call_result.GetLocalListVersion(version_number=self.list_version)

    @on("GetVariables")
    def on_get_variables(self, get_variable_data, **kwargs):
        return call_result.GetVariables(
            get_variable_result=[
                {"attribute_status": "Accepted", "attribute_value": "2",
                 "component": d["component"], "variable": d["variable"]}
                for d in get_variable_data
            ]
        )

    @on("SendLocalList")
    def on_send_local_list(self, version_number, update_type, local_authorization_list=None, **kwargs):
        self.lists.append({"version": version_number, "update_type": update_type,
                           "entries": local_authorization_list or []})
        self.list_version = version_number
        return call_result.SendLocalList(status="Accepted")


from ocpp.v16 import ChargePoint as ChargePoint16  # noqa: E402
from ocpp.v16 import call as call16  # noqa: E402
from ocpp.v16 import call_result as result16  # noqa: E402


class ListPoint16(ChargePoint16):
    """An OCPP 1.6 charge point with the LocalAuthListManagement profile, 2 entries a
    message; the library validates the agent's CALLs against the 1.6 schemas."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.list_version = 0
        self.lists = []

    @on("GetLocalListVersion")
    def on_get_local_list_version(self, **kwargs):
        return result16.GetLocalListVersion(list_version=self.list_version)

    @on("GetConfiguration")
    def on_get_configuration(self, key=None, **kwargs):
        return result16.GetConfiguration(
            configuration_key=[{"key": "SendLocalListMaxLength", "readonly": True, "value": "2"}]
        )

    @on("SendLocalList")
    def on_send_local_list(self, list_version, update_type, local_authorization_list=None, **kwargs):
        self.lists.append({"version": list_version, "update_type": update_type,
                           "entries": local_authorization_list or []})
        self.list_version = list_version
        return result16.SendLocalList(status="Accepted")


def test_fleet_cards_reach_both_versions_local_lists_validated_by_the_library(agent201, bpp):
    uids = [f"04{uuid.uuid4().hex[:12].upper()}" for _ in range(3)]
    res = bpp.command({"id": f"tags-{uuid.uuid4().hex[:8]}", "type": "tags.upsert",
                       "tags": [{"id_tag": u} for u in uids]})
    assert res.get("ok") is True, res

    async def until_listed(cp):
        for _ in range(100):
            listed = {e.get("id_token", {}).get("id_token") or e.get("id_tag") for l in cp.lists for e in l["entries"]}
            if set(uids) <= listed:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"not every card reached the list: {cp.lists}")

    async def go201():
        async with station(agent201, new_cp_id("LIST"), station_class=ListStation) as (cp, wire):
            await boot(cp)
            await until_listed(cp)
            return cp.lists, wire.call_errors()

    async def go16():
        cp_id = f"PY16-LIST-{uuid.uuid4().hex[:8]}"
        async with connect(agent201.url(cp_id), subprotocols=[OCPP16], open_timeout=TIMEOUT) as ws:
            assert ws.subprotocol == OCPP16
            cp = ListPoint16(cp_id, ws, response_timeout=TIMEOUT)
            reader = asyncio.create_task(cp.start())
            try:
                res = await cp.call(call16.BootNotification(charge_point_vendor="Interop", charge_point_model="PyList"))
                assert res.status == "Accepted"
                await until_listed(cp)
                return cp.lists
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                    await reader

    for lists in (run(go201())[0], run(go16())):
        assert lists[0]["update_type"] == "Full", lists
        assert all(l["update_type"] == "Differential" for l in lists[1:]), lists
        assert all(len(l["entries"]) <= 2 for l in lists), "within the charger's limit"
        assert len({l["version"] for l in lists}) == 1, "one version for the whole list"


# --------------------------------------------------------------------------- site power limit
#
# test_interop.py's site power test for 2.0.1, against an agent of the test's own with
# `[site] max_power_kw = 11` (fixture `power_agent`, free vend): the agent reads
# `SmartChargingCtrlr.RateUnit` and `.ProfileStackLevel` (GetVariables), installs a fail-safe
# TxDefaultProfile on EVSE 0 and gives the running transaction its share as a TxProfile
# naming the station's transactionId. The library validates each SetChargingProfile
# against the official SetChargingProfileRequest.json before the handler runs; the control
# below proves that an invalid one never reaches it. Then, on a site without a cap, a limit
# lowered and lifted over MQTT (fixture `uplink_power_agent`): ClearChargingProfile.

import test_interop as v16  # noqa: E402  (the wire helpers of the 1.6 site power test)

SMART_VARIABLES = [("SmartChargingCtrlr", "RateUnit"), ("SmartChargingCtrlr", "ProfileStackLevel")]


class SmartStation(Station):
    """A 2.0.1 station with smart charging: GetVariables answers `RATE_UNIT` and
    `STACK_LEVEL` for SmartChargingCtrlr (UnknownComponent / UnknownVariable for anything
    else), and every SetChargingProfile and ClearChargingProfile is accepted (recorded by
    unique id as the handler got it, i.e. after the library's schema validation)."""

    RATE_UNIT = "A,W"
    STACK_LEVEL = "3"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.asked = []
        self.profiles = {}  # unique id -> SetChargingProfile / ClearChargingProfile request

    @on("GetVariables")
    def on_get_variables(self, get_variable_data, **kwargs):
        self.asked.append(get_variable_data)
        have = {
            ("SmartChargingCtrlr", "RateUnit"): self.RATE_UNIT,
            ("SmartChargingCtrlr", "ProfileStackLevel"): self.STACK_LEVEL,
        }
        results = []
        for d in get_variable_data:
            c, v = d["component"]["name"], d["variable"]["name"]
            r = {"component": d["component"], "variable": d["variable"]}
            if (c, v) in have:
                r.update(attribute_status="Accepted", attribute_type="Actual", attribute_value=have[(c, v)])
            else:
                r["attribute_status"] = "UnknownVariable" if c == "SmartChargingCtrlr" else "UnknownComponent"
            results.append(r)
        return call_result.GetVariables(get_variable_result=results)

    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id, charging_profile, call_unique_id, **kwargs):
        self.profiles[call_unique_id] = {"evse_id": evse_id, **charging_profile}
        return call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, call_unique_id, **kwargs):
        self.profiles[call_unique_id] = kwargs
        return call_result.ClearChargingProfile(status="Accepted")


def test_site_power_limit_sends_schema_valid_profiles_in_watts(power_agent):
    """`[site] max_power_kw = 11`, a station whose RateUnit is "A,W": it is asked through
    GetVariables, gets a fail-safe TxDefaultProfile (EVSE 0, Relative) and, once its
    transaction runs, a TxProfile with its own transactionId (Absolute, startSchedule and
    duration), both in W (preferred when offered), never above the site's 11000 W (alone
    on the site, exactly that: less than its 22 kW connector), at no more than its
    ProfileStackLevel; each validated by the library and accepted."""
    cp_id = new_cp_id("power")
    tx_id = f"PYTX-{uuid.uuid4().hex[:12]}"
    site_w = power_agent.max_power_w
    received_at = {}

    def tx_profiles(wire):
        return [
            p for _, p in v16.profiles_on_wire(wire, "TxProfile", key="chargingProfile")
            if p["chargingProfile"].get("transactionId") == tx_id
        ]

    async def go():
        async with station(power_agent, cp_id, SmartStation) as (cp, wire):
            res = await boot(cp)
            assert res.status == "Accepted"
            await cp.call(
                call.StatusNotification(timestamp=ts(now()), connector_status="Available", evse_id=1, connector_id=1),
                suppress=False,
            )
            await v16.until(
                "the fail-safe TxDefaultProfile",
                lambda: v16.profiles_on_wire(wire, "TxDefaultProfile", key="chargingProfile"),
                wire=wire,
            )
            t0 = now()
            started = await cp.call(
                tx_event(
                    "Started", 0, t0, tx_id, "Authorized",
                    meter=[register(0, "Transaction.Begin")],
                    info={"chargingState": "Charging"},
                    evse={"id": 1, "connectorId": 1},
                    id_token={"idToken": "04A1B2C3D4E5F6", "type": "ISO14443"},
                ),
                suppress=False,
            )
            assert started.id_token_info and started.id_token_info["status"] == "Accepted", started
            await v16.until(f"a TxProfile for transaction {tx_id}", lambda: tx_profiles(wire), wire=wire)
            received_at["tx_profile"] = now()
            await cp.call(
                tx_event("Updated", 1, now(), tx_id, "MeterValuePeriodic",
                         meter=[register(500), sv(7000, "Power.Active.Import", "W")]),
                suppress=False,
            )
            await cp.call(
                tx_event("Ended", 2, now(), tx_id, "EVCommunicationLost",
                         meter=[register(1000, "Transaction.End")],
                         info={"stoppedReason": "EVDisconnected"}),
                suppress=False,
            )
        return cp, wire

    cp, wire = run(go())
    log = v16.agent_log(power_agent)
    v16.assert_every_profile_validated_and_accepted(cp, wire)

    # it was asked what it takes, before any profile
    asks = v16.agent_calls(wire, "GetVariables")
    assert asks, wire.received
    for _, p in asks:
        asked = sorted((d["component"]["name"], d["variable"]["name"]) for d in p["getVariableData"])
        assert asked == sorted(SMART_VARIABLES), p
    first_profile = next(i for i, r in enumerate(wire.received) if '"SetChargingProfile"' in r)
    first_ask = next(i for i, r in enumerate(wire.received) if '"GetVariables"' in r)
    assert first_ask < first_profile, wire.received

    calls = [p for _, p in v16.agent_calls(wire, "SetChargingProfile")]
    for p in calls:
        prof = p["chargingProfile"]
        assert 0 <= prof["stackLevel"] <= int(SmartStation.STACK_LEVEL), p
        assert len(prof["chargingSchedule"]) == 1, p
        sched = prof["chargingSchedule"][0]
        assert isinstance(sched["id"], int), p
        assert sched["chargingRateUnit"] == "W", f"the station offers A and W: {p}"
        periods = sched["chargingSchedulePeriod"]
        assert periods and periods[0]["startPeriod"] == 0, p
        for period in periods:
            assert 0 <= period["limit"] <= site_w, f"{period['limit']} W is above the site limit ({site_w} W): {p}"
            assert period.get("numberPhases", 3) in (1, 2, 3), p

    defaults = [p for p in calls if p["chargingProfile"]["chargingProfilePurpose"] == "TxDefaultProfile"]
    assert defaults, calls
    for p in defaults:
        prof = p["chargingProfile"]
        assert p["evseId"] == 0, p
        assert prof["id"] == 9100, p
        assert prof["chargingProfileKind"] == "Relative", p
        assert "transactionId" not in prof and "startSchedule" not in prof["chargingSchedule"][0], p

    txp = [p for p in calls if p["chargingProfile"]["chargingProfilePurpose"] == "TxProfile"]
    assert txp and all(p["chargingProfile"].get("transactionId") == tx_id for p in txp), (tx_id, txp)
    for p in txp:
        prof = p["chargingProfile"]
        sched = prof["chargingSchedule"][0]
        assert p["evseId"] == 1, p
        assert prof["id"] == 9201, p
        assert prof["chargingProfileKind"] == "Absolute", p
        start = parse_ts(sched["startSchedule"])
        assert isinstance(sched["duration"], int) and sched["duration"] > 0, p
        assert start <= received_at["tx_profile"] < start + dt.timedelta(seconds=sched["duration"]), p
        # alone on the site: not paused (6 A on 3 phases)
        assert sched["chargingSchedulePeriod"][0]["limit"] >= v16.MIN_CURRENT_A * v16.NOMINAL_V * 3, p

    # the agent's own record of the shares agrees with what the station was sent
    power = [e for e in events(power_agent.db, ["site.power"]) if any(a["cp_id"] == cp_id for a in e["allocations"])]
    assert power, log
    for e in power:
        assert e["max_power_w"] == site_w, e
        for a in e["allocations"]:
            assert a["limit_w"] <= site_w and not a.get("assumed"), e
    last = [a for a in power[-1]["allocations"] if a["cp_id"] == cp_id and a["connector_id"] == 1]
    sent = txp[-1]["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"]
    assert sent == site_w, f"alone on the site: {txp[-1]}"
    assert last and last[0]["limit_w"] == sent, (power[-1], txp[-1])


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_a_limit_lowered_then_lifted_over_mqtt_clears_the_profiles(uplink_power_agent, version):
    """A site without `[site] max_power_kw`: the BPP lowers the limit to 11 kW with
    `site.power_limit`, and the charger gets its TxDefaultProfile and, once its transaction
    runs, its TxProfile; then `site.power_limit` 0 (back to no limit): the agent clears
    both by their ids (1.6 `id`, 2.0.1 `chargingProfileId`) with ClearChargingProfile,
    each CALL validated by the library against the official request schema before the
    handler answers Accepted."""
    a = uplink_power_agent
    b = Bpp(*a.mqtt, a.site)
    cp_id = (v16.new_cp_id if version == "1.6" else new_cp_id)("lift")
    key = "csChargingProfiles" if version == "1.6" else "chargingProfile"

    def power_limit(kw):
        res = b.command({"id": f"limit-{uuid.uuid4().hex[:8]}", "type": "site.power_limit", "max_power_kw": kw})
        assert res.get("ok") is True, res
        return res

    def answered(wire, action):
        return [(uid, p) for uid, p in v16.agent_calls(wire, action) if v16.our_answer(wire, uid) is not None]

    # what the charger does, per version
    async def available(cp):
        if version == "1.6":
            for cid in (0, 1):
                await cp.call(
                    v16.call.StatusNotification(connector_id=cid, error_code="NoError", status="Available", timestamp=ts(now())),
                    suppress=False,
                )
        else:
            await cp.call(
                call.StatusNotification(timestamp=ts(now()), connector_status="Available", evse_id=1, connector_id=1),
                suppress=False,
            )

    async def start(cp):
        if version == "1.6":
            res = await cp.call(
                v16.call.StartTransaction(connector_id=1, id_tag="PYLIFT01", meter_start=0, timestamp=ts(now())),
                suppress=False,
            )
            assert res.id_tag_info["status"] == "Accepted", res
            return res.transaction_id
        tx_id = f"PYTX-{uuid.uuid4().hex[:12]}"
        res = await cp.call(
            tx_event("Started", 0, now(), tx_id, "Authorized", meter=[register(0, "Transaction.Begin")],
                     evse={"id": 1, "connectorId": 1}, id_token={"idToken": "04A1B2C3D4E5F8", "type": "ISO14443"}),
            suppress=False,
        )
        assert res.id_token_info["status"] == "Accepted", res
        return tx_id

    async def stop(cp, tx):
        if version == "1.6":
            await cp.call(v16.call.StopTransaction(meter_stop=100, timestamp=ts(now()), transaction_id=tx), suppress=False)
        else:
            await cp.call(
                tx_event("Ended", 1, now(), tx, "EVCommunicationLost", meter=[register(100, "Transaction.End")],
                         info={"stoppedReason": "EVDisconnected"}),
                suppress=False,
            )

    async def go():
        connected = v16.charger(a, cp_id, v16.SmartCharger) if version == "1.6" else station(a, cp_id, SmartStation)
        async with connected as (cp, wire):
            await (v16.boot(cp) if version == "1.6" else boot(cp))
            await available(cp)
            lowered = await asyncio.to_thread(power_limit, 11)
            assert lowered["max_power_kw"] == 11, lowered
            await v16.until(
                "the fail-safe TxDefaultProfile", lambda: v16.profiles_on_wire(wire, "TxDefaultProfile", key=key), wire=wire
            )
            tx = await start(cp)
            await v16.until(
                f"a TxProfile for transaction {tx}",
                lambda: [p for _, p in v16.profiles_on_wire(wire, "TxProfile", key=key) if p[key].get("transactionId") == tx],
                wire=wire,
            )
            lifted = await asyncio.to_thread(power_limit, 0)
            assert lifted.get("max_power_kw") is None, lifted
            await v16.until("two ClearChargingProfile", lambda: len(answered(wire, "ClearChargingProfile")) >= 2, wire=wire)
            await stop(cp, tx)
        return cp, wire

    try:
        b.wait_online()
        cp, wire = run(go())
    finally:
        b.close()
    v16.assert_every_profile_validated_and_accepted(cp, wire)
    v16.assert_every_profile_validated_and_accepted(cp, wire, "ClearChargingProfile")
    id_field = "id" if version == "1.6" else "chargingProfileId"
    cleared = [p for _, p in v16.agent_calls(wire, "ClearChargingProfile")]
    assert all(set(p) == {id_field} for p in cleared), cleared
    assert sorted(p[id_field] for p in cleared) == [9100, 9201], cleared
    # nothing is installed after the lift
    last_clear = max(i for i, r in enumerate(wire.received) if '"ClearChargingProfile"' in r)
    assert not [r for r in wire.received[last_clear:] if '"SetChargingProfile"' in r], wire.received


def _profile_request201(**schedule_overrides):
    """A SetChargingProfile request as the agent sends one (a TxDefaultProfile in W)."""
    schedule = {"id": 9100, "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 22000.0, "numberPhases": 3}]}
    schedule.update(schedule_overrides)
    return {
        "evseId": 0,
        "chargingProfile": {
            "id": 9100, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative", "chargingSchedule": [schedule],
        },
    }


def _as_16_schedule():
    p = _profile_request201()
    p["chargingProfile"]["chargingSchedule"] = p["chargingProfile"]["chargingSchedule"][0]
    return p


@pytest.mark.parametrize(
    "payload, valid",
    [
        (_profile_request201(), True),
        (_profile_request201(chargingRateUnit="kW"), False),
        (_profile_request201(chargingSchedulePeriod=[]), False),
        (_profile_request201(id=None), False),
        (_as_16_schedule(), False),
        ({"connectorId": 0, "chargingProfile": _profile_request201()["chargingProfile"]}, False),
    ],
    ids=["valid", "unit-kW", "no-period", "schedule-id-null", "1.6-shaped-schedule", "connectorId-not-evseId"],
)
def test_control_set_charging_profile_validation_is_active(payload, valid):
    """Control for the site power test: a fake CSMS sends SetChargingProfile to the same
    `SmartStation`; a valid request reaches the handler and is answered Accepted, an
    invalid one (a unit the schema does not have, no period, a schedule id that is not an
    integer, a 1.6-shaped schedule object, `connectorId` for `evseId`) is refused by the
    library with a CALLERROR before the handler runs."""
    from websockets.asyncio.server import serve

    got = []

    async def fake_csms(ws):
        await ws.send(json.dumps([2, "ctl-1", "SetChargingProfile", payload]))
        got.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))

    async def go():
        async with serve(fake_csms, "127.0.0.1", 0, subprotocols=[OCPP201]) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/ocpp/CONTROL", subprotocols=[OCPP201]) as ws:
                cp = SmartStation("CONTROL", Wire(ws), response_timeout=TIMEOUT)
                reader = asyncio.create_task(cp.start())
                try:
                    await v16.until("the station's answer", lambda: got)
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                        await reader
        return cp

    cp = run(go())
    if valid:
        assert got == [[3, "ctl-1", {"status": "Accepted"}]], got
        assert list(cp.profiles) == ["ctl-1"], cp.profiles
    else:
        assert got and got[0][0] == 4 and got[0][1] == "ctl-1", got
        assert cp.profiles == {}, cp.profiles


# --------------------------------------------------------------------------- reservations
#
# `reservation.upsert` / `reservation.cancel` from the BPP (fixture `uplink_power_agent`:
# an uplink to a mosquitto of its own, free vend), on a 1.6 and a 2.0.1 charger each: the
# agent's ReserveNow and CancelReservation are validated by the library against the
# official request schemas before the handlers below see them (the control at the end
# proves an invalid one never does). Then the reservation ends the way the charger and the
# driver make it: `used` by the order's OTP (its Authorize answer carries the reservation's
# group: 1.6 `parentIdTag`, 2.0.1 `groupIdToken`), `cancelled` by command, or
# `charger_refused` when the charger answers Occupied.


class ReservingCharger(v16.SmartCharger):
    """A 1.6 charge point that answers ReserveNow with `STATUS` and CancelReservation
    Accepted, recording each request by unique id as its handler got it (after the
    library's schema validation)."""

    STATUS = "Accepted"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.reservations = {}

    @on("ReserveNow")
    def on_reserve_now(self, call_unique_id, **kwargs):
        self.reservations[call_unique_id] = kwargs
        return result16.ReserveNow(status=self.STATUS)

    @on("CancelReservation")
    def on_cancel_reservation(self, call_unique_id, **kwargs):
        self.reservations[call_unique_id] = kwargs
        return result16.CancelReservation(status="Accepted")


class ReservingStation(SmartStation):
    """The same for a 2.0.1 station."""

    STATUS = "Accepted"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.reservations = {}

    @on("ReserveNow")
    def on_reserve_now(self, call_unique_id, **kwargs):
        self.reservations[call_unique_id] = kwargs
        return call_result.ReserveNow(status=self.STATUS)

    @on("CancelReservation")
    def on_cancel_reservation(self, call_unique_id, **kwargs):
        self.reservations[call_unique_id] = kwargs
        return call_result.CancelReservation(status="Accepted")


def _iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _assert_validated_and_answered(cp, wire, action, status):
    """Every `action` CALL of the agent reached the handler (the library's schema check
    passed) and was answered `status`; no CALLERROR anywhere on the wire."""
    calls = v16.agent_calls(wire, action)
    assert calls, f"no {action} from the agent: {wire.received}"
    for uid, payload in calls:
        assert uid in cp.reservations, f"{action} {payload} did not reach the handler: {v16.our_answer(wire, uid)}"
        assert v16.our_answer(wire, uid) == [3, uid, {"status": status}], v16.our_answer(wire, uid)
    errors = [r for r in wire.received + wire.sent if json.loads(r)[0] == 4]
    assert not errors, f"CALLERROR on the wire: {errors}"


def _released(db, order):
    return [e for e in events(db, ["reservation.released"]) if e.get("order_id") == order]


@pytest.mark.parametrize("outcome", ["used", "cancelled", "charger_refused"])
@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_a_reservation_sends_schema_valid_reserve_now_and_ends_as_the_driver_makes_it(
    uplink_power_agent, version, outcome
):
    """The BPP books connector 1 for an order (its OTP provisioned with
    `authorization.upsert`) from now with a 10-minute grace: the charger gets ReserveNow
    (1.6 `reservationId`, `connectorId` 1, `expiryDate`, `idTag` + `parentIdTag`; 2.0.1
    `id`, `evseId` 1, `expiryDateTime`, `idToken` + `groupIdToken` of type Central) with
    the expiry the command's result gave and tokens that are not the OTP. `used`: the
    driver's OTP is answered Accepted with the reservation's group, their session starts
    on the reservation and the reservation is released `used`. `cancelled`:
    `reservation.cancel` sends CancelReservation with the same id and it is released
    `cancelled`. `charger_refused`: the charger answers Occupied and the reservation is
    released at once, `charger_status` Occupied."""
    a = uplink_power_agent
    b = Bpp(*a.mqtt, a.site)
    cp_id = (v16.new_cp_id if version == "1.6" else new_cp_id)(f"rsv-{outcome[:4]}")
    order = f"order-rsv-{uuid.uuid4().hex[:8]}"
    otp = new_otp()
    klass = ReservingCharger if version == "1.6" else ReservingStation
    status = "Occupied" if outcome == "charger_refused" else "Accepted"
    got = {}

    def command(cmd):
        res = b.command({"id": f"{cmd['type']}-{uuid.uuid4().hex[:8]}", **cmd})
        assert res.get("ok") is True, res
        return res

    def reserve_nows(wire):
        return [(u, p) for u, p in v16.agent_calls(wire, "ReserveNow") if v16.our_answer(wire, u) is not None]

    async def available(cp):
        if version == "1.6":
            for cid in (0, 1):
                await cp.call(
                    v16.call.StatusNotification(connector_id=cid, error_code="NoError", status="Available", timestamp=ts(now())),
                    suppress=False,
                )
        else:
            await cp.call(
                call.StatusNotification(timestamp=ts(now()), connector_status="Available", evse_id=1, connector_id=1),
                suppress=False,
            )

    async def use(cp, rid):
        """The order's driver: Authorize with the OTP, then a session on the reservation."""
        if version == "1.6":
            auth = await cp.call(v16.call.Authorize(id_tag=otp), suppress=False)
            got["authorized"] = auth.id_tag_info
            res = await cp.call(
                v16.call.StartTransaction(connector_id=1, id_tag=otp, meter_start=0, timestamp=ts(now()), reservation_id=rid),
                suppress=False,
            )
            assert res.id_tag_info["status"] == "Accepted", res
            await cp.call(v16.call.StopTransaction(meter_stop=100, timestamp=ts(now()), transaction_id=res.transaction_id),
                          suppress=False)
            return
        token = {"idToken": otp, "type": "KeyCode"}
        auth = await cp.call(call.Authorize(id_token=token), suppress=False)
        got["authorized"] = auth.id_token_info
        tx_id = f"PYTX-{uuid.uuid4().hex[:12]}"
        res = await cp.call(
            tx_event("Started", 0, now(), tx_id, "Authorized", meter=[register(0, "Transaction.Begin")],
                     evse={"id": 1, "connectorId": 1}, id_token=token, reservation_id=rid),
            suppress=False,
        )
        assert res.id_token_info["status"] == "Accepted", res
        await cp.call(
            tx_event("Ended", 1, now(), tx_id, "EVCommunicationLost", meter=[register(100, "Transaction.End")],
                     info={"stoppedReason": "EVDisconnected"}),
            suppress=False,
        )

    async def go():
        connected = v16.charger(a, cp_id, klass) if version == "1.6" else station(a, cp_id, klass)
        async with connected as (cp, wire):
            cp.STATUS = status
            await (v16.boot(cp) if version == "1.6" else boot(cp))
            await available(cp)
            t = dt.datetime.now(dt.timezone.utc)
            await asyncio.to_thread(
                command,
                {"type": "authorization.upsert", "order_id": order, "otp": otp, "cp_id": cp_id, "connector_id": 1,
                 "valid_from": _iso(t - dt.timedelta(minutes=5)), "valid_until": _iso(t + dt.timedelta(hours=1))},
            )
            got["upsert"] = await asyncio.to_thread(
                command,
                {"type": "reservation.upsert", "order_id": order, "cp_id": cp_id, "connector_id": 1,
                 "start": _iso(t), "end": _iso(t + dt.timedelta(hours=1)), "grace_minutes": 10},
            )
            await v16.until("ReserveNow, answered", lambda: reserve_nows(wire), wire=wire)
            rid = got["upsert"]["reservation_id"]
            if outcome == "used":
                await use(cp, rid)
            elif outcome == "cancelled":
                got["cancel"] = await asyncio.to_thread(command, {"type": "reservation.cancel", "order_id": order})
                await v16.until(
                    "CancelReservation, answered",
                    lambda: [u for u, _ in v16.agent_calls(wire, "CancelReservation") if v16.our_answer(wire, u)],
                    wire=wire,
                )
            await v16.until(f"reservation.released for {order}", lambda: _released(a.db, order), secs=15)
        return cp, wire

    try:
        b.wait_online()
        cp, wire = run(go())
    finally:
        b.close()

    _assert_validated_and_answered(cp, wire, "ReserveNow", status)
    upsert = got["upsert"]
    rid = upsert["reservation_id"]
    assert isinstance(rid, int), upsert
    expires = parse_ts(upsert["expires_at"])
    (uid, p), *_ = v16.agent_calls(wire, "ReserveNow")
    if version == "1.6":
        assert set(p) == {"reservationId", "connectorId", "expiryDate", "idTag", "parentIdTag"}, p
        assert (p["reservationId"], p["connectorId"]) == (rid, 1), p
        assert parse_ts(p["expiryDate"]) == expires, (p, upsert)
        own, group = p["idTag"], p["parentIdTag"]
    else:
        assert set(p) == {"id", "evseId", "expiryDateTime", "idToken", "groupIdToken"}, p
        assert (p["id"], p["evseId"]) == (rid, 1), p
        assert parse_ts(p["expiryDateTime"]) == expires, (p, upsert)
        assert p["idToken"]["type"] == p["groupIdToken"]["type"] == "Central", p
        own, group = p["idToken"]["idToken"], p["groupIdToken"]["idToken"]
    assert own != group and otp not in (own, group), "agent tokens, never the driver's OTP"
    assert expires - dt.timedelta(minutes=10, seconds=2) <= dt.datetime.now(dt.timezone.utc) <= expires, upsert

    (released,) = _released(a.db, order)
    assert (released["cp_id"], released["connector_id"], released["reservation_id"]) == (cp_id, 1, rid), released
    assert released["reason"] == outcome, released
    assert "cost" not in released, "the order has no tariff with reservation fees"
    if outcome == "used":
        info = got["authorized"]
        assert info["status"] == "Accepted", info
        if version == "1.6":
            assert info.get("parent_id_tag", info.get("parentIdTag")) == group, info
        else:
            g = info.get("group_id_token", info.get("groupIdToken"))
            assert g and g.get("id_token", g.get("idToken")) == group, info
        assert not v16.agent_calls(wire, "CancelReservation"), "a used reservation is not cancelled"
    elif outcome == "cancelled":
        assert got["cancel"]["reservation_id"] == rid, got["cancel"]
        _assert_validated_and_answered(cp, wire, "CancelReservation", "Accepted")
        cancels = [p for _, p in v16.agent_calls(wire, "CancelReservation")]
        assert cancels == [{"reservationId": rid}], cancels
    else:
        assert released["charger_status"] == "Occupied", released
        assert len(v16.agent_calls(wire, "ReserveNow")) == 1, "a refusal is final: not retried"
        assert not [e for e in events(a.db, ["reservation.held"]) if e.get("order_id") == order]


def _reserve_now(version, **overrides):
    """A ReserveNow request as the agent sends one."""
    if version == "1.6":
        p = {"reservationId": 7, "connectorId": 1, "expiryDate": "2026-12-02T18:30:00.000Z",
             "idTag": "RV0123456789ABCDEF", "parentIdTag": "RG0123456789ABCDEF"}
    else:
        p = {"id": 7, "evseId": 1, "expiryDateTime": "2026-12-02T18:30:00.000Z",
             "idToken": {"idToken": "RV0123456789ABCDEF", "type": "Central"},
             "groupIdToken": {"idToken": "RG0123456789ABCDEF", "type": "Central"}}
    p.update(overrides)
    return {k: v for k, v in p.items() if v is not None}


@pytest.mark.parametrize(
    "version, payload, valid",
    [
        ("1.6", _reserve_now("1.6"), True),
        ("1.6", _reserve_now("1.6", idTag="RV0123456789ABCDEF-TOO-LONG"), False),
        ("1.6", _reserve_now("1.6", expiryDate=None), False),
        ("1.6", _reserve_now("2.0.1"), False),
        ("2.0.1", _reserve_now("2.0.1"), True),
        ("2.0.1", _reserve_now("2.0.1", idToken={"idToken": "RV0123456789ABCDEF", "type": "Agent"}), False),
        ("2.0.1", _reserve_now("2.0.1", id="7"), False),
        ("2.0.1", _reserve_now("1.6"), False),
    ],
    ids=["1.6-valid", "1.6-idTag-21-chars", "1.6-no-expiry", "1.6-given-2.0.1",
         "2.0.1-valid", "2.0.1-token-type", "2.0.1-id-string", "2.0.1-given-1.6"],
)
def test_control_reserve_now_validation_is_active(version, payload, valid):
    """Control for the reservation test: a fake CSMS sends ReserveNow to the same charger
    classes; a valid request reaches the handler and is answered Accepted, an invalid one
    (a 1.6 idTag over 20 characters, no expiry, the other version's shape, a token type
    2.0.1 does not have, an id that is a string) is refused by the library with a CALLERROR
    before the handler runs."""
    from websockets.asyncio.server import serve

    proto = OCPP16 if version == "1.6" else OCPP201
    klass = ReservingCharger if version == "1.6" else ReservingStation
    got = []

    async def fake_csms(ws):
        await ws.send(json.dumps([2, "ctl-r", "ReserveNow", payload]))
        got.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))

    async def go():
        async with serve(fake_csms, "127.0.0.1", 0, subprotocols=[proto]) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/ocpp/CONTROL", subprotocols=[proto]) as ws:
                cp = klass("CONTROL", Wire(ws), response_timeout=TIMEOUT)
                reader = asyncio.create_task(cp.start())
                try:
                    await v16.until("the charger's answer", lambda: got)
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                        await reader
        return cp

    cp = run(go())
    if valid:
        assert got == [[3, "ctl-r", {"status": "Accepted"}]], got
        assert list(cp.reservations) == ["ctl-r"], cp.reservations
    else:
        assert got and got[0][0] == 4 and got[0][1] == "ctl-r", got
        assert cp.reservations == {}, cp.reservations
