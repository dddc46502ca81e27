"""Garbage published straight to the agent's queue is logged, acked and dropped; the agent
keeps serving."""
import json

import kombu
import pytest

from conftest import URL

CASES = {
    "not_json": (b"this is not json", "body is not JSON"),
    "no_envelope_no_method": (json.dumps({"hello": "world"}).encode(), "message has no 'method'"),
    "missing_method": (json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps({"args": {}})}).encode(),
                       "message has no 'method'"),
    "args_not_object": (json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps({"method": "ping", "args": [1]})}).encode(),
                        "'args' is a array"),
    "megabyte_of_garbage": (bytes((i * 7919) % 251 for i in range(1 << 20)), "body is not JSON"),
}


def publish_raw(host, body):
    with kombu.Connection(URL.replace("rabbit:", "amqp:", 1)) as conn:
        producer = conn.Producer()
        producer.publish(body, exchange=kombu.Exchange("nova", type="topic", durable=False),
                         routing_key=f"compute.{host}", content_type="application/json", content_encoding="binary")


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_message_is_logged_acked_and_agent_keeps_serving(case, agent, client):
    body, reason = CASES[case]
    before = agent.text().count("dropped malformed message")
    publish_raw(agent.host, body)
    # A following call is still answered, after the bad message was handled in order.
    assert client.call({}, "ping")["pong"] is True
    import time
    deadline = time.time() + 5
    while time.time() < deadline and agent.text().count("dropped malformed message") == before:
        time.sleep(0.05)
    log = agent.text()
    assert log.count("dropped malformed message") == before + 1
    assert reason in log


def test_malformed_messages_do_not_stay_in_the_queue(agent, client):
    import subprocess
    out = subprocess.run(["rabbitmqctl", "-n", "rabbit@localhost", "-q", "list_queues", "name", "messages_unacknowledged", "messages_ready"],
                         capture_output=True, text=True, check=True).stdout
    row = [l.split() for l in out.splitlines() if l.split() and l.split()[0] == f"compute.{agent.host}"]
    assert row and row[0][1:] == ["0", "0"], row


def test_wrong_argument_types_in_a_cast_are_logged(agent, client):
    with kombu.Connection(URL.replace("rabbit:", "amqp:", 1)) as conn:
        inner = {"method": "build_and_run_instance", "args": {"instance": {"uuid": "x", "vcpus": "two"}}, "_unique_id": "c0ffee"}
        conn.Producer().publish(json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode(),
                                exchange=kombu.Exchange("nova", type="topic", durable=False),
                                routing_key=f"compute.{agent.host}", content_type="application/json")
    assert client.call({}, "ping")["pong"] is True
    import time
    deadline = time.time() + 5
    while time.time() < deadline and "'uuid' must be a UUID string" not in agent.text():
        time.sleep(0.05)
    assert "InvalidInput" in agent.text() and "'uuid' must be a UUID string" in agent.text()
