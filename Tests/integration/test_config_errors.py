"""A bad configuration is reported with file, line and option, and the agent exits 2."""
import subprocess

from conftest import AGENT


def run(tmp_path, text):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    p = subprocess.run([str(AGENT), "--config-file", str(conf)], capture_output=True, text=True, timeout=20)
    return p.returncode, p.stderr, conf


def test_bad_value_names_file_line_option(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\nhost = h\nreport_interval = soon\n")
    assert code == 2
    assert f"{conf}:3: [DEFAULT] report_interval: expected a decimal number of seconds such as 10 or 2.5, got 'soon'" in err


def test_unknown_option(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\nperiodic_intervall = 5\n")
    assert code == 2 and f"{conf}:2: [DEFAULT] periodic_intervall: unknown option" in err


def test_unknown_section(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\n[neutron]\nurl = x\n")
    assert code == 2 and f"{conf}:2: [neutron]: unknown section" in err


def test_bad_transport_url_does_not_echo_the_password(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\ntransport_url = rabbit://u:hunter2@h:notaport/\n")
    assert code == 2 and f"{conf}:2: [DEFAULT] transport_url: invalid port" in err
    assert "hunter2" not in err


def test_missing_config_file(tmp_path):
    p = subprocess.run([str(AGENT), "--config-file", str(tmp_path / "nope.conf")], capture_output=True, text=True)
    assert p.returncode == 2 and "cannot read the file: No such file or directory" in p.stderr


def test_config_file_is_required():
    p = subprocess.run([str(AGENT)], capture_output=True, text=True)
    assert p.returncode == 2 and "--config-file is required" in p.stderr


def test_resource_and_notification_options_are_checked(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\ncpu_allocation_ratio = -1\n")
    assert code == 2 and f"{conf}:2: [DEFAULT] cpu_allocation_ratio: -1 is out of range (0, 1000]" in err
    code, err, conf = run(tmp_path, "[DEFAULT]\n\nnotification_driver = log\n")
    assert code == 2 and f"{conf}:3: [DEFAULT] notification_driver: 'log' is not one of: messagingv2, noop" in err
    code, err, conf = run(tmp_path, "[DEFAULT]\nmax_concurrent_builds = 0\n")
    assert code == 2 and f"{conf}:2: [DEFAULT] max_concurrent_builds: 0 is out of range 1...1000" in err


def test_every_option_of_the_shipped_config_is_known(tmp_path):
    """packaging/compute-agent.conf with every option uncommented is a valid configuration."""
    from conftest import ROOT
    lines = []
    for line in (ROOT / "packaging" / "compute-agent.conf").read_text().splitlines():
        if line.startswith("#") and "=" in line and not line.startswith("# "):
            key, value = line[1:].split("=", 1)
            if key.strip() == "host":
                value = " shipped-test"
            if key.strip() in ("state_path",):
                value = f" {tmp_path}/state"
            if key.strip() == "plugin_dir":
                value = " /nonexistent-plugins"
            line = f"{key.strip()} ={value}"
        lines.append(line)
    code, err, conf = run(tmp_path, "\n".join(lines) + "\n")
    # Parsing succeeded: the agent got as far as loading plugins (exit 1, not a config error 2).
    assert code == 1, err
    assert "configuration error" not in err


import pytest


@pytest.mark.parametrize("host,why", [
    ("*", "AMQP wildcard '*'"), ("#", "AMQP wildcard '#'"), ("a*b", "AMQP wildcard '*'"),
    ("two words", "whitespace or control characters"), ("tab\there", "whitespace or control characters"),
    ("x" * 248, "248 bytes; at most 247"),
])
def test_host_that_cannot_be_a_queue_name_is_refused(tmp_path, host, why):
    """host = * would bind compute.* and take every host's messages."""
    code, err, conf = run(tmp_path, f"[DEFAULT]\nhost = {host}\n")
    assert code == 2, err
    assert f"{conf}:2: [DEFAULT] host:" in err and why in err


def test_host_with_a_nul_byte_is_refused(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_bytes(b"[DEFAULT]\nhost = ab\x00cd\n")
    p = subprocess.run([str(AGENT), "--config-file", str(conf)], capture_output=True, timeout=20)
    assert p.returncode == 2 and b"whitespace or control characters (U+0)" in p.stderr


def test_crlf_config_is_read_and_errors_do_not_repeat_the_file(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\r\nhost = h\r\ntransport_url = rabbit://u:hunter2@h:5672/\r\nreport_interval = soon\r\n")
    assert code == 2
    assert f"{conf}:4: [DEFAULT] report_interval:" in err
    assert "hunter2" not in err


@pytest.mark.parametrize("url", [
    "rabbit://u:hun/ter2@h:5672/", "rabbit://u:hun,ter2@h:5672/", "rabbit://u:hunter2@h:99999/",
    "rabbit://u:hun/ter2@h/", "rabbit://u:12/hunter2@h:5672/v",
])
def test_password_with_unencoded_separators_is_never_echoed(tmp_path, url):
    code, err, conf = run(tmp_path, f"[DEFAULT]\ntransport_url = {url}\n")
    assert code == 2, err
    assert f"{conf}:2: [DEFAULT] transport_url:" in err
    for part in ("hun", "ter2", "hunter2"):
        assert part not in err, err
    from conftest import CTL
    p = subprocess.run([str(CTL), "ping", "--transport-url", url, "--host", "x", "--timeout", "2"],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode != 0
    for part in ("hun", "ter2", "hunter2"):
        assert part not in p.stdout + p.stderr, p.stdout + p.stderr


def test_trailing_comma_in_transport_url_is_refused(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\ntransport_url = rabbit://u:p@h:5672,/\n")
    assert code == 2 and "broker 2 of 2 is empty" in err


@pytest.mark.parametrize("value", ["0x10", "1e3", "nan", "inf", "10s"])
def test_only_decimal_numbers_are_accepted(tmp_path, value):
    code, err, conf = run(tmp_path, f"[DEFAULT]\nreport_interval = {value}\n")
    assert code == 2 and "expected a decimal number of seconds such as 10 or 2.5" in err
    code, err, conf = run(tmp_path, f"[DEFAULT]\nplugin_threads = {value}\n")
    assert code == 2 and "expected a decimal integer such as 10" in err


def run_files(tmp_path, *texts):
    paths = []
    for i, text in enumerate(texts):
        p = tmp_path / f"f{i}.conf"
        p.write_text(text)
        paths.append(p)
    args = [a for p in paths for a in ("--config-file", str(p))]
    proc = subprocess.run([str(AGENT), *args], capture_output=True, text=True, timeout=20)
    return proc.returncode, proc.stderr, paths


NOVA_CONF = "[DEFAULT]\nhost = h\ncompute_driver = fake.SmallFakeDriver\nlog_dir = ./log\n[oslo_concurrency]\nlock_path = x\n"


def test_later_files_override_and_errors_name_the_file_an_option_came_from(tmp_path):
    code, err, (first, second) = run_files(tmp_path, "[DEFAULT]\nreport_interval = 5\n", "[DEFAULT]\nreport_interval = soon\n")
    assert code == 2 and f"{second}:2: [DEFAULT] report_interval" in err, err
    code, err, (first, second) = run_files(tmp_path, "[DEFAULT]\nreport_interval = soon\n", "[DEFAULT]\nreport_interval = 5\nplugin_dir = rel\n")
    assert code == 2 and "report_interval" not in err and f"{second}:3: [DEFAULT] plugin_dir" in err, err


def test_nova_files_are_refused_in_native_mode_and_read_in_nova_mode(tmp_path):
    code, err, (nova, _) = run_files(tmp_path, NOVA_CONF, "[DEFAULT]\ncompute_driver = libvirt\n")
    assert code == 2 and f"{nova}:4: [DEFAULT] log_dir: unknown option" in err, err
    # nova mode: nova's driver class names no plugin of the agent's unless overridden.
    code, err, (nova, _) = run_files(tmp_path, NOVA_CONF, "[DEFAULT]\ncontrol_plane = nova\n")
    assert code == 2 and f"{nova}:3: [DEFAULT] compute_driver: nova's driver 'fake.SmallFakeDriver' has no compute-agent plugin" in err, err
    # Overridden, it gets past the files and wants placement's URL.
    code, err, (nova, mine) = run_files(tmp_path, NOVA_CONF, "[DEFAULT]\ncontrol_plane = nova\ncompute_driver = libvirt\n"
                                        "[libvirt]\nconnection_uri = test:///default\n")
    assert code == 2 and "[placement] endpoint: control_plane = nova needs placement's URL" in err, err
