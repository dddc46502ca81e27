"""Claims refuse what does not fit before anything is created; a build that fails at the
image fetch, the network plug or the domain start undoes what it did, releases its claim
and leaves the instance in ERROR with the reason."""
import re

import oslo_messaging
import pytest

from conftest import make_image, memhv_agent, new_instance, rpc_client, wait_state


@pytest.fixture(scope="module")
def env(tmp_path_factory, test_plugin_dir, transport):
    tmp = tmp_path_factory.mktemp("resources")
    a = memhv_agent(tmp, test_plugin_dir).start()
    image, checksum = make_image(tmp / "image.raw")
    yield {"agent": a, "client": rpc_client(transport, a.host), "image": image, "checksum": checksum, "tmp": tmp}
    a.stop()


def domains(env):
    p = env["tmp"] / "domains"
    return p.read_text() if p.exists() else ""


def net_log(env):
    p = env["tmp"] / "net.log"
    return p.read_text().split("\n") if p.exists() else []


def test_audit_logs_novas_figures_and_capabilities_carry_them(env):
    # memhv: 8 cpus, 16384 MB; nova's ratios 16.0 / 1.5 and 512 MB reserved.
    text = env["agent"].text()
    assert "Total usable vcpus: 128, total allocated vcpus: 0" in text
    assert "Total usable memory: 23808 MB, total allocated memory: 0 MB" in text
    assert re.search(r"Total usable disk: \d+ GB, total allocated disk: 0 GB", text)
    caps = env["client"].call({}, "get_host_capabilities")
    assert caps["vcpus"] == 8 and caps["usable_vcpus"] == 128 and caps["usable_memory_mb"] == 23808
    res = env["client"].call({}, "get_available_resource")
    assert res["cpu_allocation_ratio"] == 16.0 and res["ram_allocation_ratio"] == 1.5
    assert res["reserved_host_memory_mb"] == 512


def test_oversize_build_is_refused_naming_the_resource_and_creates_nothing(env):
    c = env["client"]
    inst = new_instance(memory_mb=30000, vifs=[{"id": "vif-big"}])
    with pytest.raises(oslo_messaging.RemoteError) as e:
        c.call({}, "build_and_run_instance", instance=inst)
    assert e.value.exc_type == "ComputeResourcesUnavailable"
    assert "Insufficient compute resources: Free memory 23808.00 MB < requested 30000 MB." in e.value.value
    inst2 = new_instance(vcpus=129)
    with pytest.raises(oslo_messaging.RemoteError) as e:
        c.call({}, "build_and_run_instance", instance=inst2)
    assert "Free vcpu 128.00 VCPU < requested 129 VCPU" in e.value.value
    for i in (inst, inst2):
        with pytest.raises(oslo_messaging.RemoteError):
            c.call({}, "get_instance_info", instance_uuid=i["uuid"])
        assert i["uuid"] not in domains(env)
    assert "plug vif-big" not in net_log(env)


def test_claims_add_up_and_are_released_on_delete(env):
    c = env["client"]
    before = c.call({}, "get_host_capabilities")
    u = c.call({}, "build_and_run_instance", instance=new_instance(vcpus=100, memory_mb=20000))["uuid"]
    # The next one no longer fits: 28 vcpus remain.
    with pytest.raises(oslo_messaging.RemoteError) as e:
        c.call({}, "build_and_run_instance", instance=new_instance(vcpus=29))
    assert "Free vcpu 28.00 VCPU < requested 29 VCPU" in e.value.value
    c.call({}, "terminate_instance", instance_uuid=u)
    c.call({}, "terminate_instance", instance_uuid=c.call({}, "build_and_run_instance", instance=new_instance(vcpus=29))["uuid"])
    assert c.call({}, "get_host_capabilities")["vcpus_used"] == before["vcpus_used"]


def assert_rolled_back(env, u, fault_part, vifs_plugged=()):
    c = env["client"]
    info = wait_state(c, u, "error")
    assert fault_part in info["fault"], info
    assert u not in domains(env)
    assert not (env["tmp"] / "state" / "instances" / u).exists(), "the instance directory was left behind"
    log = net_log(env)
    for v in vifs_plugged:
        assert f"unplug {v}" in log, log
    # The claim is released: an ERROR from a failed build holds nothing.
    usage = c.call({}, "get_host_capabilities")
    assert all(i["uuid"] != u or i["vm_state"] == "error" for i in c.call({}, "list_instances"))
    return usage


def test_bad_checksum_rolls_back_and_releases_the_claim(env):
    c = env["client"]
    before = c.call({}, "get_host_capabilities")["vcpus_used"]
    inst = new_instance(vcpus=4, image_ref=env["image"], image_checksum="sha256:" + "0" * 64, vifs=[{"id": "vif-c1"}])
    with pytest.raises(oslo_messaging.RemoteError) as e:
        c.call({}, "build_and_run_instance", instance=inst)
    assert e.value.exc_type == "BuildAbortException" and "checksum mismatch" in e.value.value
    assert_rolled_back(env, inst["uuid"], "checksum mismatch")
    assert "plug vif-c1" not in net_log(env), "VIFs were plugged although the image fetch failed first"
    assert c.call({}, "get_host_capabilities")["vcpus_used"] == before


def test_failed_network_plug_unplugs_what_was_plugged(env):
    c = env["client"]
    inst = new_instance(image_ref=env["image"], vifs=[{"id": "vif-n1"}, {"id": "vif-n2", "fail_plug": True}])
    with pytest.raises(oslo_messaging.RemoteError) as e:
        c.call({}, "build_and_run_instance", instance=inst)
    assert "cannot plug this VIF" in e.value.value
    assert_rolled_back(env, inst["uuid"], "cannot plug this VIF", vifs_plugged=["vif-n1"])


def test_failed_domain_start_unplugs_and_removes_the_disk(env):
    c = env["client"]
    before = c.call({}, "get_host_capabilities")["memory_mb_used"]
    inst = new_instance(name="fail-spawn-1", memory_mb=512, image_ref=env["image"], vifs=[{"id": "vif-s1"}])
    c.cast({}, "build_and_run_instance", instance=inst)
    assert_rolled_back(env, inst["uuid"], "the domain failed to start", vifs_plugged=["vif-s1"])
    assert c.call({}, "get_host_capabilities")["memory_mb_used"] == before
    # The ERROR record stays until it is terminated, then it is gone.
    assert c.call({}, "terminate_instance", instance_uuid=inst["uuid"])["vm_state"] == "deleted"
