"""The one error hierarchy users see."""


class TurbineError(Exception):
    """Base of every error this package raises to its users."""


class ConnectionFailed(TurbineError):
    """No broker answered at the address, or the connection was lost."""


class BrokerUnavailable(ConnectionFailed):
    """The broker stayed away longer than the caller would wait (frames may still be spooled)."""


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


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` and its nested groups (``[exc]`` if it is no group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def unwrap(exc: BaseException) -> BaseException:
    """The one exception a nursery wrapped (in groups of one), else ``exc`` itself.

    For reporting what a task raised as if no nursery stood in between.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
