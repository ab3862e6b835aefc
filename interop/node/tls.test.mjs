// chargesite over wss:// with OCPP security profiles 2 and 3, driven by npm `ocpp-rpc`
// RPCClients in strictMode (ajv over the official 1.6 and 2.0.1 JSON schemas: every CALL
// sent and every CALLRESULT received), their TLS set through `wsOpts` (handed to `ws` and
// Node's tls): `ca` = the site CA only, `cert`/`key` = the charger's own for profile 3;
// `password` for profile 2 (ocpp-rpc sends Basic auth with user = identity).
//
// The site is made with the agent's CLI by interop/tls/make_site.sh (hash-password, tls
// init, tls issue, check-config), free vend: NODETLS-P3 (profile 3, bound to a serial) and
// NODETLS-P2 run the 1.6 flow, NODETLS-P3B and NODETLS-P2B a 2.0.1 session; then the
// refusals (another charger's certificate, none, the right subject from another CA, plain
// ws://, a wrong password).
//
// Agent under test: CHARGESITE_TLS_SITE (its site.json), CHARGESITE_TLS_WSS_URL and
// CHARGESITE_TLS_WS_URL (.ci/interop.sh sets them). Without them the suite makes its own
// site and agent (CHARGESITE_BIN, default <repo>/target/debug/chargesite) and stops it
// with SIGTERM, expecting exit 0.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

import rpc from 'ocpp-rpc'; // CommonJS: its error classes are only on the default export
const { RPCClient } = rpc;

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const TIMEOUT_MS = 10_000;
const RFC3339_MS_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

// ------------------------------------------------------------------------------- agent

let site; // site.json, plus wssUrl and wsUrl
let own; // {proc, tmp} when this suite started the agent

async function startOwn() {
  const bin = process.env.CHARGESITE_BIN ?? join(REPO, 'target', 'debug', 'chargesite');
  const tmp = mkdtempSync(join(tmpdir(), 'interop-nodetls-'));
  execFileSync('bash', [join(REPO, 'interop', 'tls', 'make_site.sh'), bin, tmp, 'NODETLS'], { stdio: ['ignore', 'inherit', 'inherit'] });
  const s = JSON.parse(readFileSync(join(tmp, 'site.json'), 'utf8'));
  const proc = spawn(bin, ['run', '--config', s.config], { stdio: ['ignore', 'pipe', openSync(join(tmp, 'agent.log'), 'w')] });
  const lines = createInterface({ input: proc.stdout });
  const ports = await new Promise((res, rej) => {
    const found = {};
    const timer = setTimeout(() => rej(new Error(`agent did not report both ports; see ${tmp}/agent.log`)), 30_000);
    lines.on('line', (l) => {
      const m = /^(tls )?listening on 127\.0\.0\.1:(\d+)$/.exec(l.trim());
      if (m) found[m[1] ? 'wss' : 'ws'] = Number(m[2]);
      if (found.ws && found.wss) {
        clearTimeout(timer);
        res(found);
      }
    });
    proc.once('exit', (c) => rej(new Error(`agent exited ${c}; see ${tmp}/agent.log`)));
  });
  own = { proc, tmp };
  return { ...s, wssUrl: `wss://127.0.0.1:${ports.wss}/ocpp`, wsUrl: `ws://127.0.0.1:${ports.ws}/ocpp` };
}

async function setupAgent() {
  const env = process.env;
  if (env.CHARGESITE_TLS_SITE && env.CHARGESITE_TLS_WSS_URL && env.CHARGESITE_TLS_WS_URL) {
    site = {
      ...JSON.parse(readFileSync(env.CHARGESITE_TLS_SITE, 'utf8')),
      wssUrl: env.CHARGESITE_TLS_WSS_URL.replace(/\/$/, ''),
      wsUrl: env.CHARGESITE_TLS_WS_URL.replace(/\/$/, ''),
    };
  } else {
    site = await startOwn();
  }
}

async function teardownAgent() {
  if (!own) return;
  const exited = once(own.proc, 'exit');
  own.proc.kill('SIGTERM');
  const [code] = await exited;
  rmSync(own.tmp, { recursive: true, force: true });
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
  const out = execFileSync('python3', ['-c', PY_EVENTS, site.db, JSON.stringify(types)], { encoding: 'utf8' });
  return JSON.parse(out).filter(filter);
}

const ts = (d) => d.toISOString();
const minutes = (d, m) => new Date(d.getTime() + m * 60_000);
const ca = () => readFileSync(site.ca);

/** What a profile-3 charger configures: the site CA, its certificate and key. */
function mutualTls(role, { cert, key } = {}) {
  const c = site.chargers[role];
  return { ca: ca(), cert: readFileSync(cert ?? c.cert), key: readFileSync(key ?? c.key) };
}

/**
 * An RPCClient for charger `id`, strict mode on, every frame recorded. `wsOpts`: TLS for
 * `ws`; `password`: Basic auth; `endpoint`: wss unless told.
 */
function client(id, protocol, { wsOpts = { ca: ca() }, password, endpoint = site.wssUrl } = {}) {
  const cli = new RPCClient({
    endpoint,
    identity: id,
    protocols: [protocol],
    strictMode: true,
    reconnect: false,
    callTimeoutMs: TIMEOUT_MS,
    wsOpts,
    ...(password != null ? { password } : {}),
  });
  cli.wire = { in: [], out: [] };
  cli.on('message', ({ message, outbound }) => (outbound ? cli.wire.out : cli.wire.in).push(String(message)));
  cli.strictFailures = [];
  cli.on('strictValidationFailure', (e) => cli.strictFailures.push(e));
  return cli;
}

async function connected(id, protocol, opts) {
  const cli = client(id, protocol, opts);
  await cli.connect();
  assert.equal(cli.protocol, protocol);
  // the TLS session ws opened for it
  const sock = cli._ws?._socket;
  assert.ok(sock?.encrypted, 'not a TLS socket');
  assert.ok(['TLSv1.3', 'TLSv1.2'].includes(sock.getProtocol()), sock.getProtocol());
  assert.equal(sock.getPeerCertificate().subject.CN, 'localhost');
  return cli;
}

/** The HTTP status a refused upgrade gets (ocpp-rpc's UnexpectedHttpResponse.code). */
async function refusedStatus(id, opts) {
  const cli = client(id, 'ocpp1.6', opts);
  try {
    await cli.connect();
  } catch (e) {
    assert.ok(e instanceof rpc.UnexpectedHttpResponse || e.name === 'UnexpectedHttpResponse', `not an HTTP refusal: ${e}`);
    return e.code;
  } finally {
    await cli.close({ force: true }).catch(() => {});
  }
  assert.fail(`${id}: the handshake was accepted`);
}

function noErrors(cli) {
  assert.deepEqual(cli.strictFailures, []);
  assert.deepEqual(cli.wire.in.filter((m) => JSON.parse(m)[0] === 4), []);
}

// ------------------------------------------------------------------------------- flows

async function flow16(cli, serial = 'SN-NODE-0001') {
  const boot = await cli.call('BootNotification', {
    chargePointVendor: 'InteropVendor', chargePointModel: 'ocpp-rpc-CP-TLS', chargePointSerialNumber: serial, firmwareVersion: '2.2.1',
  });
  assert.equal(boot.status, 'Accepted');
  assert.match(boot.currentTime, RFC3339_MS_UTC);
  assert.ok(Number.isInteger(boot.interval) && boot.interval > 0);
  const hb = await cli.call('Heartbeat', {});
  assert.ok(Math.abs(Date.parse(hb.currentTime) - Date.now()) < 60_000);
  for (const [connectorId, status] of [[0, 'Available'], [1, 'Preparing']]) {
    assert.deepEqual(await cli.call('StatusNotification', { connectorId, errorCode: 'NoError', status, timestamp: ts(new Date()) }), {});
  }
  const auth = await cli.call('Authorize', { idTag: 'NODETLS01' });
  assert.equal(auth.idTagInfo.status, 'Accepted'); // free vend
  const t0 = new Date(Date.now() - 30 * 60_000);
  const start = await cli.call('StartTransaction', { connectorId: 1, idTag: 'NODETLS01', meterStart: 1000, timestamp: ts(t0) });
  assert.equal(start.idTagInfo.status, 'Accepted');
  const tx = start.transactionId;
  const started = events(['session.started'], (e) => e.cp_id === cli.identity && e.transaction_id === tx);
  assert.equal(started.length, 1);
  assert.equal(started[0].meter_start_wh, 1000);
  const sid = started[0].session_id;
  const sv = (value, measurand, unit) => ({ value, measurand, unit, context: 'Sample.Periodic' });
  assert.deepEqual(await cli.call('MeterValues', {
    connectorId: 1, transactionId: tx,
    meterValue: [{ timestamp: ts(minutes(t0, 10)), sampledValue: [sv('2500', 'Energy.Active.Import.Register', 'Wh'), sv('11', 'Power.Active.Import', 'kW')] }],
  }), {});
  const samples = events(['session.meter'], (e) => e.session_id === sid).flatMap((e) => e.samples);
  assert.ok(samples.some((s) => s.energy_wh === 2500 && s.power_w === 11000), JSON.stringify(samples));
  const t1 = minutes(t0, 30);
  const stop = await cli.call('StopTransaction', { transactionId: tx, meterStop: 5200, timestamp: ts(t1), reason: 'EVDisconnected', idTag: 'NODETLS01' });
  assert.equal(stop.idTagInfo.status, 'Accepted');
  const stopped = events(['session.stopped'], (e) => e.session_id === sid);
  assert.equal(stopped.length, 1);
  assert.equal(stopped[0].energy_wh, 4200);
  assert.equal(stopped[0].reason, 'EVDisconnected');
  assert.equal(Date.parse(stopped[0].stopped_at), t1.getTime());
  noErrors(cli);
}

async function flow201(cli) {
  const boot = await cli.call('BootNotification', {
    chargingStation: { model: 'ocpp-rpc-201-TLS', vendorName: 'InteropVendor', serialNumber: 'SN-NODE201-0001' }, reason: 'PowerUp',
  });
  assert.equal(boot.status, 'Accepted');
  assert.match(boot.currentTime, RFC3339_MS_UTC);
  assert.deepEqual(await cli.call('StatusNotification', { timestamp: ts(new Date()), connectorStatus: 'Available', evseId: 1, connectorId: 1 }), {});
  const hb = await cli.call('Heartbeat', {});
  assert.ok(Math.abs(Date.parse(hb.currentTime) - Date.now()) < 60_000);
  const card = { idToken: '04B1C2D3E4F5A6', type: 'ISO14443' };
  const auth = await cli.call('Authorize', { idToken: card });
  assert.equal(auth.idTokenInfo.status, 'Accepted'); // free vend
  const txId = `NODETLSTX-${randomBytes(5).toString('hex')}`;
  const t0 = new Date(Date.now() - 20 * 60_000);
  const reg = (wh, context) => ({ value: wh, context, measurand: 'Energy.Active.Import.Register', unitOfMeasure: { unit: 'Wh' } });
  const ev = (eventType, seqNo, t, triggerReason, meter, extra = {}) => {
    const { info = {}, ...rest } = extra;
    return {
      eventType, timestamp: ts(t), triggerReason, seqNo,
      transactionInfo: { transactionId: txId, ...info },
      meterValue: [{ timestamp: ts(t), sampledValue: meter }],
      ...rest,
    };
  };
  const started = await cli.call('TransactionEvent', ev('Started', 0, t0, 'Authorized', [reg(1000, 'Transaction.Begin')], {
    info: { chargingState: 'Charging' }, evse: { id: 1, connectorId: 1 }, idToken: card,
  }));
  assert.equal(started.idTokenInfo?.status, 'Accepted');
  const s = events(['session.started'], (e) => e.cp_id === cli.identity && e.transaction_id === txId);
  assert.equal(s.length, 1);
  assert.equal(s[0].evse_id, 1);
  const sid = s[0].session_id;
  await cli.call('TransactionEvent', ev('Updated', 1, minutes(t0, 10), 'MeterValuePeriodic', [reg(2500, 'Sample.Periodic')]));
  const t1 = minutes(t0, 20);
  await cli.call('TransactionEvent', ev('Ended', 2, t1, 'EVDeparted', [reg(3000, 'Transaction.End')], {
    info: { chargingState: 'Idle', stoppedReason: 'EVDisconnected' },
  }));
  const stopped = events(['session.stopped'], (e) => e.session_id === sid);
  assert.equal(stopped.length, 1);
  assert.equal(stopped[0].energy_wh, 2000);
  assert.equal(Date.parse(stopped[0].stopped_at), t1.getTime());
  noErrors(cli);
  const conn = events(['charger.connected'], (e) => e.cp_id === cli.identity);
  assert.ok(conn.length && conn.at(-1).ocpp_version === '2.0.1', JSON.stringify(conn));
}

// ------------------------------------------------------------------------------- tests

describe('chargesite over wss:// (security profiles 2 and 3) driven by ocpp-rpc', () => {
  before(setupAgent);
  after(teardownAgent);

  describe('flows (strict mode)', () => {
    test('profile 3, OCPP 1.6: mutual TLS, Boot (bound serial) .. StopTransaction', async () => {
      const c = site.chargers.p3;
      const cli = await connected(c.id, 'ocpp1.6', { wsOpts: mutualTls('p3') });
      try {
        await flow16(cli, c.serial);
      } finally {
        await cli.close({ code: 1000 });
      }
    });

    test('profile 2, OCPP 1.6: Basic auth over wss, Boot .. StopTransaction', async () => {
      const c = site.chargers.p2;
      const cli = await connected(c.id, 'ocpp1.6', { password: c.password });
      try {
        await flow16(cli);
      } finally {
        await cli.close({ code: 1000 });
      }
    });

    test('profile 3, OCPP 2.0.1: mutual TLS, Boot .. TransactionEvent Ended', async () => {
      const c = site.chargers.p3b;
      const cli = await connected(c.id, 'ocpp2.0.1', { wsOpts: mutualTls('p3b') });
      try {
        await flow201(cli);
      } finally {
        await cli.close({ code: 1000 });
      }
    });

    test('profile 2, OCPP 2.0.1: Basic auth over wss, Boot .. TransactionEvent Ended', async () => {
      const c = site.chargers.p2b;
      const cli = await connected(c.id, 'ocpp2.0.1', { password: c.password });
      try {
        await flow201(cli);
      } finally {
        await cli.close({ code: 1000 });
      }
    });
  });

  describe('refusals', () => {
    test("another charger's certificate: 401", async () => {
      assert.equal(await refusedStatus(site.chargers.p3.id, { wsOpts: mutualTls('p3b') }), 401);
    });

    test('profile 3 without a client certificate: 401', async () => {
      assert.equal(await refusedStatus(site.chargers.p3.id, {}), 401);
    });

    test("the right subject from another site's CA: refused in the TLS handshake", async () => {
      const imp = site.impostor;
      const cli = client(imp.id, 'ocpp1.6', { wsOpts: mutualTls('p3', { cert: imp.cert, key: imp.key }) });
      let err;
      try {
        await cli.connect();
        // TLS 1.3: the server's alert may come after the client thinks it is done
        await Promise.race([once(cli, 'close'), new Promise((r) => setTimeout(r, TIMEOUT_MS))]);
        assert.notEqual(cli.state, RPCClient.OPEN, 'an impostor certificate kept a connection open');
      } catch (e) {
        err = e;
      } finally {
        await cli.close({ force: true }).catch(() => {});
      }
      if (err) {
        assert.ok(!(err instanceof rpc.UnexpectedHttpResponse), `reached HTTP: ${err.code}`);
        // rustls answers an unknown issuer with the unknown_ca alert (48)
        assert.ok(/ALERT_UNKNOWN_CA|ALERT_BAD_CERTIFICATE|ECONNRESET/.test(`${err.code} ${err.message}`), `${err.code}: ${err.message}`);
      }
    });

    test('profile 2 over plain ws:// with the right password: 401', async () => {
      const c = site.chargers.p2;
      assert.equal(await refusedStatus(c.id, { endpoint: site.wsUrl, wsOpts: {}, password: c.password }), 401);
    });

    test('profile 2 over wss with a wrong password: 401', async () => {
      const c = site.chargers.p2;
      assert.equal(await refusedStatus(c.id, { password: `${c.password}x` }), 401);
    });
  });
});
