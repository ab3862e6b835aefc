// chargesite driven by an independent OCPP 2.0.1 implementation: npm `ocpp-rpc` as an
// RPCClient with `protocols: ['ocpp2.0.1']` and strictMode (ajv + ajv-formats over the
// official OCPP 2.0.1 JSON schemas it ships): every CALL it sends and every CALLRESULT it
// receives is validated, formats included, and a schema-invalid answer rejects the call.
//
// The agent runs with `free_vend = false` and an MQTT uplink; this suite plays the BPP with
// npm `mqtt` and provisions each OTP with `authorization.upsert`, waiting for its
// `cmd/result` ok:true before the station presents the OTP as an idToken of type KeyCode.
//
// Agent under test: CHARGESITE201_WS_URL (ws://127.0.0.1:PORT/ocpp), CHARGESITE201_DB (its
// SQLite file, read through a `python3 -c` sqlite3 one-liner), CHARGESITE201_MQTT
// (host:port of its broker) and CHARGESITE201_SITE (its site id). Without them the suite
// starts its own mosquitto and agent (CHARGESITE_BIN, default <repo>/target/debug/chargesite)
// and stops the agent with SIGTERM, expecting exit 0.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, rmSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes, randomInt } from 'node:crypto';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { createServer } from 'node:net';

import rpc from 'ocpp-rpc'; // CommonJS: its error classes are only on the default export
import mqtt from 'mqtt';
import WebSocket from 'ws';

const { RPCClient, RPCServer } = rpc;

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const PROTOCOL = 'ocpp2.0.1';
const TIMEOUT_MS = 10_000;
const RFC3339_MS_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const SPELLINGS_16 = ['FormationViolation', 'OccurenceConstraintViolation'];

// ------------------------------------------------------------------------------- agent

let agent; // {wsUrl, db, mqttUrl, site}
let own; // {proc, broker, tmp} when this suite started them

function freePort() {
  return new Promise((res, rej) => {
    const port = 20000 + randomInt(10000); // below the ephemeral range
    const srv = createServer();
    srv.once('error', () => freePort().then(res, rej));
    srv.listen(port, '127.0.0.1', () => srv.close(() => res(port)));
  });
}

async function startOwn() {
  const bin = process.env.CHARGESITE_BIN ?? join(REPO, 'target', 'debug', 'chargesite');
  const tmp = mkdtempSync(join(tmpdir(), 'interop-node201-'));
  const port = await freePort();
  const conf = join(tmp, 'mosquitto.conf');
  writeFileSync(conf, `${process.getuid() === 0 ? 'user root\n' : ''}listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\n`);
  const broker = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', openSync(join(tmp, 'mosquitto.log'), 'w'), openSync(join(tmp, 'mosquitto.err'), 'w')] });
  const site = `site-node201-${randomBytes(3).toString('hex')}`;
  const db = join(tmp, 'cs.db');
  const cfg = join(tmp, 'chargesite.toml');
  writeFileSync(
    cfg,
    `[site]\nid = "${site}"\n[ocpp]\nlisten = "127.0.0.1:0"\nallow_unknown_chargers = true\n` +
      `[auth]\nfree_vend = false\n[store]\npath = "${db}"\n` +
      `[uplink]\nurl = "mqtt://127.0.0.1:${port}"\nkeepalive_secs = 5\n`,
  );
  const proc = spawn(bin, ['run', '--config', cfg], { stdio: ['ignore', 'pipe', openSync(join(tmp, 'agent.log'), 'w')] });
  const lines = createInterface({ input: proc.stdout });
  const wsPort = await new Promise((res, rej) => {
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
  own = { proc, broker, tmp };
  return { wsUrl: `ws://127.0.0.1:${wsPort}/ocpp`, db, mqttUrl: `mqtt://127.0.0.1:${port}`, site };
}

async function setupAgent() {
  const env = process.env;
  if (env.CHARGESITE201_WS_URL && env.CHARGESITE201_DB && env.CHARGESITE201_MQTT) {
    agent = {
      wsUrl: env.CHARGESITE201_WS_URL.replace(/\/$/, ''),
      db: env.CHARGESITE201_DB,
      mqttUrl: `mqtt://${env.CHARGESITE201_MQTT}`,
      site: env.CHARGESITE201_SITE ?? 'site-001',
    };
  } else {
    agent = await startOwn();
  }
}

async function teardownAgent() {
  if (!own) return;
  const exited = once(own.proc, 'exit');
  own.proc.kill('SIGTERM');
  const [code] = await exited;
  own.broker.kill('SIGTERM');
  rmSync(own.tmp, { recursive: true, force: true });
  assert.equal(code, 0, `agent exited ${code} on SIGTERM`);
}

// ------------------------------------------------------------------------------- the BPP

/** The operator's side of the uplink (CONTRACT 4): commands on <root>/cmd, results back. */
class Bpp {
  static async connect() {
    const b = new Bpp();
    b.root = `chargesite/v1/${agent.site}`;
    b.messages = [];
    b.waiters = new Set();
    b.client = await mqtt.connectAsync(agent.mqttUrl, {
      protocolVersion: 4,
      clientId: `interop-node-bpp-${randomBytes(4).toString('hex')}`,
      reconnectPeriod: 0,
      connectTimeout: TIMEOUT_MS,
    });
    b.client.on('message', (topic, payload) => {
      let body;
      try {
        body = JSON.parse(payload.toString());
      } catch {
        body = payload.toString();
      }
      b.messages.push({ topic, body });
      for (const w of b.waiters) w();
    });
    await b.client.subscribeAsync(`${b.root}/#`, { qos: 1 });
    return b;
  }

  waitFor(what, pred, timeoutMs = 20_000) {
    return new Promise((res, rej) => {
      const check = () => {
        const m = this.messages.find(pred);
        if (m) {
          this.waiters.delete(check);
          clearTimeout(timer);
          res(m.body);
        }
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        rej(new Error(`BPP: timed out waiting for ${what}; got ${JSON.stringify(this.messages.slice(-10))}`));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  online() {
    return this.waitFor('the agent online', (m) => m.topic === `${this.root}/state` && m.body?.online === true, 30_000);
  }

  async command(cmd) {
    await this.client.publishAsync(`${this.root}/cmd`, JSON.stringify(cmd), { qos: 1 });
    return this.waitFor(`the result of ${cmd.id}`, (m) => m.topic === `${this.root}/cmd/result` && m.body?.id === cmd.id);
  }

  /** An OTP for the station's EVSE 1, valid from 3 hours ago for an hour. */
  async provision(cpId, extra = {}) {
    const otp = String(randomInt(10_000_000, 100_000_000));
    const orderId = `order-${randomBytes(5).toString('hex')}`;
    const res = await this.command({
      id: `upsert-${randomBytes(6).toString('hex')}`,
      type: 'authorization.upsert',
      order_id: orderId,
      otp,
      valid_from: new Date(Date.now() - 3 * 3600_000).toISOString(),
      valid_until: new Date(Date.now() + 3600_000).toISOString(),
      cp_id: cpId,
      connector_id: 1,
      ...extra,
    });
    assert.equal(res.ok, true, `authorization.upsert refused: ${JSON.stringify(res)}`);
    return { otp, orderId };
  }

  async close() {
    await this.client.endAsync();
  }
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

const SESSION_TYPES = ['session.started', 'session.meter', 'session.stopped', 'session.interrupted', 'session.resumed'];
const ts = (d) => d.toISOString();
const minutes = (d, m) => new Date(d.getTime() + m * 60_000);
const newCpId = (tag) => `NODE201-${tag}-${randomBytes(4).toString('hex')}`;
const keyCode = (otp) => ({ idToken: otp, type: 'KeyCode' });
const sameInstant = (a, b) => Date.parse(a) === b.getTime();

function startedFor(cpId, txId) {
  const found = events(['session.started'], (e) => e.cp_id === cpId && e.transaction_id === txId);
  assert.equal(found.length, 1, `expected one session.started for ${cpId}/${txId}: ${JSON.stringify(found)}`);
  return found[0];
}
const samplesOf = (sid) => events(['session.meter'], (e) => e.session_id === sid).flatMap((e) => e.samples);

function sv(value, measurand, unit, extra = {}) {
  const v = { value, context: 'Sample.Periodic', measurand, ...extra };
  if (unit) v.unitOfMeasure = { unit, ...(extra.multiplier !== undefined ? { multiplier: extra.multiplier } : {}) };
  delete v.multiplier;
  return v;
}
const register = (wh, context = 'Sample.Periodic') => sv(wh, 'Energy.Active.Import.Register', 'Wh', { context });

function txEvent(eventType, seqNo, t, txId, triggerReason, meter, extra = {}) {
  const { info = {}, ...rest } = extra;
  return {
    eventType,
    timestamp: ts(t),
    triggerReason,
    seqNo,
    transactionInfo: { transactionId: txId, ...info },
    ...(meter ? { meterValue: [{ timestamp: ts(t), sampledValue: meter }] } : {}),
    ...rest,
  };
}

/** An RPCClient speaking ocpp2.0.1; every wire frame in both directions is recorded. */
async function station(tag, { strict = true, protocols = [PROTOCOL] } = {}) {
  const cli = new RPCClient({
    endpoint: agent.wsUrl,
    identity: newCpId(tag),
    protocols,
    strictMode: strict,
    reconnect: false,
    callTimeoutMs: TIMEOUT_MS,
  });
  cli.wire = { in: [], out: [] };
  cli.on('message', ({ message, outbound }) => (outbound ? cli.wire.out : cli.wire.in).push(String(message)));
  cli.strictFailures = [];
  cli.on('strictValidationFailure', (e) => cli.strictFailures.push(e));
  await cli.connect();
  assert.equal(cli.protocol, PROTOCOL, 'agent must negotiate ocpp2.0.1');
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

const callErrors = (cli) => cli.wire.in.map((m) => JSON.parse(m)).filter((f) => f[0] === 4);

const bootParams = (model = 'ocpp-rpc-201') => ({
  chargingStation: { model, vendorName: 'InteropVendor', serialNumber: 'SN-NODE201-0001', firmwareVersion: '2.2.1' },
  reason: 'PowerUp',
});

const TARIFF = { currency: 'INR', energy_minor_per_kwh: 1800, service_fee_minor: 0, timezone: 'Asia/Kolkata' };

describe('chargesite OCPP 2.0.1 driven by ocpp-rpc', () => {
  let bpp;
  before(async () => {
    await setupAgent();
    bpp = await Bpp.connect();
    await bpp.online();
  });
  after(async () => {
    await bpp?.close();
    await teardownAgent();
  });

  // ---------------------------------------------------------------------------- handshake

  describe('handshake', () => {
    for (const protocols of [['ocpp2.0.1'], ['ocpp2.0.1', 'ocpp1.6'], ['ocpp1.6', 'ocpp2.0.1']]) {
      test(`offered ${protocols.join(', ')} -> ocpp2.0.1`, async () => {
        const cli = await station('hs', { protocols });
        try {
          assert.ok((await cli.call('Heartbeat', {})).currentTime);
          assert.deepEqual(cli.strictFailures, []);
        } finally {
          await cli.close({ code: 1000 });
        }
      });
    }

    test('no subprotocol offered: handshake completed without the header, then closed by the agent', async () => {
      const ws = new WebSocket(`${agent.wsUrl}/${newCpId('nosub')}`);
      // every listener up front: 'upgrade', 'open' and even 'close' can come in one tick
      const answered = [];
      let upgrade;
      let opened = false;
      ws.on('upgrade', (res) => (upgrade = res));
      ws.on('open', () => {
        opened = true;
        ws.send('[2,"nosub-1","Heartbeat",{}]');
      });
      ws.on('message', (m) => answered.push(String(m)));
      ws.on('error', () => {});
      let closedByUs = false;
      const timer = setTimeout(() => {
        closedByUs = true;
        ws.terminate();
      }, TIMEOUT_MS);
      await once(ws, 'close');
      clearTimeout(timer);
      assert.ok(upgrade && opened, 'the handshake was not completed');
      assert.equal(upgrade.headers['sec-websocket-protocol'], undefined);
      assert.equal(ws.protocol, '');
      assert.equal(closedByUs, false, `the agent did not close the socket within ${TIMEOUT_MS} ms`);
      assert.deepEqual(answered.filter((m) => m.includes('nosub-1')), [], 'answered without a subprotocol');
    });
  });

  describe('strict mode is really validating (control: a fake CSMS)', () => {
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
        assert.equal(cli.protocol, PROTOCOL);
        await assert.rejects(cli.call('BootNotification', bootParams()), (e) => e instanceof rpc.RPCError);
        assert.equal(failures.length, 1);
        assert.equal(failures[0].method, 'BootNotification');
        assert.equal(failures[0].isCall, false); // it was the answer that failed validation
      } finally {
        await cli.close({ force: true });
        await server.close({ force: true });
      }
    });
  });

  describe('strict mode validates the central system\'s CALLs too (control: a fake CSMS)', () => {
    test('a RequestStopTransaction without transactionId is refused before the handler runs', async () => {
      const server = new RPCServer({ protocols: [PROTOCOL], strictMode: false });
      const answer = new Promise((res) => {
        server.on('client', (c) => {
          c.on('message', ({ message, outbound }) => {
            const f = JSON.parse(String(message));
            if (!outbound && f[1] === 'ctl-1') res(f);
          });
          c.sendRaw('[2,"ctl-1","RequestStopTransaction",{}]');
        });
      });
      const http = await server.listen(0, '127.0.0.1');
      const { port } = http.address();
      const cli = new RPCClient({
        endpoint: `ws://127.0.0.1:${port}`, identity: 'CONTROL', protocols: [PROTOCOL], strictMode: true, reconnect: false, callTimeoutMs: TIMEOUT_MS,
      });
      const handled = [];
      cli.handle('RequestStopTransaction', ({ params }) => {
        handled.push(params);
        return { status: 'Accepted' };
      });
      try {
        await cli.connect();
        const frame = await answer;
        assert.equal(frame[0], 4, JSON.stringify(frame));
        assert.deepEqual(handled, []);
      } finally {
        await cli.close({ force: true });
        await server.close({ force: true });
      }
    });
  });

  // --------------------------------------------------------------------- session with OTP

  describe('full session with a KeyCode OTP (strict mode)', () => {
    let cli;
    let otp;
    let orderId;
    let sid;
    let startedSeq;
    const txId = `NODETX-${randomBytes(6).toString('hex')}`;
    const t0 = new Date(Date.now() - 30 * 60_000);
    const t1 = minutes(t0, 30);

    before(async () => {
      cli = await station('flow');
      ({ otp, orderId } = await bpp.provision(cli.identity));
    });
    after(async () => {
      await cli?.close({ code: 1000 });
    });

    test('BootNotification: Accepted, currentTime, interval', async () => {
      const res = await cli.call('BootNotification', bootParams());
      assert.equal(res.status, 'Accepted');
      assert.match(res.currentTime, RFC3339_MS_UTC);
      assert.ok(Math.abs(Date.parse(res.currentTime) - Date.now()) < 60_000);
      assert.ok(Number.isInteger(res.interval) && res.interval > 0);
    });

    test('StatusNotification and Heartbeat', async () => {
      assert.deepEqual(
        await cli.call('StatusNotification', { timestamp: ts(new Date()), connectorStatus: 'Available', evseId: 1, connectorId: 1 }),
        {},
      );
      const hb = await cli.call('Heartbeat', {});
      assert.ok(Math.abs(Date.parse(hb.currentTime) - Date.now()) < 60_000);
    });

    test('Authorize: a wrong code is Invalid, the OTP (KeyCode) Accepted', async () => {
      let wrong;
      do wrong = String(randomInt(10_000_000, 100_000_000));
      while (wrong === otp);
      const bad = await cli.call('Authorize', { idToken: keyCode(wrong) });
      assert.equal(bad.idTokenInfo.status, 'Invalid');
      const good = await cli.call('Authorize', { idToken: keyCode(otp) });
      assert.equal(good.idTokenInfo.status, 'Accepted');
    });

    test('TransactionEvent Started (KeyCode, evse, Transaction.Begin): session.started durable', async () => {
      const res = await cli.call('TransactionEvent', txEvent('Started', 0, t0, txId, 'Authorized', [register(1000, 'Transaction.Begin')], {
        info: { chargingState: 'Charging' }, evse: { id: 1, connectorId: 1 }, idToken: keyCode(otp),
      }));
      assert.equal(res.idTokenInfo?.status, 'Accepted', JSON.stringify(res));
      const started = startedFor(cli.identity, txId);
      assert.equal(typeof started.transaction_id, 'string');
      assert.equal(started.evse_id, 1);
      assert.equal(started.meter_start_wh, 1000);
      assert.equal(started.auth_method, 'otp');
      assert.equal(started.order_id, orderId);
      assert.ok(sameInstant(started.started_at, t0), started.started_at);
      sid = started.session_id;
      startedSeq = started.seq;
    });

    test('TransactionEvent Updated: three-phase readings, kWh register, multiplier', async () => {
      assert.ok(sid, 'needs the Started step');
      await cli.call('TransactionEvent', txEvent('Updated', 1, minutes(t0, 10), txId, 'MeterValuePeriodic', [
        sv(2500, 'Energy.Active.Import.Register', 'Wh', { location: 'Outlet' }),
        sv(11000, 'Power.Active.Import', 'W'),
        sv(16.0, 'Current.Import', 'A', { phase: 'L1' }),
        sv(16.2, 'Current.Import', 'A', { phase: 'L2' }),
        sv(15.8, 'Current.Import', 'A', { phase: 'L3' }),
        sv(230.1, 'Voltage', 'V', { phase: 'L1-N' }),
        sv(229.9, 'Voltage', 'V', { phase: 'L2-N' }),
        sv(230.0, 'Voltage', 'V', { phase: 'L3-N' }),
        sv(40, 'SoC', 'Percent', { location: 'EV' }),
      ]));
      await cli.call('TransactionEvent', txEvent('Updated', 2, minutes(t0, 20), txId, 'MeterValuePeriodic', [
        sv(4.2, 'Energy.Active.Import.Register', 'kWh'),
        sv(10.5, 'Power.Active.Import', 'W', { multiplier: 3 }),
        sv(55, 'SoC', 'Percent', { location: 'EV' }),
      ]));
      const samples = samplesOf(sid);
      const s1 = samples.find((s) => s.energy_wh === 2500);
      const s2 = samples.find((s) => s.energy_wh === 4200);
      assert.ok(s1 && s2, JSON.stringify(samples));
      assert.equal(s1.power_w, 11000);
      assert.ok(Math.abs(s1.current_a - 16.0) < 0.01 && Math.abs(s1.voltage_v - 230.0) < 0.01, JSON.stringify(s1));
      assert.equal(s1.soc_pct, 40);
      assert.equal(s2.power_w, 10500);
      assert.equal(s2.soc_pct, 55);
    });

    test('TransactionEvent Ended: session.stopped with the energy', async () => {
      assert.ok(sid, 'needs the Started step');
      const res = await cli.call('TransactionEvent', txEvent('Ended', 3, t1, txId, 'EVDeparted', [register(5200, 'Transaction.End')], {
        info: { chargingState: 'Idle', stoppedReason: 'EVDisconnected' },
      }));
      assert.equal(typeof res, 'object');
      const stopped = events(['session.stopped'], (e) => e.session_id === sid);
      assert.equal(stopped.length, 1, JSON.stringify(stopped));
      assert.equal(stopped[0].energy_wh, 4200);
      assert.equal(stopped[0].meter_stop_wh, 5200);
      assert.equal(stopped[0].reason, 'EVDisconnected');
      assert.ok(sameInstant(stopped[0].stopped_at, t1), stopped[0].stopped_at);
      const seqs = events(SESSION_TYPES, (e) => e.session_id === sid).map((e) => e.seq);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
      assert.equal(seqs[0], startedSeq);
      assert.equal(seqs.at(-1), stopped[0].seq);
    });

    test('the single-use OTP is used up by the session', async () => {
      const res = await cli.call('Authorize', { idToken: keyCode(otp) });
      assert.notEqual(res.idTokenInfo.status, 'Accepted');
    });

    test('strict mode saw no schema violation, the agent sent no CALLERROR, charger.connected says 2.0.1', () => {
      assert.deepEqual(cli.strictFailures, []);
      assert.deepEqual(callErrors(cli), []);
      const connected = events(['charger.connected'], (e) => e.cp_id === cli.identity);
      assert.ok(connected.length >= 1);
      assert.equal(connected[0].ocpp_version, '2.0.1');
      const booted = events(['charger.booted'], (e) => e.cp_id === cli.identity);
      assert.equal(booted[0]?.model, 'ocpp-rpc-201');
    });
  });

  // ------------------------------------------------------------------------ offline replay

  describe('offline replay with a duplicated seqNo (strict mode)', () => {
    test('every event acknowledged, the duplicate counted once, billed on the metered energy', async () => {
      const cli = await station('offline');
      try {
        const { otp, orderId } = await bpp.provision(cli.identity);
        await cli.call('BootNotification', bootParams());
        const txId = `NODETX-OFF-${randomBytes(4).toString('hex')}`;
        const t0 = new Date(Date.now() - 120 * 60_000);
        const queued = [
          txEvent('Started', 0, t0, txId, 'Authorized', [register(10_000, 'Transaction.Begin')], {
            info: { chargingState: 'Charging' }, evse: { id: 1, connectorId: 1 }, idToken: keyCode(otp), offline: true,
          }),
          // the EVSE is given by the first event only
          txEvent('Updated', 1, minutes(t0, 10), txId, 'MeterValuePeriodic', [register(11_000)], { offline: true }),
          txEvent('Updated', 1, minutes(t0, 10), txId, 'MeterValuePeriodic', [register(11_000)], { offline: true }),
          txEvent('Updated', 2, minutes(t0, 20), txId, 'MeterValuePeriodic', [register(12_500)], { offline: true }),
          txEvent('Ended', 3, minutes(t0, 30), txId, 'StopAuthorized', [register(13_000, 'Transaction.End')], {
            info: { chargingState: 'EVConnected', stoppedReason: 'Local' }, offline: true,
          }),
        ];
        for (const ev of queued) await cli.call('TransactionEvent', ev);
        assert.deepEqual(callErrors(cli), []);
        assert.deepEqual(cli.strictFailures, []);

        const started = startedFor(cli.identity, txId);
        assert.equal(started.meter_start_wh, 10_000);
        assert.equal(started.order_id, orderId);
        assert.equal(started.evse_id, 1);
        assert.ok(sameInstant(started.started_at, t0), started.started_at);
        const energies = samplesOf(started.session_id).map((s) => s.energy_wh);
        assert.equal(energies.filter((e) => e === 11_000).length, 1, `duplicate seqNo counted twice: ${energies}`);
        assert.equal(energies.filter((e) => e === 12_500).length, 1, String(energies));
        const stopped = events(['session.stopped'], (e) => e.session_id === started.session_id);
        assert.equal(stopped.length, 1, JSON.stringify(stopped));
        assert.equal(stopped[0].energy_wh, 3000);
        assert.equal(stopped[0].meter_stop_wh, 13_000);
        assert.ok(sameInstant(stopped[0].stopped_at, minutes(t0, 30)), stopped[0].stopped_at);
      } finally {
        await cli.close({ code: 1000 });
      }
    });
  });

  // ------------------------------------------------------------------- late event after Ended

  describe('late event after Ended (strict mode)', () => {
    test('an Updated after Ended and a replayed Ended: acknowledged, nothing changes', async () => {
      const cli = await station('late');
      try {
        const { otp } = await bpp.provision(cli.identity, { tariff: TARIFF });
        await cli.call('BootNotification', bootParams());
        const txId = `NODETX-LATE-${randomBytes(4).toString('hex')}`;
        const t0 = new Date(Date.now() - 40 * 60_000);
        await cli.call('TransactionEvent', txEvent('Started', 0, t0, txId, 'Authorized', [register(20_000, 'Transaction.Begin')], {
          info: { chargingState: 'Charging' }, evse: { id: 1, connectorId: 1 }, idToken: keyCode(otp),
        }));
        await cli.call('TransactionEvent', txEvent('Updated', 1, minutes(t0, 10), txId, 'MeterValuePeriodic', [register(20_800)]));
        const endedEvent = txEvent('Ended', 2, minutes(t0, 20), txId, 'EVDeparted', [register(21_500, 'Transaction.End')], {
          info: { chargingState: 'Idle', stoppedReason: 'EVDisconnected' },
        });
        const ended = await cli.call('TransactionEvent', endedEvent);
        const sid = startedFor(cli.identity, txId).session_id;
        const before = events(['session.stopped'], (e) => e.session_id === sid);
        assert.equal(before.length, 1, JSON.stringify(before));
        assert.equal(before[0].energy_wh, 1500);
        assert.equal(before[0].cost?.total_minor, 2700, JSON.stringify(before[0])); // 1.5 kWh at 18.00

        await cli.call('TransactionEvent', txEvent('Updated', 3, minutes(t0, 30), txId, 'MeterValuePeriodic', [register(22_500)]));
        await cli.call('TransactionEvent', endedEvent);
        assert.deepEqual(callErrors(cli), []);
        assert.deepEqual(cli.strictFailures, []);

        assert.deepEqual(events(['session.stopped'], (e) => e.session_id === sid), before, 'the session changed after Ended');
        const after = events(SESSION_TYPES, (e) => e.session_id === sid && e.seq > before[0].seq);
        assert.deepEqual(after, [], 'session events after Ended');
        assert.ok(!samplesOf(sid).some((s) => s.energy_wh === 22_500));
        // issue 9: the Ended answer carries the cost when a tariff applies
        assert.equal(ended.totalCost, 27, JSON.stringify(ended));
      } finally {
        await cli.close({ code: 1000 });
      }
    });
  });

  // ------------------------------------------------------------ budget stop (reverse direction)

  describe('budget stop: the agent sends RequestStopTransaction (strict mode, both directions)', () => {
    test('running totalCost, RequestStopTransaction validated by ocpp-rpc, BudgetReached with a settlement', async () => {
      const cli = await station('budget');
      const stopRequests = [];
      // strict mode validates the agent's CALL before this handler runs, and our answer after
      cli.handle('RequestStopTransaction', ({ params }) => {
        stopRequests.push(params);
        return { status: 'Accepted' };
      });
      try {
        const tariff = { currency: 'INR', energy_minor_per_kwh: 1600, service_fee_minor: 0, timezone: 'Asia/Kolkata' };
        const { otp } = await bpp.provision(cli.identity, { tariff, budget: { currency: 'INR', amount_minor: 5000 } });
        await cli.call('BootNotification', bootParams());
        const txId = `NODETX-BUDGET-${randomBytes(4).toString('hex')}`;
        const t0 = new Date(Date.now() - 30 * 60_000);
        const res = await cli.call('TransactionEvent', txEvent('Started', 0, t0, txId, 'Authorized', [register(10_000, 'Transaction.Begin')], {
          info: { chargingState: 'Charging' }, evse: { id: 1, connectorId: 1 }, idToken: keyCode(otp),
        }));
        assert.equal(res.idTokenInfo?.status, 'Accepted');
        const costs = [res.totalCost];
        let reg = 10_000;
        let seq = 0;
        // 500 Wh a minute: 16.00/kWh reaches the 50.00 budget at 3125 Wh
        while (stopRequests.length === 0 && seq < 10) {
          seq += 1;
          reg += 500;
          const r = await cli.call('TransactionEvent', txEvent('Updated', seq, minutes(t0, seq), txId, 'MeterValuePeriodic', [register(reg)]));
          costs.push(r.totalCost);
          await new Promise((ok) => setTimeout(ok, 300));
        }
        assert.equal(stopRequests.length, 1, `no RequestStopTransaction by ${reg - 10_000} Wh; totalCost ${costs}`);
        assert.deepEqual(stopRequests[0], { transactionId: txId });
        assert.ok(reg - 10_000 <= 3125, `stopped only at ${reg - 10_000} Wh`);
        assert.ok(costs.every((c) => typeof c === 'number'), `totalCost missing: ${costs}`);
        assert.deepEqual(costs, [...costs].sort((a, b) => a - b));
        const total = Math.round(((reg - 10_000) * 1600) / 1000);
        assert.equal(costs.at(-1), total / 100);
        seq += 1;
        const ended = await cli.call('TransactionEvent', txEvent('Ended', seq, minutes(t0, seq), txId, 'RemoteStop', [register(reg, 'Transaction.End')], {
          info: { chargingState: 'EVConnected', stoppedReason: 'Remote' },
        }));
        assert.equal(ended.totalCost, total / 100);
        assert.deepEqual(cli.strictFailures, []);
        assert.deepEqual(callErrors(cli), []);
        const ourErrors = cli.wire.out.map((m) => JSON.parse(m)).filter((f) => f[0] === 4);
        assert.deepEqual(ourErrors, [], 'ocpp-rpc refused a CALL from the agent');
        const sid = startedFor(cli.identity, txId).session_id;
        const stopped = events(['session.stopped'], (e) => e.session_id === sid);
        assert.equal(stopped.length, 1);
        assert.equal(stopped[0].reason, 'BudgetReached');
        assert.equal(stopped[0].energy_wh, reg - 10_000);
        assert.equal(stopped[0].cost?.total_minor, total);
        assert.deepEqual(stopped[0].settlement, { prepaid_minor: 5000, charged_minor: total, refund_minor: 5000 - total, topup_minor: 0 });
      } finally {
        await cli.close({ code: 1000 });
      }
    });
  });

  describe('session.stop from the BPP reaches the station as RequestStopTransaction (strict mode)', () => {
    test('RequestStopTransaction with the station\'s transactionId, then Ended RemoteStop -> reason Remote', async () => {
      const cli = await station('stop');
      const stopRequests = [];
      cli.handle('RequestStopTransaction', ({ params }) => {
        stopRequests.push(params);
        return { status: 'Accepted' };
      });
      try {
        const { otp } = await bpp.provision(cli.identity);
        await cli.call('BootNotification', bootParams());
        const txId = `NODETX-STOP-${randomBytes(4).toString('hex')}`;
        const t0 = new Date(Date.now() - 10 * 60_000);
        await cli.call('TransactionEvent', txEvent('Started', 0, t0, txId, 'Authorized', [register(60_000, 'Transaction.Begin')], {
          info: { chargingState: 'Charging' }, evse: { id: 1, connectorId: 1 }, idToken: keyCode(otp),
        }));
        const sid = startedFor(cli.identity, txId).session_id;
        const result = await bpp.command({ id: `stop-${randomBytes(4).toString('hex')}`, type: 'session.stop', session_id: sid });
        const calls = cli.wire.in.map((m) => JSON.parse(m)).filter((f) => f[0] === 2);
        assert.equal(result.ok, true, `${JSON.stringify(result)}; CALLs from the agent: ${JSON.stringify(calls)}`);
        assert.deepEqual(stopRequests, [{ transactionId: txId }]);
        await cli.call('TransactionEvent', txEvent('Ended', 1, new Date(), txId, 'RemoteStop', [register(61_000, 'Transaction.End')], {
          info: { chargingState: 'EVConnected', stoppedReason: 'Remote' },
        }));
        assert.deepEqual(cli.strictFailures, []);
        assert.deepEqual(callErrors(cli), []);
        const stopped = events(['session.stopped'], (e) => e.session_id === sid);
        assert.equal(stopped.length, 1);
        assert.equal(stopped[0].energy_wh, 1000);
        assert.equal(stopped[0].reason, 'Remote');
      } finally {
        await cli.close({ code: 1000 });
      }
    });
  });

  // -------------------------------------------------------------------------- CALLERRORs

  // Schema-invalid CALLs through the library with strict mode off (strict mode refuses to
  // send them); the code on the wire must be spelled as OCPP-J 2.0.1 spells it.
  const TE = { eventType: 'Updated', timestamp: '2026-01-01T00:00:00.000Z', triggerReason: 'MeterValuePeriodic', seqNo: 1, transactionInfo: { transactionId: 'ERR-TX' } };
  const without = (o, k) => Object.fromEntries(Object.entries(o).filter(([key]) => key !== k));
  const EITHER = ['OccurrenceConstraintViolation', 'FormatViolation'];
  const KLASS = {
    NotImplemented: rpc.RPCNotImplementedError,
    NotSupported: rpc.RPCNotSupportedError,
    OccurrenceConstraintViolation: rpc.RPCOccurrenceConstraintViolationError,
    FormatViolation: rpc.RPCFormatViolationError,
    TypeConstraintViolation: rpc.RPCTypeConstraintViolationError,
    PropertyConstraintViolation: rpc.RPCPropertyConstraintViolationError,
    RpcFrameworkError: rpc.RPCFrameworkError,
    MessageTypeNotSupported: rpc.RPCMessageTypeNotSupportedError,
  };
  const LIBRARY_CASES = [
    ['unknown action', 'FrobnicateWidget', {}, ['NotImplemented']],
    ['a 1.6-only action', 'StartTransaction', { connectorId: 1, idTag: 'T', meterStart: 0, timestamp: '2026-01-01T00:00:00.000Z' }, ['NotImplemented']],
    ['CSMS action sent by a station', 'RequestStartTransaction', { idToken: { idToken: 'X', type: 'Central' }, remoteStartId: 1 }, ['NotSupported']],
    ['TransactionEvent without transactionInfo', 'TransactionEvent', without(TE, 'transactionInfo'), EITHER],
    ['TransactionEvent without seqNo', 'TransactionEvent', without(TE, 'seqNo'), EITHER],
    ['BootNotification without chargingStation.model', 'BootNotification', { chargingStation: { vendorName: 'V' }, reason: 'PowerUp' }, EITHER],
    ['seqNo as a string', 'TransactionEvent', { ...TE, seqNo: '1' }, ['TypeConstraintViolation']],
    ['eventType not in the enumeration', 'TransactionEvent', { ...TE, eventType: 'Paused' }, ['PropertyConstraintViolation']],
    ['additional property', 'Heartbeat', { bogus: 1 }, ['FormatViolation']],
  ];

  describe('CALLERRORs as ocpp-rpc sees them', () => {
    let cli;
    before(async () => {
      cli = await station('err', { strict: false });
    });
    after(async () => {
      await cli?.close({ code: 1000 });
    });

    for (const [name, method, params, codes] of LIBRARY_CASES) {
      test(`${name} -> ${codes.join(' or ')}`, async () => {
        const err = await cli.call(method, params).then(
          () => assert.fail('expected a CALLERROR'),
          (e) => e,
        );
        const call = cli.wire.out.map((m) => JSON.parse(m)).findLast((f) => f[0] === 2 && f[2] === method);
        const frame = answerTo(cli, call[1]);
        assert.equal(frame?.length, 5, JSON.stringify(frame));
        assert.ok(!SPELLINGS_16.includes(frame[2]), `1.6 spelling on a 2.0.1 connection: ${JSON.stringify(frame)}`);
        assert.ok(codes.includes(frame[2]), `agent answered ${JSON.stringify(frame)}`);
        assert.equal(typeof frame[3], 'string');
        assert.equal(typeof frame[4], 'object');
        assert.ok(err instanceof KLASS[frame[2]], `ocpp-rpc raised ${err?.constructor?.name}: ${err?.message}`);
        assert.equal(err.rpcErrorCode, frame[2]);
        assert.ok((await cli.call('Heartbeat', {})).currentTime);
      });
    }

    const RAW_CASES = [
      ['not JSON', 'r201-1', '[2,"r201-1","Heartbeat",{', ['RpcFrameworkError']],
      ['CALL with 3 elements', 'r201-2', '[2,"r201-2","Heartbeat"]', ['RpcFrameworkError']],
      ['message type 5', 'r201-3', '[5,"r201-3",{}]', ['MessageTypeNotSupported']],
      ['payload not an object', 'r201-4', '[2,"r201-4","Heartbeat","x"]', ['FormatViolation']],
      ['seqNo not an integer', 'r201-5',
        '[2,"r201-5","TransactionEvent",{"eventType":"Updated","timestamp":"2026-01-01T00:00:00.000Z","triggerReason":"MeterValuePeriodic","seqNo":"1","transactionInfo":{"transactionId":"RAW"}}]',
        ['TypeConstraintViolation']],
      ['meterValue empty', 'r201-6',
        '[2,"r201-6","TransactionEvent",{"eventType":"Updated","timestamp":"2026-01-01T00:00:00.000Z","triggerReason":"MeterValuePeriodic","seqNo":1,"transactionInfo":{"transactionId":"RAW"},"meterValue":[]}]',
        EITHER],
    ];
    for (const [name, id, text, codes] of RAW_CASES) {
      test(`raw: ${name} -> ${codes.join(' or ')}`, async () => {
        cli.sendRaw(text);
        const frame = await waitAnswer(cli, id);
        assert.equal(frame[0], 4, JSON.stringify(frame));
        assert.equal(frame.length, 5);
        assert.ok(codes.includes(frame[2]), `agent answered ${JSON.stringify(frame)} to ${text}`);
        assert.ok((await cli.call('Heartbeat', {})).currentTime);
      });
    }
  });

  // --------------------------------------------------------------------- reservations
  //
  // `reservation.upsert` / `reservation.cancel` from this suite's BPP, on a strict 1.6 and
  // a strict 2.0.1 station of this agent: strict mode validates the agent's ReserveNow and
  // CancelReservation against the official request schemas (formats included) before the
  // handlers run; the control proves an invalid one never reaches them. The reservation
  // then ends the way the station and the driver make it: `used` by the order's OTP (its
  // Authorize answer carries the reservation's group), `cancelled` by command, or
  // `charger_refused` when the station answers Occupied.

  describe('reservations: ReserveNow and CancelReservation to strict ocpp-rpc stations (1.6 and 2.0.1)', () => {
    /** A strict station of `protocol` that answers ReserveNow `status`, CancelReservation
     * Accepted, recording every request that passed strict mode. */
    function reservingStation(endpoint, identity, protocol, status = 'Accepted') {
      const cli = new RPCClient({ endpoint, identity, protocols: [protocol], strictMode: true, reconnect: false, callTimeoutMs: TIMEOUT_MS });
      cli.wire = { in: [], out: [] };
      cli.on('message', ({ message, outbound }) => (outbound ? cli.wire.out : cli.wire.in).push(String(message)));
      cli.strictFailures = [];
      cli.on('strictValidationFailure', (e) => cli.strictFailures.push(e));
      cli.reservations = new Map();
      cli.handle('ReserveNow', ({ messageId, params }) => {
        cli.reservations.set(messageId, params);
        return { status };
      });
      cli.handle('CancelReservation', ({ messageId, params }) => {
        cli.reservations.set(messageId, params);
        return { status: 'Accepted' };
      });
      // the agent asks what the station takes for smart charging: it has nothing to say
      if (protocol === 'ocpp1.6') {
        cli.handle('GetConfiguration', ({ params }) => ({ configurationKey: [], unknownKey: params.key ?? [] }));
      } else {
        cli.handle('GetVariables', ({ params }) => ({
          getVariableResult: params.getVariableData.map(({ component, variable }) => ({ attributeStatus: 'UnknownComponent', component, variable })),
        }));
      }
      return cli;
    }

    const answered = (cli, action) => agentCalls(cli, action).filter(([id]) => ourAnswer(cli, id));

    function assertValidatedAndAnswered(cli, action, status) {
      const calls = agentCalls(cli, action);
      assert.ok(calls.length > 0, `no ${action} from the agent`);
      for (const [id, p] of calls) {
        assert.ok(cli.reservations.has(id), `${action} ${JSON.stringify(p)} did not reach the handler: ${JSON.stringify(ourAnswer(cli, id))}`);
        assert.deepEqual(ourAnswer(cli, id), [3, id, { status }]);
      }
      assert.deepEqual(cli.strictFailures.map((f) => f.error?.message), []);
      assert.deepEqual([...callErrors(cli), ...frames(cli.wire.out).filter((f) => f[0] === 4)], [], 'CALLERROR on the wire');
    }

    for (const protocol of ['ocpp1.6', 'ocpp2.0.1']) {
      const v16 = protocol === 'ocpp1.6';
      for (const outcome of ['used', 'cancelled', 'charger_refused']) {
        test(`${protocol}, ${outcome}: a schema-valid ReserveNow under agent tokens, released ${outcome}`, async () => {
          const cpId = newCpId(`rsv-${outcome.slice(0, 4)}`);
          const cli = reservingStation(agent.wsUrl, cpId, protocol, outcome === 'charger_refused' ? 'Occupied' : 'Accepted');
          const released = () => events(['reservation.released'], (e) => e.order_id === orderId);
          let orderId;
          let upsert;
          let cancel;
          let authorized;
          await cli.connect();
          assert.equal(cli.protocol, protocol);
          try {
            if (v16) {
              assert.equal((await cli.call('BootNotification', { chargePointVendor: 'InteropVendor', chargePointModel: 'ocpp-rpc-16' })).status, 'Accepted');
              for (const connectorId of [0, 1]) {
                await cli.call('StatusNotification', { connectorId, errorCode: 'NoError', status: 'Available', timestamp: ts(new Date()) });
              }
            } else {
              assert.equal((await cli.call('BootNotification', bootParams())).status, 'Accepted');
              await cli.call('StatusNotification', { timestamp: ts(new Date()), connectorStatus: 'Available', evseId: 1, connectorId: 1 });
            }
            const p = await bpp.provision(cpId);
            orderId = p.orderId;
            const now = new Date();
            upsert = await bpp.command({
              id: `rsv-${randomBytes(6).toString('hex')}`, type: 'reservation.upsert', order_id: orderId, cp_id: cpId, connector_id: 1,
              start: ts(now), end: ts(minutes(now, 60)), grace_minutes: 10,
            });
            assert.equal(upsert.ok, true, JSON.stringify(upsert));
            await until('ReserveNow, answered', () => answered(cli, 'ReserveNow').length > 0, cli);
            const rid = upsert.reservation_id;
            if (outcome === 'used') {
              if (v16) {
                authorized = (await cli.call('Authorize', { idTag: p.otp })).idTagInfo;
                const res = await cli.call('StartTransaction', { connectorId: 1, idTag: p.otp, meterStart: 0, timestamp: ts(new Date()), reservationId: rid });
                assert.equal(res.idTagInfo.status, 'Accepted');
                await cli.call('StopTransaction', { transactionId: res.transactionId, meterStop: 100, timestamp: ts(new Date()) });
              } else {
                authorized = (await cli.call('Authorize', { idToken: keyCode(p.otp) })).idTokenInfo;
                const txId = `NODETX-${randomBytes(6).toString('hex')}`;
                const res = await cli.call('TransactionEvent', txEvent('Started', 0, new Date(), txId, 'Authorized', [register(0, 'Transaction.Begin')], {
                  evse: { id: 1, connectorId: 1 }, idToken: keyCode(p.otp), reservationId: rid,
                }));
                assert.equal(res.idTokenInfo?.status, 'Accepted');
                await cli.call('TransactionEvent', txEvent('Ended', 1, new Date(), txId, 'EVCommunicationLost', [register(100, 'Transaction.End')], {
                  info: { stoppedReason: 'EVDisconnected' },
                }));
              }
            } else if (outcome === 'cancelled') {
              cancel = await bpp.command({ id: `cancel-${randomBytes(6).toString('hex')}`, type: 'reservation.cancel', order_id: orderId });
              assert.equal(cancel.ok, true, JSON.stringify(cancel));
              await until('CancelReservation, answered', () => answered(cli, 'CancelReservation').length > 0, cli);
            }
            await until(`reservation.released for ${orderId}`, () => released().length > 0, null, 15_000);
          } finally {
            await cli.close({ code: 1000 });
          }

          const status = outcome === 'charger_refused' ? 'Occupied' : 'Accepted';
          assertValidatedAndAnswered(cli, 'ReserveNow', status);
          const rid = upsert.reservation_id;
          assert.ok(Number.isInteger(rid), JSON.stringify(upsert));
          const [[, req]] = agentCalls(cli, 'ReserveNow');
          let own;
          let group;
          if (v16) {
            assert.deepEqual(Object.keys(req).sort(), ['connectorId', 'expiryDate', 'idTag', 'parentIdTag', 'reservationId']);
            assert.deepEqual([req.reservationId, req.connectorId], [rid, 1]);
            assert.equal(Date.parse(req.expiryDate), Date.parse(upsert.expires_at));
            [own, group] = [req.idTag, req.parentIdTag];
          } else {
            assert.deepEqual(Object.keys(req).sort(), ['evseId', 'expiryDateTime', 'groupIdToken', 'id', 'idToken']);
            assert.deepEqual([req.id, req.evseId], [rid, 1]);
            assert.equal(Date.parse(req.expiryDateTime), Date.parse(upsert.expires_at));
            assert.deepEqual([req.idToken.type, req.groupIdToken.type], ['Central', 'Central']);
            [own, group] = [req.idToken.idToken, req.groupIdToken.idToken];
          }
          assert.notEqual(own, group);
          const expiresIn = Date.parse(upsert.expires_at) - Date.now();
          assert.ok(expiresIn > 0 && expiresIn <= 10 * 60_000 + 2_000, `expires ${upsert.expires_at}: start + 10 minutes`);

          const [rel, ...more] = released();
          assert.deepEqual(more, [], 'released once');
          assert.deepEqual([rel.cp_id, rel.connector_id, rel.reservation_id, rel.reason], [cpId, 1, rid, outcome]);
          assert.equal(rel.cost, undefined, 'the order has no tariff with reservation fees');
          if (outcome === 'used') {
            assert.equal(authorized.status, 'Accepted');
            assert.equal(v16 ? authorized.parentIdTag : authorized.groupIdToken?.idToken, group, JSON.stringify(authorized));
            assert.deepEqual(agentCalls(cli, 'CancelReservation'), [], 'a used reservation is not cancelled');
          } else if (outcome === 'cancelled') {
            assert.equal(cancel.reservation_id, rid);
            assertValidatedAndAnswered(cli, 'CancelReservation', 'Accepted');
            assert.deepEqual(agentCalls(cli, 'CancelReservation').map(([, c]) => c), [{ reservationId: rid }]);
          } else {
            assert.equal(rel.charger_status, 'Occupied');
            assert.equal(agentCalls(cli, 'ReserveNow').length, 1, 'a refusal is final: not retried');
            assert.deepEqual(events(['reservation.held'], (e) => e.order_id === orderId), []);
          }
        });
      }
    }

    describe('control: strict mode validates ReserveNow from a fake CSMS', () => {
      const r16 = { reservationId: 7, connectorId: 1, expiryDate: '2026-12-02T18:30:00.000Z', idTag: 'RV0123456789ABCDEF', parentIdTag: 'RG0123456789ABCDEF' };
      const r201 = {
        id: 7, evseId: 1, expiryDateTime: '2026-12-02T18:30:00.000Z',
        idToken: { idToken: 'RV0123456789ABCDEF', type: 'Central' }, groupIdToken: { idToken: 'RG0123456789ABCDEF', type: 'Central' },
      };
      const CASES = [
        ['ocpp1.6', 'valid', r16, true],
        ['ocpp1.6', 'idTag of 21 characters', { ...r16, idTag: 'RV0123456789ABCDEF012' }, false],
        ['ocpp1.6', 'expiryDate not a date-time', { ...r16, expiryDate: 'in ten minutes' }, false],
        ['ocpp1.6', 'the 2.0.1 shape', r201, false],
        ['ocpp2.0.1', 'valid', r201, true],
        ['ocpp2.0.1', 'a token type 2.0.1 does not have', { ...r201, idToken: { idToken: 'RV0123456789ABCDEF', type: 'Agent' } }, false],
        ['ocpp2.0.1', 'no expiryDateTime', (({ expiryDateTime, ...rest }) => rest)(r201), false],
        ['ocpp2.0.1', 'the 1.6 shape', r16, false],
      ];
      for (const [protocol, name, payload, valid] of CASES) {
        test(`${protocol} ${name}: ${valid ? 'reaches the handler, Accepted' : 'CALLERROR, the handler never runs'}`, async () => {
          const server = new RPCServer({ protocols: [protocol], strictMode: false });
          const answer = new Promise((res) => {
            server.on('client', (c) => {
              c.on('message', ({ message, outbound }) => {
                const f = JSON.parse(String(message));
                if (!outbound && f[1] === 'ctl-r') res(f);
              });
              c.sendRaw(JSON.stringify([2, 'ctl-r', 'ReserveNow', payload]));
            });
          });
          const http = await server.listen(0, '127.0.0.1');
          const cli = reservingStation(`ws://127.0.0.1:${http.address().port}`, 'CONTROL', protocol);
          try {
            await cli.connect();
            const frame = await answer;
            if (valid) {
              assert.deepEqual(frame, [3, 'ctl-r', { status: 'Accepted' }]);
              assert.deepEqual([...cli.reservations.keys()], ['ctl-r']);
            } else {
              assert.equal(frame[0], 4, JSON.stringify(frame));
              assert.equal(cli.reservations.size, 0);
              assert.equal(cli.strictFailures.length, 1);
              assert.equal(cli.strictFailures[0].method, 'ReserveNow');
            }
          } finally {
            await cli.close({ force: true });
            await server.close({ force: true });
          }
        });
      }
    });
  });
});

// ------------------------------------------------------------------- site power limit
//
// interop.test.mjs's site power test for 2.0.1, against an agent of its own with `[site]
// max_power_kw = 11`, free vend, no uplink: the agent reads SmartChargingCtrlr.RateUnit and
// .ProfileStackLevel (GetVariables), installs a fail-safe TxDefaultProfile on EVSE 0 and
// gives the running transaction its share as a TxProfile with the station's transactionId.
// Strict mode validates each of those CALLs against the official
// SetChargingProfileRequest.json (date-time formats included) before the handler runs.

const SITE_MAX_POWER_KW = 11; // below the 22 kW a connector is assumed to take
const SITE_MAX_POWER_W = SITE_MAX_POWER_KW * 1000;
const MIN_POWER_W = 6 * 230 * 3; // 6 A on three phases: below it a session is paused
const SMART_VARIABLES = [['SmartChargingCtrlr', 'RateUnit'], ['SmartChargingCtrlr', 'ProfileStackLevel']];

async function startPowerAgent() {
  const bin = process.env.CHARGESITE_BIN ?? join(REPO, 'target', 'debug', 'chargesite');
  const tmp = mkdtempSync(join(tmpdir(), 'interop-node201power-'));
  const db = join(tmp, 'cs.db');
  const cfg = join(tmp, 'chargesite.toml');
  writeFileSync(
    cfg,
    `[site]\nid = "site-node201power"\nmax_power_kw = ${SITE_MAX_POWER_KW}\n` +
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

/** A strict 2.0.1 station with smart charging: GetVariables says `rateUnit` and `stack` for
 * SmartChargingCtrlr, every SetChargingProfile that passes strict mode reaches the handler
 * and is accepted. */
function smartStation(endpoint, identity, { rateUnit = 'A,W', stack = '3' } = {}) {
  const cli = new RPCClient({ endpoint, identity, protocols: [PROTOCOL], strictMode: true, reconnect: false, callTimeoutMs: TIMEOUT_MS });
  cli.wire = { in: [], out: [] };
  cli.on('message', ({ message, outbound }) => (outbound ? cli.wire.out : cli.wire.in).push(String(message)));
  cli.strictFailures = [];
  cli.on('strictValidationFailure', (e) => cli.strictFailures.push(e));
  cli.profiles = new Map();
  const have = { 'SmartChargingCtrlr.RateUnit': rateUnit, 'SmartChargingCtrlr.ProfileStackLevel': stack };
  cli.handle('GetVariables', ({ params }) => ({
    getVariableResult: params.getVariableData.map(({ component, variable }) => {
      const v = have[`${component.name}.${variable.name}`];
      if (v !== undefined) return { attributeStatus: 'Accepted', attributeType: 'Actual', attributeValue: v, component, variable };
      return { attributeStatus: component.name === 'SmartChargingCtrlr' ? 'UnknownVariable' : 'UnknownComponent', component, variable };
    }),
  }));
  cli.handle('SetChargingProfile', ({ messageId, params }) => {
    cli.profiles.set(messageId, params);
    return { status: 'Accepted' };
  });
  cli.handle('ClearChargingProfile', () => ({ status: 'Accepted' }));
  return cli;
}

const frames = (list) => list.map((m) => JSON.parse(m));
const agentCalls = (cli, action) => frames(cli.wire.in).filter((f) => f[0] === 2 && f[2] === action).map((f) => [f[1], f[3]]);
const ourAnswer = (cli, id) => frames(cli.wire.out).find((f) => (f[0] === 3 || f[0] === 4) && f[1] === id);
const answeredProfiles = (cli, purpose) =>
  agentCalls(cli, 'SetChargingProfile').filter(([id, p]) => p.chargingProfile?.chargingProfilePurpose === purpose && ourAnswer(cli, id)).map(([, p]) => p);

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

const profileRequest201 = (schedule = {}, top = {}) => ({
  evseId: 0,
  chargingProfile: {
    id: 9100, stackLevel: 0, chargingProfilePurpose: 'TxDefaultProfile', chargingProfileKind: 'Relative',
    chargingSchedule: [{ id: 9100, chargingRateUnit: 'W', chargingSchedulePeriod: [{ startPeriod: 0, limit: 11000.0, numberPhases: 3 }], ...schedule }],
  },
  ...top,
});

describe('site power limit: SetChargingProfile to an ocpp-rpc 2.0.1 station (strict mode, own agent, max_power_kw = 11)', () => {
  let power;
  before(async () => {
    power = await startPowerAgent();
  });
  after(async () => {
    await stopPowerAgent(power);
  });

  describe('control: strict mode validates SetChargingProfile from a fake CSMS', () => {
    const oneSixShaped = profileRequest201();
    oneSixShaped.chargingProfile.chargingSchedule = oneSixShaped.chargingProfile.chargingSchedule[0];
    const CASES = [
      ['valid', profileRequest201(), true],
      ['unit kW', profileRequest201({ chargingRateUnit: 'kW' }), false],
      ['no period', profileRequest201({ chargingSchedulePeriod: [] }), false],
      ['startSchedule not a date-time', profileRequest201({ startSchedule: 'now' }), false],
      ['a 1.6-shaped schedule (an object, not an array)', oneSixShaped, false],
      ['connectorId for evseId', { connectorId: 0, chargingProfile: profileRequest201().chargingProfile }, false],
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
        const cli = smartStation(`ws://127.0.0.1:${http.address().port}`, 'CONTROL');
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

  test('GetVariables first, then a TxDefaultProfile and a TxProfile with the station\'s transactionId, in W, within the site limit', () => withAgentLog(power, async () => {
    const cli = smartStation(power.wsUrl, newCpId('power'));
    const txId = `NODETX-${randomBytes(6).toString('hex')}`;
    const began = Date.now();
    const txProfiles = () => answeredProfiles(cli, 'TxProfile').filter((p) => p.chargingProfile.transactionId === txId);
    await cli.connect();
    try {
      assert.equal((await cli.call('BootNotification', bootParams())).status, 'Accepted');
      await cli.call('StatusNotification', { timestamp: ts(new Date()), connectorStatus: 'Available', evseId: 1, connectorId: 1 });
      await until('the fail-safe TxDefaultProfile', () => answeredProfiles(cli, 'TxDefaultProfile').length > 0, cli);
      const res = await cli.call('TransactionEvent', txEvent('Started', 0, new Date(), txId, 'Authorized', [register(0, 'Transaction.Begin')], {
        info: { chargingState: 'Charging' }, evse: { id: 1, connectorId: 1 }, idToken: { idToken: '04A1B2C3D4E5F7', type: 'ISO14443' },
      }));
      assert.equal(res.idTokenInfo?.status, 'Accepted');
      await until(`a TxProfile for transaction ${txId}`, () => txProfiles().length > 0, cli);
      await cli.call('TransactionEvent', txEvent('Updated', 1, new Date(), txId, 'MeterValuePeriodic', [register(500), sv(7000, 'Power.Active.Import', 'W')]));
      await cli.call('TransactionEvent', txEvent('Ended', 2, new Date(), txId, 'EVCommunicationLost', [register(1000, 'Transaction.End')], {
        info: { stoppedReason: 'EVDisconnected' },
      }));
    } finally {
      await cli.close({ code: 1000 });
    }
    const ended = Date.now();

    // every SetChargingProfile passed strict mode, reached the handler, was accepted
    const calls = agentCalls(cli, 'SetChargingProfile');
    assert.ok(calls.length > 0, 'no SetChargingProfile from the agent');
    for (const [id, p] of calls) {
      assert.ok(cli.profiles.has(id), `SetChargingProfile ${JSON.stringify(p)} did not reach the handler: ${JSON.stringify(ourAnswer(cli, id))}`);
      assert.deepEqual(ourAnswer(cli, id), [3, id, { status: 'Accepted' }]);
    }
    assert.deepEqual(cli.strictFailures.map((f) => f.error?.message), []);
    assert.deepEqual([...callErrors(cli), ...frames(cli.wire.out).filter((f) => f[0] === 4)], [], 'CALLERROR on the wire');

    const asks = agentCalls(cli, 'GetVariables');
    assert.ok(asks.length > 0);
    for (const [, p] of asks) {
      assert.deepEqual(p.getVariableData.map((d) => [d.component.name, d.variable.name]).sort(), [...SMART_VARIABLES].sort());
    }
    const first = (action) => frames(cli.wire.in).findIndex((f) => f[0] === 2 && f[2] === action);
    assert.ok(first('GetVariables') < first('SetChargingProfile'), 'asked what it takes before any profile');

    const limitOf = (p) => p.chargingProfile.chargingSchedule[0].chargingSchedulePeriod[0].limit;
    const profiles = calls.map(([, p]) => p);
    for (const p of profiles) {
      const prof = p.chargingProfile;
      assert.ok(prof.stackLevel >= 0 && prof.stackLevel <= 3, JSON.stringify(p));
      assert.equal(prof.chargingSchedule.length, 1);
      const sched = prof.chargingSchedule[0];
      assert.ok(Number.isInteger(sched.id));
      assert.equal(sched.chargingRateUnit, 'W', `the station offers A and W: ${JSON.stringify(p)}`);
      assert.equal(sched.chargingSchedulePeriod[0].startPeriod, 0);
      for (const period of sched.chargingSchedulePeriod) {
        assert.ok(period.limit >= 0 && period.limit <= SITE_MAX_POWER_W, `${period.limit} W is above the site limit: ${JSON.stringify(p)}`);
      }
    }
    const defaults = profiles.filter((p) => p.chargingProfile.chargingProfilePurpose === 'TxDefaultProfile');
    assert.ok(defaults.length > 0);
    for (const p of defaults) {
      assert.equal(p.evseId, 0);
      assert.equal(p.chargingProfile.id, 9100);
      assert.equal(p.chargingProfile.chargingProfileKind, 'Relative');
      assert.equal(p.chargingProfile.transactionId, undefined);
      assert.equal(p.chargingProfile.chargingSchedule[0].startSchedule, undefined);
    }
    const txp = profiles.filter((p) => p.chargingProfile.chargingProfilePurpose === 'TxProfile');
    assert.ok(txp.length > 0 && txp.every((p) => p.chargingProfile.transactionId === txId), JSON.stringify(txp));
    for (const p of txp) {
      const sched = p.chargingProfile.chargingSchedule[0];
      assert.equal(p.evseId, 1);
      assert.equal(p.chargingProfile.id, 9201);
      assert.equal(p.chargingProfile.chargingProfileKind, 'Absolute');
      const startAt = Date.parse(sched.startSchedule);
      assert.ok(Number.isInteger(sched.duration) && sched.duration > 0);
      assert.ok(startAt >= began - 5 * 60_000 && startAt <= ended && ended < startAt + sched.duration * 1000, JSON.stringify(p));
      assert.ok(limitOf(p) >= MIN_POWER_W, `paused, with room for it: ${JSON.stringify(p)}`);
    }
    assert.equal(limitOf(txp.at(-1)), SITE_MAX_POWER_W, `alone on the site: ${JSON.stringify(txp.at(-1))}`);

    const mine = powerEvents(power.db).filter((e) => e.allocations.some((a) => a.cp_id === cli.identity));
    assert.ok(mine.length > 0);
    for (const e of mine) {
      assert.equal(e.max_power_w, SITE_MAX_POWER_W);
      assert.ok(e.allocations.reduce((s, a) => s + a.limit_w, 0) <= SITE_MAX_POWER_W, JSON.stringify(e));
      assert.ok(!e.allocations.some((a) => a.assumed), JSON.stringify(e));
    }
    const last = mine.at(-1).allocations.find((a) => a.cp_id === cli.identity && a.connector_id === 1);
    assert.equal(last?.limit_w, limitOf(txp.at(-1)));
  }));
});
