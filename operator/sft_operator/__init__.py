"""sft-operator: Kubernetes-native supervised fine-tuning of LLMs."""

__version__ = "0.1.0"
