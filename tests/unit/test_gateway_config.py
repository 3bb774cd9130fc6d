"""gpu_llm.gateway (pure): roles, backends from the inventory's settings, the router's command line, fleet checks."""

from __future__ import annotations

import shlex

from gpu_llm import gateway as gw
from gpu_llm.settings import from_data

KEY = "sk-fleet-key-123456"


def host(name: str, groups: tuple[str, ...] = ("gpu_hosts",), key: str | None = KEY, **data) -> gw.FleetHost:
    s = from_data({"vllm_api_key": key, **data} if key else data)
    return gw.FleetHost(name, name, groups, s, key)


def test_roles() -> None:
    assert gw.is_gpu_host(["gpu_hosts"]) and not gw.is_gateway(["gpu_hosts"])
    assert gw.is_gateway(["gateways"]) and not gw.is_gpu_host(["gateways"])
    assert gw.is_gpu_host(["gateways", "gpu_hosts"]) and gw.is_gateway(["gateways", "gpu_hosts"])
    assert gw.is_gpu_host([])  # an inventory of plain hosts: all GPU hosts, as before


def test_backends_are_every_instance_of_every_gpu_host_plus_extras() -> None:
    fleet = [host("10.0.0.5"), host("10.0.0.6", vllm_instances=[{"name": "qa", "port": 8000, "gpus": [0, 1]},
                                                                 {"name": "qb", "port": 8001, "gpus": [2, 3]}]),
             host("10.0.0.9", ("gateways",))]
    assert gw.backend_urls(fleet, ["http://10.1.1.1:8000/"]) == [
        "http://10.0.0.5:8000", "http://10.0.0.6:8000", "http://10.0.0.6:8001", "http://10.1.1.1:8000"]


def test_router_command_line_has_no_secret_and_the_settings() -> None:
    s = from_data({"vllm_api_key": KEY, "gateway_port": 9090, "gateway_policy": "power_of_two",
                   "gateway_health_interval": 3})
    args = gw.router_args(["http://a:8000", "http://b:8000"], s)
    line = " ".join(args)
    assert KEY not in line
    assert "--port 9090" in line and "--policy power_of_two" in line and "--health-check-interval-secs 3" in line
    assert args[args.index("--worker-urls") + 1:args.index("--policy")] == ["http://a:8000", "http://b:8000"]
    unit = gw.unit_text("/opt/gw", args).decode()
    assert f"ExecStart=/opt/gw/bin/vllm-router {' '.join(shlex.quote(a) for a in args)}" in unit


def test_fleet_checks() -> None:
    assert gw.fleet_problems([host("a", key=None)]) == []  # no gateway: nothing to check
    problems = gw.fleet_problems([host("a", key=None), host("b"), host("g", ("gateways",), key=None)])
    assert problems[0][0] == "vllm_api_key" and "no key on: a" in problems[0][1]
    assert gw.fleet_problems([host("a"), host("b", key="another-key-999"), host("g", ("gateways",), key=None)])[0][1] \
        .startswith("the GPU hosts behind a gateway must share one vllm_api_key")
    bad = gw.fleet_problems([host("a"), host("g", ("gateways",), key=None, gateway_api_key="other-key-12345")])
    assert bad[0][0] == "gateway_api_key"
    assert gw.fleet_problems([host("a"), host("g", ("gateways",), key=None, gateway_api_key=KEY)]) == []


def test_gateway_settings_are_validated() -> None:
    import pytest

    from gpu_llm.settings import SettingsError

    with pytest.raises(SettingsError) as err:
        from_data({"gateway_policy": "fastest", "gateway_extra_backends": ["10.0.0.1:8000"], "gateway_prot": 1})
    text = str(err.value)
    assert "gateway_policy='fastest' is invalid: expected one of 'round_robin'" in text
    assert "did you mean 'gateway_port'" in text
    with pytest.raises(SettingsError) as err:
        from_data({"gateway_extra_backends": ["10.0.0.1:8000"]})
    assert "gateway_extra_backends item '10.0.0.1:8000'" in str(err.value)


def _pair(d, name: str) -> tuple[str, str]:  # noqa: ANN001
    import subprocess

    cert, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gw.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def test_https_settings_come_as_a_loadable_pair(tmp_path) -> None:  # noqa: ANN001
    import pytest

    from gpu_llm.settings import SettingsError, gateway_tls_pem

    cert, key = _pair(tmp_path, "a")
    _, other_key = _pair(tmp_path, "b")
    assert gateway_tls_pem(from_data({})) is None
    pem = gateway_tls_pem(from_data({"gateway_tls_cert": cert, "gateway_tls_key": key}))
    assert pem.index("BEGIN CERTIFICATE") < pem.index("PRIVATE KEY") and pem.endswith("-----\n")
    with pytest.raises(SettingsError) as exc:
        gateway_tls_pem(from_data({"gateway_tls_cert": cert, "gateway_tls_key": other_key}))
    assert exc.value.problems[0][0] == "gateway_tls_key" and "does not load with gateway_tls_cert" in str(exc.value)
    with pytest.raises(SettingsError) as exc:
        gateway_tls_pem(from_data({"gateway_tls_cert": str(tmp_path / "missing.crt"), "gateway_tls_key": key}))
    assert exc.value.problems[0][0] == "gateway_tls_cert" and "cannot read" in str(exc.value)
    with pytest.raises(SettingsError) as exc:
        gateway_tls_pem(from_data({"gateway_tls_cert": key, "gateway_tls_key": key}))  # a key is no certificate
    assert exc.value.problems[0][0] == "gateway_tls_cert"
    with pytest.raises(SettingsError) as exc:
        from_data({"gateway_tls_cert": cert})
    assert exc.value.problems[0][0] == "gateway_tls_cert" and "together" in str(exc.value)
    with pytest.raises(SettingsError) as exc:
        from_data({"gateway_tls_cert": cert, "gateway_tls_key": key, "gateway_router_port": 8080})
    assert exc.value.problems[0][0] == "gateway_router_port"


def test_https_puts_haproxy_on_the_gateway_port_and_the_router_behind_it() -> None:
    plain = from_data({"gateway_port": 8443, "gateway_bind": "10.0.0.9"})
    assert gw.router_listen(plain) == ("10.0.0.9", 8443) and not gw.tls(plain)
    s = from_data({"gateway_port": 8443, "gateway_bind": "10.0.0.9", "gateway_tls_cert": "/c.pem",
                   "gateway_tls_key": "/k.pem", "gateway_router_port": 18001})
    assert gw.tls(s) and gw.router_listen(s) == ("127.0.0.1", 18001)
    args = gw.router_args(["http://a:8000"], s)
    assert args[:4] == ["--host", "127.0.0.1", "--port", "18001"]
    cfg = gw.haproxy_config(s, "/etc/gpu-llm/gateway-tls.pem").decode()
    assert "    bind 10.0.0.9:8443 ssl crt /etc/gpu-llm/gateway-tls.pem\n" in cfg
    assert "    server vllm-router 127.0.0.1:18001\n" in cfg and "    mode tcp\n" in cfg
    unit = gw.tls_unit_text("/etc/gpu-llm/gateway-tls.cfg").decode()
    assert "ExecStart=/usr/sbin/haproxy -Ws -f /etc/gpu-llm/gateway-tls.cfg" in unit and "Type=notify" in unit
