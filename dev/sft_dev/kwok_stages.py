"""kwok Stage definitions for the dev cluster, and the pod annotations that drive them.

Node stages are kwok v0.8.0's own (kustomize/stage/node/fast/node-initialize.yaml and
node/heartbeat-with-lease). Pod stages: pods become Ready and then stay Running until a test
annotates them with ``sft.dev/kwok-outcome`` (pods only finish when told, so operator tests can
observe a running gang). Each outcome stage selects on a distinct annotation value, so the
selectors are mutually exclusive.

Outcomes (annotation ``sft.dev/kwok-outcome``):
  succeed     -> phase Succeeded, every container terminated with exit code 0
  fail        -> phase Failed, containers terminated with ``sft.dev/kwok-exit-code`` (default 1) and
                 the termination reason ``sft.dev/kwok-reason`` (default Error; OOMKilled as the kubelet
                 writes it for an OOM-killed container)
  preempt     -> phase Failed, condition DisruptionTarget=True reason PreemptionByScheduler, exit 137
  evict       -> phase Failed, condition DisruptionTarget=True reason EvictionByEvictionAPI, exit 137
Optional ``sft.dev/kwok-message`` is the containers' termination message (succeed and fail);
optional ``sft.dev/kwok-delay`` (a Go duration such as "5s") delays the outcome;
``sft.dev/kwok-reason`` overrides the DisruptionTarget reason (e.g. DeletionByTaintManager) of
preempt and evict, and the containers' termination reason of fail.
"""

from __future__ import annotations

OUTCOME_ANNOTATION = "sft.dev/kwok-outcome"
EXIT_CODE_ANNOTATION = "sft.dev/kwok-exit-code"
DELAY_ANNOTATION = "sft.dev/kwok-delay"
REASON_ANNOTATION = "sft.dev/kwok-reason"
MESSAGE_ANNOTATION = "sft.dev/kwok-message"  # the containers' termination message (what the trainer wrote)
NODE_ANNOTATION = "kwok.x-k8s.io/node"  # value "fake": nodes kwok manages

DISRUPTION_REASONS = {"preempt": "PreemptionByScheduler", "evict": "EvictionByEvictionAPI"}

_NODE_CONDITIONS = """\
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type  | Quote}}
      {{ end }}
"""

NODE_INITIALIZE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
""" + _NODE_CONDITIONS + """\
      addresses:
      {{ with NodeIP }}
      - address: {{ . | Quote }}
        type: InternalIP
      {{ end }}
      {{ with NodeName }}
      - address: {{ . | Quote }}
        type: Hostname
      {{ end }}
      {{ with NodePort }}
      daemonEndpoints:
        kubeletEndpoint:
          Port: {{ . }}
      {{ end }}
      allocatable:
      {{ with .status.allocatable }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: 1k
        memory: 1Ti
        pods: 1M
      {{ end }}
      capacity:
      {{ with .status.capacity }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: 1k
        memory: 1Ti
        pods: 1M
      {{ end }}
      {{ $nodeInfo := .status.nodeInfo }}
      {{ $kwokVersion := printf "kwok-%s" Version }}
      nodeInfo:
        architecture: {{ or $nodeInfo.architecture "amd64" }}
        bootID: {{ or $nodeInfo.bootID `""` }}
        containerRuntimeVersion: {{ or $nodeInfo.containerRuntimeVersion $kwokVersion }}
        kernelVersion: {{ or $nodeInfo.kernelVersion $kwokVersion }}
        kubeProxyVersion: {{ or $nodeInfo.kubeProxyVersion $kwokVersion }}
        kubeletVersion: {{ or $nodeInfo.kubeletVersion $kwokVersion }}
        machineID: {{ or $nodeInfo.machineID `""` }}
        operatingSystem: {{ or $nodeInfo.operatingSystem "linux" }}
        osImage: {{ or $nodeInfo.osImage `""` }}
        systemUUID: {{ or $nodeInfo.systemUUID `""` }}
      phase: Running
"""

# Renews conditions every 20-25s; with the node lease (kwok --node-lease-duration-seconds)
# the node lifecycle controller keeps the node Ready.
NODE_HEARTBEAT = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-heartbeat-with-lease
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values: ['True']
  delay:
    durationMilliseconds: 20000
    jitterDurationMilliseconds: 25000
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
""" + _NODE_CONDITIONS

POD_READY = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      {{ $hostIPs := NodeIPsWith .spec.nodeName }}
      {{ with $hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      hostIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      {{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      {{ with $podIPs }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
"""

# A deleted pod that still runs first turns terminal, as the kubelet makes it after SIGTERM (exit
# 143): the Job controller removes its tracking finalizer only from terminal pods when the Job has a
# podFailurePolicy, so without this step a deleted running pod of such a Job never goes away.
POD_TERMINATE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-terminate
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending', 'Running']
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 143
            finishedAt: {{ $now | Quote }}
            reason: Error
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Failed
"""

# A terminal deleted pod goes away at once (no kubelet runs its grace period); finalizers such as
# the Job controller's tracking finalizer are left for their owners to remove.
POD_DELETE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
    - key: '.status.phase'
      operator: 'NotIn'
      values: ['Pending', 'Running']
  next:
    delete: true
"""


def _outcome_stage(name: str, values: list[str], status_template: str) -> str:
    return f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: {name}
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.metadata.annotations["{OUTCOME_ANNOTATION}"]'
      operator: 'In'
      values: {values!r}
  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.metadata.annotations["{DELAY_ANNOTATION}"]'
  next:
    statusTemplate: |
{status_template}"""


_TERMINATED = """\
      {{{{ $now := Now }}}}
      {{{{ $annotations := or .metadata.annotations dict }}}}
      {{{{ $exitCode := or ( index $annotations "{exit_annotation}" ) "{default_exit}" }}}}
      {{{{ $reason := or ( index $annotations "{reason_annotation}" ) "{default_reason}" }}}}
      {{{{ $message := or ( index $annotations "sft.dev/kwok-message" ) "" }}}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: {{{{ $exitCode }}}}
            finishedAt: {{{{ $now | Quote }}}}
            message: {{{{ $message | Quote }}}}
            reason: {container_reason}
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
"""

POD_SUCCEED = _outcome_stage(
    "sft-pod-succeed",
    ["succeed"],
    _TERMINATED.format(exit_annotation="sft.dev/none", default_exit="0", reason_annotation="sft.dev/none",
                       default_reason="", container_reason="Completed")
    + """\
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: PodCompleted
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: PodCompleted
        type: ContainersReady
      phase: Succeeded
""",
)

POD_FAIL = _outcome_stage(
    "sft-pod-fail",
    ["fail"],
    _TERMINATED.format(exit_annotation=EXIT_CODE_ANNOTATION, default_exit="1", reason_annotation=REASON_ANNOTATION,
                       default_reason="Error", container_reason="{{ $reason | Quote }}")
    + """\
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: PodFailed
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: PodFailed
        type: ContainersReady
      phase: Failed
""",
)


def _disruption_stage(outcome: str) -> str:
    # What the scheduler / eviction API / taint manager leave on a pod they terminate: the
    # DisruptionTarget condition, then phase Failed with the containers killed (137 = SIGKILL).
    return _outcome_stage(
        f"sft-pod-{outcome}",
        [outcome],
        _TERMINATED.format(exit_annotation=EXIT_CODE_ANNOTATION, default_exit="137",
                           reason_annotation=REASON_ANNOTATION, default_reason=DISRUPTION_REASONS[outcome],
                           container_reason="Error")
        + """\
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: DisruptionTarget
        reason: {{ $reason | Quote }}
        message: "sft dev cluster: simulated {{ $reason }}"
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: PodFailed
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: PodFailed
        type: ContainersReady
      phase: Failed
""",
    )


def all_stages() -> str:
    """Every Stage as one multi-document YAML for `kwok -c`."""
    docs = [NODE_INITIALIZE, NODE_HEARTBEAT, POD_READY, POD_TERMINATE, POD_DELETE, POD_SUCCEED, POD_FAIL,
            _disruption_stage("preempt"), _disruption_stage("evict")]
    return "---\n".join(docs)
