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
    # The watched resource: read it, write kopf's bookkeeping annotations, own status.
    {"apiGroups": ["sft.dev"], "resources": ["sftjobs"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["sft.dev"], "resources": ["sftjobs/status"], "verbs": ["get", "patch"]},
    # Children per attempt.
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": ["get", "create", "patch", "delete", "deletecollection"]},
    # Per-job progress channel.
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "create", "patch", "delete"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["get", "create", "patch", "delete"]},
    # Node loss detection.
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    # Events for every transition (kopf posts core/v1 Events).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf: peering (HA) and resource/namespace discovery.
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings", "kopfpeerings"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
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
