"""sft: config-driven supervised fine-tuning of pretrained language models."""

__version__ = "0.2.0"
