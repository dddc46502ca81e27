"""A corpus of over a thousand hostile messages, published raw (pika) to compute.<host>:
wrong types for every argument of every method, control characters and invalid UTF-8,
huge and deeply nested JSON, oversized messages and reply queues, unknown versions,
missing _reply_q, duplicate _unique_id with different bodies. Every call gets a typed
failure reply, every cast is logged and dropped, a sentinel call after each case is
answered, the agent never crashes, and its RSS after the corpus is within 10 % of before."""
import json
import time
import uuid

import pika
import pytest

from conftest import RABBIT_PASSWORD, RABBIT_USER, Agent

READS = {"get_instance_info": ["instance_uuid"], "get_console_output": ["instance_uuid", "tail_length"],
         "get_diagnostics": ["instance_uuid"]}
ACTIONS = ["stop_instance", "start_instance", "reboot_instance", "pause_instance", "unpause_instance",
           "suspend_instance", "resume_instance", "rescue_instance", "unrescue_instance", "snapshot_instance",
           "rebuild_instance", "resize_instance", "confirm_resize", "revert_resize", "soft_delete_instance",
           "restore_instance", "terminate_instance", "lock_instance", "unlock_instance"]
WRONG = [1, -1, 2.5, True, None, [], ["a"], {}, {"uuid": 7}, "x" * 100_000, "\x00\x01\x1b[31m\n\r",
         "\ud800" if False else "\u2028\u2029", "not-a-uuid"]
MAX_MESSAGE = 262_144


def envelope(inner):
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()


def build_cases():
    """(kind, body bytes, expectation) where kind is 'call' or 'cast'."""
    cases = []
    methods = {**READS, **{m: ["instance_uuid"] for m in ACTIONS}, "build_and_run_instance": ["instance"]}
    for m, args in methods.items():
        for arg in args:
            for w in WRONG:
                for kind in ("call", "cast"):
                    cases.append((kind, {"method": m, "args": {arg: w}}, "typed"))
    # Wrong types inside a build's instance, field by field.
    good = {"uuid": str(uuid.uuid4()), "name": "vm", "vcpus": 1, "memory_mb": 64, "root_gb": 1}
    for field in ["uuid", "name", "vcpus", "memory_mb", "root_gb", "image_ref", "vifs", "metadata", "flavor"]:
        for w in WRONG + [-5, 0, 10**30, "n" * 300, [{"id": str(i)} for i in range(65)]]:
            inst = {**good, "uuid": str(uuid.uuid4()), field: w}
            cases.append(("call", {"method": "build_and_run_instance", "args": {"instance": inst}}, build_expectation(field, w)))
    # Unknown versions and methods, namespaces.
    for m in list(methods) + ["ping"]:
        for v in ["2.0", "1.9", "0.1", "abc", "1.1.1"]:
            cases.append(("call", {"method": m, "args": {}, "version": v}, "typed"))
        cases.append(("call", {"method": m + "_nope", "args": {}}, "typed"))
        cases.append(("call", {"method": m, "args": {}, "namespace": "other"}, "typed"))
    # Structure: args not an object, method not a string, deep nesting, huge JSON.
    for bad in [{"method": "ping", "args": [1, 2]}, {"method": 7, "args": {}}, {"method": None},
                {"method": "ping", "args": "x"}, {"args": {}}]:
        for _ in range(3):
            cases.append(("call", bad, "typed"))
            cases.append(("cast", bad, "dropped"))
    deep = "[" * 600 + "]" * 600
    for _ in range(10):
        cases.append(("call-raw", deep, "typed"))
        cases.append(("call", {"method": "ping", "args": {"arg": json.loads("[" * 400 + "]" * 400)}}, "ok"))
    # Oversized messages and reply queues.
    for n in range(5):
        cases.append(("call", {"method": "ping", "args": {"arg": "y" * (MAX_MESSAGE + n * 1000)}}, "typed"))
        cases.append(("cast", {"method": "ping", "args": {"arg": "y" * (MAX_MESSAGE + n * 1000)}}, "dropped"))
        cases.append(("call-longq", {"method": "ping", "args": {}}, "dropped"))
    # Invalid UTF-8 inside a call's body, control characters in keys.
    for i in range(40):
        cases.append(("call-badutf8", {"method": "get_instance_info", "args": {"instance_uuid": "PLACEHOLDER"}}, "typed"))
        cases.append(("call", {"method": "get_instance_info", "args": {f"k\x00{i}": 1, "instance_uuid": f"\x07{i}"}}, "typed"))
    # Calls without _reply_q (casts by the rules) and duplicates with different bodies.
    for m in methods:
        cases.append(("cast", {"method": m, "args": {"instance_uuid": str(uuid.uuid4())}, "_msg_id": uuid.uuid4().hex}, "dropped"))
    for i in range(30):
        cases.append(("dup", {"method": "get_instance_info", "args": {"instance_uuid": str(uuid.uuid4())}}, "typed"))
    return cases


def build_expectation(field, w):
    """'typed' where the API (docs/rpc-api.md) refuses the value; 'any' where it is a valid
    value (the build then runs, and may end in ERROR or be refused for capacity)."""
    is_int = isinstance(w, int) and not isinstance(w, bool) and abs(w) < 2**53
    valid = {
        "uuid": False,
        "name": w is None or (isinstance(w, str) and len(w) <= 255),
        "image_ref": w is None or (isinstance(w, str) and len(w) <= 4096),
        "vifs": w is None or (isinstance(w, list) and len(w) <= 64 and len({v.get("id") for v in w if isinstance(v, dict)}) == len(w)
                              and all(isinstance(v, dict) and isinstance(v.get("id"), str) and v["id"] for v in w)),
        "metadata": w is None or w == {},
        "flavor": w is None or isinstance(w, dict),
        "vcpus": is_int and w >= 1, "memory_mb": is_int and w >= 1,
        "root_gb": w is None or (is_int and w >= 0),
    }[field]
    return "any" if valid else "typed"


class RawClient:
    def __init__(self, host):
        params = pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials(RABBIT_USER, RABBIT_PASSWORD),
                                           heartbeat=0)
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.reply_q = "reply_" + uuid.uuid4().hex
        self.ch.queue_declare(self.reply_q, exclusive=True, auto_delete=True)
        self.key = f"compute.{host}"
        self.replies = {}
        self.ch.basic_consume(self.reply_q, self._on_reply, auto_ack=True)

    def _on_reply(self, ch, method, props, body):
        m = json.loads(json.loads(body)["oslo.message"])
        if m.get("ending", True):
            self.replies[m["_msg_id"]] = m

    def publish(self, body):
        self.ch.basic_publish("nova", self.key, body, pika.BasicProperties(content_type="application/json", delivery_mode=2))

    def call_body(self, inner, msg_id, reply_q=None):
        inner = {**inner, "_msg_id": msg_id, "_reply_q": reply_q or self.reply_q, "_unique_id": uuid.uuid4().hex}
        return envelope(inner)

    def wait(self, msg_id, timeout=15):
        deadline = time.time() + timeout
        while msg_id not in self.replies and time.time() < deadline:
            self.conn.process_data_events(time_limit=0.05)
        return self.replies.pop(msg_id, None)

    def call(self, inner, timeout=15):
        mid = uuid.uuid4().hex
        self.publish(self.call_body(inner, mid))
        return self.wait(mid, timeout)


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def test_hostile_corpus(tmp_path):
    a = Agent(tmp_path, extra_default=f"rpc_max_message_bytes = {MAX_MESSAGE}").start()
    client = RawClient(a.host)
    try:
        cases = build_cases()
        assert len(cases) >= 1000, len(cases)
        # Warm-up: first-use allocations (a build and its terminate, a large message) are
        # not growth.
        for _ in range(20):
            assert client.call({"method": "ping", "args": {}})["failure"] is None
        warm = str(uuid.uuid4())
        assert client.call({"method": "build_and_run_instance", "args": {"instance": {**{"uuid": warm, "name": "warm", "vcpus": 1, "memory_mb": 64}}}})["failure"] is None
        assert client.call({"method": "terminate_instance", "args": {"instance_uuid": warm}})["failure"] is None
        assert client.call({"method": "ping", "args": {"arg": "w" * (MAX_MESSAGE - 1000)}})["failure"] is None
        before = rss_kib(a.proc.pid)
        outcomes = {"typed": 0, "ok": 0, "dropped": 0}
        for i, (kind, inner, expect) in enumerate(cases):
            mid = uuid.uuid4().hex
            if kind == "call":
                client.publish(client.call_body(inner, mid))
            elif kind == "call-raw":
                client.publish(('{"oslo.version": "2.0", "oslo.message": "{\\"method\\": \\"ping\\", \\"args\\": '
                                + inner + ', \\"_msg_id\\": \\"' + mid + '\\", \\"_reply_q\\": \\"' + client.reply_q + '\\"}"}').encode())
            elif kind == "call-badutf8":
                body = client.call_body(inner, mid).replace(b"PLACEHOLDER", b"\xff\xfe\xc3")
                client.publish(body)
            elif kind == "call-longq":
                client.publish(client.call_body(inner, mid, reply_q="q" * 300))
            elif kind == "dup":
                uid = uuid.uuid4().hex
                first = {**inner, "_msg_id": mid, "_reply_q": client.reply_q, "_unique_id": uid}
                client.publish(envelope(first))
                reply = client.wait(mid)
                assert reply is not None and reply["failure"], (i, inner, reply)
                mid2 = uuid.uuid4().hex
                second = {"method": "ping", "args": {"different": True}, "_msg_id": mid2, "_reply_q": client.reply_q, "_unique_id": uid}
                client.publish(envelope(second))
                assert client.wait(mid2, timeout=2) is None, "a duplicate _unique_id with another body must be dropped"
                outcomes["dropped"] += 1
                mid = None
            else:
                client.publish(envelope(inner))
            if kind in ("call", "call-raw", "call-badutf8") and mid:
                reply = client.wait(mid)
                assert reply is not None, f"case {i} ({kind} {str(inner)[:200]}) got no reply"
                if expect == "typed":
                    f = json.loads(reply["failure"]) if reply["failure"] else None
                    assert f and f.get("class"), f"case {i} ({str(inner)[:200]}) expected a typed failure, got {str(reply)[:300]}"
                    outcomes["typed"] += 1
                elif expect == "any":
                    if reply["failure"]:
                        assert json.loads(reply["failure"]).get("class"), (i, reply)
                    outcomes["ok"] += 1
                else:
                    assert reply["failure"] is None, (i, reply)
                    outcomes["ok"] += 1
            elif kind in ("cast", "call-longq"):
                outcomes["dropped"] += 1
            # The sentinel: the agent still answers, in order, after every case.
            sentinel = client.call({"method": "ping", "args": {"n": i}})
            assert sentinel is not None and sentinel["result"]["echo"] == {"n": i}, f"no sentinel answer after case {i}"
            assert a.proc.poll() is None, f"the agent died at case {i}"
        # What the valid builds created is state, not growth: remove it before measuring.
        for inst in client.call({"method": "list_instances", "args": {}})["result"]:
            r = client.call({"method": "terminate_instance", "args": {"instance_uuid": inst["uuid"]}})
            assert r is not None and r["failure"] is None, r
        after = rss_kib(a.proc.pid)
        print(f"hostile corpus: {len(cases)} cases, {outcomes}, RSS {before} KiB -> {after} KiB ({100 * (after - before) / before:+.1f} %)")
        assert after <= before * 1.10, f"RSS grew from {before} to {after} KiB"
        log = a.text()
        assert "dropped call: its _reply_q is 300 bytes" in log
        assert "dropped duplicate message" in log
        assert log.count("dropped malformed message") + log.count("rpc failed") >= outcomes["dropped"] - 30
    finally:
        client.conn.close()
        a.stop()
