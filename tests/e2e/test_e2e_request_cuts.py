"""The operator's requests per job, counted by its own `sftoperator_api_requests_total` while a job runs
through a restart on the real control plane: passes start from the cached SFTJob body (no GET per
pass, though the 1 s resync runs many passes), each attempt's Job is created once, a restart leaves the
unchanged per-job ServiceAccount alone, and a Role deleted and a RoleBinding edited while the job
ran are both repaired by the next attempt."""

from __future__ import annotations

import time

from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families
from sft_e2e_helpers import sftjob_manifest

from sft_operator.rbac import trainer_rules


def counters(operator) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for fam in text_string_to_metric_families(operator.metrics()):
        for s in fam.samples:
            if s.name.endswith("_total"):
                out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def delta(after: dict, before: dict, name: str, **labels) -> float:
    key = (name, *sorted(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def req(after, before, verb: str, resource: str) -> float:
    return delta(after, before, "sftoperator_api_requests_total", verb=verb, resource=resource)


def test_restart_reapplies_only_what_changed(operator, sft, kwok_pods):
    name, sa = "cuts", "cuts-trainer"
    rbac = client.RbacAuthorizationV1Api(sft.api_client)
    # The counters are the operator's, not the job's: wait until the SFTJobs of earlier test modules
    # (their namespaces still being deleted) are gone, or their passes count here too.
    custom = client.CustomObjectsApi(sft.api_client)
    deadline = time.monotonic() + 120
    while (left := custom.list_cluster_custom_object("sft.dev", "v1alpha1", "sftjobs")["items"]):
        assert time.monotonic() < deadline, [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in left]
        time.sleep(0.5)
    time.sleep(1.0)  # their last passes' requests are counted by now
    before = counters(operator)
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1))
    [pod] = sft.running_pods(name, 1, 1)
    sft.wait_phase(name, "Running")
    time.sleep(3)  # a few 1 s resync passes of a running job

    # Drift while attempt 1 runs: the trainer's Role deleted, its RoleBinding given a second subject.
    rbac.delete_namespaced_role(sa, sft.ns)
    rbac.patch_namespaced_role_binding(sa, sft.ns, [{"op": "add", "path": "/subjects/-",
                                                     "value": {"kind": "ServiceAccount", "name": "intruder", "namespace": sft.ns}}])
    time.sleep(2)  # kopf's watches see both before the restart
    kwok_pods.fail(sft.ns, pod.metadata.name, exit_code=1, wait=False)
    sft.running_pods(name, 2, 1)
    sft.wait_phase(name, "Running")
    time.sleep(2)
    after = counters(operator)

    rules = rbac.read_namespaced_role(sa, sft.ns).rules  # back, as rendered
    assert [{"apiGroups": r.api_groups, "resources": r.resources, "verbs": r.verbs, "resourceNames": r.resource_names}
            for r in rules] == trainer_rules(name)
    assert [s.name for s in rbac.read_namespaced_role_binding(sa, sft.ns).subjects] == [sa]

    passes = delta(after, before, "sftoperator_sftjob_reads_total", source="cache") + \
        delta(after, before, "sftoperator_sftjob_reads_total", source="get")
    print(f"\n{passes:.0f} passes; GET sftjobs {req(after, before, 'GET', 'sftjobs'):.0f}; by request: "
          + ", ".join(f"{k[2][1]} {k[1][1]} {v - before.get(k, 0):.0f}" for k, v in after.items()
                      if k[0] == "sftoperator_api_requests_total" and v - before.get(k, 0)))
    assert passes >= 8
    assert req(after, before, "GET", "sftjobs") <= 2  # only after a conflict: the watch events feed the cache
    assert req(after, before, "POST", "jobs") == 2  # one Job per attempt, never re-sent while the index lags
    assert req(after, before, "PATCH", "configmaps") == 2 and req(after, before, "PATCH", "services") == 2
    assert req(after, before, "PATCH", "serviceaccounts") == 1  # unchanged at the restart: not re-applied
    assert delta(after, before, "sftoperator_skipped_applies_total", kind="ServiceAccount") >= 1
    assert req(after, before, "PATCH", "roles") == 2  # deleted: applied again
    assert req(after, before, "PATCH", "rolebindings") == 2  # edited: applied again
    assert delta(after, before, "sftoperator_unchanged_writes_total", resource="sftjobs/status") == 0
