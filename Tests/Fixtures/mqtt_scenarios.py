#!/usr/bin/env python3
"""MQTT scenarios against a Switchyard MQTT listener, run by MQTTChannelTests.

Real clients: paho-mqtt (pip) for well-behaved devices, a raw socket for bad input.
Each scenario prints one JSON object on stdout.

usage: mqtt_scenarios.py SCENARIO PORT [ARGS...]
"""
import json
import socket
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"


def code(rc):
    return rc.value if hasattr(rc, "value") else int(rc)


def client(version, client_id, username=None, password="x"):
    proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
    if username:
        c.username_pw_set(username, password)
    state = {"connack": None, "acks": {}, "reasons": {}, "disconnect": None, "connected": threading.Event(), "gone": threading.Event()}

    def on_connect(cl, userdata, flags, reason_code, properties):
        state["connack"] = code(reason_code)
        state["connected"].set()

    def on_publish(cl, userdata, mid, reason_code, properties):
        state["acks"][mid] = code(reason_code)
        if properties is not None and getattr(properties, "ReasonString", None):
            state["reasons"][mid] = properties.ReasonString

    def on_disconnect(cl, userdata, flags, reason_code, properties):
        state["disconnect"] = code(reason_code)
        state["gone"].set()
        state["connected"].set()

    c.on_connect = on_connect
    c.on_publish = on_publish
    c.on_disconnect = on_disconnect
    return c, state


def publish(port, version, qos, count, topic, client_id="dev-1"):
    """Publishes COUNT messages ({i} in TOPIC is the index) and waits for every acknowledgement."""
    c, state = client(version, client_id)
    c.connect(HOST, port, keepalive=30)
    c.loop_start()
    state["connected"].wait(5)
    mids = []
    for i in range(count):
        info = c.publish(topic.format(i=i), json.dumps({"seq": i}), qos=qos)
        mids.append(info.mid)
    deadline = time.time() + 10
    while qos > 0 and time.time() < deadline and len(state["acks"]) < count and not state["gone"].is_set():
        time.sleep(0.01)
    if qos == 0:
        time.sleep(0.3)
    c.disconnect()
    c.loop_stop()
    return {
        "connack": state["connack"],
        "acks": [state["acks"].get(m) for m in mids],
        "reasons": [state["reasons"].get(m) for m in mids],
        "disconnect": state["disconnect"],
    }


def connect_only(port, version, username=None):
    c, state = client(version, "dev-c", username)
    try:
        c.connect(HOST, port, keepalive=30)
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}
    c.loop_start()
    state["connected"].wait(5)
    time.sleep(0.2)
    c.loop_stop()
    return {"connack": state["connack"]}


# ---- raw packets -------------------------------------------------------------


def vbi(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    b = text.encode()
    return struct.pack("!H", len(b)) + b


def connect_packet(version, client_id, keepalive=30, will=None):
    flags = 0x02
    props = b"\x00" if version == 5 else b""
    payload = s(client_id)
    if will:
        topic, message = will
        flags |= 0x04
        payload += (b"\x00" if version == 5 else b"") + s(topic) + s(message)
    body = s("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive) + props + payload
    return bytes([0x10]) + vbi(len(body)) + body


def recv_all(sock, timeout=3.0):
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False


def raw(port, packets, pause=0.0, timeout=3.0):
    sock = socket.create_connection((HOST, port))
    for p in packets:
        sock.sendall(p)
        if pause:
            time.sleep(pause)
    data, closed = recv_all(sock, timeout)
    sock.close()
    return {"received": data.hex(), "closed": closed}


def fragments(port, topic):
    """CONNECT and three QoS 1 PUBLISHes as one byte stream: sent one byte per segment, and
    (another client) all in one segment. Returns what each connection got back."""
    def stream(client_id):
        out = connect_packet(4, client_id)
        for i in (1, 2, 3):
            body = s(topic) + struct.pack("!H", i) + b'{"n":%d}' % i
            out += bytes([0x32]) + vbi(len(body)) + body
        return out

    result = {}
    for name, client_id, step in (("dribbled", "frag-1", 1), ("together", "frag-2", None)):
        sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = stream(client_id)
        for i in range(0, len(data), step or len(data)):
            sock.sendall(data[i:i + (step or len(data))])
            if step:
                time.sleep(0.002)
        sock.settimeout(3)
        got = b""
        while len(got) < 16:
            chunk = sock.recv(64)
            if not chunk:
                break
            got += chunk
        sock.close()
        result[name] = got.hex()
    return result


def subscriber(port, version, client_id, topic_filter, qos):
    c, state = client(version, client_id)
    got = []
    subscribed = threading.Event()

    def on_message(cl, userdata, m):
        got.append({"topic": m.topic, "payload": m.payload.decode(errors="replace"), "qos": m.qos, "retain": bool(m.retain)})

    def on_subscribe(cl, userdata, mid, reason_codes, properties):
        state["granted"] = [code(r) for r in reason_codes]
        subscribed.set()

    c.on_message = on_message
    c.on_subscribe = on_subscribe
    c.connect(HOST, port, keepalive=30)
    c.loop_start()
    state["connected"].wait(5)
    c.subscribe(topic_filter, qos=qos)
    subscribed.wait(5)
    return c, state, got


def wait_for(predicate, seconds=5.0):
    deadline = time.time() + seconds
    while time.time() < deadline and not predicate():
        time.sleep(0.01)


def pubsub(port, version, qos, count):
    """A subscriber on devices/p1/+/telemetry, a publisher of COUNT messages, then a retained one."""
    sub, sstate, got = subscriber(port, version, "sub-1", "devices/p1/+/telemetry", qos)
    pub, pstate = client(version, "pub-1")
    pub.connect(HOST, port, keepalive=30)
    pub.loop_start()
    pstate["connected"].wait(5)
    for i in range(count):
        pub.publish(f"devices/p1/d{i % 3}/telemetry", f"m{i}", qos=qos)
    pub.publish("devices/p1/elsewhere/status", "not for the subscriber", qos=qos)
    wait_for(lambda: len(got) >= count)
    info = pub.publish("devices/p1/r1/state", "last known", qos=1, retain=True)
    info.wait_for_publish(5)
    late, lstate, late_got = subscriber(port, version, "sub-2", "devices/p1/r1/#", 1)
    wait_for(lambda: len(late_got) >= 1, 3)
    time.sleep(0.2)
    for c in (sub, pub, late):
        c.disconnect()
        c.loop_stop()
    return {"granted": sstate.get("granted"), "got": got, "late": late_got}


def signed_in(port, version, username, password, publish_topics, subscribe_filters):
    """Signs in, publishes QoS 1 to each topic and subscribes to each filter; reports every code."""
    c, state = client(version, "signed-" + username, username, password)
    granted = {}
    done = threading.Event()

    def on_subscribe(cl, userdata, mid, reason_codes, properties):
        granted[mid] = [code(r) for r in reason_codes]
        done.set()

    c.on_subscribe = on_subscribe
    c.connect(HOST, port, keepalive=30)
    c.loop_start()
    state["connected"].wait(5)
    result = {"connack": state["connack"], "acks": [], "granted": []}
    if state["connack"] == 0:
        mids = [c.publish(t, "x", qos=1).mid for t in publish_topics]
        wait_for(lambda: len(state["acks"]) >= len(mids) or state["gone"].is_set())
        result["acks"] = [state["acks"].get(m) for m in mids]
        for f in subscribe_filters:
            done.clear()
            mid = c.subscribe(f, qos=1)[1]
            done.wait(5)
            result["granted"] += granted.get(mid, [None])
        c.disconnect()
    c.loop_stop()
    return result


def fuzz(port, connections, seed):
    """Mutated and random packets on fresh connections: each connection sends a CONNECT (valid or
    not) and four more packets, reads what comes back briefly, and closes."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(seed)

    def base_packets(version):
        topic = s("devices/p/d/t")
        props = b"\x00" if version == 5 else b""
        pub1 = topic + struct.pack("!H", 1) + props + b"payload"
        sub = struct.pack("!H", 2) + props + s("devices/#") + b"\x01"
        unsub = struct.pack("!H", 3) + props + s("devices/#")
        return [
            bytes([0x30]) + vbi(len(topic) + len(props) + 2) + topic + props + b"hi",
            bytes([0x32]) + vbi(len(pub1)) + pub1,
            bytes([0x34]) + vbi(len(pub1)) + pub1,
            bytes([0x82]) + vbi(len(sub)) + sub,
            bytes([0xA2]) + vbi(len(unsub)) + unsub,
            b"\xc0\x00",
            b"\xe0\x00",
            b"\x20\x02\x00\x00",  # a client-sent CONNACK
            b"\xf0\x00",
            bytes([0x30]) + vbi(4) + s("") + b"xx",  # zero-length topic
            bytes([0x30]) + vbi(6) + b"\x00\x02\xc3\x28" + b"xx",  # invalid UTF-8
            b"\x62\x02\x00\x01",  # PUBREL
        ]

    def mutate(packet):
        b = bytearray(packet)
        kind = rng.randrange(7)
        if kind == 0 and b:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind == 1 and len(b) > 1:
            b = b[: rng.randrange(1, len(b))]
        elif kind == 2:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 3 and len(b) > 1:
            b = b[:1] + vbi(rng.choice([0, 1, 127, 128, 16383, 2_000_000, 268_435_455])) + b[2:]
        elif kind == 4 and b:
            b[0] = (b[0] & 0xF0) | rng.randrange(16)  # reserved flags
        elif kind == 5:
            b = bytearray(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        return bytes(b)

    def one(i):
        version = rng.choice([4, 5])
        packets = [connect_packet(version, f"fuzz-{i}")] if rng.random() < 0.8 else [mutate(connect_packet(version, f"fuzz-{i}"))]
        packets += [mutate(rng.choice(base_packets(version))) if rng.random() < 0.9 else rng.choice(base_packets(version)) for _ in range(4)]
        try:
            sock = socket.create_connection((HOST, port), timeout=2)
            for p in packets:
                sock.sendall(p)
            sock.settimeout(0.05)
            try:
                while sock.recv(65536):
                    pass
            except (socket.timeout, ConnectionResetError, OSError):
                pass
            sock.close()
            return len(packets)
        except OSError:
            return len(packets)

    with ThreadPoolExecutor(max_workers=16) as pool:
        sent = sum(pool.map(one, range(connections)))
    return {"packets": sent, "connections": connections, "seed": seed}


def responder(port, version, count, seconds):
    """A device that answers commands on devices/p1/d1/commands/+ ("ignore" gets no answer)."""
    c, state = client(version, "responder-" + version)
    handled = []
    response_topics = []

    def on_message(cl, userdata, m):
        body = m.payload.decode(errors="replace")
        handled.append(body)
        rt = getattr(m.properties, "ResponseTopic", None) if m.properties is not None else None
        response_topics.append(rt)
        if body != "ignore":
            cl.publish(rt or (m.topic + "/reply"), "ack:" + body, qos=1)

    c.on_message = on_message
    c.connect(HOST, port, keepalive=30)
    c.loop_start()
    state["connected"].wait(5)
    c.subscribe("devices/p1/d1/commands/+", qos=1)
    wait_for(lambda: len(handled) >= count, seconds)
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()
    return {"handled": handled, "response_topics": response_topics}


def keeper(port, version, clean):
    """The client id "keeper" with a session that outlives its connection (v5: expiry 300 s;
    3.1.1: clean session 0); collects what it is sent."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    if version == "5":
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="keeper", protocol=mqtt.MQTTv5)
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="keeper", protocol=mqtt.MQTTv311, clean_session=clean)
    state = {"present": None, "connected": threading.Event(), "subscribed": threading.Event()}
    got = []

    def on_connect(cl, userdata, flags, reason_code, properties):
        state["present"] = bool(flags.session_present)
        state["connected"].set()

    c.on_connect = on_connect
    c.on_message = lambda cl, u, m: got.append({"topic": m.topic, "payload": m.payload.decode(), "qos": m.qos, "dup": bool(m.dup)})
    c.on_subscribe = lambda *a: state["subscribed"].set()
    if version == "5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        c.connect(HOST, port, keepalive=30, clean_start=clean, properties=props)
    else:
        c.connect(HOST, port, keepalive=30)
    c.loop_start()
    state["connected"].wait(5)
    return c, state, got


def session_park(port, version, count):
    """keeper subscribes (QoS 1) and leaves; COUNT QoS 1 messages and a retained one are
    published while it is away."""
    c, state, _ = keeper(port, version, clean=version == "5")  # 3.1.1 keeps only clean-session-0 sessions
    c.subscribe("devices/p1/+/cmd", qos=1)
    state["subscribed"].wait(5)
    c.disconnect()
    c.loop_stop()
    time.sleep(0.2)
    pub, pstate = client(version, "parker-pub")
    pub.connect(HOST, port, keepalive=30)
    pub.loop_start()
    pstate["connected"].wait(5)
    infos = [pub.publish(f"devices/p1/d{i}/cmd", f"while-away-{i}", qos=1) for i in range(count)]
    infos.append(pub.publish("devices/p1/r9/state", "kept across restarts", qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    return {"first_present": state["present"], "published": sum(1 for i in infos if i.is_published())}


def session_resume(port, version, count):
    """keeper comes back without clean start: the session is there with what it missed; a
    new subscriber gets the retained message."""
    c, state, got = keeper(port, version, clean=False)
    wait_for(lambda: len(got) >= count, 5)
    time.sleep(0.3)  # nothing more should come
    c.disconnect()
    c.loop_stop()
    late, _, late_got = subscriber(port, version, "late", "devices/p1/r9/#", 1)
    wait_for(lambda: len(late_got) >= 1, 3)
    late.disconnect()
    late.loop_stop()
    return {"present": state["present"], "got": got, "retained": late_got}


def shared(port, version, count):
    """Three members of $share/workers/devices/p1/+/job and COUNT QoS 1 messages: each goes to
    exactly one member."""
    members = [subscriber(port, version, f"worker-{i}", "$share/workers/devices/p1/+/job", 1) for i in range(3)]
    pub, pstate = client(version, "job-pub")
    pub.connect(HOST, port, keepalive=30)
    pub.loop_start()
    pstate["connected"].wait(5)
    for i in range(count):
        pub.publish(f"devices/p1/d{i % 5}/job", f"job-{i}", qos=1).wait_for_publish(5)
    wait_for(lambda: sum(len(g) for _, _, g in members) >= count, 5)
    time.sleep(0.3)
    for c, _, _ in members:
        c.disconnect()
        c.loop_stop()
    pub.disconnect()
    pub.loop_stop()
    return {"granted": [st.get("granted") for _, st, _ in members], "per_member": [[m["payload"] for m in g] for _, _, g in members]}


def system_topics(port, seconds):
    """Subscribes to $SYS/broker/# and returns the last value of each topic; also tries to
    publish to $SYS (a v5 PUBACK tells whether that was refused)."""
    sub, sstate, got = subscriber(port, "5", "sys-watcher", "$SYS/broker/#", 0)
    time.sleep(seconds)
    pub, pstate = client("5", "sys-forger")
    pub.connect(HOST, port, keepalive=30)
    pub.loop_start()
    pstate["connected"].wait(5)
    info = pub.publish("$SYS/broker/clients/connected", "999999", qos=1)
    info.wait_for_publish(5)
    time.sleep(0.2)
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()
    last = {}
    for m in got:
        last[m["topic"]] = m["payload"]
    return {"topics": last, "forged_ack": pstate["acks"].get(info.mid)}


def burst(port, count):
    """Opens COUNT connections at once, each sending CONNECT; counts the CONNACKs."""
    socks = []
    for i in range(count):
        try:
            sk = socket.create_connection((HOST, port), timeout=2)
            sk.sendall(connect_packet(4, f"burst-{i}"))
            socks.append(sk)
        except OSError:
            pass
    accepted = 0
    for sk in socks:
        try:
            sk.settimeout(2)
            data = sk.recv(4)
            if len(data) >= 4 and data[0] == 0x20 and data[3] == 0:
                accepted += 1
        except OSError:
            pass
        sk.close()
    return {"opened": len(socks), "accepted": accepted}


def tls(port, cafile, version):
    """Connects over TLS (verifying the broker's certificate against CAFILE), subscribes and
    publishes QoS 1 to itself; then a plain-text CONNECT to the TLS port, which must not get
    a CONNACK."""
    c, state = client(version, "tls-device")
    got = []
    c.tls_set(ca_certs=cafile)
    c.on_message = lambda cl, u, m: got.append(m.payload.decode())
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(HOST, port, keepalive=30)
    c.loop_start()
    state["connected"].wait(5)
    c.subscribe("devices/p1/tls/#", qos=1)
    subscribed.wait(5)
    info = c.publish("devices/p1/tls/telemetry", "over tls", qos=1)
    info.wait_for_publish(5)
    wait_for(lambda: len(got) >= 1, 3)
    c.disconnect()
    c.loop_stop()
    plain = raw(port, [connect_packet(4, "plain-on-tls")], timeout=2.0)
    return {"connack": state["connack"], "ack": state["acks"].get(info.mid), "got": got, "plain": plain}


def signed_connect(port, version, product, device, secret, skew, method):
    """Signs in the Alibaba way: client id {id}|securemode=3,signmethod=…,timestamp=…|, user
    name {device}&{product}, password the hex HMAC of the content keyed with the secret; then
    publishes one QoS 1 message to its own topic."""
    import hashlib
    import hmac

    stamp = str(int((time.time() + skew) * 1000))
    client_id = "sig-" + device
    content = f"clientId{client_id}deviceName{device}productKey{product}timestamp{stamp}"
    digest = hashlib.sha256 if method == "hmacsha256" else hashlib.sha1
    password = hmac.new(secret.encode(), content.encode(), digest).hexdigest()
    full_id = f"{client_id}|securemode=3,signmethod={method},timestamp={stamp}|"
    proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=full_id, protocol=proto)
    c.username_pw_set(f"{device}&{product}", password)
    state = {"connack": None, "acks": {}, "connected": threading.Event()}

    def on_connect(cl, userdata, flags, reason_code, properties):
        state["connack"] = code(reason_code)
        state["connected"].set()

    c.on_connect = on_connect
    c.on_publish = lambda cl, u, mid, rc, props: state["acks"].__setitem__(mid, code(rc))
    c.on_disconnect = lambda *a: state["connected"].set()
    c.connect(HOST, port, keepalive=30)
    c.loop_start()
    state["connected"].wait(5)
    ack = None
    if state["connack"] == 0:
        info = c.publish(f"devices/{product}/{device}/telemetry", "signed", qos=1)
        info.wait_for_publish(5)
        ack = state["acks"].get(info.mid)
    c.disconnect()
    c.loop_stop()
    return {"connack": state["connack"], "ack": ack}


def scenario(name, port, args):
    if name == "signed":
        return signed_connect(port, args[0], args[1], args[2], args[3], float(args[4]), args[5])
    if name == "tls":
        return tls(port, args[0], args[1])
    if name == "sys":
        return system_topics(port, float(args[0]))
    if name == "burst":
        return burst(port, int(args[0]))
    if name == "session_park":
        return session_park(port, args[0], int(args[1]))
    if name == "session_resume":
        return session_resume(port, args[0], int(args[1]))
    if name == "shared":
        return shared(port, args[0], int(args[1]))
    if name == "signin":
        version, username, password = args[0], args[1], args[2]
        topics = [t for t in args[3].split(",") if t] if len(args) > 3 else []
        filters = [f for f in args[4].split(",") if f] if len(args) > 4 else []
        return signed_in(port, version, username, password, topics, filters)
    if name == "fuzz":
        return fuzz(port, int(args[0]), int(args[1]))
    if name == "responder":
        return responder(port, args[0], int(args[1]), float(args[2]))
    if name == "pubsub":
        return pubsub(port, args[0], int(args[1]), int(args[2]))
    if name == "publish":
        version, qos, count, topic = args[0], int(args[1]), int(args[2]), args[3]
        return publish(port, version, qos, count, topic)
    if name == "connect":
        return connect_only(port, args[0], args[1] if len(args) > 1 else None)
    if name == "fragments":
        return fragments(port, args[0])
    if name == "garbage":
        return raw(port, [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
    if name == "oversize":
        big = bytes([0x30]) + vbi(200_000) + b"\x00" * 64  # only the start of a 200 kB PUBLISH
        return raw(port, [connect_packet(5, "big"), big], pause=0.2)
    if name == "will":
        # Connect with a will, then drop the connection without DISCONNECT.
        sock = socket.create_connection((HOST, port))
        sock.sendall(connect_packet(4, "willing", will=(args[0], "offline")))
        sock.settimeout(3)
        connack = sock.recv(4)
        sock.close()
        return {"connack": connack.hex()}
    if name == "takeover":
        first = socket.create_connection((HOST, port))
        first.sendall(connect_packet(5, "twin"))
        first.settimeout(3)
        first.recv(64)
        second = socket.create_connection((HOST, port))
        second.sendall(connect_packet(5, "twin"))
        data, closed = recv_all(first)
        second.close()
        return {"received": data.hex(), "closed": closed}
    if name == "keepalive":
        return raw(port, [connect_packet(5, "sleepy", keepalive=1)], timeout=6.0)
    if name == "subscribe":
        # An invalid filter refused per filter; the shared subscription beside it granted.
        sub = struct.pack("!H", 7) + b"\x00" + s("devices/#/bad") + b"\x01" + s("$share/g/x") + b"\x01"
        return raw(port, [connect_packet(5, "sub"), bytes([0x82]) + vbi(len(sub)) + sub], pause=0.2, timeout=1.0)
    raise SystemExit(f"unknown scenario {name}")


if __name__ == "__main__":
    print(json.dumps(scenario(sys.argv[1], int(sys.argv[2]), sys.argv[3:])))
