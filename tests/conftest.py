"""Shared test set-up: offscreen Qt, qemu helpers, image factories."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from tests.qemu import have_qemu  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Interop tests need qemu-img; `make test` installs it, so a missing binary is a
    # set-up error there.  Outside make, skip them with a clear reason.
    if have_qemu():
        return
    skip = pytest.mark.skip(reason="qemu-img/qemu-io not installed (make test installs them)")
    for item in items:
        if "interop" in item.keywords:
            item.add_marker(skip)
