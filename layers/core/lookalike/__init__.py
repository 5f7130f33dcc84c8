"""Lookalike: serverless image search. The core package shared by every function and plugin."""

__version__ = "0.1.0"
