"""The dev cluster: a real Kubernetes control plane (etcd, kube-apiserver, controller-manager,
scheduler) with kwok GPU nodes, plus SeaweedFS S3 and Prometheus, for tests and local development.
Built from package registries only (Go module proxy, PyPI, Debian): no Docker, no release downloads."""
