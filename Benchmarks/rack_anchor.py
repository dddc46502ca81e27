"""The rack benchmark's anchor: a minimal oslo.messaging compute service — an RPC server on
topic "compute", server = <host> (threading executor, as nova-compute), a `report_state`
cast to "conductor" every report_interval (10 s) and the capabilities fanout to the
scheduler every periodic_interval (60 s), with the same arguments the agent sends. It is a
lower bound of nova-compute's messaging cost (nova-compute does much more per beat).

    python3 rack_anchor.py <transport_url> <host>"""
import signal
import sys
import threading
import time

import oslo_messaging
from oslo_config import cfg


class Endpoint:
    def __init__(self, host):
        self.host = host

    def ping(self, ctxt, arg=None, **kwargs):
        return {"pong": True, "host": self.host, "version": "anchor", "echo": arg}


def main():
    url, host = sys.argv[1], sys.argv[2]
    oslo_messaging.set_transport_defaults("nova")
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    server = oslo_messaging.get_rpc_server(transport, oslo_messaging.Target(topic="compute", server=host),
                                           [Endpoint(host)], executor="threading")
    conductor = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="conductor"))
    scheduler = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="scheduler", fanout=True))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    started = time.monotonic()

    def beats():
        count, next_beat, next_caps = 0, time.monotonic() + 1.0, time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_caps:
                try:
                    scheduler.cast({}, "update_service_capabilities", service_name="compute", host=host,
                                   capabilities={"host": host, "vcpus": 8, "memory_mb": 16384, "local_gb": 100})
                except Exception:
                    pass
                next_caps += 60
            if now >= next_beat:
                count += 1
                try:
                    conductor.cast({}, "report_state", service={
                        "host": host, "binary": "anchor", "topic": "compute", "report_count": count,
                        "uptime": int(now - started), "disabled": False, "version": "anchor"})
                except Exception:
                    pass
                next_beat += 10
            stop.wait(max(0.01, min(next_beat, next_caps) - time.monotonic()))

    threading.Thread(target=beats, daemon=True).start()
    print("consuming", flush=True)
    stop.wait()
    server.stop()
    server.wait()
    transport.cleanup()


if __name__ == "__main__":
    main()
