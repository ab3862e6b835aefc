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
// Reverse direction (the agent sending CALLs to the charger) is not covered: the agent
// only sends CALLs when its uplink asks.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, openSync } from 'node:fs';
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
