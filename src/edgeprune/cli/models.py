"""``edgeprune models``: list the zoo."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune models``."""
    sub.add_parser("models", help="list the model zoo", description="List the models that can be built by name.")


def run(args: argparse.Namespace) -> None:
    """Print the zoo."""
    from edgeprune.models import describe, list_models

    for name in list_models():
        print(f"{name:<12} {describe(name)}")
