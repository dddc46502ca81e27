"""The loader refuses every broken or doubtful plugin with its own clear message, and the
agent exits non-zero at start-up instead of running half-configured."""
import os
import shutil
import subprocess

import pytest

from conftest import AGENT, BUILD, ROOT, write_config

HEADER_DIR = ROOT / "Sources" / "PluginABI" / "include"
SOURCE = ROOT / "Tests" / "integration" / "plugins" / "test_network_plugin.c"


@pytest.fixture
def plugin_dir(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    for name in ["libcompute_hypervisor_libvirt.so", "libcompute_image_file.so"]:
        shutil.copy(BUILD / name, d / name)
    return d


def build_plugin(plugin_dir, *defines, name="testnet"):
    out = plugin_dir / f"libcompute_network_{name}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), f"-I{HEADER_DIR}", *[f"-D{d}" for d in defines],
                    str(SOURCE)], check=True)
    os.chmod(out, 0o755)
    return out


def start_agent(tmp_path, plugin_dir, network="testnet"):
    conf = write_config(tmp_path / "agent.conf", "plugin-test", tmp_path / "state", plugin_dir=plugin_dir,
                        extra_default=f"network_plugin = {network}")
    p = subprocess.run([str(AGENT), "--config-file", str(conf)], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stderr


def test_valid_c_plugin_built_with_gcc_loads(tmp_path, plugin_dir):
    build_plugin(plugin_dir)
    conf = write_config(tmp_path / "agent.conf", "plugin-ok", tmp_path / "state", plugin_dir=plugin_dir,
                        extra_default="network_plugin = testnet")
    p = subprocess.Popen([str(AGENT), "--config-file", str(conf)], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        for line in p.stderr:
            if "plugin loaded" in line and "plugin=testnet" in line:
                break
        assert "plugin=testnet" in line and "version=0.0.1" in line
    finally:
        p.terminate()
        p.wait(15)


@pytest.mark.parametrize("defines,message", [
    (["BAD_MAJOR"], "built for plugin ABI 99."),
    (["WRONG_KIND"], "is a hypervisor plugin, but network_plugin needs a network plugin"),
    (["MISSING_UNPLUG"], "required function 'unplug' is missing"),
    (["FAIL_INIT"], "init failed: test plugin refuses to start: no uplink"),
    (['PLUGIN_NAME="other"'], "its descriptor names it 'other', not 'testnet'"),
])
def test_broken_plugin_is_refused(tmp_path, plugin_dir, defines, message):
    build_plugin(plugin_dir, *defines)
    code, err = start_agent(tmp_path, plugin_dir)
    assert code == 1, err
    assert message in err
    assert "libcompute_network_testnet.so" in err


def test_group_writable_plugin_is_refused(tmp_path, plugin_dir):
    so = build_plugin(plugin_dir)
    os.chmod(so, 0o775)
    code, err = start_agent(tmp_path, plugin_dir)
    assert code == 1
    assert "group- or world-writable (mode 775)" in err


def test_world_writable_plugin_directory_is_refused(tmp_path, plugin_dir):
    build_plugin(plugin_dir)
    os.chmod(plugin_dir, 0o777)
    code, err = start_agent(tmp_path, plugin_dir)
    assert code == 1
    assert f"plugin directory {plugin_dir} is group- or world-writable" in err


def test_plugin_owned_by_another_user_is_refused(tmp_path, plugin_dir):
    so = build_plugin(plugin_dir)
    os.chown(so, 65534, 65534)
    code, err = start_agent(tmp_path, plugin_dir)
    assert code == 1
    assert "owned by uid 65534, not by root or the agent's user" in err


def test_file_that_is_not_a_shared_object_is_refused(tmp_path, plugin_dir):
    f = plugin_dir / "libcompute_network_testnet.so"
    f.write_text("#!/bin/sh\necho not a plugin\n")
    os.chmod(f, 0o755)
    code, err = start_agent(tmp_path, plugin_dir)
    assert code == 1
    assert "is not a shared object (no ELF header)" in err


def test_missing_plugin_is_refused(tmp_path, plugin_dir):
    code, err = start_agent(tmp_path, plugin_dir, network="absent")
    assert code == 1
    assert "libcompute_network_absent.so" in err and "No such file or directory" in err


def test_shared_object_without_entry_symbol_is_refused(tmp_path, plugin_dir):
    src = tmp_path / "empty.c"
    src.write_text("int unrelated_function(void) { return 1; }\n")
    out = plugin_dir / "libcompute_network_testnet.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    code, err = start_agent(tmp_path, plugin_dir)
    assert code == 1
    assert "does not export the entry symbol 'compute_agent_plugin_entry'" in err


@pytest.mark.parametrize("cut", ["1000_bytes", "half", "last_byte"])
def test_truncated_plugin_is_refused_not_a_crash(tmp_path, plugin_dir, cut):
    """A plugin cut short used to pass the magic check and kill the agent with SIGBUS."""
    so = build_plugin(plugin_dir)
    data = so.read_bytes()
    keep = {"1000_bytes": 1000, "half": len(data) // 2, "last_byte": len(data) - 1}[cut]
    so.write_bytes(data[:keep])
    code, err = start_agent(tmp_path, plugin_dir)
    assert code == 1, (code, err)
    assert "is truncated" in err and "libcompute_network_testnet.so" in err, err


def test_plugin_reached_through_a_symlink_into_a_writable_directory_is_refused(tmp_path, plugin_dir):
    elsewhere = tmp_path / "open-dir"
    elsewhere.mkdir()
    os.chmod(elsewhere, 0o777)  # anyone may replace what is in it (no sticky bit)
    so = build_plugin(plugin_dir)
    target = elsewhere / so.name
    shutil.move(so, target)
    os.symlink(target, so)
    code, err = start_agent(tmp_path, plugin_dir)
    assert code == 1
    assert f"directory {elsewhere} on the plugin's real path is group- or world-writable (mode 777)" in err


def test_plugin_whose_init_hangs_is_refused_after_the_call_deadline(tmp_path, plugin_dir):
    build_plugin(plugin_dir, "HANG_INIT")
    conf = write_config(tmp_path / "agent.conf", "plugin-hang", tmp_path / "state", plugin_dir=plugin_dir,
                        extra_default="network_plugin = testnet\nplugin_call_timeout = 2")
    p = subprocess.run([str(AGENT), "--config-file", str(conf)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert "init did not return within 2.0 s (plugin_call_timeout); the plugin is hung" in p.stderr
