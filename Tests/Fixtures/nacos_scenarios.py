#!/usr/bin/env python3
"""Nacos v1 scenarios against a Switchyard Nacos listener, driven by the real Python client
(nacos-sdk-python==2.0.11, `nacos.NacosClient`, pure HTTP v1). Each scenario prints one JSON
object on stdout; exit 0 on success, 1 on failure (reason on stderr and in "error"), 2 on usage.

usage: nacos_scenarios.py HOST:PORT SCENARIO [ARGS...]

  naming [PORT [NAMESPACE]]             register orders@127.0.0.1:PORT (default 19001) with
                                        beats every 1 s, list it, subscribe, add PORT+1 and
                                        wait for ADDED, modify it (reported only), deregister
                                        both, list (must be gone) and wait for DELETED
  config [NAMESPACE]                    publish/get app.yaml, watch it, publish again and wait
                                        for the callback, remove, get must give None
  login USER PASS NAMESPACE [DATA_ID [CONTENT]]
                                        sign in, publish and read back one config
  denied USER PASS NAMESPACE [DATA_ID [EXPECT]]
                                        USER "-" = no credentials; tries get/publish/remove
                                        config and list instances; EXPECT is a comma list of
                                        the operations that must be refused (default all of
                                        get_config,publish_config,remove_config,list_naming_instance);
                                        a failed sign-in counts as everything refused
  keepalive PORT SECONDS                one instance with beats (PORT), one without (PORT+1);
                                        after SECONDS reports how the server lists both
  beat PORT                             a beat for an instance never registered; reports the
                                        answer and whether the instance appeared

NAMESPACE "-" (or "") is the public namespace. NACOS_SCENARIO_LOG=DEBUG|INFO|... sets the log
level (default WARNING, on stderr); NACOS_SCENARIO_DEADLINE caps the whole run (seconds).
"""
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

logging.basicConfig(
    level=getattr(logging, os.environ.get("NACOS_SCENARIO_LOG", "WARNING").upper(), logging.WARNING),
    stream=sys.stderr,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
# basicConfig must come first: NacosClient only installs its own log file handler (under
# logDir) when no handler exists, so with a root handler its messages go to stderr instead.

import nacos  # noqa: E402
from nacos.listener import Event, SubscribeListener  # noqa: E402  (the client's own listener type)

IP = "127.0.0.1"
SERVICE = "orders"
GROUP = "DEFAULT_GROUP"
WORK = []  # the temporary directory for snapshots, failover files and logs, made on first use
CLIENTS = []
OBSERVED = {}  # what the running scenario has seen so far; printed on every exit path
_exit_lock = threading.Lock()


class ScenarioFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise ScenarioFailed(message)


def wait_until(predicate, seconds, step=0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def namespace_arg(value):
    return None if value in (None, "", "-") else value


def describe(error):
    out = {"type": type(error).__name__, "message": str(error)}
    code = getattr(error, "code", None)
    if isinstance(code, int):
        out["code"] = code
        try:  # urllib's HTTPError carries the server's body
            out["body"] = error.read().decode("utf-8", "replace")[:300]
        except Exception:  # noqa: BLE001
            pass
    return out


def make_client(server, namespace=None, username=None, password=None):
    if not WORK:
        WORK.append(tempfile.mkdtemp(prefix="nacos-scenarios-"))
    home = tempfile.mkdtemp(dir=WORK[0])
    client = nacos.NacosClient(server, namespace=namespace, username=username, password=password,
                               logDir=os.path.join(home, "logs"))
    # Keep the client's snapshot/failover files out of the working directory; a fresh, empty
    # failover directory also guarantees get_config always asks the server.
    client.set_options(snapshot_base=os.path.join(home, "snapshot"), failover_base=os.path.join(home, "failover"))
    CLIENTS.append(client)
    return client


def stop_beats(client):
    """Stops the client's heartbeat threads and waits for them, so no beat can reach the server
    after (or while) an instance is deregistered: remove_naming_instance stops the beat task only
    after the DELETE has been answered."""
    tasks = list(client.heartbeats.values())
    for task in tasks:
        task.stop()
    for task in tasks:
        task.join(5)


def shutdown_clients():
    for client in CLIENTS:
        try:
            client.stop_subscribe()  # cancels the (non-daemon) threading.Timer poll chain
        except Exception:  # noqa: BLE001
            pass
        try:
            for task in list(client.heartbeats.values()):
                task.stop()
        except Exception:  # noqa: BLE001
            pass
        # add_config_watcher starts a multiprocessing.Manager: a forked server process that
        # inherits stdout and never exits by itself once we leave through os._exit.
        mgr = getattr(client, "process_mgr", None)
        if mgr is not None:
            try:
                mgr.shutdown()
            except Exception:  # noqa: BLE001
                pass


def finish(result, code):
    with _exit_lock:
        shutdown_clients()
        for work in WORK:
            shutil.rmtree(work, ignore_errors=True)
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        sys.stdout.flush()
        sys.stderr.flush()
        # The client leaves threads behind (long-poll puller blocked up to 40 s, timer chains
        # that may re-arm while being cancelled): leave without waiting for them.
        os._exit(code)


# ---- naming -------------------------------------------------------------------------------


def host_for(listing, port):
    for host in (listing or {}).get("hosts") or []:
        try:
            if host.get("ip") == IP and int(host.get("port")) == port:
                return host
        except (TypeError, ValueError):
            continue
    return None


def naming(server, args, obs):
    port = int(args[0]) if args else 19001
    namespace = namespace_arg(args[1]) if len(args) > 1 else None
    second = port + 1
    client = make_client(server, namespace)
    t0 = time.monotonic()
    events = []
    obs.update({"port": port, "namespace": namespace, "events": events})

    def on_event(event, slc):
        inst = slc.instance if isinstance(slc.instance, dict) else {}
        events.append({
            "event": event, "instanceId": slc.instance_id, "ip": inst.get("ip"), "port": inst.get("port"),
            "healthy": inst.get("healthy"), "metadata": inst.get("metadata"),
            "t": round(time.monotonic() - t0, 3),
        })

    def seen(event, p, predicate=lambda e: True):
        return any(e["event"] == event and e["port"] is not None and int(e["port"]) == p and predicate(e)
                   for e in list(events))

    obs["register"] = client.add_naming_instance(SERVICE, IP, port, metadata={"lane": "gray"}, heartbeat_interval=1)
    check(obs["register"] is True, "add_naming_instance did not return True (the body must be exactly 'ok')")

    listing = client.list_naming_instance(SERVICE)
    obs["listed"] = listing
    mine = host_for(listing, port)
    check(mine is not None, "the registered instance is not in /nacos/v1/ns/instance/list hosts")
    check("instanceId" in mine, "hosts[] entries need an instanceId (subscribe keys instances by it)")
    check(mine.get("healthy") is True, "the registered instance is not healthy")
    check((mine.get("metadata") or {}).get("lane") == "gray", "metadata lane=gray did not come back")

    try:  # reported, not asserted: the client sends no groupName and no cluster here
        obs["get_instance"] = client.get_naming_instance(SERVICE, IP, port)
    except Exception as e:  # noqa: BLE001
        obs["get_instance_error"] = describe(e)

    # The first poll runs synchronously inside subscribe() and only caches what it sees.
    client.subscribe(SubscribeListener(on_event, "scenario-recorder"), listener_interval=1, service_name=SERVICE)

    obs["register_second"] = client.add_naming_instance(SERVICE, IP, second, metadata={"lane": "gray"},
                                                        heartbeat_interval=1)
    check(obs["register_second"] is True, "add_naming_instance (second) did not return True")
    check(wait_until(lambda: seen(Event.ADDED, second), 15), "no ADDED event for the second instance within 15 s")
    time.sleep(1.5)  # one more poll: a stable host entry must not produce MODIFIED
    obs["modified_without_change"] = [e for e in events if e["event"] == Event.MODIFIED]

    # Reported only: a metadata change shows up as MODIFIED (the beats keep sending lane=gray).
    obs["modify"] = client.modify_naming_instance(SERVICE, IP, second, metadata={"lane": "blue"})
    obs["modify_seen"] = wait_until(
        lambda: seen(Event.MODIFIED, second, lambda e: (e["metadata"] or {}).get("lane") == "blue"), 5)

    stop_beats(client)
    obs["deregister"] = [client.remove_naming_instance(SERVICE, IP, port),
                         client.remove_naming_instance(SERVICE, IP, second)]
    check(obs["deregister"] == [True, True], "remove_naming_instance did not return True (body must be 'ok')")

    after = client.list_naming_instance(SERVICE)
    obs["listed_after"] = after
    check(host_for(after, port) is None and host_for(after, second) is None,
          "deregistered instances are still listed")
    obs["empty_after"] = not (after or {}).get("hosts")

    check(wait_until(lambda: seen(Event.DELETED, port) and seen(Event.DELETED, second), 15),
          "no DELETED events for both instances within 15 s")
    client.unsubscribe(SERVICE)
    client.stop_subscribe()
    return obs


def keepalive(server, args, obs):
    port, seconds = int(args[0]), float(args[1])
    client = make_client(server)
    obs["register"] = [
        client.add_naming_instance(SERVICE, IP, port, heartbeat_interval=1),
        client.add_naming_instance(SERVICE, IP, port + 1),
    ]
    check(obs["register"] == [True, True], "add_naming_instance did not return True")
    time.sleep(seconds)
    listing = client.list_naming_instance(SERVICE)
    obs["beating"] = host_for(listing, port)
    obs["silent"] = host_for(listing, port + 1)
    stop_beats(client)
    for p in (port, port + 1):
        try:
            client.remove_naming_instance(SERVICE, IP, p)
        except Exception:  # noqa: BLE001
            pass
    return obs


def beat(server, args, obs):
    port = int(args[0])
    client = make_client(server)
    obs["response"] = client.send_heartbeat(SERVICE, IP, port, metadata={"lane": "beat"})
    obs["listed"] = host_for(client.list_naming_instance(SERVICE), port)
    try:
        client.remove_naming_instance(SERVICE, IP, port)
    except Exception:  # noqa: BLE001
        pass
    return obs


# ---- config -------------------------------------------------------------------------------


def config(server, args, obs):
    namespace = namespace_arg(args[0]) if args else None
    client = make_client(server, namespace)
    data_id = "app.yaml"
    first = "server:\n  port: 8080\nname: switchyard one\n"
    second = "server:\n  port: 9090\nname: \"two + & = % \u00fc\"\n"  # form-encoding edge cases
    t0 = time.monotonic()
    calls = []
    obs.update({"namespace": namespace, "callbacks": calls})

    def on_change(params):
        calls.append({"t": round(time.monotonic() - t0, 3), "data_id": params.get("data_id"),
                      "group": params.get("group"), "namespace": params.get("namespace"),
                      "content": params.get("content")})

    obs["publish_first"] = client.publish_config(data_id, GROUP, first)
    check(obs["publish_first"] is True, "publish_config did not return True (the body must be exactly 'true')")
    obs["get_first"] = client.get_config(data_id, GROUP, no_snapshot=True)
    check(obs["get_first"] == first, "get_config did not return the published content")

    client.add_config_watcher(data_id, GROUP, on_change)  # fetches the config once more for its md5
    time.sleep(2.5)  # let the puller park in its long poll (it sleeps 1 s before each probe)
    published_at = time.monotonic()
    obs["publish_second"] = client.publish_config(data_id, GROUP, second)
    check(obs["publish_second"] is True, "publish_config (second) did not return True")
    check(wait_until(lambda: any(c["content"] == second for c in list(calls)), 15),
          "the watcher callback did not get the new content within 15 s")
    hit = next(c for c in list(calls) if c["content"] == second)
    obs["callback_latency"] = round(hit["t"] - (published_at - t0), 3)
    obs["get_second"] = client.get_config(data_id, GROUP, no_snapshot=True)
    check(obs["get_second"] == second, "get_config did not return the second content")

    obs["remove"] = client.remove_config(data_id, GROUP)
    check(obs["remove"] is True, "remove_config did not return True (the body must be exactly 'true')")
    obs["get_after_remove"] = client.get_config(data_id, GROUP, no_snapshot=True)
    check(obs["get_after_remove"] is None, "get_config after remove_config did not give None (404 expected)")
    # Reported only: a removal changes the md5 too, so the watcher is called with content None.
    obs["removal_notified"] = wait_until(lambda: any(c["content"] is None for c in list(calls)), 10)

    client.remove_config_watcher(data_id, GROUP, on_change)
    return obs


# ---- auth ---------------------------------------------------------------------------------


def login(server, args, obs):
    username, password, namespace = args[0], args[1], namespace_arg(args[2])
    data_id = args[3] if len(args) > 3 else "auth.yaml"
    content = args[4] if len(args) > 4 else "owner: %s\n" % username
    obs["namespace"] = namespace
    client = make_client(server, namespace, username, password)
    obs["token_present"] = bool(client.token)
    obs["token_ttl"] = client.token_ttl
    check(client.token, "login answered without an accessToken")
    obs["publish"] = client.publish_config(data_id, GROUP, content)
    check(obs["publish"] is True, "publish_config did not return True")
    obs["get"] = client.get_config(data_id, GROUP, no_snapshot=True)
    check(obs["get"] == content, "get_config did not return the published content")
    return obs


DENIABLE = ["get_config", "publish_config", "remove_config", "list_naming_instance"]


def denied(server, args, obs):
    username = None if args[0] in ("", "-") else args[0]
    password = None if username is None else args[1]
    namespace = namespace_arg(args[2]) if len(args) > 2 else None
    data_id = args[3] if len(args) > 3 else "auth.yaml"
    expect = [x for x in args[4].split(",") if x] if len(args) > 4 else list(DENIABLE)
    obs.update({"namespace": namespace, "expect_denied": expect})
    try:
        client = make_client(server, namespace, username, password)
    except Exception as e:  # noqa: BLE001
        obs["login"] = dict(describe(e), raised=True)
        return obs  # nothing can be done without a token: everything is refused
    obs["login"] = {"raised": False, "token_present": bool(client.token)}
    attempts = {
        "get_config": lambda: client.get_config(data_id, GROUP, no_snapshot=True),
        "publish_config": lambda: client.publish_config(data_id, GROUP, "should not be stored\n"),
        "remove_config": lambda: client.remove_config(data_id, GROUP),
        "list_naming_instance": lambda: client.list_naming_instance(SERVICE),
    }
    results = {}
    obs["results"] = results
    for name in DENIABLE:
        try:
            results[name] = {"raised": False, "returned": attempts[name]()}
        except Exception as e:  # noqa: BLE001
            results[name] = dict(describe(e), raised=True)
    wrong = [n for n in DENIABLE if results[n]["raised"] != (n in expect)]
    check(not wrong, "unexpected outcome (refused vs allowed) for: " + ", ".join(wrong))
    return obs


SCENARIOS = {"naming": naming, "config": config, "login": login, "denied": denied,
             "keepalive": keepalive, "beat": beat}


def main():
    if len(sys.argv) < 3 or sys.argv[2] not in SCENARIOS:
        sys.stderr.write(__doc__)
        sys.exit(2)
    server, name, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    deadline = float(os.environ.get("NACOS_SCENARIO_DEADLINE", "0") or 0)
    if not deadline:
        deadline = 120.0 + (float(args[1]) if name == "keepalive" and len(args) > 1 else 0.0)

    def overdue():
        sys.stderr.write("scenario %s: overall deadline of %.0f s passed\n" % (name, deadline))
        finish(dict(OBSERVED, error="deadline of %.0f s passed" % deadline), 1)

    watchdog = threading.Timer(deadline, overdue)
    watchdog.daemon = True
    watchdog.start()
    try:
        result = SCENARIOS[name](server, args, OBSERVED)
        code = 0
    except ScenarioFailed as e:
        sys.stderr.write("scenario %s failed: %s\n" % (name, e))
        result, code = dict(OBSERVED, error=str(e)), 1
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        sys.stderr.write("scenario %s failed: %s: %s\n" % (name, type(e).__name__, e))
        result, code = dict(OBSERVED, error=describe(e)), 1
    finish(result, code)


if __name__ == "__main__":
    main()
