// chargesite driven by an independent OCPP 1.6J implementation: npm `ocpp-rpc` as an
// RPCClient with strictMode (ajv + ajv-formats over the official OCPP 1.6 JSON schemas):
// every CALL it sends and every CALLRESULT it receives is validated, formats included
// (`currentTime` must be a date-time), and a schema-invalid answer rejects the call.
//
// Agent under test: CHARGESITE_WS_URL (ws://127.0.0.1:PORT/ocpp) and CHARGESITE_DB (its
// SQLite file; read through a `python3 -c` sqlite3 one-liner, Node 20 has no sqlite).
// Without them the suite starts its own agent (CHARGESITE_BIN, default
// <repo>/target/debug/chargesite) and stops it with SIGTERM, expecting exit 0.
//
// Reverse direction (the agent sending CALLs to the charger): the site power limit tests at
// the end, against an agent of their own with `[site] max_power_kw` (GetConfiguration,
// SetChargingProfile validated by strict mode before the handler runs).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, rmSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

import rpc from 'ocpp-rpc'; // CommonJS: its error classes are only on the default export
const { RPCClient, RPCServer } = rpc;

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const PROTOCOL = 'ocpp1.6';
const TIMEOUT_MS = 10_000;
const RFC3339_MS_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

// ------------------------------------------------------------------------------- agent

let agent; // {wsUrl, db}
let ownAgent; // {proc, tmp} when this suite started it

async function startOwnAgent() {
  const bin = process.env.CHARGESITE_BIN ?? join(REPO, 'target', 'debug', 'chargesite');
  const tmp = mkdtempSync(join(tmpdir(), 'interop-node-'));
  const db = join(tmp, 'cs.db');
  const cfg = join(tmp, 'chargesite.toml');
  writeFileSync(
    cfg,
    `[site]\nid = "site-001"\n[ocpp]\nlisten = "127.0.0.1:0"\nallow_unknown_chargers = true\n` +
      `[auth]\nfree_vend = true\n[store]\npath = "${db}"\n`,
  );
  const log = openSync(join(tmp, 'agent.log'), 'w');
  const proc = spawn(bin, ['run', '--config', cfg], { stdio: ['ignore', 'pipe', log] });
  const lines = createInterface({ input: proc.stdout });
  const port = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`agent did not start; see ${tmp}/agent.log`)), 30_000);
    lines.on('line', (l) => {
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(l);
      if (m) {
        clearTimeout(timer);
        res(Number(m[1]));
      }
    });
    proc.once('exit', (c) => rej(new Error(`agent exited ${c}; see ${tmp}/agent.log`)));
  });
  ownAgent = { proc, tmp };
  return { wsUrl: `ws://127.0.0.1:${port}/ocpp`, db };
}

async function setupAgent() {
  if (process.env.CHARGESITE_WS_URL && process.env.CHARGESITE_DB) {
    agent = { wsUrl: process.env.CHARGESITE_WS_URL.replace(/\/$/, ''), db: process.env.CHARGESITE_DB };
  } else {
    agent = await startOwnAgent();
  }
}

async function teardownAgent() {
  if (!ownAgent) return;
  const exited = once(ownAgent.proc, 'exit');
  ownAgent.proc.kill('SIGTERM');
  const [code] = await exited;
  rmSync(ownAgent.tmp, { recursive: true, force: true });
  assert.equal(code, 0, `agent exited ${code} on SIGTERM`);
}

// ----------------------------------------------------------------------------- helpers

const PY_EVENTS = `
import json, sqlite3, sys
con = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=10)
types = json.loads(sys.argv[2])
rows = con.execute("SELECT seq, type, at, body FROM events WHERE type IN (%s) ORDER BY seq"
                   % ",".join("?" * len(types)), types).fetchall()
print(json.dumps([dict(json.loads(b), seq=s, type=t, at=a) for s, t, a, b in rows]))
`;

function events(types, filter = () => true) {
  const out = execFileSync('python3', ['-c', PY_EVENTS, agent.db, JSON.stringify(types)], { encoding: 'utf8' });
  return JSON.parse(out).filter(filter);
}

const ts = (d) => d.toISOString(); // always ms + Z
const minutes = (d, m) => new Date(d.getTime() + m * 60_000);
const newCpId = (tag) => `NODE-${tag}-${randomBytes(4).toString('hex')}`;

/** An RPCClient speaking ocpp1.6; every wire frame in both directions is recorded. */
async function charger(tag, { strict = true } = {}) {
  const cli = new RPCClient({
    endpoint: agent.wsUrl,
    identity: newCpId(tag),
    protocols: [PROTOCOL],
    strictMode: strict,
    reconnect: false,
    callTimeoutMs: TIMEOUT_MS,
  });
  cli.wire = { in: [], out: [] };
  cli.on('message', ({ message, outbound }) => (outbound ? cli.wire.out : cli.wire.in).push(String(message)));
  cli.strictFailures = [];
  cli.on('strictValidationFailure', (e) => cli.strictFailures.push(e));
  await cli.connect();
  assert.equal(cli.protocol, PROTOCOL, 'agent must negotiate ocpp1.6');
  return cli;
}

function answerTo(cli, id) {
  for (const raw of cli.wire.in) {
    let f;
    try {
      f = JSON.parse(raw);
    } catch {
      continue;
    }
    if (Array.isArray(f) && f[1] === id && (f[0] === 3 || f[0] === 4)) return f;
  }
  return undefined;
}

async function waitAnswer(cli, id) {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    const f = answerTo(cli, id);
    if (f) return f;
    if (Date.now() > deadline) throw new Error(`no answer to ${id}; got ${JSON.stringify(cli.wire.in)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const bootParams = {
  chargePointVendor: 'InteropVendor',
  chargePointModel: 'ocpp-rpc-CP',
  chargePointSerialNumber: 'SN-NODE-0001',
  firmwareVersion: '2.2.1',
};

// Everything sits in one suite whose hooks start/stop the agent (suite-level hooks behave
// the same on every Node with node:test; file-level ones did not always).
describe('chargesite OCPP 1.6J driven by ocpp-rpc', () => {
  before(setupAgent);
  after(teardownAgent);

  // ---------------------------------------------------------------------------- the flow

  describe('full transaction flow (strict mode)', () => {
    let cli;
    let tx;
    let sid;
    const t0 = new Date(Date.now() - 30 * 60_000);
    const t1 = minutes(t0, 30);

    before(async () => {
      cli = await charger('flow');
    });
    after(async () => {
      await cli?.close({ code: 1000 });
    });

    test('BootNotification: Accepted, currentTime, interval', async () => {
      const res = await cli.call('BootNotification', bootParams);
      assert.equal(res.status, 'Accepted');
      assert.match(res.currentTime, RFC3339_MS_UTC);
      assert.ok(Math.abs(Date.parse(res.currentTime) - Date.now()) < 60_000);
      assert.ok(Number.isInteger(res.interval) && res.interval > 0);
    });

    test('Heartbeat', async () => {
      const res = await cli.call('Heartbeat', {});
      assert.ok(Math.abs(Date.parse(res.currentTime) - Date.now()) < 60_000);
    });

    test('StatusNotification (connector 0 and 1)', async () => {
      for (const [connectorId, status] of [[0, 'Available'], [1, 'Preparing']]) {
        const res = await cli.call('StatusNotification', {
          connectorId, errorCode: 'NoError', status, timestamp: ts(new Date()),
        });
        assert.deepEqual(res, {});
      }
    });

    test('Authorize: Accepted with free vend', async () => {
      const res = await cli.call('Authorize', { idTag: 'NODETAG01' });
      assert.equal(res.idTagInfo.status, 'Accepted');
    });

    test('StartTransaction: transactionId >= 1, session.started durable', async () => {
      const res = await cli.call('StartTransaction', {
        connectorId: 1, idTag: 'NODETAG01', meterStart: 1000, timestamp: ts(t0),
      });
      assert.equal(res.idTagInfo.status, 'Accepted');
      assert.ok(Number.isInteger(res.transactionId) && res.transactionId >= 1);
      tx = res.transactionId;
      const started = events(['session.started'], (e) => e.cp_id === cli.identity && e.transaction_id === tx);
      assert.equal(started.length, 1);
      assert.equal(started[0].meter_start_wh, 1000);
      assert.equal(started[0].connector_id, 1);
      sid = started[0].session_id;
    });

    test('MeterValues: Wh and kWh registers, power, per-phase current/voltage, SoC', async () => {
      const sv = (value, measurand, unit, extra = {}) => ({ value, measurand, unit, context: 'Sample.Periodic', ...extra });
      let res = await cli.call('MeterValues', {
        connectorId: 1,
        transactionId: tx,
        meterValue: [{
          timestamp: ts(minutes(t0, 10)),
          sampledValue: [
            sv('2500', 'Energy.Active.Import.Register', 'Wh', { location: 'Outlet' }),
            sv('11000', 'Power.Active.Import', 'W'),
            sv('16.0', 'Current.Import', 'A', { phase: 'L1' }),
            sv('16.2', 'Current.Import', 'A', { phase: 'L2' }),
            sv('15.8', 'Current.Import', 'A', { phase: 'L3' }),
            sv('230.1', 'Voltage', 'V', { phase: 'L1-N' }),
            sv('229.9', 'Voltage', 'V', { phase: 'L2-N' }),
            sv('230.0', 'Voltage', 'V', { phase: 'L3-N' }),
            sv('40', 'SoC', 'Percent', { location: 'EV' }),
          ],
        }],
      });
      assert.deepEqual(res, {});
      res = await cli.call('MeterValues', {
        connectorId: 1,
        transactionId: tx,
        meterValue: [{
          timestamp: ts(minutes(t0, 20)),
          sampledValue: [
            sv('4.2', 'Energy.Active.Import.Register', 'kWh'),
            sv('10.5', 'Power.Active.Import', 'kW'),
            sv('55', 'SoC', 'Percent', { location: 'EV' }),
          ],
        }],
      });
      assert.deepEqual(res, {});
      const samples = events(['session.meter'], (e) => e.session_id === sid).flatMap((e) => e.samples);
      const s1 = samples.find((s) => s.energy_wh === 2500);
      const s2 = samples.find((s) => s.energy_wh === 4200);
      assert.ok(s1 && s2, JSON.stringify(samples));
      assert.equal(s1.power_w, 11000);
      assert.ok(Math.abs(s1.current_a - 16.0) < 0.01 && Math.abs(s1.voltage_v - 230.0) < 0.01, JSON.stringify(s1));
      assert.equal(s1.soc_pct, 40);
      assert.equal(s2.power_w, 10500);
      assert.equal(s2.soc_pct, 55);
    });

    test('StopTransaction with transactionData: energy_wh recorded', async () => {
      const res = await cli.call('StopTransaction', {
        transactionId: tx,
        meterStop: 5200,
        timestamp: ts(t1),
        reason: 'EVDisconnected',
        idTag: 'NODETAG01',
        transactionData: [
          { timestamp: ts(t0), sampledValue: [{ value: '1000', context: 'Transaction.Begin', measurand: 'Energy.Active.Import.Register', unit: 'Wh' }] },
          { timestamp: ts(t1), sampledValue: [{ value: '5200', context: 'Transaction.End', measurand: 'Energy.Active.Import.Register', unit: 'Wh' }] },
        ],
      });
      assert.equal(res.idTagInfo.status, 'Accepted');
      const stopped = events(['session.stopped'], (e) => e.session_id === sid);
      assert.equal(stopped.length, 1);
      assert.equal(stopped[0].energy_wh, 4200);
      assert.equal(stopped[0].meter_stop_wh, 5200);
      assert.equal(stopped[0].reason, 'EVDisconnected');
      assert.equal(Date.parse(stopped[0].stopped_at), t1.getTime());
      const seqs = events(['session.started', 'session.meter', 'session.stopped'], (e) => e.session_id === sid).map((e) => e.seq);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    });

    test('strict mode saw no schema violation and the agent sent no CALLERROR', () => {
      assert.deepEqual(cli.strictFailures, []);
      assert.deepEqual(cli.wire.in.filter((m) => JSON.parse(m)[0] === 4), []);
    });
  });

  describe('answers with optional parts absent are schema-valid', () => {
    test('StopTransaction without idTag, DataTransfer, unknown transaction', async () => {
      const cli = await charger('opt');
      try {
        await cli.call('BootNotification', bootParams);
        const t0 = new Date(Date.now() - 5 * 60_000);
        const start = await cli.call('StartTransaction', { connectorId: 2, idTag: 'NODETAG02', meterStart: 0, timestamp: ts(t0) });
        assert.deepEqual(await cli.call('StopTransaction', { transactionId: start.transactionId, meterStop: 300, timestamp: ts(minutes(t0, 4)) }), {});
        const dt = await cli.call('DataTransfer', { vendorId: 'com.example.interop', messageId: 'ping', data: 'x' });
        assert.ok(['Accepted', 'Rejected', 'UnknownMessageId', 'UnknownVendorId'].includes(dt.status));
        // a transaction the agent never issued must still be answered
        await cli.call('StopTransaction', { transactionId: 2_000_000_001, meterStop: 1, timestamp: ts(new Date()), idTag: 'NODETAG02' });
        assert.deepEqual(cli.strictFailures, []);
      } finally {
        await cli.close({ code: 1000 });
      }
    });
  });

  describe('strict mode is really validating (control: a fake central system)', () => {
    test('a schema-invalid BootNotification answer is rejected by ocpp-rpc', async () => {
      const server = new RPCServer({ protocols: [PROTOCOL], strictMode: false });
      server.on('client', (c) => {
        c.handle('BootNotification', () => ({ status: 'Accepted', currentTime: 'yesterday', interval: 300 }));
      });
      const http = await server.listen(0, '127.0.0.1');
      const { port } = http.address();
      const cli = new RPCClient({
        endpoint: `ws://127.0.0.1:${port}`, identity: 'CONTROL', protocols: [PROTOCOL], strictMode: true, reconnect: false, callTimeoutMs: TIMEOUT_MS,
      });
      try {
        const failures = [];
        cli.on('strictValidationFailure', (e) => failures.push(e));
        await cli.connect();
        await assert.rejects(cli.call('BootNotification', bootParams), (e) => e instanceof rpc.RPCError);
        assert.equal(failures.length, 1);
        assert.equal(failures[0].method, 'BootNotification');
        assert.equal(failures[0].isCall, false); // it was the answer that failed validation
      } finally {
        await cli.close({ force: true });
        await server.close({ force: true });
      }
    });
  });

  // -------------------------------------------------------------------------- CALLERRORs

  // Schema-invalid CALLs sent through the library with strict mode off (strict mode would
  // refuse to send them): the agent's CALLERROR is raised by ocpp-rpc as its error class for
  // that code, and the code on the wire must be spelled as OCPP-J 1.6 spells it.
  const LIBRARY_CASES = [
    ['unknown action', 'FrobnicateWidget', {}, 'NotImplemented', rpc.RPCNotImplementedError],
    ['central-system action sent by a charger', 'Reset', { type: 'Soft' }, 'NotSupported', rpc.RPCNotSupportedError],
    ['missing required field', 'BootNotification', { chargePointVendor: 'V' }, 'OccurenceConstraintViolation', rpc.RPCOccurenceConstraintViolationError],
    ['wrong type', 'StatusNotification', { connectorId: '1', errorCode: 'NoError', status: 'Available' }, 'TypeConstraintViolation', rpc.RPCTypeConstraintViolationError],
    ['value not in enum', 'StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Sleeping' }, 'PropertyConstraintViolation', rpc.RPCPropertyConstraintViolationError],
    ['additional property', 'Heartbeat', { bogus: 1 }, 'FormationViolation', rpc.RPCFormationViolationError],
    ['string too long', 'Authorize', { idTag: 'X'.repeat(21) }, 'TypeConstraintViolation', rpc.RPCTypeConstraintViolationError],
  ];

  describe('CALLERRORs as ocpp-rpc sees them', () => {
    let cli;
    before(async () => {
      cli = await charger('err', { strict: false });
    });
    after(async () => {
      await cli?.close({ code: 1000 });
    });

    for (const [name, method, params, code, Klass] of LIBRARY_CASES) {
      test(`${name} -> ${code}`, async () => {
        const err = await cli.call(method, params).then(
          () => assert.fail('expected a CALLERROR'),
          (e) => e,
        );
        assert.ok(err instanceof Klass, `ocpp-rpc raised ${err?.constructor?.name}: ${err?.message}`);
        assert.equal(err.rpcErrorCode, code);
        const call = cli.wire.out.map((m) => JSON.parse(m)).findLast((f) => f[0] === 2 && f[2] === method);
        const frame = answerTo(cli, call[1]);
        assert.equal(frame.length, 5, JSON.stringify(frame));
        assert.equal(frame[2], code, `agent answered ${JSON.stringify(frame)}`);
        assert.equal(typeof frame[3], 'string');
        assert.equal(typeof frame[4], 'object');
        // still usable afterwards
        assert.ok((await cli.call('Heartbeat', {})).currentTime);
      });
    }

    // Frames no library would send, written with sendRaw; the answer is read off the wire.
    const RAW_CASES = [
      ['not JSON', 'raw-1', '[2,"raw-1","Heartbeat",{', 'FormationViolation'],
      ['payload not an object', 'raw-2', '[2,"raw-2","Heartbeat","x"]', 'FormationViolation'],
      ['CALL with 3 elements', 'raw-3', '[2,"raw-3","Heartbeat"]', 'FormationViolation'],
      ['meterStart not an integer', 'raw-4',
        '[2,"raw-4","StartTransaction",{"connectorId":1,"idTag":"T","meterStart":"1000","timestamp":"2026-01-01T00:00:00.000Z"}]',
        'TypeConstraintViolation'],
      ['missing meterValue', 'raw-5', '[2,"raw-5","MeterValues",{"connectorId":1}]', 'OccurenceConstraintViolation'],
    ];
    for (const [name, id, text, code] of RAW_CASES) {
      test(`raw: ${name} -> ${code}`, async () => {
        cli.sendRaw(text);
        const frame = await waitAnswer(cli, id);
        assert.deepEqual(frame.slice(0, 3), [4, id, code], `agent answered ${JSON.stringify(frame)} to ${text}`);
        assert.equal(frame.length, 5);
        assert.ok((await cli.call('Heartbeat', {})).currentTime);
      });
    }
  });
});

// ------------------------------------------------------------------- site power limit
//
// Against an agent of its own with `[site] max_power_kw = 11` (never the shared one: every
// charger on a limited site is sent CALLs, and every open session takes a share): the agent
// reads ChargingScheduleAllowedChargingRateUnit and ChargeProfileMaxStackLevel
// (GetConfiguration), installs a fail-safe TxDefaultProfile on connector 0, and gives each
// running transaction its share as a TxProfile. Strict mode validates each of those CALLs
// against the official SetChargingProfile.json (ocpp-rpc's `multipleOf` allows for
// floating point) before the handler runs, and answers a CALLERROR instead when one is
// invalid; the control proves it.

const SITE_MAX_POWER_KW = 11; // below the 22 kW a connector is assumed to take
const SITE_MAX_POWER_W = SITE_MAX_POWER_KW * 1000;
const NOMINAL_V = 230; // the agent's voltage for a limit in amperes (src/power.rs)
const MIN_CURRENT_A = 6; // IEC 61851-1: below it a session is paused
const SMART_KEYS = ['ChargingScheduleAllowedChargingRateUnit', 'ChargeProfileMaxStackLevel'];
/** `w` as a per-phase current at 230 V, rounded down to 0.1 A (in tenths, to compare exactly). */
const tenthsOfAmps = (w, phases = 3) => Math.floor((w * 10) / (NOMINAL_V * phases));
const tenths = (a) => Math.round(a * 10);

async function startPowerAgent() {
  const bin = process.env.CHARGESITE_BIN ?? join(REPO, 'target', 'debug', 'chargesite');
  const tmp = mkdtempSync(join(tmpdir(), 'interop-nodepower-'));
  const db = join(tmp, 'cs.db');
  const cfg = join(tmp, 'chargesite.toml');
  writeFileSync(
    cfg,
    `[site]\nid = "site-nodepower"\nmax_power_kw = ${SITE_MAX_POWER_KW}\n` +
      `[ocpp]\nlisten = "127.0.0.1:0"\nallow_unknown_chargers = true\n` +
      `[auth]\nfree_vend = true\n[store]\npath = "${db}"\n` +
      // no status page: nothing else of the agent's on a TCP port
      `[status]\nlisten = ""\n`,
  );
  const proc = spawn(bin, ['run', '--config', cfg], { stdio: ['ignore', 'pipe', openSync(join(tmp, 'agent.log'), 'w')] });
  const lines = createInterface({ input: proc.stdout });
  const port = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`agent did not start; see ${tmp}/agent.log`)), 30_000);
    lines.on('line', (l) => {
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(l);
      if (m) {
        clearTimeout(timer);
        res(Number(m[1]));
      }
    });
    proc.once('exit', (c) => rej(new Error(`agent exited ${c}; see ${tmp}/agent.log`)));
  });
  return { proc, tmp, db, wsUrl: `ws://127.0.0.1:${port}/ocpp` };
}

/** Runs `fn`; when it fails, the power agent's log tail is added to the error. */
async function withAgentLog(a, fn) {
  try {
    await fn();
  } catch (e) {
    const log = readFileSync(join(a.tmp, 'agent.log'), 'utf8').split('\n').slice(-40).join('\n');
    e.message = `${e.message}\nagent log (tail):\n${log}`;
    throw e;
  }
}

async function stopPowerAgent(a) {
  if (!a) return;
  const exited = once(a.proc, 'exit');
  a.proc.kill('SIGTERM');
  const [code] = await exited;
  rmSync(a.tmp, { recursive: true, force: true });
  assert.equal(code, 0, `agent exited ${code} on SIGTERM`);
}

function powerEvents(db) {
  const out = execFileSync('python3', ['-c', PY_EVENTS, db, JSON.stringify(['site.power'])], { encoding: 'utf8' });
  return JSON.parse(out);
}

/** A strict 1.6 charger with smart charging: GetConfiguration says `units` and `stack`,
 * every SetChargingProfile that passes strict mode reaches the handler and is accepted. */
function smartCharger(endpoint, identity, { units = 'Current', stack = '3' } = {}) {
  const cli = new RPCClient({ endpoint, identity, protocols: [PROTOCOL], strictMode: true, reconnect: false, callTimeoutMs: TIMEOUT_MS });
  cli.wire = { in: [], out: [] };
  cli.on('message', ({ message, outbound }) => (outbound ? cli.wire.out : cli.wire.in).push(String(message)));
  cli.strictFailures = [];
  cli.on('strictValidationFailure', (e) => cli.strictFailures.push(e));
  cli.asked = [];
  cli.profiles = new Map(); // message id -> params, as the handler got them
  const have = { ChargingScheduleAllowedChargingRateUnit: units, ChargeProfileMaxStackLevel: stack };
  cli.handle('GetConfiguration', ({ params }) => {
    cli.asked.push(params.key);
    const keys = params.key ?? Object.keys(have);
    const unknownKey = keys.filter((k) => !(k in have));
    return {
      configurationKey: keys.filter((k) => k in have).map((key) => ({ key, readonly: true, value: have[key] })),
      ...(unknownKey.length ? { unknownKey } : {}),
    };
  });
  cli.handle('SetChargingProfile', ({ messageId, params }) => {
    cli.profiles.set(messageId, params);
    return { status: 'Accepted' };
  });
  cli.handle('ClearChargingProfile', () => ({ status: 'Accepted' }));
  return cli;
}

const frames = (list) => list.map((m) => JSON.parse(m));
/** The agent's CALLs of `action`, in order: [messageId, params]. */
const agentCalls = (cli, action) => frames(cli.wire.in).filter((f) => f[0] === 2 && f[2] === action).map((f) => [f[1], f[3]]);
/** The charger's answer to the agent's CALL `id`. */
const ourAnswer = (cli, id) => frames(cli.wire.out).find((f) => (f[0] === 3 || f[0] === 4) && f[1] === id);
/** The agent's SetChargingProfile CALLs of `purpose` the charger has answered. */
const answeredProfiles = (cli, purpose, key = 'csChargingProfiles') =>
  agentCalls(cli, 'SetChargingProfile').filter(([id, p]) => p[key]?.chargingProfilePurpose === purpose && ourAnswer(cli, id)).map(([, p]) => p);

/** Waits for `pred()`; with `cli`, fails at once when strict mode refuses a CALL of the
 * agent (saying why) or the charger answers one with a CALLERROR. */
async function until(what, pred, cli = null, ms = TIMEOUT_MS) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    const refused = cli ? frames(cli.wire.out).filter((f) => f[0] === 4) : [];
    if (cli && (cli.strictFailures.length || refused.length)) {
      const why = cli.strictFailures.map((f) => `${f.method} ${JSON.stringify(f.params)}: ${f.error?.message}`);
      throw new Error(`waiting for ${what}: the agent's CALL was refused: ${JSON.stringify({ why, refused })}`);
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Every SetChargingProfile of the agent passed strict mode, reached the handler and was
 * answered Accepted; no CALLERROR either way. */
function assertEveryProfileValidatedAndAccepted(cli) {
  const calls = agentCalls(cli, 'SetChargingProfile');
  assert.ok(calls.length > 0, 'no SetChargingProfile from the agent');
  for (const [id, p] of calls) {
    assert.ok(cli.profiles.has(id), `SetChargingProfile ${JSON.stringify(p)} did not reach the handler: ${JSON.stringify(ourAnswer(cli, id))}`);
    assert.deepEqual(ourAnswer(cli, id), [3, id, { status: 'Accepted' }]);
  }
  assert.deepEqual(cli.strictFailures.map((f) => f.error?.message), []);
  const errors = [...frames(cli.wire.in), ...frames(cli.wire.out)].filter((f) => f[0] === 4);
  assert.deepEqual(errors, [], 'CALLERROR on the wire');
}

const profileRequest = (schedule = {}) => ({
  connectorId: 0,
  csChargingProfiles: {
    chargingProfileId: 9100, stackLevel: 0, chargingProfilePurpose: 'TxDefaultProfile', chargingProfileKind: 'Relative',
    chargingSchedule: { chargingRateUnit: 'A', chargingSchedulePeriod: [{ startPeriod: 0, limit: 15.9, numberPhases: 3 }], ...schedule },
  },
});

describe('site power limit: SetChargingProfile to an ocpp-rpc 1.6 charger (strict mode, own agent, max_power_kw = 11)', () => {
  let power;
  before(async () => {
    power = await startPowerAgent();
  });
  after(async () => {
    await stopPowerAgent(power);
  });

  describe('control: strict mode validates SetChargingProfile from a fake central system', () => {
    const CASES = [
      ['valid', profileRequest(), true],
      ['limit not a multiple of 0.1', profileRequest({ chargingSchedulePeriod: [{ startPeriod: 0, limit: 15.85, numberPhases: 3 }] }), false],
      ['unit kW', profileRequest({ chargingRateUnit: 'kW' }), false],
      ['startSchedule not a date-time', profileRequest({ startSchedule: 'now' }), false],
      ['no csChargingProfiles', { connectorId: 0 }, false],
    ];
    for (const [name, payload, valid] of CASES) {
      test(`${name}: ${valid ? 'reaches the handler, Accepted' : 'CALLERROR, the handler never runs'}`, async () => {
        const server = new RPCServer({ protocols: [PROTOCOL], strictMode: false });
        const answer = new Promise((res) => {
          server.on('client', (c) => {
            c.on('message', ({ message, outbound }) => {
              const f = JSON.parse(String(message));
              if (!outbound && f[1] === 'ctl-1') res(f);
            });
            c.sendRaw(JSON.stringify([2, 'ctl-1', 'SetChargingProfile', payload]));
          });
        });
        const http = await server.listen(0, '127.0.0.1');
        const cli = smartCharger(`ws://127.0.0.1:${http.address().port}`, 'CONTROL');
        try {
          await cli.connect();
          const frame = await answer;
          if (valid) {
            assert.deepEqual(frame, [3, 'ctl-1', { status: 'Accepted' }]);
            assert.deepEqual([...cli.profiles.keys()], ['ctl-1']);
          } else {
            assert.equal(frame[0], 4, JSON.stringify(frame));
            assert.equal(cli.profiles.size, 0);
            assert.equal(cli.strictFailures.length, 1);
            assert.equal(cli.strictFailures[0].method, 'SetChargingProfile');
          }
        } finally {
          await cli.close({ force: true });
          await server.close({ force: true });
        }
      });
    }
  });

  test('GetConfiguration first, then a TxDefaultProfile and a TxProfile per transaction, in A, within the site limit', () => withAgentLog(power, async () => {
    const siteTenths = tenthsOfAmps(SITE_MAX_POWER_W);
    assert.equal(siteTenths, 159); // 15.9 A
    const cli = smartCharger(power.wsUrl, newCpId('power'));
    const began = Date.now();
    const txProfiles = (tx) => answeredProfiles(cli, 'TxProfile').filter((p) => p.csChargingProfiles.transactionId === tx);
    const status = (connectorId, s) => cli.call('StatusNotification', { connectorId, errorCode: 'NoError', status: s, timestamp: ts(new Date()) });
    const start = async (connectorId, idTag) => {
      const res = await cli.call('StartTransaction', { connectorId, idTag, meterStart: 0, timestamp: ts(new Date()) });
      assert.equal(res.idTagInfo.status, 'Accepted');
      await status(connectorId, 'Charging');
      return res.transactionId;
    };
    let tx1;
    let tx2;
    let alone;
    let shared;
    await cli.connect();
    try {
      assert.equal((await cli.call('BootNotification', bootParams)).status, 'Accepted');
      for (const c of [0, 1, 2]) await status(c, 'Available');
      await until('the fail-safe TxDefaultProfile', () => answeredProfiles(cli, 'TxDefaultProfile').length > 0, cli);
      tx1 = await start(1, 'NODEPOWER1');
      await until(`a TxProfile for transaction ${tx1}`, () => txProfiles(tx1).length > 0, cli);
      alone = txProfiles(tx1).at(-1);
      await cli.call('MeterValues', {
        connectorId: 1, transactionId: tx1,
        meterValue: [{ timestamp: ts(new Date()), sampledValue: [{ value: '10900', measurand: 'Power.Active.Import', unit: 'W' }] }],
      });
      tx2 = await start(2, 'NODEPOWER2');
      // reductions are sent (and answered) before increases: once the second's profile is
      // answered, the first's lowered one has been too
      await until(`a TxProfile for transaction ${tx2}`, () => txProfiles(tx2).length > 0, cli);
      shared = [txProfiles(tx1).at(-1), txProfiles(tx2).at(-1)];
      for (const tx of [tx1, tx2]) {
        await cli.call('StopTransaction', { meterStop: 1000, timestamp: ts(new Date()), transactionId: tx });
      }
    } finally {
      await cli.close({ code: 1000 });
    }
    const ended = Date.now();
    assertEveryProfileValidatedAndAccepted(cli);

    const asks = agentCalls(cli, 'GetConfiguration');
    assert.ok(asks.length > 0);
    for (const [, p] of asks) assert.deepEqual([...p.key].sort(), [...SMART_KEYS].sort());
    const first = (action) => frames(cli.wire.in).findIndex((f) => f[0] === 2 && f[2] === action);
    assert.ok(first('GetConfiguration') < first('SetChargingProfile'), 'asked what it takes before any profile');

    const limitOf = (p) => p.csChargingProfiles.chargingSchedule.chargingSchedulePeriod[0].limit;
    const calls = agentCalls(cli, 'SetChargingProfile').map(([, p]) => p);
    for (const p of calls) {
      const prof = p.csChargingProfiles;
      assert.equal(prof.chargingSchedule.chargingRateUnit, 'A', `the charger takes Current only: ${JSON.stringify(p)}`);
      assert.ok(prof.stackLevel >= 0 && prof.stackLevel <= 3, JSON.stringify(p));
      const periods = prof.chargingSchedule.chargingSchedulePeriod;
      assert.equal(periods[0].startPeriod, 0);
      for (const period of periods) {
        assert.ok(period.limit >= 0 && tenths(period.limit) <= siteTenths, `${period.limit} A is above the site limit: ${JSON.stringify(p)}`);
      }
    }
    const defaults = calls.filter((p) => p.csChargingProfiles.chargingProfilePurpose === 'TxDefaultProfile');
    assert.ok(defaults.length > 0);
    for (const p of defaults) {
      const prof = p.csChargingProfiles;
      assert.equal(p.connectorId, 0);
      assert.equal(prof.chargingProfileId, 9100);
      assert.equal(prof.chargingProfileKind, 'Relative');
      assert.equal(prof.transactionId, undefined);
      assert.equal(prof.chargingSchedule.startSchedule, undefined);
      // what each of the site's two connectors may draw at once without the gateway
      assert.ok(tenths(limitOf(p)) * 2 <= siteTenths, JSON.stringify(p));
    }
    const txp = calls.filter((p) => p.csChargingProfiles.chargingProfilePurpose === 'TxProfile');
    assert.deepEqual(new Set(txp.map((p) => p.csChargingProfiles.transactionId)), new Set([tx1, tx2]));
    for (const p of txp) {
      const prof = p.csChargingProfiles;
      const connector = prof.transactionId === tx1 ? 1 : 2;
      assert.equal(p.connectorId, connector);
      assert.equal(prof.chargingProfileId, 9200 + connector);
      assert.equal(prof.chargingProfileKind, 'Absolute');
      const startAt = Date.parse(prof.chargingSchedule.startSchedule);
      assert.ok(Number.isInteger(prof.chargingSchedule.duration) && prof.chargingSchedule.duration > 0);
      assert.ok(startAt >= began - 5 * 60_000 && startAt <= ended && ended < startAt + prof.chargingSchedule.duration * 1000, JSON.stringify(p));
      assert.ok(limitOf(p) >= MIN_CURRENT_A, `paused, with room for it: ${JSON.stringify(p)}`);
    }
    assert.equal(tenths(limitOf(alone)), siteTenths, `alone on the site: ${JSON.stringify(alone)}`);
    assert.ok(tenths(limitOf(shared[0])) + tenths(limitOf(shared[1])) <= siteTenths, JSON.stringify(shared));

    // the agent's own record of the shares agrees with what the charger was sent
    const mine = powerEvents(power.db).filter((e) => e.allocations.some((a) => a.cp_id === cli.identity));
    assert.ok(mine.length > 0);
    for (const e of mine) {
      assert.equal(e.max_power_w, SITE_MAX_POWER_W);
      assert.ok(e.allocations.reduce((s, a) => s + a.limit_w, 0) <= SITE_MAX_POWER_W, JSON.stringify(e));
      assert.ok(!e.allocations.some((a) => a.assumed), JSON.stringify(e));
    }
    const both = mine.filter((e) => e.allocations.length === 2).at(-1);
    assert.ok(both, JSON.stringify(mine));
    for (const a of both.allocations) assert.equal(tenthsOfAmps(a.limit_w), tenths(limitOf(shared[a.connector_id - 1])));
  }));
});
