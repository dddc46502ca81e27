"""A real oslo.messaging conductor, notification listener and RPC client in their own
process (so their [oslo_messaging_rabbit] options stay theirs), run next to an agent on one
vhost. Prints one JSON line of what it saw.

    python3 oslo_peer.py URL AGENT_HOST OPTION=VALUE...
"""
import json
import sys
import threading
import time
import uuid

import oslo_messaging
from oslo_config import cfg


def main():
    url, host, *overrides = sys.argv[1:]
    conf = cfg.CONF
    conf([], project="oslo-peer")
    oslo_messaging.set_transport_defaults("nova")
    transport = oslo_messaging.get_rpc_transport(conf, url=url)
    notify_transport = oslo_messaging.get_notification_transport(conf, url=url)
    for o in overrides:
        k, v = o.split("=", 1)
        conf.set_override(k, v == "true", group="oslo_messaging_rabbit")
    beats, events = [], []
    two_beats = threading.Event()

    class Conductor:
        def report_state(self, ctxt, service):
            if service.get("host") == host:
                beats.append(service["report_count"])
                if len(beats) >= 2:
                    two_beats.set()

    class Sink:
        def info(self, ctxt, publisher_id, event_type, payload, metadata):
            events.append(event_type)

    server = oslo_messaging.get_rpc_server(transport, oslo_messaging.Target(topic="conductor", server="peer"),
                                           [Conductor()], executor="threading")
    listener = oslo_messaging.get_notification_listener(
        notify_transport, [oslo_messaging.Target(topic="notifications")], [Sink()], executor="threading")
    server.start()
    listener.start()
    print("peer ready", flush=True)
    out = {"beats": [], "ping": None, "events": []}
    try:
        two_beats.wait(20)
        out["beats"] = beats[:]
        client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="compute", server=host), timeout=15)
        out["ping"] = client.call({}, "ping")["pong"]
        inst = {"uuid": str(uuid.uuid4()), "name": "vm-durable", "vcpus": 1, "memory_mb": 64, "root_gb": 1}
        client.cast({}, "build_and_run_instance", instance=inst)
        deadline = time.time() + 15
        while time.time() < deadline and "compute.instance.create.end" not in events:
            time.sleep(0.1)
        out["events"] = events[:]
    except Exception as e:  # reported, not hidden: the test asserts on it
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        print(json.dumps(out), flush=True)
        listener.stop()
        listener.wait()
        server.stop()
        server.wait()
        transport.cleanup()
        notify_transport.cleanup()


if __name__ == "__main__":
    main()
