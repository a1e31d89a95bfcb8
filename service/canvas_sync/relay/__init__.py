"""The live relay between replicas over Redis/Valkey pub/sub: decisions (core.py), the
wire (transport.py), the tasks (worker.py) and what it does to this replica (bridge.py)."""

from .bridge import RelayBridge
from .core import HEARTBEAT_CHANNEL, Kind, Message, Receiver, Sequencer, Verdict, channel, decode, encode
from .transport import TRANSPORT_ERRORS, MemoryBroker, MemoryTransport, RedisTransport, Transport
from .worker import Handler, Relay

__all__ = [
    "HEARTBEAT_CHANNEL",
    "TRANSPORT_ERRORS",
    "Handler",
    "Kind",
    "MemoryBroker",
    "MemoryTransport",
    "Message",
    "Receiver",
    "RedisTransport",
    "Relay",
    "RelayBridge",
    "Sequencer",
    "Transport",
    "Verdict",
    "channel",
    "decode",
    "encode",
]
