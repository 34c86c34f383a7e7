"""Impetus: run local LLMs for coding, with an on-demand OpenAI-compatible server."""

__version__ = "0.1.0"
