"""The pure layers stay pure: ops/losses never pull in transformers, ranking never torch.

Each check runs in a fresh interpreter, since this test process may already have
imported anything (the `pure_imports` fixture of tests/conftest.py runs them).
"""

from __future__ import annotations


def test_ops_and_losses_do_not_import_transformers(pure_imports) -> None:
    assert pure_imports["ops_and_losses"] is False


def test_ranking_does_not_import_torch(pure_imports) -> None:
    assert pure_imports["ranking"] is False
