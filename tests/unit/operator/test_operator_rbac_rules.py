"""rbac: the rules as data (the real-apiserver checks live in tests/integration/test_rbac_*.py)."""

from sft_operator.rbac import OPERATOR_RULES, TRAINER_RULES, trainer_rules


def verbs(rules, group, resource):
    out = set()
    for r in rules:
        if group in r["apiGroups"] and resource in r["resources"]:
            out |= set(r["verbs"])
    return out


def test_operator_never_reads_secrets_or_escalates():
    for r in OPERATOR_RULES:
        assert "secrets" not in r["resources"]
        assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"]
        assert not {"escalate", "bind", "impersonate"} & set(r["verbs"])


def test_operator_holds_what_it_grants_to_the_trainer():
    # RBAC's escalation check: a Role can only grant what its creator holds.
    assert {"get", "patch"} <= verbs(OPERATOR_RULES, "sft.dev", "sftjobs/status")


def test_trainer_rules_are_scoped_to_one_job():
    assert TRAINER_RULES == [{"apiGroups": ["sft.dev"], "resources": ["sftjobs/status"], "verbs": ["get", "patch"]}]
    assert trainer_rules("x") == [{**TRAINER_RULES[0], "resourceNames": ["x"]}]
    assert "resourceNames" not in TRAINER_RULES[0]  # the constant is not mutated
