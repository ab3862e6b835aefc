"""A minimal BPP for the 2.0.1 interop suite: the operator's side of the agent's MQTT
uplink (CONTRACT §4), with PyPI `paho-mqtt`. It subscribes to the site's topics, sends
commands on `<root>/cmd` and waits for their `<root>/cmd/result`.

The suite needs it because an OTP exists only once the BPP has provisioned it
(`authorization.upsert`): the agent stores OTPs as keyed hashes, so a test cannot put one
into SQLite itself.
"""

import datetime as dt
import json
import threading
import time
import uuid

import paho.mqtt.client as mqtt

PREFIX = "chargesite/v1"


class Bpp:
    def __init__(self, host, port, site):
        self.root = f"{PREFIX}/{site}"
        self.messages = []  # (topic, parsed payload or raw bytes)
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"interop-bpp-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError(f"BPP: no SUBACK from the broker at {host}:{port}")

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties):
        if not reason_code.is_failure:
            client.subscribe(f"{self.root}/#", qos=1)

    def _on_message(self, _client, _userdata, msg):
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = msg.payload
        with self._cond:
            self.messages.append((msg.topic, body))
            self._cond.notify_all()

    def wait_for(self, what, predicate, timeout=20):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for topic, body in self.messages:
                    if predicate(topic, body):
                        return body
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"BPP: timed out waiting for {what}; got {self.messages[-10:]}")
                self._cond.wait(left)

    def wait_online(self, timeout=30):
        """The agent's retained `state` says online: it is subscribed to `<root>/cmd`."""
        return self.wait_for(
            "the agent online",
            lambda t, b: t == f"{self.root}/state" and isinstance(b, dict) and b.get("online") is True,
            timeout,
        )

    def command(self, cmd, timeout=20):
        """Publishes a command (QoS 1) and returns its `cmd/result`."""
        info = self.client.publish(f"{self.root}/cmd", json.dumps(cmd), qos=1)
        info.wait_for_publish(timeout)
        return self.wait_for(
            f"the result of command {cmd.get('id')!r}",
            lambda t, b: t == f"{self.root}/cmd/result" and isinstance(b, dict) and b.get("id") == cmd.get("id"),
            timeout,
        )

    def upsert_otp(self, order_id, otp, cp_id, evse_id=1, **extra):
        """`authorization.upsert` of an OTP valid for an hour on one charger's EVSE; returns
        the result, which the caller checks for `ok: true`."""
        now = dt.datetime.now(dt.timezone.utc)
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        cmd = {
            "id": f"upsert-{uuid.uuid4().hex[:12]}",
            "type": "authorization.upsert",
            "order_id": order_id,
            "otp": otp,
            # from 3 hours ago: an offline replay presents it with older timestamps
            "valid_from": (now - dt.timedelta(hours=3)).strftime(fmt),
            "valid_until": (now + dt.timedelta(hours=1)).strftime(fmt),
            "cp_id": cp_id,
            "connector_id": evse_id,
            **extra,
        }
        return self.command(cmd)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()
