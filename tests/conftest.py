# Fixtures for tests against real servers on 127.0.0.1 (dev cluster, SeaweedFS S3, Prometheus).
# The dev tooling lives in dev/ (not in the wheel); scripts/venv.sh puts it on the venv's path, and this
# line does the same for a venv made by hand.
import sys
from pathlib import Path

_dev = str(Path(__file__).resolve().parents[1] / "dev")
if _dev not in sys.path:
    sys.path.insert(0, _dev)

pytest_plugins = ["sft_dev.pytest_plugin"]
