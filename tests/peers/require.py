"""Find a peer binary or skip/fail the test that needs it.

Locally a missing peer skips the test (naming the Debian package to install); in CI
(``CI=true``) it fails, so a CI machine without its peers cannot pass by skipping everything.
``scripts/install-peers.sh`` installs all of them.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["require"]


def require(binary: str, package: str) -> str:
    """Return the absolute path of ``binary`` (a name on PATH or an absolute path).

    When it is missing: ``pytest.fail`` if the environment has ``CI=true``, else ``pytest.skip``;
    both messages name the Debian ``package`` and ``scripts/install-peers.sh``.
    """
    # /usr/sbin (nginx) is often missing from a non-root PATH.
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if found is not None:
        return found
    message = (
        f"{binary} not found: install the Debian package {package!r} "
        "(scripts/install-peers.sh installs every peer)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
