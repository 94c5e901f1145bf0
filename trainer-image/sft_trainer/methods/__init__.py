"""Training methods: the objective a run optimises, kept apart from the adapter choice.

``spec.method.type`` (full | lora | qlora) says *which weights* train; ``spec.method.objective``
(sft, and later dpo) says *what they learn from*. Each objective is one module here that provides
the three things ``train()`` needs from it (see docs/trainer.md, "Adding a method"):

- ``training_args(cfg, has_eval)``: the TRL config object (``SFTConfig`` for sft);
- ``datasets(cfg, splits)``: the train set and the evaluation sets, in the columns its trainer reads;
- ``trainer_class()``: the TRL trainer class.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..exit_codes import ConfigError


class Method(Protocol):
    name: str

    def training_args(self, cfg: Any, *, has_eval: bool) -> Any: ...

    def datasets(self, cfg: Any, splits: Any) -> tuple[Any, dict[str, Any] | None]: ...

    def test_dataset(self, cfg: Any, rows: list[dict[str, Any]]) -> Any: ...

    def trainer_class(self) -> type: ...


def get_method(objective: str) -> Method:
    """The method module for ``spec.method.objective``."""
    if objective == "sft":
        from .sft import SFT

        return SFT()
    raise ConfigError(f"spec.method.objective: {objective!r} is not a training method of this trainer (sft)")
