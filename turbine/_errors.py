"""The one error hierarchy users see."""


class TurbineError(Exception):
    """Base of every error this package raises to its users."""


class ConnectionFailed(TurbineError):
    """No broker answered at the address, or the connection was lost."""


class ProtocolError(TurbineError):
    """A message broke the wire protocol."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class RequestFailed(TurbineError):
    """The broker refused a request; ``code`` says which kind of refusal."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code
