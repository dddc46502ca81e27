"""The anchor: a plain oslo.messaging RPC server (threading executor, as nova-compute
uses) on topic "compute", server = <host>, whose ping does the same trivial work as the
agent's: echo the argument, optionally pad the reply to reply_bytes.

    python3 anchor_server.py <transport_url> <host>

Prints "consuming" once the server has started; stops on SIGTERM."""
import signal
import sys
import threading

import oslo_messaging
from oslo_config import cfg


class Endpoint:
    def __init__(self, host):
        self.host = host

    def ping(self, ctxt, arg=None, reply_bytes=0, **kwargs):
        reply = {"pong": True, "host": self.host, "version": "anchor", "api_version": "1.0",
                 "echo": arg if arg is not None else dict(kwargs, reply_bytes=reply_bytes)}
        if reply_bytes:
            reply["padding"] = "x" * int(reply_bytes)
        return reply


def main():
    url, host = sys.argv[1], sys.argv[2]
    oslo_messaging.set_transport_defaults("nova")
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    server = oslo_messaging.get_rpc_server(transport, oslo_messaging.Target(topic="compute", server=host),
                                           [Endpoint(host)], executor="threading")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print("consuming", flush=True)
    stop.wait()
    server.stop()
    server.wait()
    transport.cleanup()


if __name__ == "__main__":
    main()
