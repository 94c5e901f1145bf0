"""RBAC rules as data. The Helm chart renders OPERATOR_RULES into the operator's ClusterRole and a
test compares the two; the operator creates the per-job trainer Role from `trainer_rules()`.

Each rule lists only what the code uses:
- the operator never reads Secrets (pods reference the user's Secret by name, which needs no RBAC);
- it can grant the trainer Role only because it holds `get`/`patch` on `sftjobs/status` itself
  (RBAC's escalation check), so no `escalate`/`bind` verbs are needed.
"""

from __future__ import annotations

import copy

__all__ = ["OPERATOR_RULES", "TRAINER_RULES", "trainer_rules"]

OPERATOR_RULES: list[dict] = [
    # The watched resource: fresh reads, kopf's watch, kopf's finalizer and our annotations.
    {"apiGroups": ["sft.dev"], "resources": ["sftjobs"], "verbs": ["get", "list", "watch", "patch"]},
    # The operator-owned status fields (a resourceVersion-guarded merge patch).
    {"apiGroups": ["sft.dev"], "resources": ["sftjobs/status"], "verbs": ["get", "patch"]},
    # Child Jobs: watched (kopf index), created once per attempt, deleted on teardown/TTL.
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch", "create", "delete"]},
    # Pods: watched for failures; an old attempt's pods on a lost node are force-deleted.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "delete"]},
    # Server-side apply needs patch, and create when the object does not exist yet.
    # The per-job ServiceAccount, Role and RoleBinding are watched too (kopf indices): a restart
    # re-applies only the ones deleted or edited.
    {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": ["create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
     "verbs": ["list", "watch", "create", "patch", "delete"]},
    # The per-job NetworkPolicy (server-side apply; deleted with the other per-job children on TTL).
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["create", "patch", "delete"]},
    # Node loss detection: a metadata-only list of node names every few seconds (nodes.py), no watch.
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
    # An Event for every transition (core/v1, as kopf and kubectl describe use); list: the Job
    # controller's FailedCreate events of a Job whose pods the apiserver refuses (quota, PodSecurity).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "list", "watch"]},
    # Kueue's Workload of a queued child Job, for its admission message (why it waits) in status.
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["list"]},
    # kopf: peering (HA), and its resource/namespace observers.
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings", "kopfpeerings"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]

# What rank 0 needs to report progress about its own SFTJob, and nothing else.
TRAINER_RULES: list[dict] = [
    {"apiGroups": ["sft.dev"], "resources": ["sftjobs/status"], "verbs": ["get", "patch"]},
]


def trainer_rules(job_name: str) -> list[dict]:
    rules = copy.deepcopy(TRAINER_RULES)
    for rule in rules:
        rule["resourceNames"] = [job_name]
    return rules
