"""The real node's generated configuration carries the settings this kind of machine needs
(docs/dev-cluster.md, "A real node"), and the forwarder that makes 127.0.0.1 servers reachable from
pods passes bytes both ways. No root needed: nothing here starts the node."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

from sft_dev import realnode


def test_containerd_config_has_the_machine_specific_settings(tmp_path):
    conf = realnode.containerd_config(tmp_path)
    assert "restrict_oom_score_adj = true" in conf  # root lacks CAP_SYS_RESOURCE here
    assert f'sandbox = "{realnode.SANDBOX_IMAGE}"' in conf and realnode.SANDBOX_IMAGE == "registry.k8s.io/pause:3.10"
    assert f'BinaryName = "{realnode.realnode_build.bin_dir() / "runc"}"' in conf
    assert 'bin_dirs = ["/usr/lib/cni"]' in conf
    assert f'address = "{realnode.socket_path()}"' in conf and len(str(realnode.socket_path())) < 100


def test_pod_network_has_no_nat_and_no_route_but_the_service_cidr(tmp_path):
    (plugin,) = realnode.cni_conflist(tmp_path)["plugins"]
    assert plugin["type"] == "bridge" and plugin["bridge"] == realnode.BRIDGE
    assert plugin["ipMasq"] is False and not plugin.get("isDefaultGateway")
    assert plugin["ipam"]["routes"] == [{"dst": realnode.SERVICE_CIDR}]
    assert plugin["ipam"]["ranges"] == [[{"subnet": realnode.SUBNET, "gateway": realnode.NODE_IP}]]


def test_kubelet_config_for_cgroup_v1_and_a_non_loopback_node_ip(tmp_path):
    cfg = realnode.kubelet_config(tmp_path, tmp_path / "ca.crt", 10999)
    assert cfg["failCgroupV1"] is False and cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["address"] == realnode.NODE_IP and not realnode.NODE_IP.startswith("127.")
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authentication"]["x509"]["clientCAFile"] == str(tmp_path / "ca.crt")
    assert cfg["healthzBindAddress"] == "127.0.0.1" and cfg["readOnlyPort"] == 0
    assert cfg["imageGCHighThresholdPercent"] == 100  # imported images cannot be pulled again


def test_pause_image_archive_is_an_oci_layout_named_for_containerd(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pause").write_bytes(b"\x7fELF fake pause")
    monkeypatch.setattr(realnode.realnode_build, "bin_dir", lambda: tmp_path / "bin")
    with tarfile.open(realnode.pause_image_tar(tmp_path / "pause.tar")) as t:
        names = t.getnames()
        index = json.loads(t.extractfile("index.json").read())
        (m,) = index["manifests"]
        manifest = json.loads(t.extractfile(f"blobs/sha256/{m['digest'].split(':')[1]}").read())
    assert "oci-layout" in names
    assert m["annotations"]["io.containerd.image.name"] == realnode.SANDBOX_IMAGE
    assert {f"blobs/sha256/{b['digest'].split(':')[1]}" for b in [manifest["config"], *manifest["layers"]]} <= set(names)


def test_forwarder_passes_bytes_both_ways(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    target = srv.getsockname()[1]

    def echo():
        conn, _ = srv.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())

    threading.Thread(target=echo, daemon=True).start()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    dev = str(Path(realnode.__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-m", "sft_dev.forward", f"127.0.0.1:{port}=127.0.0.1:{target}"],
                            env={"PYTHONPATH": dev}, stdout=subprocess.PIPE, text=True)
    try:
        assert "forwarding" in proc.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"hello")
            assert c.recv(100) == b"HELLO"
    finally:
        proc.kill()
        proc.wait(5)
        srv.close()


def test_corefile_serves_cluster_local_on_the_bridge_and_forwards_nothing(tmp_path):
    conf = realnode.corefile(tmp_path / "coredns.kubeconfig", 10998)
    assert conf.count(f"bind {realnode.NODE_IP}") == 2  # both server blocks, never 0.0.0.0 or 127.0.0.1
    assert f"kubernetes {realnode.CLUSTER_DOMAIN} {{" in conf
    assert f"kubeconfig {tmp_path / 'coredns.kubeconfig'} sft-dev" in conf
    assert "ready 127.0.0.1:10998" in conf
    # no resolver of the machine is ever asked: every other name is NXDOMAIN
    assert "forward" not in conf and "resolv.conf" not in conf and "proxy" not in conf
    assert "rcode NXDOMAIN" in conf.split(".:53", 1)[1]


def test_coredns_may_only_list_and_watch_what_its_plugin_reads():
    role, binding = realnode.coredns_rbac()
    assert {v for r in role["rules"] for v in r["verbs"]} == {"list", "watch"}
    assert {(g, res) for r in role["rules"] for g in r["apiGroups"] for res in r["resources"]} == {
        ("", "services"), ("", "namespaces"), ("discovery.k8s.io", "endpointslices")}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": realnode.COREDNS_USER}]


def test_kubelet_points_pods_at_coredns_and_keeps_the_hosts_resolvers_out(tmp_path):
    cfg = realnode.kubelet_config(tmp_path, tmp_path / "ca.crt", 10999)
    assert cfg["clusterDNS"] == [realnode.NODE_IP] and cfg["clusterDomain"] == "cluster.local"
    assert cfg["resolvConf"] == str(tmp_path / "host-resolv.conf") != "/etc/resolv.conf"
    assert "coredns" in realnode.COMPONENTS and realnode.COMPONENTS.index("coredns") < realnode.COMPONENTS.index("kubelet")


def test_kube_router_runs_only_its_firewall_and_listens_nowhere(tmp_path):
    argv = realnode.kube_router_argv(tmp_path / "kube-router.kubeconfig")
    assert argv[0] == str(realnode.realnode_build.kube_router_bin())
    flags = dict(a[2:].split("=", 1) for a in argv[1:])
    assert flags["run-firewall"] == "true"
    assert flags["run-router"] == flags["run-service-proxy"] == flags["run-loadbalancer"] == "false"
    assert flags["enable-cni"] == "false"  # the bridge plugin's conflist stays the only CNI config
    assert flags["hostname-override"] == realnode.NODE_NAME
    assert flags["service-cluster-ip-range"] == realnode.SERVICE_CIDR
    assert flags["health-port"] == flags["metrics-port"] == "0"  # its health server would bind every address
    assert flags["kubeconfig"] == str(tmp_path / "kube-router.kubeconfig")


def test_kube_router_may_only_read():
    role, binding = realnode.kube_router_rbac()
    assert {v for r in role["rules"] for v in r["verbs"]} <= {"get", "list", "watch"}
    assert ("networking.k8s.io", "networkpolicies") in {
        (g, res) for r in role["rules"] for g in r["apiGroups"] for res in r["resources"]}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": realnode.KUBE_ROUTER_USER}]


def test_only_kube_routers_chains_are_its_own():
    for name in ("KUBE-ROUTER-FORWARD", "KUBE-ROUTER-INPUT", "KUBE-NWPLCY-DEFAULT", "KUBE-NWPLCY-ABC", "KUBE-POD-FW-X"):
        assert realnode._is_kube_router_chain(name), name
    for name in ("FORWARD", "KUBE-FIREWALL", "KUBE-SERVICES", "KUBE-ROUTER", "DOCKER"):
        assert not realnode._is_kube_router_chain(name), name


def test_kubelet_makes_no_iptables_chains(tmp_path):
    # kubelet never removes its util chains; without kube-proxy nothing needs them
    assert realnode.kubelet_config(tmp_path, tmp_path / "ca.crt", 10999)["makeIPTablesUtilChains"] is False
