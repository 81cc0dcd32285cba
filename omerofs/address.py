"""``--metrics ADDR``: parsed without importing the metrics machinery, so the CLI's
parser stays light; the option hands the address to the daemon in ``OMEROFS_METRICS``
(which a unit or an fstab line may set as well), the one place both a foreground
daemon and one spawned by ``omerofs mount|ingest`` read it from."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from omerofs.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
METRICS_ENV = "OMEROFS_METRICS"
METRICS_HELP = (
    "serve Prometheus metrics at ADDR: PORT (on 127.0.0.1), HOST:PORT or [IPv6]:PORT; "
    "off by default (docs/service.md)"
)


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT``; a bare port listens on loopback only."""
    text = text.strip()
    host, port = DEFAULT_HOST, text
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
        host = host or DEFAULT_HOST
    if not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise UsageError(f"--metrics {text!r}: expected PORT, HOST:PORT or [IPv6]:PORT (e.g. 9464)")
    return host, int(port)


class MetricsOption(argparse.Action):
    """``--metrics ADDR`` on ``mount`` and ``ingest``: checked now, passed on to the daemon."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("metavar", "ADDR")
        kwargs.setdefault("help", METRICS_HELP)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            parse_address(str(values))
        except UsageError as exc:
            parser.error(str(exc))
        os.environ[METRICS_ENV] = str(values)
        setattr(namespace, self.dest, str(values))
