"""preflight: when it runs (once per spec) and what its pod's outcome means."""

import copy

import pytest
from sftop_factories import kjob, pod, sftjob, with_message

from sft_operator.observe import observe_job, observe_pod
from sft_operator.policies.preflight import enabled, judge, passed_for, spec_hash

SPEC = sftjob()["spec"]


def changed(**fields):
    spec = copy.deepcopy(SPEC)
    for path, value in fields.items():
        node = spec
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return spec


@pytest.mark.parametrize(
    "spec, same",
    [
        pytest.param(changed(suspend=True), True, id="suspending does not re-run it"),
        pytest.param(changed(activeDeadlineSeconds=60, ttlSecondsAfterFinished=5), True, id="lifecycle clocks do not"),
        pytest.param(changed(failurePolicy__maxRestarts=9), True, id="the failure policy does not"),
        pytest.param(changed(workers__nodes=8, workers__gpusPerNode=4), True, id="the gang's shape does not"),
        pytest.param(changed(datasets=[{"uri": "file:///data/other.jsonl", "format": "messages"}]), False,
                     id="other data re-runs it"),
        pytest.param(changed(model__chatTemplate="{{ messages }}"), False, id="another chat template re-runs it"),
        pytest.param(changed(training__maxSeqLength=64), False, id="another sequence length re-runs it"),
        pytest.param(changed(workers__image="trainer:fixed"), False, id="a new trainer image re-runs it"),
    ],
)
def test_spec_hash(spec, same):
    assert (spec_hash(spec) == spec_hash(SPEC)) is same
    assert len(spec_hash(spec)) == 16


@pytest.mark.parametrize(
    "spec, on",
    [
        pytest.param({}, True, id="on by default"),
        pytest.param({"preflight": {"maxBadRowRatio": 0.1}}, True, id="on when only the ratio is set"),
        pytest.param({"preflight": {"enabled": False}}, False, id="enabled false skips it"),
    ],
)
def test_enabled(spec, on):
    assert enabled(spec) is on


@pytest.mark.parametrize(
    "status, ok",
    [
        pytest.param(None, False, id="never ran"),
        pytest.param({"specHash": "abc", "passed": True}, True, id="passed for this spec"),
        pytest.param({"specHash": "abc", "passed": False}, False, id="failed for this spec"),
        pytest.param({"specHash": "old", "passed": True}, False, id="passed for an earlier spec"),
    ],
)
def test_passed_for(status, ok):
    assert passed_for(status, "abc") is ok


BAD_ROW = "DataError: data/train.jsonl:17: assistant turn is empty"


@pytest.mark.parametrize(
    "job, pods, state, reason, fragment",
    [
        pytest.param(kjob(active=1), [pod(phase="Pending", node=None)], "running", None, "pod is starting",
                     id="a pending pod is still to check"),
        pytest.param(kjob(active=1), [pod()], "running", None, "is checking the data", id="a running pod is checking"),
        pytest.param(kjob(succeeded=1, complete=True), [with_message(pod(phase="Succeeded", exit_code=0), "1000 rows ok")],
                     "passed", None, "1000 rows ok", id="exit 0 passes with its summary"),
        pytest.param(kjob(active=1), [with_message(pod(phase="Failed", exit_code=64), BAD_ROW)], "failed", "DataError",
                     "data/train.jsonl:17", id="exit 64 is a DataError naming file and line"),
        pytest.param(kjob(active=1), [pod(phase="Failed", exit_code=1)], "failed", "PodFailed", "exited with code 1",
                     id="a crash is a retryable failure"),
        pytest.param(kjob(active=1), [pod(phase="Failed", exit_code=137, term_reason="OOMKilled")], "failed", "OOMKilled",
                     "OOMKilled", id="an OOM kill is named"),
        pytest.param(kjob(failed=1, failed_reason="DeadlineExceeded", failed_message="Job was active longer than specified"),
                     [], "failed", "PodFailed", "DeadlineExceeded", id="a preflight past its deadline fails"),
    ],
)
def test_judge(job, pods, state, reason, fragment):
    out = judge(observe_job(job), [observe_pod(p) for p in pods])
    assert out.state == state
    assert fragment in out.message
    assert (out.failure.reason if out.failure else None) == reason


def test_a_long_log_tail_keeps_the_error_line_at_its_end():
    noise = "Loading tokenizer ... " * 200
    raw = with_message(pod(phase="Failed", exit_code=64), noise + BAD_ROW)
    out = judge(observe_job(kjob(active=1)), [observe_pod(raw)])
    assert out.message.endswith(BAD_ROW) and len(out.message) < 800
