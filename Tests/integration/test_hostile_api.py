"""Limits on what one message may ask for, and answers that stay typed when a plugin
misbehaves."""
import uuid

import oslo_messaging
import pytest

from conftest import memhv_agent, rpc_client


def inst(**over):
    i = {"uuid": str(uuid.uuid4()), "name": "vm-" + uuid.uuid4().hex[:6], "vcpus": 1, "memory_mb": 64, "root_gb": 1}
    i.update(over)
    return i


@pytest.mark.parametrize("over,message", [
    ({"name": "n" * 256}, "'name' is at most 255 characters, got 256"),
    ({"vifs": [{"id": str(i)} for i in range(65)]}, "at most 64 network interfaces, got 65"),
    ({"metadata": {f"k{i}": "v" for i in range(129)}}, "'metadata' has at most 128 items, got 129"),
    ({"metadata": {"k": "v" * 256}}, "'metadata value' is at most 255 characters"),
    ({"image_ref": "file:///" + "x" * 5000}, "'image_ref' is at most 4096 characters"),
])
def test_build_beyond_the_api_limits_is_invalid_input(client, over, message):
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.call({}, "build_and_run_instance", instance=inst(**over))
    assert e.value.exc_type == "InvalidInput" and message in e.value.value


def test_ten_megabyte_name_is_refused_before_it_is_parsed(client, agent):
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.call({}, "build_and_run_instance", instance=inst(name="n" * (10 << 20)))
    assert e.value.exc_type == "MessageTooLarge"
    assert client.call({}, "ping")["pong"] is True


def test_bad_host_info_is_an_error_not_null(tmp_path, test_plugin_dir, transport):
    a = memhv_agent(tmp_path, test_plugin_dir, memhv={"bad_host_info": "true"}).start()
    try:
        with pytest.raises(oslo_messaging.RemoteError) as e:
            rpc_client(transport, a.host).call({}, "get_available_resource")
        assert e.value.exc_type == "HypervisorUnavailable"
        assert "has not reported usable resources" in e.value.value
    finally:
        a.stop()
