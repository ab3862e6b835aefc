"""chargesite driven by an independent OCPP 1.6J charge point: mobilityhouse `ocpp`.

The library's ChargePoint validates every CALL it sends and every CALLRESULT it receives
against the official OCPP 1.6 JSON schemas (Draft 4) that ship with it, so each
`cp.call(...)` below fails if the agent answers with a schema-invalid payload.

Every frame on the wire is recorded (`Wire`), so CALLERROR codes are checked as the agent
spelled them, not only as the library maps them: OCPP-J 1.6 spells `FormationViolation`
and `OccurenceConstraintViolation` (one 'r').

OCPP 2.0.1 is driven by test_v201.py (against its own agent, fixture `agent201`).

Reverse direction (the agent sending CALLs to the charger): the agent sends them when its
uplink or its local API asks; `test_cli_test_session_against_a_remote_started_charger`
drives it through `chargesite charger ... test-session` (needs CHARGESITE_CONFIG, see
conftest.py); the site power limit tests at the end (GetConfiguration, SetChargingProfile)
against an agent of their own with `[site] max_power_kw` (fixture `power_agent`).
"""

import asyncio
import contextlib
import dataclasses
import datetime as dt
import decimal
import json
import os
import re
import sqlite3
import time
import uuid

import pytest
import websockets
from websockets.asyncio.client import connect

from ocpp import exceptions as ocpp_exc
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16 import datatypes as dtypes
from ocpp.v16 import enums
from ocpp.routing import after, on

OCPP16 = "ocpp1.6"
TIMEOUT = 10
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# --------------------------------------------------------------------------- helpers


def ts(t):
    """RFC 3339 UTC with milliseconds, as chargers usually send it."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_ts(s):
    # Python 3.11's fromisoformat accepts a trailing Z.
    t = dt.datetime.fromisoformat(s)
    assert t.tzinfo is not None, f"timestamp without offset: {s!r}"
    return t


def new_cp_id(tag):
    return f"PY-{tag}-{uuid.uuid4().hex[:8]}"


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


class Charger(ChargePoint):
    """A plain OCPP 1.6 charge point; the library routes answers to `call()`."""


@contextlib.asynccontextmanager
async def charger(agent, cp_id, charger_class=None, **connect_kwargs):
    """`connect_kwargs` go to `websockets` `connect` as they are (test_tls.py: `ssl`, and
    `additional_headers` for Basic auth); `charger_class` defaults to `Charger`."""
    async with connect(agent.url(cp_id), subprotocols=[OCPP16], open_timeout=TIMEOUT, **connect_kwargs) as ws:
        assert ws.subprotocol == OCPP16, f"agent negotiated {ws.subprotocol!r}"
        wire = Wire(ws)
        cp = (charger_class or Charger)(cp_id, wire, response_timeout=TIMEOUT)
        reader = asyncio.create_task(cp.start())
        try:
            yield cp, wire
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


async def raw_call(cp, wire, unique_id, text):
    """Sends `text` as is; returns (the answer as the library parsed it, the raw frame)."""
    async with cp._call_lock:  # one outstanding CALL per direction, as the library keeps it
        await wire.send(text)
        parsed = await cp._get_specific_response(unique_id, TIMEOUT)
    return parsed, wire.answer_to(unique_id)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


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
    assert len(found) == 1, f"expected one session.started for {cp_id}/{transaction_id}, got {found}"
    return found[0]


def sv(value, measurand=None, unit=None, phase=None, context=enums.ReadingContext.sample_periodic, location=None):
    return dtypes.SampledValue(
        value=value, context=context, measurand=measurand, unit=unit, phase=phase, location=location
    )


M = enums.Measurand
U = enums.UnitOfMeasure
P = enums.Phase


async def boot(cp, serial="SN-PY-0001"):
    res = await cp.call(
        call.BootNotification(
            charge_point_vendor="InteropVendor",
            charge_point_model="PyOCPP-CP",
            charge_point_serial_number=serial,
            firmware_version="1.2.3",
        ),
        suppress=False,
    )
    assert isinstance(res, call_result.BootNotification)
    return res


# --------------------------------------------------------------------------- handshake


def test_handshake_negotiates_ocpp16(agent):
    async def go():
        async with connect(agent.url(new_cp_id("hs")), subprotocols=[OCPP16]) as ws:
            assert ws.subprotocol == OCPP16

    run(go())


@pytest.mark.parametrize("offered", [["ocpp2.0.1", OCPP16], [OCPP16, "ocpp2.0.1"]], ids=["2.0.1-first", "1.6-first"])
def test_handshake_prefers_ocpp201_when_both_are_offered(agent, offered):
    """CONTRACT 3: a charger that offers both subprotocols gets `ocpp2.0.1`, whatever the
    order it lists them in (the 2.0.1 suite, test_v201.py, drives such a connection)."""

    async def go():
        async with connect(agent.url(new_cp_id("hs")), subprotocols=offered) as ws:
            assert ws.subprotocol == "ocpp2.0.1"

    run(go())


def test_path_outside_ocpp_is_refused_with_404(agent):
    async def go():
        base = agent.ws_url.rsplit("/ocpp", 1)[0]
        with pytest.raises(websockets.InvalidStatus) as e:
            async with connect(f"{base}/not-ocpp/CP1", subprotocols=[OCPP16]):
                pass
        assert e.value.response.status_code == 404

    run(go())


def test_control_schema_validation_is_active():
    """Control: against a fake central system that answers BootNotification without the
    required `interval`, the library must refuse the answer. Proves that the CALLRESULT
    validation every other test relies on is switched on."""
    from websockets.asyncio.server import serve

    async def fake_central_system(ws):
        async for raw in ws:
            _, uid, _, _ = json.loads(raw)
            await ws.send(json.dumps([3, uid, {"status": "Accepted", "currentTime": "2026-01-01T00:00:00.000Z"}]))

    async def go():
        async with serve(fake_central_system, "127.0.0.1", 0, subprotocols=[OCPP16]) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/ocpp/CONTROL", subprotocols=[OCPP16]) as ws:
                cp = Charger("CONTROL", Wire(ws), response_timeout=TIMEOUT)
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


# --------------------------------------------------------------------------- the whole flow


def test_full_transaction_flow(agent):
    run(full_transaction_flow(agent, new_cp_id("flow")))


async def full_transaction_flow(agent, cp_id, serial="SN-PY-0001", **connect_kwargs):
    """The whole 1.6 flow for `cp_id`; test_tls.py runs it over wss:// (`connect_kwargs`:
    `ssl`, Basic auth headers), `serial` for a charger bound to one."""
    async with charger(agent, cp_id, **connect_kwargs) as (cp, wire):
        # BootNotification
        before = dt.datetime.now(dt.timezone.utc)
        res = await boot(cp, serial)
        assert res.status == enums.RegistrationStatus.accepted
        assert RFC3339_MS_UTC.match(res.current_time), res.current_time  # CONTRACT: ms, UTC
        now = parse_ts(res.current_time)
        assert abs((now - before).total_seconds()) < 60, res.current_time
        assert isinstance(res.interval, int) and res.interval > 0

        # Heartbeat
        hb = await cp.call(call.Heartbeat(), suppress=False)
        assert abs((parse_ts(hb.current_time) - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 60

        # StatusNotification: charger (0) and connector 1
        for cid, status in ((0, enums.ChargePointStatus.available), (1, enums.ChargePointStatus.preparing)):
            r = await cp.call(
                call.StatusNotification(
                    connector_id=cid,
                    error_code=enums.ChargePointErrorCode.no_error,
                    status=status,
                    timestamp=ts(dt.datetime.now(dt.timezone.utc)),
                ),
                suppress=False,
            )
            assert isinstance(r, call_result.StatusNotification)

        # Authorize (free vend: any tag)
        auth = await cp.call(call.Authorize(id_tag="PYTAG0001"), suppress=False)
        assert auth.id_tag_info["status"] == enums.AuthorizationStatus.accepted

        # StartTransaction, 30 minutes ago by the charger's clock
        t0 = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=30)
        start = await cp.call(
            call.StartTransaction(connector_id=1, id_tag="PYTAG0001", meter_start=1000, timestamp=ts(t0)),
            suppress=False,
        )
        assert start.id_tag_info["status"] == enums.AuthorizationStatus.accepted
        tx = start.transaction_id
        assert isinstance(tx, int) and tx >= 1
        # durable before acknowledged: the event is in SQLite now
        started = session_started(agent.db, cp_id, tx)
        sid = started["session_id"]
        assert started["connector_id"] == 1
        assert started["meter_start_wh"] == 1000

        await cp.call(
            call.StatusNotification(
                connector_id=1,
                error_code=enums.ChargePointErrorCode.no_error,
                status=enums.ChargePointStatus.charging,
                timestamp=ts(t0),
            ),
            suppress=False,
        )

        # MeterValues 1: register in Wh, power, per-phase current and voltage, SoC
        mv1 = dtypes.MeterValue(
            timestamp=ts(t0 + dt.timedelta(minutes=10)),
            sampled_value=[
                sv("2500", M.energy_active_import_register, U.wh, location=enums.Location.outlet),
                sv("11000", M.power_active_import, U.w),
                sv("16.0", M.current_import, U.a, P.l1),
                sv("16.2", M.current_import, U.a, P.l2),
                sv("15.8", M.current_import, U.a, P.l3),
                sv("230.1", M.voltage, U.v, P.l1_n),
                sv("229.9", M.voltage, U.v, P.l2_n),
                sv("230.0", M.voltage, U.v, P.l3_n),
                sv("40", M.soc, U.percent, location=enums.Location.ev),
            ],
        )
        r = await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[mv1]), suppress=False)
        assert isinstance(r, call_result.MeterValues)

        # MeterValues 2: register in kWh (4.2 kWh = 4200 Wh), power in kW
        mv2 = dtypes.MeterValue(
            timestamp=ts(t0 + dt.timedelta(minutes=20)),
            sampled_value=[
                sv("4.2", M.energy_active_import_register, U.kwh),
                sv("10.5", M.power_active_import, U.kw),
                sv("55", M.soc, U.percent, location=enums.Location.ev),
            ],
        )
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[mv2]), suppress=False)

        meters = events(agent.db, ["session.meter"], sid)
        samples = [s for e in meters for s in e["samples"]]
        assert len(samples) >= 2, meters
        s1 = next(s for s in samples if s.get("energy_wh") == 2500)
        assert s1["power_w"] == 11000
        assert s1["current_a"] == pytest.approx(16.0, abs=0.01)  # mean of the phases
        assert s1["voltage_v"] == pytest.approx(230.0, abs=0.01)
        assert s1["soc_pct"] == pytest.approx(40)
        s2 = next(s for s in samples if s.get("energy_wh") == 4200)
        assert s2["power_w"] == 10500
        assert s2["soc_pct"] == pytest.approx(55)
        assert "current_a" not in s2 and "voltage_v" not in s2

        # StopTransaction with transactionData
        t1 = t0 + dt.timedelta(minutes=30)
        stop = await cp.call(
            call.StopTransaction(
                meter_stop=5200,
                timestamp=ts(t1),
                transaction_id=tx,
                reason=enums.Reason.ev_disconnected,
                id_tag="PYTAG0001",
                transaction_data=[
                    dtypes.MeterValue(
                        timestamp=ts(t0),
                        sampled_value=[
                            sv("1000", M.energy_active_import_register, U.wh, context=enums.ReadingContext.transaction_begin)
                        ],
                    ),
                    dtypes.MeterValue(
                        timestamp=ts(t1),
                        sampled_value=[
                            sv("5200", M.energy_active_import_register, U.wh, context=enums.ReadingContext.transaction_end),
                            sv("80", M.soc, U.percent, context=enums.ReadingContext.transaction_end),
                        ],
                    ),
                ],
            ),
            suppress=False,
        )
        assert stop.id_tag_info["status"] == enums.AuthorizationStatus.accepted

        stopped = events(agent.db, ["session.stopped"], sid)
        assert len(stopped) == 1, stopped
        st = stopped[0]
        assert st["energy_wh"] == 4200
        assert st["meter_stop_wh"] == 5200
        assert st["reason"] == "EVDisconnected"
        assert parse_ts(st["stopped_at"]) == parse_ts(ts(t1))

        # the three session events are in order
        seqs = [e["seq"] for e in events(agent.db, ["session.started", "session.meter", "session.stopped"], sid)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert seqs[0] == started["seq"] and seqs[-1] == st["seq"]

        # the agent never sent a CALLERROR in this flow
        assert not [f for f in wire.received if json.loads(f)[0] == 4], wire.received

    # after the charger disconnects, the booted/connected events are there
    booted = [e for e in events(agent.db, ["charger.booted"]) if e["cp_id"] == cp_id]
    assert booted and booted[0]["vendor"] == "InteropVendor" and booted[0]["model"] == "PyOCPP-CP"
    return sid


def test_stop_without_id_tag_and_data_transfer(agent):
    """Answers with optional parts absent must still be schema-valid."""
    cp_id = new_cp_id("opt")

    async def go():
        async with charger(agent, cp_id) as (cp, _wire):
            await boot(cp)
            t0 = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
            start = await cp.call(
                call.StartTransaction(connector_id=2, id_tag="PYTAG0002", meter_start=0, timestamp=ts(t0)),
                suppress=False,
            )
            stop = await cp.call(
                call.StopTransaction(meter_stop=300, timestamp=ts(t0 + dt.timedelta(minutes=4)), transaction_id=start.transaction_id),
                suppress=False,
            )
            assert isinstance(stop, call_result.StopTransaction)
            sid = session_started(agent.db, cp_id, start.transaction_id)["session_id"]
            st = events(agent.db, ["session.stopped"], sid)
            assert len(st) == 1 and st[0]["energy_wh"] == 300

            dtr = await cp.call(call.DataTransfer(vendor_id="com.example.interop", message_id="ping", data="x"), suppress=False)
            assert dtr.status in {s.value for s in enums.DataTransferStatus}

    run(go())


def test_reconnect_without_boot_carries_on(agent):
    """CONTRACT 3: a charger that reconnects without a BootNotification simply carries on."""
    cp_id = new_cp_id("recon")

    async def go():
        t0 = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=20)
        async with charger(agent, cp_id) as (cp, _):
            await boot(cp)
            start = await cp.call(
                call.StartTransaction(connector_id=1, id_tag="PYTAG0003", meter_start=10_000, timestamp=ts(t0)),
                suppress=False,
            )
        tx = start.transaction_id
        async with charger(agent, cp_id) as (cp, _):
            mv = dtypes.MeterValue(
                timestamp=ts(t0 + dt.timedelta(minutes=10)),
                sampled_value=[sv("11500", M.energy_active_import_register, U.wh)],
            )
            await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[mv]), suppress=False)
            await cp.call(
                call.StopTransaction(meter_stop=12_000, timestamp=ts(t0 + dt.timedelta(minutes=19)), transaction_id=tx),
                suppress=False,
            )
        sid = session_started(agent.db, cp_id, tx)["session_id"]
        st = events(agent.db, ["session.stopped"], sid)
        assert len(st) == 1 and st[0]["energy_wh"] == 2000, st

    run(go())


def test_charger_variants_the_schemas_allow(agent):
    """Valid but less common shapes: every optional BootNotification field, a timestamp
    with a UTC offset and no fraction, a sampledValue with neither measurand nor unit (the
    1.6 defaults: Energy.Active.Import.Register in Wh), MeterValues without a
    transactionId, and a StopTransaction for a transaction the agent never issued (it must
    still be answered, or the charger retries it forever)."""
    cp_id = new_cp_id("var")

    async def go():
        async with charger(agent, cp_id) as (cp, _wire):
            res = await cp.call(
                call.BootNotification(
                    charge_point_vendor="V" * 20,
                    charge_point_model="M" * 20,
                    charge_point_serial_number="S" * 25,
                    charge_box_serial_number="B" * 25,
                    firmware_version="F" * 50,
                    iccid="1" * 20,
                    imsi="2" * 20,
                    meter_type="T" * 25,
                    meter_serial_number="N" * 25,
                ),
                suppress=False,
            )
            assert res.status == enums.RegistrationStatus.accepted

            # 10:00:00+05:30 is 04:30:00Z
            day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()
            start = await cp.call(
                call.StartTransaction(connector_id=1, id_tag="PYTAG0004", meter_start=500, timestamp=f"{day}T10:00:00+05:30"),
                suppress=False,
            )
            tx = start.transaction_id
            started = session_started(agent.db, cp_id, tx)
            assert RFC3339_MS_UTC.match(started["started_at"]), started
            assert started["started_at"] == f"{day}T04:30:00.000Z", started

            mv = dtypes.MeterValue(timestamp=f"{day}T05:00:00Z", sampled_value=[dtypes.SampledValue(value="1700")])
            await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[mv]), suppress=False)
            sid = started["session_id"]
            samples = [s for e in events(agent.db, ["session.meter"], sid) for s in e["samples"]]
            assert [s.get("energy_wh") for s in samples] == [1700], samples

            # clock-aligned reading on connector 0, no transaction
            mv0 = dtypes.MeterValue(
                timestamp=ts(dt.datetime.now(dt.timezone.utc)),
                sampled_value=[sv("99999", M.energy_active_import_register, U.wh, context=enums.ReadingContext.sample_clock)],
            )
            await cp.call(call.MeterValues(connector_id=0, meter_value=[mv0]), suppress=False)

            await cp.call(
                call.StopTransaction(meter_stop=1800, timestamp=f"{day}T05:10:00Z", transaction_id=tx, reason=enums.Reason.local),
                suppress=False,
            )
            st = events(agent.db, ["session.stopped"], sid)
            assert len(st) == 1 and st[0]["energy_wh"] == 1300, st

            # a transaction id the agent never issued: still a valid CALLRESULT
            unknown = await cp.call(
                call.StopTransaction(meter_stop=1, timestamp=ts(dt.datetime.now(dt.timezone.utc)), transaction_id=2_000_000_000, id_tag="PYTAG0004"),
                suppress=False,
            )
            assert isinstance(unknown, call_result.StopTransaction)

    run(go())


@pytest.mark.parametrize(
    "transaction_data",
    [
        pytest.param([], id="empty-transactionData"),
        pytest.param([{"timestamp": "T1", "sampledValue": []}], id="element-without-sampledValue"),
    ],
)
def test_stop_transaction_data_the_schema_allows(agent, transaction_data):
    """The official StopTransaction.json puts no minItems on transactionData nor on its
    elements' sampledValue (MeterValues.json does, for its meterValue/sampledValue). The
    library validates the CALL against that schema before sending it; a schema-valid
    StopTransaction must be acknowledged, or the charger retries it forever and the session
    never ends."""
    cp_id = new_cp_id("txdata")

    async def go():
        async with charger(agent, cp_id) as (cp, _wire):
            t0 = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)
            start = await cp.call(
                call.StartTransaction(connector_id=1, id_tag="PYTAG0005", meter_start=100, timestamp=ts(t0)),
                suppress=False,
            )
            t1 = ts(t0 + dt.timedelta(minutes=9))
            data = [dict(e, timestamp=t1) for e in transaction_data]
            await cp.call(
                call.StopTransaction(meter_stop=600, timestamp=t1, transaction_id=start.transaction_id, transaction_data=data),
                suppress=False,
            )
            sid = session_started(agent.db, cp_id, start.transaction_id)["session_id"]
            st = events(agent.db, ["session.stopped"], sid)
            assert len(st) == 1 and st[0]["energy_wh"] == 500, st

    run(go())


def test_answers_to_unknown_ids_are_not_answered(agent):
    """OCPP-J: a CALLRESULT/CALLERROR that matches no outstanding CALL is ignored (never
    answered), and the connection carries on."""

    async def go():
        async with charger(agent, new_cp_id("stray")) as (cp, wire):
            async with cp._call_lock:
                await wire.send('[3,"stray-1",{}]')
                await wire.send('[4,"stray-2","GenericError","stray",{}]')
            hb = await cp.call(call.Heartbeat(), suppress=False)
            assert hb.current_time
            stray = [f for f in wire.received if json.loads(f)[1] in ("stray-1", "stray-2")]
            assert not stray, stray

    run(go())


# --------------------------------------------------------------------------- CALLERRORs


@dataclasses.dataclass
class FrobnicateWidget:  # an action OCPP 1.6 does not have
    widget: str = "x"


@dataclasses.dataclass
class Reset:  # a Central System -> Charge Point action, sent the wrong way
    type: str = "Soft"


@dataclasses.dataclass
class BootNotification:  # chargePointModel (required) missing
    charge_point_vendor: str = "InteropVendor"


@dataclasses.dataclass
class StatusNotification:  # connectorId as a string: wrong type
    connector_id: str = "1"
    error_code: str = "NoError"
    status: str = "Available"


@dataclasses.dataclass
class StatusNotificationBadEnum:
    connector_id: int = 1
    error_code: str = "NoError"
    status: str = "Sleeping"  # not in the 1.6 ChargePointStatus enumeration


def _renamed(cls, name):
    cls.__name__ = name  # the library takes the action from the payload's class name
    return cls


CALLERROR_CASES = [
    # (case id, payload, code on the wire as OCPP-J 1.6 spells it, library exception class)
    ("unknown-action", FrobnicateWidget(), "NotImplemented", ocpp_exc.NotImplementedError),
    ("wrong-direction-action", Reset(), "NotSupported", ocpp_exc.NotSupportedError),
    ("missing-required-field", BootNotification(), "OccurenceConstraintViolation", ocpp_exc.OccurenceConstraintViolationError),
    ("wrong-type", StatusNotification(), "TypeConstraintViolation", ocpp_exc.TypeConstraintViolationError),
    (
        "value-not-in-enum",
        _renamed(StatusNotificationBadEnum, "StatusNotification")(),
        "PropertyConstraintViolation",
        ocpp_exc.PropertyConstraintViolationError,
    ),
]


@pytest.mark.parametrize("case,payload,code,exc", CALLERROR_CASES, ids=[c[0] for c in CALLERROR_CASES])
def test_callerror_through_the_library(agent, case, payload, code, exc):
    """Invalid CALLs sent with the library (its own validation skipped): the agent's
    CALLERROR must be raised by the library as the right exception, and spelled as
    OCPP-J 1.6 spells it on the wire."""

    async def go():
        async with charger(agent, new_cp_id("err")) as (cp, wire):
            uid = f"err-{case}"[:36]
            with pytest.raises(ocpp_exc.OCPPError) as e:
                await cp.call(payload, suppress=False, unique_id=uid, skip_schema_validation=True)
            frame = wire.answer_to(uid)
            assert frame[0] == 4 and len(frame) == 5, frame
            assert frame[2] == code, f"agent answered {frame}; OCPP-J 1.6 code is {code}"
            assert isinstance(frame[3], str) and isinstance(frame[4], dict)
            assert type(e.value) is exc, f"library raised {type(e.value).__name__}"
            # the connection is still usable afterwards
            hb = await cp.call(call.Heartbeat(), suppress=False)
            assert hb.current_time

    run(go())


RAW_CASES = [
    # (case id, message id, raw text, code on the wire)
    ("not-json", "raw-1", '[2,"raw-1","Heartbeat",{', "FormationViolation"),
    ("payload-not-object", "raw-2", '[2,"raw-2","Heartbeat",[]]', "FormationViolation"),
    ("call-with-5-elements", "raw-3", '[2,"raw-3","Heartbeat",{},{}]', "FormationViolation"),
    ("unknown-field", "raw-4", '[2,"raw-4","Heartbeat",{"bogus":1}]', "FormationViolation"),
    ("meterstart-float", "raw-5",
     '[2,"raw-5","StartTransaction",{"connectorId":1,"idTag":"T","meterStart":1.5,"timestamp":"2026-01-01T00:00:00.000Z"}]',
     "TypeConstraintViolation"),
    ("idtag-too-long", "raw-6", '[2,"raw-6","Authorize",{"idTag":"' + "X" * 21 + '"}]', "TypeConstraintViolation"),
    ("missing-metervalue", "raw-7", '[2,"raw-7","MeterValues",{"connectorId":1}]', "OccurenceConstraintViolation"),
    ("empty-metervalue", "raw-8", '[2,"raw-8","MeterValues",{"connectorId":1,"meterValue":[]}]', "OccurenceConstraintViolation"),
    ("stop-without-transactionid", "raw-9",
     '[2,"raw-9","StopTransaction",{"meterStop":1,"timestamp":"2026-01-01T00:00:00.000Z"}]',
     "OccurenceConstraintViolation"),
    ("unknown-message-type", "raw-10", '[5,"raw-10",{}]', "FormationViolation"),
]


@pytest.mark.parametrize("case,uid,text,code", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_callerror_for_raw_frames(agent, case, uid, text, code):
    """Frames the library would never send, written straight to the websocket; the answer
    is read both as the library parses it and raw."""

    async def go():
        async with charger(agent, new_cp_id("raw")) as (cp, wire):
            parsed, frame = await raw_call(cp, wire, uid, text)
            assert frame[0] == 4 and frame[1] == uid and len(frame) == 5, frame
            assert frame[2] == code, f"agent answered {frame} to {text}; expected {code}"
            # the library understands the agent's code (spec spelling included)
            exc = parsed.to_exception()
            assert exc.code == code
            hb = await cp.call(call.Heartbeat(), suppress=False)
            assert hb.current_time

    run(go())


# --------------------------------------------------------------------------- the reverse direction


class RemoteCharger(ChargePoint):
    """A charger that charges when the central system remote-starts it: RemoteStart ->
    StartTransaction with the idTag it was given, then MeterValues every second (about
    2 Wh/s, 7200 W) until RemoteStop -> StopTransaction. Its handlers run after the
    library has validated the agent's CALL against the official request schema."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks = []
        self.stop = asyncio.Event()
        self.id_tags = []
        self.tx = None
        self.sent = []  # every CALL this charger sent (action names)

    @on(enums.Action.get_configuration)
    def on_get_configuration(self, key=None):
        keys = [] if key is None else key
        known = [
            dtypes.KeyValue(key="MeterValueSampleInterval", readonly=False, value="1")
            for k in keys
            if k == "MeterValueSampleInterval"
        ]
        unknown = [k for k in keys if k != "MeterValueSampleInterval"]
        if key is None:
            known = [dtypes.KeyValue(key="MeterValueSampleInterval", readonly=False, value="1")]
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(enums.Action.remote_start_transaction)
    def on_remote_start(self, id_tag, connector_id=None, charging_profile=None):
        self.id_tags.append(id_tag)
        return call_result.RemoteStartTransaction(status=enums.RemoteStartStopStatus.accepted)

    @after(enums.Action.remote_start_transaction)
    def after_remote_start(self, id_tag, connector_id=None, charging_profile=None):
        self.tasks.append(asyncio.get_running_loop().create_task(self.charge(connector_id or 1, id_tag)))

    @on(enums.Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id):
        if transaction_id != self.tx:
            return call_result.RemoteStopTransaction(status=enums.RemoteStartStopStatus.rejected)
        return call_result.RemoteStopTransaction(status=enums.RemoteStartStopStatus.accepted)

    @after(enums.Action.remote_stop_transaction)
    def after_remote_stop(self, transaction_id):
        if transaction_id == self.tx:
            self.stop.set()

    async def send(self, payload):
        self.sent.append(type(payload).__name__)
        return await self.call(payload, suppress=False)

    async def charge(self, connector_id, id_tag):
        now = lambda: ts(dt.datetime.now(dt.timezone.utc))  # noqa: E731
        meter_start = 50_000
        await self.send(
            call.StatusNotification(
                connector_id=connector_id, error_code=enums.ChargePointErrorCode.no_error,
                status=enums.ChargePointStatus.preparing, timestamp=now(),
            )
        )
        start = await self.send(
            call.StartTransaction(connector_id=connector_id, id_tag=id_tag, meter_start=meter_start, timestamp=now())
        )
        assert start.id_tag_info["status"] == enums.AuthorizationStatus.accepted, start
        self.tx = start.transaction_id
        await self.send(
            call.StatusNotification(
                connector_id=connector_id, error_code=enums.ChargePointErrorCode.no_error,
                status=enums.ChargePointStatus.charging, timestamp=now(),
            )
        )
        t0 = time.monotonic()
        register = meter_start
        while not self.stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            register = meter_start + round(2 * (time.monotonic() - t0))  # 7200 W = 2 Wh/s
            if self.stop.is_set():
                break
            mv = dtypes.MeterValue(
                timestamp=now(),
                sampled_value=[
                    sv(str(register), M.energy_active_import_register, U.wh),
                    sv("7200", M.power_active_import, U.w),
                ],
            )
            await self.send(call.MeterValues(connector_id=connector_id, transaction_id=self.tx, meter_value=[mv]))
        await self.send(
            call.StopTransaction(
                meter_stop=register, timestamp=now(), transaction_id=self.tx, reason=enums.Reason.remote
            )
        )
        await self.send(
            call.StatusNotification(
                connector_id=connector_id, error_code=enums.ChargePointErrorCode.no_error,
                status=enums.ChargePointStatus.finishing, timestamp=now(),
            )
        )


def test_cli_test_session_against_a_remote_started_charger(agent):
    """`chargesite charger --config CFG CP_ID test-session --secs 5` (through the agent's
    local API on its Unix socket) against a PyPI `ocpp` charger: the agent's
    GetConfiguration, RemoteStartTransaction and RemoteStopTransaction, each validated by
    the library against the official request schema before the handler answers; the
    charger's StartTransaction, MeterValues and StopTransaction validated as every CALL
    is; the CLI's verdict passes."""
    if not agent.config:
        pytest.skip("CHARGESITE_CONFIG (the agent's config, with a [status] socket) not given")
    cp_id = new_cp_id("tsess")

    async def go():
        async with connect(agent.url(cp_id), subprotocols=[OCPP16], open_timeout=TIMEOUT) as ws:
            wire = Wire(ws)
            cp = RemoteCharger(cp_id, wire, response_timeout=TIMEOUT)
            reader = asyncio.create_task(cp.start())
            try:
                await boot(cp)
                env = {k: v for k, v in os.environ.items() if k != "CHARGESITE_STATUS_PASSWORD"}
                proc = await asyncio.create_subprocess_exec(
                    agent.bin, "charger", "--config", agent.config, cp_id, "test-session", "--secs", "5",
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, env=env,
                )
                out, err = await asyncio.wait_for(proc.communicate(), 100)
                out, err = out.decode(), err.decode()
                for t in cp.tasks:
                    await asyncio.wait_for(t, TIMEOUT)  # re-raises what failed in charge()
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                    await reader
        return proc.returncode, out, err, cp, wire

    rc, out, err, cp, wire = asyncio.run(asyncio.wait_for(go(), 120))
    report = f"exit {rc}\nstdout:\n{out}\nstderr:\n{err}"
    assert rc == 0, report
    assert "test session passed" in out, report
    assert "ok   meter increasing" in out, report
    # the tag the agent made up (never printed) is the one the charger started with
    assert len(cp.id_tags) == 1 and cp.id_tags[0] not in out + err, report
    assert cp.sent.count("StartTransaction") == 1 and cp.sent.count("StopTransaction") == 1, cp.sent
    assert cp.sent.count("MeterValues") >= 3, cp.sent
    # the agent's CALLs, as spelled on the wire; no CALLERROR either way
    actions = [json.loads(r)[2] for r in wire.received if json.loads(r)[0] == 2]
    assert "GetConfiguration" in actions and "RemoteStartTransaction" in actions, actions
    assert "RemoteStopTransaction" in actions, actions
    assert not [r for r in wire.received + wire.sent if json.loads(r)[0] == 4], "CALLERROR on the wire"
    started = session_started(agent.db, cp_id, cp.tx)
    assert started["auth_method"] == "remote" and started.get("order_id") is None, started
    stopped = events(agent.db, ["session.stopped"], started["session_id"])
    assert len(stopped) == 1 and stopped[0]["energy_wh"] > 0, stopped


# --------------------------------------------------------------------------- site power limit
#
# Against an agent of the test's own with `[site] max_power_kw = 22` (fixture `power_agent`):
# the agent reads what the charger takes (GetConfiguration
# `ChargingScheduleAllowedChargingRateUnit`, `ChargeProfileMaxStackLevel`), installs a
# fail-safe TxDefaultProfile on connector 0 and gives each running transaction its share
# as a TxProfile, in the unit the charger advertised. The library validates each of those
# CALLs against the official SetChargingProfile.json before the handler runs (its `limit`
# and `minChargingRate` with `multipleOf: 0.1` compared as decimals, see README), and
# answers a CALLERROR instead when one is invalid; the control below proves it does.

SMART_KEYS = ["ChargingScheduleAllowedChargingRateUnit", "ChargeProfileMaxStackLevel"]
NOMINAL_V = 230  # the agent's voltage for a limit in amperes (src/power.rs)
MIN_CURRENT_A = 6  # IEC 61851-1: below it a session is paused


def amps_of(watts, phases=3):
    """`watts` as a per-phase current at 230 V, rounded down to 0.1 A."""
    return decimal.Decimal(watts * 10 // (NOMINAL_V * phases)) / 10


class SmartCharger(Charger):
    """A 1.6 charge point with smart charging: it answers GetConfiguration with `UNITS`
    and `MAX_STACK_LEVEL`, and accepts every SetChargingProfile and ClearChargingProfile
    (recorded by unique id as the handler got it, i.e. after the library's schema
    validation)."""

    UNITS = "Current"
    MAX_STACK_LEVEL = "3"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.asked = []  # the `key` list of each GetConfiguration
        self.profiles = {}  # unique id -> SetChargingProfile / ClearChargingProfile request, validated

    @on(enums.Action.get_configuration)
    def on_get_configuration(self, key=None):
        self.asked.append(key)
        have = {"ChargingScheduleAllowedChargingRateUnit": self.UNITS, "ChargeProfileMaxStackLevel": self.MAX_STACK_LEVEL}
        keys = list(have) if key is None else key
        return call_result.GetConfiguration(
            configuration_key=[dtypes.KeyValue(key=k, readonly=True, value=have[k]) for k in keys if k in have],
            unknown_key=[k for k in keys if k not in have] or None,
        )

    @on(enums.Action.set_charging_profile)
    def on_set_charging_profile(self, connector_id, cs_charging_profiles, call_unique_id):
        self.profiles[call_unique_id] = {"connector_id": connector_id, **cs_charging_profiles}
        return call_result.SetChargingProfile(status=enums.ChargingProfileStatus.accepted)

    @on(enums.Action.clear_charging_profile)
    def on_clear_charging_profile(self, call_unique_id, **kwargs):
        self.profiles[call_unique_id] = kwargs
        return call_result.ClearChargingProfile(status=enums.ClearChargingProfileStatus.accepted)


def agent_calls(wire, action):
    """The agent's CALLs of `action` as they came over the wire, in order: (unique id,
    payload), numbers with a fraction as `Decimal` (so 31.8 is 31.8)."""
    out = []
    for raw in wire.received:
        f = json.loads(raw, parse_float=decimal.Decimal)
        if isinstance(f, list) and len(f) == 4 and f[0] == 2 and f[2] == action:
            out.append((f[1], f[3]))
    return out


def our_answer(wire, unique_id):
    """What the charger (the library) sent back to the agent's CALL `unique_id`, or None."""
    for raw in wire.sent:
        f = json.loads(raw)
        if f[0] in (3, 4) and f[1] == unique_id:
            return f
    return None


def profiles_on_wire(wire, purpose, key="csChargingProfiles"):
    """The agent's SetChargingProfile CALLs of `purpose` the charger has answered."""
    return [
        (uid, p)
        for uid, p in agent_calls(wire, "SetChargingProfile")
        if p.get(key, {}).get("chargingProfilePurpose") == purpose and our_answer(wire, uid) is not None
    ]


def refusals(wire):
    """The agent's CALLs the charger (the library) answered with a CALLERROR: (CALL, error)."""
    out = []
    for raw in wire.received:
        f = json.loads(raw)
        if isinstance(f, list) and len(f) == 4 and f[0] == 2:
            answer = our_answer(wire, f[1])
            if answer is not None and answer[0] == 4:
                out.append((f, answer))
    return out


async def until(what, pred, secs=TIMEOUT, wire=None):
    """Waits for `pred()`; with `wire`, fails at once when the charger refuses a CALL of
    the agent (a schema-invalid one: the library's CALLERROR says why)."""
    deadline = time.monotonic() + secs
    while not pred():
        if wire is not None and refusals(wire):
            raise AssertionError(f"waiting for {what}: the charger refused the agent's CALL: {refusals(wire)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {secs} s waiting for {what}")
        await asyncio.sleep(0.05)


def agent_log(agent):
    with open(agent.log) as f:
        return "agent log (tail):\n" + "".join(f.readlines()[-40:])


def assert_every_profile_validated_and_accepted(cp, wire, action="SetChargingProfile"):
    """Every such CALL of the agent reached the handler (so the library's schema check
    passed) and was answered Accepted; nothing on the wire was a CALLERROR."""
    calls = agent_calls(wire, action)
    assert calls, f"no {action} from the agent"
    for uid, payload in calls:
        assert uid in cp.profiles, f"{action} {payload} did not reach the handler (schema-invalid?): {our_answer(wire, uid)}"
        assert our_answer(wire, uid) == [3, uid, {"status": "Accepted"}], our_answer(wire, uid)
    errors = [r for r in wire.received + wire.sent if json.loads(r)[0] == 4]
    assert not errors, f"CALLERROR on the wire: {errors}"


def test_site_power_limit_sends_schema_valid_profiles_in_amperes(power_agent):
    """`[site] max_power_kw = 11` and a charger with two connectors that takes `Current`
    only: it is asked what it takes, gets a fail-safe TxDefaultProfile (connector 0,
    Relative) and, for each running transaction, a TxProfile naming it (Absolute, with
    startSchedule and duration), all in amperes at no more than the stack level it
    advertised, each validated by the library against the official schema and accepted.
    Alone, a transaction gets the whole site (11 kW / (230 V x 3) = 15.9 A, below the
    22 kW connector's 31.8 A: the site limit is what bounds it); with a second one running
    the two TxProfiles in force add up to no more than that, neither below 6 A."""
    cp_id = new_cp_id("power")
    site_a = amps_of(power_agent.max_power_w)
    assert site_a == decimal.Decimal("15.9")

    def tx_profiles(wire, tx):
        return [p for _, p in profiles_on_wire(wire, "TxProfile") if p["csChargingProfiles"].get("transactionId") == tx]

    def status(connector_id, s, t):
        return call.StatusNotification(
            connector_id=connector_id, error_code=enums.ChargePointErrorCode.no_error, status=s, timestamp=ts(t)
        )

    async def start(cp, connector_id, tag):
        t = dt.datetime.now(dt.timezone.utc)
        res = await cp.call(
            call.StartTransaction(connector_id=connector_id, id_tag=tag, meter_start=0, timestamp=ts(t)),
            suppress=False,
        )
        assert res.id_tag_info["status"] == enums.AuthorizationStatus.accepted
        await cp.call(status(connector_id, enums.ChargePointStatus.charging, t), suppress=False)
        return res.transaction_id

    began = dt.datetime.now(dt.timezone.utc)

    async def go():
        async with charger(power_agent, cp_id, SmartCharger) as (cp, wire):
            res = await boot(cp)
            assert res.status == enums.RegistrationStatus.accepted
            for cid in (0, 1, 2):
                await cp.call(status(cid, enums.ChargePointStatus.available, dt.datetime.now(dt.timezone.utc)), suppress=False)
            await until("the fail-safe TxDefaultProfile", lambda: profiles_on_wire(wire, "TxDefaultProfile"), wire=wire)

            tx1 = await start(cp, 1, "PYPOWER01")
            await until(f"a TxProfile for transaction {tx1}", lambda: tx_profiles(wire, tx1), wire=wire)
            alone = tx_profiles(wire, tx1)[-1]
            mv = dtypes.MeterValue(
                timestamp=ts(dt.datetime.now(dt.timezone.utc)),
                sampled_value=[sv("500", M.energy_active_import_register, U.wh), sv("10900", M.power_active_import, U.w)],
            )
            await cp.call(call.MeterValues(connector_id=1, transaction_id=tx1, meter_value=[mv]), suppress=False)

            tx2 = await start(cp, 2, "PYPOWER02")
            # the agent lowers the first before it raises the second: once the second's
            # profile is answered, the first's lowered one has been too
            await until(f"a TxProfile for transaction {tx2}", lambda: tx_profiles(wire, tx2), wire=wire)
            shared = (tx_profiles(wire, tx1)[-1], tx_profiles(wire, tx2)[-1])
            t = dt.datetime.now(dt.timezone.utc)
            for tx in (tx1, tx2):
                await cp.call(call.StopTransaction(meter_stop=1000, timestamp=ts(t), transaction_id=tx), suppress=False)
        return cp, wire, tx1, tx2, alone, shared

    cp, wire, tx1, tx2, alone, shared = run(go())
    ended = dt.datetime.now(dt.timezone.utc)
    log = agent_log(power_agent)
    assert_every_profile_validated_and_accepted(cp, wire)

    # it was asked what it takes, before any profile
    asks = agent_calls(wire, "GetConfiguration")
    assert asks and all(sorted(p["key"]) == sorted(SMART_KEYS) for _, p in asks), asks
    first_profile = next(i for i, r in enumerate(wire.received) if '"SetChargingProfile"' in r)
    first_ask = next(i for i, r in enumerate(wire.received) if '"GetConfiguration"' in r)
    assert first_ask < first_profile, wire.received

    calls = [p for _, p in agent_calls(wire, "SetChargingProfile")]
    for p in calls:
        prof = p["csChargingProfiles"]
        sched = prof["chargingSchedule"]
        assert sched["chargingRateUnit"] == "A", f"the charger takes Current only: {p}"
        assert 0 <= prof["stackLevel"] <= int(SmartCharger.MAX_STACK_LEVEL), p
        periods = sched["chargingSchedulePeriod"]
        assert periods and periods[0]["startPeriod"] == 0, p
        for period in periods:
            assert 0 <= period["limit"] <= site_a, f"{period['limit']} A is above the site limit ({site_a} A): {p}"
            assert period.get("numberPhases", 3) in (1, 2, 3), p

    defaults = [p for p in calls if p["csChargingProfiles"]["chargingProfilePurpose"] == "TxDefaultProfile"]
    assert defaults, calls
    for p in defaults:
        prof = p["csChargingProfiles"]
        assert p["connectorId"] == 0, p
        assert prof["chargingProfileId"] == 9100, p
        assert prof["chargingProfileKind"] == "Relative", p
        assert "transactionId" not in prof and "startSchedule" not in prof["chargingSchedule"], p
        # what each of the site's two connectors may draw at once without the gateway
        assert prof["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] * 2 <= site_a, p

    txp = [p for p in calls if p["csChargingProfiles"]["chargingProfilePurpose"] == "TxProfile"]
    assert {p["csChargingProfiles"].get("transactionId") for p in txp} == {tx1, tx2}, txp
    for p in txp:
        prof = p["csChargingProfiles"]
        sched = prof["chargingSchedule"]
        connector = 1 if prof["transactionId"] == tx1 else 2
        assert p["connectorId"] == connector, p
        assert prof["chargingProfileId"] == 9200 + connector, p
        assert prof["chargingProfileKind"] == "Absolute", p
        start = parse_ts(sched["startSchedule"])
        assert isinstance(sched["duration"], int) and sched["duration"] > 0, p
        # in force from before it was sent until after the test
        assert began - dt.timedelta(minutes=5) <= start <= ended < start + dt.timedelta(seconds=sched["duration"]), p
        assert sched["chargingSchedulePeriod"][0]["limit"] >= MIN_CURRENT_A, f"paused, with room for it: {p}"

    def limit(p):
        return p["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]

    assert limit(alone) == site_a, f"alone on the site: {alone}"
    assert sum(limit(p) for p in shared) <= site_a, shared

    # the agent's own record of the shares agrees with what the charger was sent
    power = [e for e in events(power_agent.db, ["site.power"]) if any(a["cp_id"] == cp_id for a in e["allocations"])]
    assert power, log
    for e in power:
        assert e["max_power_w"] == power_agent.max_power_w, e
        assert sum(a["limit_w"] for a in e["allocations"]) <= power_agent.max_power_w, e
        assert not any(a.get("assumed") for a in e["allocations"]), e
    both = [e for e in power if len(e["allocations"]) == 2]
    assert both, power
    for a in both[-1]["allocations"]:
        assert amps_of(a["limit_w"]) == limit(shared[a["connector_id"] - 1]), (both[-1], shared)


def _profile_request(**schedule_overrides):
    """A SetChargingProfile request as the agent sends one (a TxDefaultProfile in A)."""
    schedule = {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 31.8, "numberPhases": 3}]}
    schedule.update(schedule_overrides)
    return {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": 9100, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative", "chargingSchedule": schedule,
        },
    }


@pytest.mark.parametrize(
    "payload, valid",
    [
        (_profile_request(), True),
        # 31.85 is not a multiple of 0.1 (SetChargingProfile.json: `multipleOf: 0.1`)
        (_profile_request(chargingSchedulePeriod=[{"startPeriod": 0, "limit": 31.85, "numberPhases": 3}]), False),
        (_profile_request(chargingRateUnit="kW"), False),
        (_profile_request(chargingSchedulePeriod=[{"startPeriod": 0, "limit": "31.8"}]), False),
        ({"connectorId": 0}, False),
    ],
    ids=["valid", "limit-not-a-multiple-of-0.1", "unit-kW", "limit-as-string", "no-csChargingProfiles"],
)
def test_control_set_charging_profile_validation_is_active(payload, valid):
    """Control for the site power test: a fake central system sends SetChargingProfile to
    the same `SmartCharger`. A valid request reaches the handler and is answered Accepted;
    an invalid one is refused by the library with a CALLERROR before the handler runs.
    So the site power test's "reached the handler" means "schema-valid"."""
    from websockets.asyncio.server import serve

    got = []

    async def fake_central_system(ws):
        await ws.send(json.dumps([2, "ctl-1", "SetChargingProfile", payload]))
        got.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))

    async def go():
        async with serve(fake_central_system, "127.0.0.1", 0, subprotocols=[OCPP16]) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/ocpp/CONTROL", subprotocols=[OCPP16]) as ws:
                cp = SmartCharger("CONTROL", Wire(ws), response_timeout=TIMEOUT)
                reader = asyncio.create_task(cp.start())
                try:
                    await until("the charger's answer", lambda: got)
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
