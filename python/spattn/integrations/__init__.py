"""Integrations of spattn with model frameworks.

:mod:`spattn.integrations.hf` makes spattn an attention backend of HuggingFace transformers
(``pip install "spattn[hf]"``). Importing this package imports nothing optional; each submodule
imports its framework lazily and names the pip command when it is missing.
"""

__all__ = ["hf"]
