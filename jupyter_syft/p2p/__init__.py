"""The control plane: framed request/response between peers over py-libp2p (Noise, Yamux)."""

from jupyter_syft.p2p.bridge import P2PThread
from jupyter_syft.p2p.framing import MAX_FRAME_BYTES, FrameError, read_frame, write_frame
from jupyter_syft.p2p.host import Handler, P2PError, P2PHost, ProtocolNotSupported, RawStream

__all__ = [
    "MAX_FRAME_BYTES",
    "FrameError",
    "Handler",
    "P2PError",
    "P2PHost",
    "P2PThread",
    "ProtocolNotSupported",
    "RawStream",
    "read_frame",
    "write_frame",
]
