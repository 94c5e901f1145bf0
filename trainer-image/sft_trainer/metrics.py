"""Prometheus metrics of a training run (docs/monitoring.md), served from rank 0.

Every series carries the labels ``namespace`` and ``sftjob`` (the SFTJob's namespace and name;
``local`` and the job name under ``sftctl run``). The names are a public contract: dashboards and
alerts use them.

MFU (model FLOPs utilisation) = achieved model FLOPs/s ÷ (peak FLOPs/s per device × devices).
Model FLOPs per trained token follow the usual convention (Kaplan et al.; PaLM appendix B):
``6 × parameters + 12 × layers × hidden × sequence length``, counting frozen parameters too, so
that LoRA and full fine-tuning are comparable. The peak comes from a table of dense bf16 figures by
device name, or from ``SFT_PEAK_FLOPS``. Without CUDA (CPU runs) there is no meaningful peak, so
``sftjob_mfu_ratio`` stays 0 and ``sftjob_gpu_memory_used_bytes`` stays 0.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

log = logging.getLogger(__name__)

METRICS_PORT_ENV = "SFT_METRICS_PORT"
FLUSH_SECONDS_ENV = "SFT_METRICS_FLUSH_SECONDS"
DEFAULT_FLUSH_SECONDS = 35.0  # one scrape at the chart's slowest interval (30 s), plus its timeout
DEFAULT_METRICS_PORT = 9400  # clear of Prometheus' own 9090 and node-exporter's 9100
PEAK_FLOPS_ENV = "SFT_PEAK_FLOPS"
BASE_LABELS = ("namespace", "sftjob")
OVERALL_TASK = "all"

# Dense (no sparsity) bf16 tensor-core peaks per device, from the vendors' data sheets.
# Most specific names first: the first substring found in the device name wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIE", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("B200", 2250e12),
    ("B100", 1750e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("V100", 125e12),
    ("T4", 65e12),
)

_LABEL_HELP = " Labels: namespace, sftjob (the SFTJob)."

# name -> (help, extra labels)
METRIC_DEFS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sftjob_train_loss": ("Training loss at the latest logging step.", ()),
    "sftjob_eval_loss": (
        "Validation loss at the latest evaluation. task_type is 'all' for the whole validation "
        "split, otherwise one task_type of the data.",
        ("task_type",),
    ),
    "sftjob_learning_rate": ("Learning rate at the latest logging step.", ()),
    "sftjob_grad_norm": ("Gradient norm before clipping at the latest logging step.", ()),
    "sftjob_tokens_per_second": (
        "Trained (non-padding) tokens per second, all ranks together, over the latest logging "
        "interval.",
        (),
    ),
    "sftjob_tokens_total": ("Trained (non-padding) tokens so far, all ranks together.", ()),
    "sftjob_step": ("Optimizer steps completed.", ()),
    "sftjob_total_steps": ("Optimizer steps planned for the run.", ()),
    "sftjob_mfu_ratio": (
        "Model FLOPs utilisation, 0..1: (6 x params + attention) x tokens/s / (device peak x "
        "devices). 0 when the device peak is unknown (CPU).",
        (),
    ),
    "sftjob_gpu_memory_used_bytes": (
        "Peak GPU memory allocated by PyTorch on rank 0 (torch.cuda.max_memory_allocated); 0 "
        "without CUDA.",
        (),
    ),
    "sftjob_checkpoint_last_step": ("Step of the latest committed checkpoint.", ()),
    "sftjob_checkpoint_save_seconds": (
        "Seconds the latest checkpoint took: local save, upload and commit.",
        (),
    ),
    "sftjob_golden_pass_ratio": (
        "Golden-set pass rate, 0..1, at the latest scored checkpoint (eval.goldenSet.everyCheckpoints) or at "
        "the end of training. task_type is 'all' for the whole set, otherwise one task_type of the golden set.",
        ("task_type",),
    ),
}


def peak_flops_for(device_name: str | None, env: dict[str, str] | None = None) -> float | None:
    """Peak FLOPs/s of one device: ``SFT_PEAK_FLOPS`` if set, else the table; None if unknown."""
    env = os.environ if env is None else env
    if env.get(PEAK_FLOPS_ENV):
        return float(env[PEAK_FLOPS_ENV])
    if not device_name:
        return None
    name = device_name.upper()
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return None


def flops_per_token(n_params: int, n_layers: int = 0, hidden: int = 0, seq_len: int = 0) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward + backward) + the attention scores."""
    return 6.0 * n_params + 12.0 * n_layers * hidden * seq_len


def mfu(tokens_per_second: float, flops_per_tok: float, peak_per_device: float | None,
        n_devices: int = 1) -> float:
    if not peak_per_device or n_devices <= 0 or tokens_per_second <= 0:
        return 0.0
    return tokens_per_second * flops_per_tok / (peak_per_device * n_devices)


def model_flops_per_token(model: Any, seq_len: int) -> float:
    """FLOPs/token of a HF model (frozen parameters included; PEFT wrappers are fine)."""
    # ZeRO-3 partitions parameters (numel() is 0 on every rank); ds_numel keeps the full size
    n = sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in model.parameters())
    cfg = getattr(model, "config", None)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    return flops_per_token(n, layers, hidden, seq_len)


class _ScrapeMarker:
    """A collector that yields nothing and counts the scrapes it takes part in.

    Registered first and last in the registry, its ``collect`` runs when a scrape starts and when
    the scrape has read every gauge, which tells ``TrainerMetrics.flush`` that a complete scrape
    happened after the final values were set.
    """

    def __init__(self, cond: threading.Condition, counter: list[int], index: int):
        self._cond, self._counter, self._index = cond, counter, index

    def collect(self):  # noqa: D401 - the prometheus_client collector protocol
        with self._cond:
            self._counter[self._index] += 1
            self._cond.notify_all()
        return iter(())


class TrainerMetrics:
    """The trainer's gauges in a dedicated registry, pre-labelled with namespace and job."""

    def __init__(self, namespace: str, job: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._scrape_cond = threading.Condition()
        self._scrapes = [0, 0]  # [started, finished reading]
        self.registry.register(_ScrapeMarker(self._scrape_cond, self._scrapes, 0))
        self.labels = {"namespace": namespace or "local", "sftjob": job or "local"}
        self._gauges: dict[str, Gauge] = {}
        for name, (help_text, extra) in METRIC_DEFS.items():
            self._gauges[name] = Gauge(
                name, help_text + _LABEL_HELP, BASE_LABELS + extra, registry=self.registry
            )
        # Every series exists from the start, so dashboards show 0 instead of "no data".
        for name, (_, extra) in METRIC_DEFS.items():
            if not extra:
                self._g(name).set(0)
        self.registry.register(_ScrapeMarker(self._scrape_cond, self._scrapes, 1))
        self.server: Any = None
        self.port: int | None = None

    @property
    def scrapes(self) -> int:
        """Scrapes that have read every series so far."""
        with self._scrape_cond:
            return self._scrapes[1]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until a scrape that started after this call has read every series.

        A run's last values (the final checkpoint step, the test loss) are set seconds before the
        process exits; without this, the last scrape before exit often predates them and
        Prometheus never sees them. Nothing waits when /metrics is not served or nobody has ever
        scraped it (``sftctl run`` without a Prometheus). ``timeout`` defaults to
        ``SFT_METRICS_FLUSH_SECONDS`` (35 s). Returns whether such a scrape happened.
        """
        if self.server is None:
            return False
        if timeout is None:
            timeout = float(os.environ.get(FLUSH_SECONDS_ENV, DEFAULT_FLUSH_SECONDS))
        deadline = time.monotonic() + max(0.0, timeout)
        with self._scrape_cond:
            if self._scrapes[1] == 0:
                return False
            target = self._scrapes[0] + 1  # the first scrape to start from now on ...
            while self._scrapes[1] < target:  # ... has read every series (scrapes run one at a time)
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("no Prometheus scrape within %.0fs of the end; the last values may be missed", timeout)
                    return False
                self._scrape_cond.wait(left)
        time.sleep(0.2)  # the response is written after the registry is read
        return True

    def _g(self, name: str, **extra: str) -> Any:
        return self._gauges[name].labels(**self.labels, **extra)

    def set(self, name: str, value: float, **extra: str) -> None:
        if value is None:
            return
        self._g(name, **extra).set(float(value))

    def set_eval_loss(self, value: float, task_type: str = OVERALL_TASK) -> None:
        self.set("sftjob_eval_loss", value, task_type=task_type)

    def set_golden(self, pass_rate: float, by_task: dict[str, float]) -> None:
        self.set("sftjob_golden_pass_ratio", pass_rate, task_type=OVERALL_TASK)
        for task, rate in by_task.items():
            self.set("sftjob_golden_pass_ratio", rate, task_type=task)

    def observe_checkpoint(self, step: int, seconds: float) -> None:
        self.set("sftjob_checkpoint_last_step", step)
        self.set("sftjob_checkpoint_save_seconds", seconds)

    def serve(self, port: int | None = None, addr: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP server (port from ``SFT_METRICS_PORT``; 0 = a free port)."""
        if self.server is not None:
            return self.port  # type: ignore[return-value]
        if port is None:
            port = int(os.environ.get(METRICS_PORT_ENV, DEFAULT_METRICS_PORT))
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self.server = server
        self.port = server.server_port
        log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, self.port)
        return self.port

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
