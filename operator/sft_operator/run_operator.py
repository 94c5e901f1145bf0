"""Entry point of the operator process: `python -m sft_operator.run_operator`.

- JSON logs by default (`--log-format text` for humans);
- kopf peering (`sft-operator` ClusterKopfPeering) so that only one replica acts; `--standalone`
  disables it (tests, single replica without the peering CRD);
- liveness/readiness on `http://0.0.0.0:<SFT_OPERATOR_HEALTH_PORT>/healthz` (kopf answers only once
  the operator has started and its probes pass);
- Prometheus metrics on `SFT_OPERATOR_METRICS_PORT` (`/metrics`).
"""

from __future__ import annotations

import argparse
import random
import sys

import kopf

from .settings import load_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sft-operator", description="Kubernetes operator for SFTJob (sft.dev/v1alpha1)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    p.add_argument("--standalone", action="store_true", help="no peering: act even if other replicas run")
    p.add_argument("--priority", type=int, default=None, help="peering priority; the highest live replica acts (default: random)")
    p.add_argument("--log-format", choices=["json", "text"], default="json")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--liveness", default=None, help="override the liveness endpoint URL")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings()
    except ValueError as exc:
        print(f"sft-operator: {exc}", file=sys.stderr)
        return 2
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    from . import handlers  # noqa: F401  (registers the handlers)

    priority = args.priority
    if priority is None and not args.standalone:
        # kopf pauses *every* replica when peers share a priority; distinct ones elect the highest.
        priority = random.SystemRandom().randint(1, 1_000_000)
    liveness = args.liveness or (f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port > 0 else None)
    kopf.run(
        standalone=args.standalone,
        priority=priority,
        # A named peering is mandatory in kopf: pass it only when peering is wanted.
        peering_name=None if args.standalone else "sft-operator",
        liveness_endpoint=liveness,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
