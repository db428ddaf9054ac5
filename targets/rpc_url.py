"""The one spelling of a TVM RPC tracker everywhere (compile --rpc, profile --target, gates):
rpc://TRACKER_HOST:PORT/KEY."""

from __future__ import annotations

from typing import NamedTuple

from edgefold.errors import EdgefoldError

EXAMPLE = "rpc://127.0.0.1:9190/phone"


class RpcAddress(NamedTuple):
    """A device behind a TVM RPC tracker: the tracker's host and port, and the device key."""

    host: str
    port: int
    key: str

    @property
    def url(self) -> str:
        """The address as rpc://HOST:PORT/KEY."""
        return f"rpc://{self.host}:{self.port}/{self.key}"


def parse_rpc_url(url: str) -> RpcAddress:
    """rpc://HOST:PORT/KEY -> RpcAddress(host, port, key); anything else is a one-line error."""
    if not url.startswith("rpc://"):
        raise EdgefoldError(f"bad RPC address {url!r}: use rpc://TRACKER_HOST:PORT/KEY (e.g. {EXAMPLE})")
    address, _, key = url.removeprefix("rpc://").partition("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not key or "/" in key:
        raise EdgefoldError(f"bad RPC address {url!r}: use rpc://TRACKER_HOST:PORT/KEY (e.g. {EXAMPLE})")
    return RpcAddress(host, int(port), key)
