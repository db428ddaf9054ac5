"""The one spelling of a TVM RPC tracker everywhere (compile --rpc, profile --target, gates):
rpc://TRACKER_HOST:PORT/KEY."""

from __future__ import annotations

from edgefold.errors import EdgefoldError

EXAMPLE = "rpc://127.0.0.1:9190/phone"


def parse_rpc_url(url: str) -> tuple[str, int, str]:
    """rpc://HOST:PORT/KEY -> (host, port, key); anything else is a one-line error."""
    if not url.startswith("rpc://"):
        raise EdgefoldError(f"bad RPC address {url!r}: use rpc://TRACKER_HOST:PORT/KEY (e.g. {EXAMPLE})")
    address, _, key = url.removeprefix("rpc://").partition("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not key or "/" in key:
        raise EdgefoldError(f"bad RPC address {url!r}: use rpc://TRACKER_HOST:PORT/KEY (e.g. {EXAMPLE})")
    return host, int(port), key
