"""Alibaba Cloud mode scenarios, run by server/tests/aliyun.rs against a
running broker. Devices connect with paho-mqtt exactly as Alibaba Cloud's
published Python samples do: user name `Signature|AccessKeyId|InstanceId`,
password base64(HMAC-SHA1(AccessKeySecret, clientId)), or `Token|...` with
`R|token|W|token`.

Usage: scenarios.py <scenario> <mqtt-port> <api-port> [args...]. Exits 0
when every check passed; prints what failed otherwise. Every wait is
bounded."""

import base64
import hashlib
import hmac
import json
import queue
import socket
import sys
import time
import urllib.error
import urllib.request
import warnings

import paho.mqtt.client as mqtt

warnings.filterwarnings("ignore", category=DeprecationWarning)

HOST = "127.0.0.1"
INSTANCE = "post-cn-example"
AK = "LTAIexample"
SECRET = "example-secret"
GROUP = "GID_test"
WAIT = 10.0


def signature(secret, client_id):
    # As in Alibaba Cloud's samples.
    return base64.b64encode(
        hmac.new(secret.encode(), client_id.encode(), hashlib.sha1).digest()
    ).decode()


class Device:
    """A paho client with its events in queues."""

    def __init__(self, client_id, username, password, clean=True):
        self.client_id = client_id
        self.connacks = queue.Queue()
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self.pubacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION1,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean,
        )
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc: self.connacks.put(rc)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, granted: self.subacks.put(granted)
        self.client.on_publish = lambda c, u, mid: self.pubacks.put(mid)
        self.client.on_disconnect = lambda c, u, rc: self.disconnects.put(rc)

    def connect(self, port=None):
        """The CONNACK return code."""
        self.client.connect(HOST, port or MQTT_PORT, keepalive=60)
        self.client.loop_start()
        rc = self.connacks.get(timeout=WAIT)
        if rc != 0:
            self.client.loop_stop()
            self.client.disconnect()
        return rc

    def subscribe(self, topic, qos=1):
        self.client.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)[0]

    def publish(self, topic, payload, qos=1):
        info = self.client.publish(topic, payload, qos)
        if qos > 0:
            info.wait_for_publish(timeout=WAIT)
            assert info.is_published(), f"no PUBACK for {topic}"

    def recv(self, timeout=WAIT):
        return self.messages.get(timeout=timeout)

    def recv_topic(self, topic, timeout=WAIT):
        """The next message on `topic`, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.01, deadline - time.monotonic()))
            if message.topic == topic:
                return message

    def expect_nothing(self, within=0.5):
        try:
            message = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {message.topic}: {message.payload!r}")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self):
        """Ends the TCP connection without DISCONNECT."""
        self.client.loop_stop()
        self.client.socket().shutdown(socket.SHUT_RDWR)
        self.client.socket().close()


def signed(device_id, clean=True, secret=SECRET, instance=INSTANCE, ak=AK, client_id=None):
    client_id = client_id or f"{GROUP}@@@{device_id}"
    return Device(client_id, f"Signature|{ak}|{instance}", signature(secret, client_id), clean)


def tokened(device_id, password, clean=True):
    return Device(f"{GROUP}@@@{device_id}", f"Token|{AK}|{INSTANCE}", password, clean)


def api(method, path, body=None, port=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{HOST}:{port or API_PORT}/api/v1/aliyun/{path}", data=data, method=method
    )
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def apply_token(resources, actions, validity_ms, port=None):
    status, body = api(
        "POST",
        "tokens",
        {"resources": resources, "actions": actions, "expireTime": int(time.time() * 1000) + validity_ms},
        port=port,
    )
    assert status == 200, (status, body)
    return body["token"]


def check(what, got, expected):
    assert got == expected, f"{what}: got {got!r}, expected {expected!r}"
    print(f"ok: {what} = {got!r}")


def eventually(what, probe, expected, timeout=WAIT):
    """Calls probe() until it returns `expected` (status is stored by a
    background writer, and other nodes see it through storage)."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got == expected or time.monotonic() > deadline:
            check(what, got, expected)
            return
        time.sleep(0.05)


def client_status(client_id, port=None):
    status, body = api("GET", f"clients/{client_id}/status", port=port)
    assert status == 200, (status, body)
    return body["online"], (body["lastEvent"] or {}).get("eventType")


def client_events(client_id, port=None):
    status, body = api("GET", f"clients/{client_id}/events", port=port)
    assert status == 200, (status, body)
    return [e["eventType"] for e in body["events"]]


# ---------------------------------------------------------------------------


def scenario_signature():
    d = signed("dev-1")
    check("signature mode", d.connect(), 0)
    d.close()
    check("wrong instance", signed("dev-2", instance="post-cn-other").connect(), 4)
    check("unknown access key", signed("dev-3", ak="LTAIunknown").connect(), 4)
    check("bad signature", signed("dev-4", secret="wrong-secret").connect(), 4)
    check("signature of another client id",
          Device(f"{GROUP}@@@dev-5", f"Signature|{AK}|{INSTANCE}", signature(SECRET, f"{GROUP}@@@dev-6")).connect(), 4)
    check("malformed user name", Device(f"{GROUP}@@@dev-7", f"Signature|{AK}", "x").connect(), 4)
    for bad_id in ["GID_test", "XID_test@@@d", "GID_ab@@@d", "GID_test@@@", "GID_test@@@" + "d" * 60, "GID_te$t@@@d"]:
        check(f"client id {bad_id!r}", signed("", client_id=bad_id).connect(), 2)
    # Custom identities: signed and origin.
    cid = f"{GROUP}@@@dev-8"
    d = Device(cid, "custom-signed", signature("identity-secret", cid))
    check("custom identity SIGNED", d.connect(), 0)
    d.close()
    d = Device(f"{GROUP}@@@dev-9", "custom-origin", "origin-secret")
    check("custom identity ORIGIN", d.connect(), 0)
    d.close()
    check("custom identity ORIGIN, wrong secret", Device(f"{GROUP}@@@dev-10", "custom-origin", "nope").connect(), 4)
    # Other user names fall through (no authentication URL: accepted, as without the mode).
    d = Device("plain-client", "someone", "whatever")
    check("non-Alibaba user name without authentication URL", d.connect(), 0)
    d.close()


def scenario_token():
    rw = apply_token("t/#", "R,W", 600_000)
    read_only = apply_token(["t/#"], "R", 600_000)
    observer = signed("observer")
    check("observer", observer.connect(), 0)
    check("observer subscribes u/#", observer.subscribe("u/#"), 1)

    d = tokened("tok-1", f"R|{rw}|W|{rw}")
    check("token mode R|t|W|t", d.connect(), 0)
    check("SUBSCRIBE within R", d.subscribe("t/a"), 1)
    check("SUBSCRIBE t/+ within R t/#", d.subscribe("t/+"), 1)
    check("SUBSCRIBE outside R", d.subscribe("u/a"), 128)
    check("SUBSCRIBE # outside R", d.subscribe("#"), 128)
    d.publish("t/a", b"inside")
    check("PUBLISH within W delivered", d.recv_topic("t/a").payload, b"inside")
    d.publish("u/a", b"outside")  # acknowledged, dropped
    observer.publish("u/b", b"marker")
    check("PUBLISH outside W dropped (observer sees only the marker)", observer.recv().payload, b"marker")
    d.close()

    r = tokened("tok-2", f"R|{read_only}")
    check("token mode R only", r.connect(), 0)
    check("R token: SUBSCRIBE", r.subscribe("t/b"), 1)
    observer.subscribe("t/#")
    r.publish("t/b", b"no-write")  # no W token: dropped
    observer.publish("t/c", b"marker2")
    check("no W token: PUBLISH dropped", observer.recv_topic("t/c").payload, b"marker2")
    r.expect_nothing()
    r.close()

    check("W| with an R-only token (rights missing)", tokened("tok-3", f"W|{read_only}").connect(), 5)
    check("unknown token", tokened("tok-4", "R|no-such-token").connect(), 4)
    check("malformed token password", tokened("tok-5", f"X|{rw}").connect(), 4)
    check("token mode, wrong instance",
          Device(f"{GROUP}@@@tok-6", f"Token|{AK}|post-cn-other", f"R|{rw}").connect(), 4)
    status, body = api("POST", "tokens/revoke", {"token": read_only})
    check("revoke", (status, body["revoked"]), (200, True))
    check("revoked token", tokened("tok-7", f"R|{read_only}").connect(), 4)
    status, body = api("POST", "tokens/query", {"token": rw})
    check("query token", (status, body["valid"]), (200, True))
    status, body = api("POST", "tokens", {"resources": "t/#", "actions": "R", "expireTime": int(time.time() * 1000) + 1000})
    check("expiry below the minimum refused", status, 400)
    status, body = api("POST", "tokens", {"resources": "t/#", "actions": "X", "expireTime": int(time.time() * 1000) + 600_000})
    check("bad actions refused", status, 400)
    observer.close()


def scenario_notices():
    # The broker runs with token-min-expiry 1 s and token-expire-notice 2 s.
    short = apply_token("t/#", "R", 3000)
    d = tokened("note-1", f"R|{short}")
    check("token mode (short token)", d.connect(), 0)
    notice = json.loads(d.recv_topic("$SYS/tokenExpireNotice").payload)
    check("tokenExpireNotice names the token", (notice["token"], notice["type"]), (short, "R"))
    fresh = apply_token("t/#", "R", 600_000)
    d.publish("$SYS/uploadToken", json.dumps({"token": fresh, "type": "R"}).encode())
    print("ok: uploadToken acknowledged")
    lazy = tokened("note-2", f"R|{short}")
    check("second client on the short token", lazy.connect(), 0)
    # The short token expires: the client that did not replace it is disconnected.
    lazy.disconnects.get(timeout=WAIT)
    print("ok: client with an expired token disconnected")
    check("expired token refused", tokened("note-3", f"R|{short}").connect(), 4)
    check("uploaded token still in force: SUBSCRIBE", d.subscribe("t/x"), 1)
    check("still connected", d.disconnects.empty(), True)
    status, _ = api("POST", "tokens/revoke", {"token": fresh})
    check("revoke the uploaded token", status, 200)
    notice = json.loads(d.recv_topic("$SYS/tokenInvalidNotice").payload)
    check("tokenInvalidNotice names the token", notice["token"], fresh)
    d.disconnects.get(timeout=WAIT)
    print("ok: client with a revoked token disconnected")
    d.client.loop_stop()


def scenario_p2p():
    receiver_id = f"{GROUP}@@@p2p-rx"
    rx = signed("p2p-rx")
    check("receiver", rx.connect(), 0)
    bystander = signed("p2p-by")
    check("bystander", bystander.connect(), 0)
    check("bystander subscribes app/#", bystander.subscribe("app/#"), 1)
    tx = signed("p2p-tx")
    check("sender", tx.connect(), 0)
    tx.publish(f"app/p2p/{receiver_id}", b"hello")
    message = rx.recv()
    check("p2p delivered without subscribing", (message.topic, message.payload), (f"app/p2p/{receiver_id}", b"hello"))
    tx.publish("app/plain", b"marker")
    check("bystander does not get the p2p message", bystander.recv().topic, "app/plain")
    rx.close()

    # Offline persistent session.
    pid = f"{GROUP}@@@p2p-keep"
    keep = signed("p2p-keep", clean=False)
    check("persistent receiver", keep.connect(), 0)
    keep.close()
    tx.publish(f"app/p2p/{pid}", b"while-away", qos=1)
    keep = signed("p2p-keep", clean=False)
    check("persistent receiver back", keep.connect(), 0)
    message = keep.recv()
    check("p2p queued while offline", (message.topic, message.payload), (f"app/p2p/{pid}", b"while-away"))
    keep.close()
    tx.close()
    bystander.close()


def scenario_status():
    backend = signed("backend")
    check("back end", backend.connect(), 0)
    check("back end subscribes the status topic", backend.subscribe("$SYS/aliyun/status"), 1)
    did = f"{GROUP}@@@status-1"
    d = signed("status-1")
    check("device", d.connect(), 0)

    def next_event(kind):
        while True:
            event = json.loads(backend.recv_topic("$SYS/aliyun/status").payload)
            if event["clientId"] == did and event["eventType"] == kind:
                return event

    event = next_event("connect")
    check("connect event fields", sorted(event), ["channelId", "clientId", "clientIp", "eventType", "time"])
    check("clientIp is the device's", event["clientIp"].startswith("127.0.0.1:"), True)
    eventually("status API: online", lambda: client_status(did), (True, "connect"))
    d.close()
    next_event("disconnect")
    d = signed("status-1")
    d.connect()
    next_event("connect")
    d.drop()
    event = next_event("tcpclean")
    print(f"ok: tcpclean {event}")
    eventually("history, newest first", lambda: client_events(did), ["tcpclean", "connect", "disconnect", "connect"])
    status, body = api("POST", "clients/status", {"clientIds": [did, f"{GROUP}@@@never"]})
    check("batch status", [(c["clientId"], c["online"]) for c in body["clients"]], [(did, False), (f"{GROUP}@@@never", False)])
    check("batch: last event", body["clients"][0]["lastEvent"]["eventType"], "tcpclean")
    backend.close()


def hibernated():
    with urllib.request.urlopen(f"http://{HOST}:{API_PORT}/api/v1/stats", timeout=WAIT) as reply:
        return json.loads(reply.read())["connectionsHibernated"]


def scenario_status_hibernated():
    # Run against a broker whose idle connections hibernate after 1 s: the
    # events of a connection that ends while hibernated carry its address,
    # which the resumed connection takes from its session, not its socket.
    backend = signed("backend-h")
    check("back end", backend.connect(), 0)
    check("back end subscribes the status topic", backend.subscribe("$SYS/aliyun/status"), 1)
    did = f"{GROUP}@@@status-h"

    def next_event(kind):
        while True:
            event = json.loads(backend.recv_topic("$SYS/aliyun/status").payload)
            if event["clientId"] == did and event["eventType"] == kind:
                return event

    for ending, kind in [("drop", "tcpclean"), ("close", "disconnect")]:
        d = signed("status-h")
        check("device", d.connect(), 0)
        address = next_event("connect")["clientIp"]
        check("clientIp is the device's", address.startswith("127.0.0.1:"), True)
        eventually("device and back end hibernate", hibernated, 2)
        getattr(d, ending)()
        check(f"{kind} of a hibernated connection: its clientIp", next_event(kind)["clientIp"], address)
        eventually(f"status API after {kind}", lambda: client_status(did), (False, kind))
    backend.close()


def scenario_send():
    rx = signed("send-rx")
    check("receiver", rx.connect(), 0)
    check("receiver subscribes", rx.subscribe("app/in"), 1)
    status, body = api("POST", "send", {"instanceId": INSTANCE, "mqttTopic": "app/in", "payload": base64.b64encode(b"\x00\xffdata").decode()})
    check("SendMessage status", status, 200)
    check("SendMessage msgId", isinstance(body["msgId"], str) and len(body["msgId"]) > 0, True)
    check("payload decoded from base64", rx.recv().payload, b"\x00\xffdata")
    status, _ = api("POST", "send", {"mqttTopic": f"app/p2p/{GROUP}@@@send-rx", "payload": base64.b64encode(b"p2p").decode(), "qos": 1})
    check("SendMessage to a p2p topic", status, 200)
    check("p2p through SendMessage", rx.recv().payload, b"p2p")
    status, body = api("POST", "send", {"instanceId": "post-cn-other", "mqttTopic": "app/in", "payload": ""})
    check("wrong instance refused", (status, body["error"]), (404, "no-such-instance"))
    status, body = api("POST", "send", {"mqttTopic": "app/in", "payload": "***"})
    check("bad base64 refused", (status, body["error"]), (400, "invalid-payload"))
    rx.close()


def scenario_restart_apply():
    # Run against a broker on redis-server storage, which is then restarted.
    token = apply_token("t/#", "R,W", 600_000)
    d = tokened("restart-1", f"R|{token}|W|{token}")
    check("token accepted before the restart", d.connect(), 0)
    d.close()
    print(f"TOKEN={token}")


def scenario_restart_use():
    token = ARGS[0]
    d = tokened("restart-1", f"R|{token}|W|{token}")
    check("token applied before the restart accepted", d.connect(), 0)
    check("its R rights hold", d.subscribe("t/a"), 1)
    check("and end at its resources", d.subscribe("u/a"), 128)
    d.close()
    status, body = api("POST", "tokens/query", {"token": token})
    check("query after the restart", (status, body["valid"], body["actions"]), (200, True, "R,W"))


def scenario_unavailable():
    # Storage is down: nothing can be applied or checked.
    token = ARGS[0]
    status, body = api(
        "POST", "tokens", {"resources": "t/#", "actions": "R", "expireTime": int(time.time() * 1000) + 600_000}
    )
    check("apply without storage", (status, body["error"]), (503, "storage-unavailable"))
    check("CONNECT with a token storage cannot check", tokened("down-1", f"R|{token}").connect(), 3)
    status, body = api("POST", "tokens/revoke", {"token": token})
    check("revoke without storage", status, 503)
    status, body = api("POST", "tokens/query", {"token": token})
    check("query without storage", status, 503)
    status, body = api("GET", f"clients/{GROUP}@@@down-1/status")
    check("status without storage", status, 503)


def scenario_cluster():
    # Two nodes sharing one redis-server: A at MQTT_PORT/API_PORT, B at ARGS.
    mqtt_b, api_b = int(ARGS[0]), int(ARGS[1])
    token = apply_token("t/#", "R,W", 600_000)
    did = f"{GROUP}@@@node-b-1"
    d = tokened("node-b-1", f"R|{token}|W|{token}")
    check("token applied on A accepted on B", d.connect(port=mqtt_b), 0)
    check("its rights hold on B", d.subscribe("t/a"), 1)
    eventually("B's client online through A's API", lambda: client_status(did), (True, "connect"))
    status, body = api("POST", "tokens/query", {"token": token}, port=api_b)
    check("query on B", (status, body["valid"]), (200, True))
    status, body = api("POST", "tokens/revoke", {"token": token})
    check("revoke on A", (status, body["revoked"]), (200, True))
    start = time.monotonic()
    notice = json.loads(d.recv_topic("$SYS/tokenInvalidNotice").payload)
    check("B's client gets tokenInvalidNotice", (notice["token"], notice["type"]), (token, "R"))
    d.disconnects.get(timeout=WAIT)
    print(f"ok: B's client disconnected {time.monotonic() - start:.1f} s after the revocation on A")
    d.client.loop_stop()
    eventually("offline through A's API", lambda: client_status(did), (False, "tcpclean"))
    eventually("history through A's API, newest first", lambda: client_events(did), ["tcpclean", "connect"])
    check("the revoked token refused on B", tokened("node-b-2", f"R|{token}").connect(port=mqtt_b), 4)
    # A client moving from B to A: still online after B's tcpclean.
    mid = f"{GROUP}@@@mover"
    m = signed("mover")
    check("mover on B", m.connect(port=mqtt_b), 0)
    eventually("mover online", lambda: client_status(mid), (True, "connect"))
    m.client.loop_stop()
    m2 = signed("mover")
    check("mover on A", m2.connect(), 0)
    eventually("mover: both connects stored", lambda: client_events(mid).count("connect"), 2)
    m.drop()
    eventually(
        "mover: B's tcpclean stored, still online (its channel on A)",
        lambda: ("tcpclean" in client_events(mid), client_status(mid)[0]),
        (True, True),
    )
    m2.close()


def scenario_retention():
    # The broker runs with offline-message-retention 2 s.
    cid = f"{GROUP}@@@keeper"
    keeper = signed("keeper", clean=False)
    check("persistent subscriber", keeper.connect(), 0)
    check("subscribes r/#", keeper.subscribe("r/#"), 1)
    keeper.close()
    tx = signed("sender")
    check("sender", tx.connect(), 0)
    tx.publish("r/old", b"old")
    tx.publish(f"app/p2p/{cid}", b"old-p2p")
    time.sleep(3.0)
    tx.publish("r/new", b"new")
    tx.publish(f"app/p2p/{cid}", b"new-p2p")
    keeper = signed("keeper", clean=False)
    check("back", keeper.connect(), 0)
    got = sorted([keeper.recv().payload, keeper.recv().payload])
    check("only what is younger than the retention", got, [b"new", b"new-p2p"])
    keeper.expect_nothing(1.0)
    keeper.close()
    tx.close()


def scenario_cluster_p2p():
    # Two nodes sharing one redis-server: A at MQTT_PORT, B at ARGS[0].
    mqtt_b = int(ARGS[0])
    rid = f"{GROUP}@@@x-rx"
    rx = signed("x-rx")
    check("receiver on B", rx.connect(port=mqtt_b), 0)
    by_b = signed("x-by-b")
    check("bystander on B", by_b.connect(port=mqtt_b), 0)
    check("bystander on B subscribes app/#", by_b.subscribe("app/#"), 1)
    by_a = signed("x-by-a")
    check("bystander on A", by_a.connect(), 0)
    check("bystander on A subscribes app/#", by_a.subscribe("app/#"), 1)
    tx = signed("x-tx")
    check("sender on A", tx.connect(), 0)
    tx.publish(f"app/p2p/{rid}", b"across", qos=1)
    message = rx.recv()
    check("p2p from A reaches B's client (QoS 1)", (message.topic, message.payload, message.qos), (f"app/p2p/{rid}", b"across", 1))
    tx.publish(f"app/p2p/{rid}", b"across-0", qos=0)
    message = rx.recv()
    check("p2p from A reaches B's client (QoS 0)", (message.topic, message.payload), (f"app/p2p/{rid}", b"across-0"))
    tx.publish("app/plain", b"marker")
    check("bystander on B gets only the marker", by_b.recv().payload, b"marker")
    check("bystander on A gets only the marker", by_a.recv().payload, b"marker")
    rx.expect_nothing(0.5)
    by_a.expect_nothing(0.1)
    by_b.expect_nothing(0.1)
    rx.close()

    # A persistent session offline on B; its client comes back on A.
    kid = f"{GROUP}@@@x-keep"
    keep = signed("x-keep", clean=False)
    check("persistent receiver on B", keep.connect(port=mqtt_b), 0)
    keep.close()
    time.sleep(0.3)
    tx.publish(f"app/p2p/{kid}", b"for-later", qos=1)
    keep = signed("x-keep", clean=False)
    check("persistent receiver back, on A", keep.connect(), 0)
    message = keep.recv()
    check("p2p queued on B delivered on A", (message.topic, message.payload), (f"app/p2p/{kid}", b"for-later"))
    keep.expect_nothing(0.5)
    keep.close()
    tx.close()
    by_a.close()
    by_b.close()
    check("bystanders got no p2p message", True, True)


def scenario_retention_queue():
    # A persistent subscriber offline, a message on its subscription and a
    # p2p message queued for it (ARGS[0] tags the payloads).
    tag = ARGS[0].encode()
    cid = f"{GROUP}@@@restart-keeper"
    keeper = signed("restart-keeper", clean=False)
    check("persistent subscriber", keeper.connect(), 0)
    check("subscribes rr/#", keeper.subscribe("rr/#"), 1)
    keeper.close()
    tx = signed("restart-sender")
    check("sender", tx.connect(), 0)
    tx.publish("rr/x", tag)
    tx.publish(f"app/p2p/{cid}", tag + b"-p2p")
    tx.close()


def scenario_retention_back():
    # ARGS[0]: the tag; ARGS[1]: "expired" (nothing arrives) or "kept".
    tag = ARGS[0].encode()
    keeper = signed("restart-keeper", clean=False)
    check("persistent subscriber back", keeper.connect(), 0)
    if ARGS[1] == "expired":
        keeper.expect_nothing(1.5)
        check("nothing older than the retention", True, True)
    else:
        got = sorted([keeper.recv().payload, keeper.recv().payload])
        check("both queued messages", got, [tag, tag + b"-p2p"])
        keeper.expect_nothing(0.5)
    keeper.close()


if __name__ == "__main__":
    name, MQTT_PORT, API_PORT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ARGS = sys.argv[4:]
    globals()[f"scenario_{name}"]()
    print(f"scenario {name}: passed")
