# Fixtures for tests against real servers on 127.0.0.1 (dev cluster, SeaweedFS S3, Prometheus).
pytest_plugins = ["sft_dev.pytest_plugin"]
