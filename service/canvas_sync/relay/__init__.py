"""The live relay between replicas over Redis/Valkey pub/sub (see core.py, worker.py)."""

from .core import HEARTBEAT_CHANNEL, Kind, Message, Receiver, Sequencer, Verdict, channel, decode, encode
from .transport import MemoryBroker, MemoryTransport, RedisTransport, Transport, TransportError
from .worker import Handler, Relay

__all__ = [
    "HEARTBEAT_CHANNEL",
    "Handler",
    "Kind",
    "MemoryBroker",
    "MemoryTransport",
    "Message",
    "Receiver",
    "RedisTransport",
    "Relay",
    "Sequencer",
    "Transport",
    "TransportError",
    "Verdict",
    "channel",
    "decode",
    "encode",
]
