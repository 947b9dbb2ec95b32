"""The sessions of a simulated rig and their transactions: proposed, then executed, cancelled or lapsed."""

from __future__ import annotations

import attrs

from .config import RigConfig
from .errors import RigError

__all__ = ["Sessions", "Transaction", "TransactionState"]


class TransactionState:
    PROPOSED = "proposed"
    EXECUTING = "executing"
    EXECUTED = "executed"
    CANCELLED = "cancelled"
    LAPSED = "lapsed"
    REJECTED = "rejected"
    ALL = (PROPOSED, EXECUTING, EXECUTED, CANCELLED, LAPSED, REJECTED)


@attrs.define
class Transaction:
    """One proposal and what became of it."""

    state: str
    proposed_at: float
    # {control point: {(axis, position type): target}}
    targets: dict[str, dict[tuple[str, str], float]]
    reason: str = ""
    done_at: float = 0.0


class Sessions:
    """The sessions open on one rig, each holding its transactions by transId."""

    def __init__(self, config: RigConfig) -> None:
        self._config = config
        self._sessions: dict[str, dict[str, Transaction]] = {}

    def transactions(self, session: str) -> dict[str, Transaction]:
        """The transactions of an open session, by transId.

        Raises:
            RigError: the session is not open.
        """
        try:
            return self._sessions[session]
        except KeyError:
            raise RigError(f"session {session!r} is not open; send open-session first") from None

    def _refresh_all(self, transactions: dict[str, Transaction], now: float) -> None:
        for trans in transactions.values():
            self.refresh(trans, now)

    def refresh(self, trans: Transaction, now: float) -> None:
        """Bring a transaction's state up to ``now``: a proposal lapses, a move finishes."""
        if (
            trans.state == TransactionState.PROPOSED
            and now - trans.proposed_at > self._config.lapse_timeout
        ):
            trans.state = TransactionState.LAPSED
        elif trans.state == TransactionState.EXECUTING and now >= trans.done_at:
            trans.state = TransactionState.EXECUTED

    def remember(
        self, transactions: dict[str, Transaction], trans_id: str, trans: Transaction
    ) -> None:
        """Hold a new transaction, forgetting the oldest finished one if the session is full.

        Raises:
            RigError: the session holds ``max_transactions`` unfinished ones.
        """
        if len(transactions) >= self._config.max_transactions:
            for old_id, old in transactions.items():
                if old.state not in (TransactionState.PROPOSED, TransactionState.EXECUTING):
                    del transactions[old_id]
                    break
            else:
                raise RigError(
                    f"{len(transactions)} transactions are open in this session;"
                    " execute or cancel some before proposing more"
                )
        transactions[trans_id] = trans

    def open(self, name: str) -> None:
        """Open a session; its transactions live until :meth:`close`.

        Raises:
            RigError: a session of that name is already open.
        """
        if name in self._sessions:
            raise RigError(f"session {name!r} is already open; close it or pick another name")
        self._sessions[name] = {}

    def close(self, name: str) -> None:
        """Close a session and forget its transactions (moves under way finish).

        Raises:
            RigError: no session of that name is open.
        """
        self.transactions(name)
        del self._sessions[name]

    def get(self, session: str, trans_id: str, now: float) -> Transaction:
        """A transaction, its state brought up to ``now``.

        Raises:
            RigError: the session is not open or the transaction unknown.
        """
        transactions = self.transactions(session)
        try:
            trans = transactions[trans_id]
        except KeyError:
            raise RigError(f"unknown transaction {trans_id}; propose it first") from None
        self.refresh(trans, now)
        return trans

    def refuse(self, verb: str, trans_id: str, trans: Transaction) -> RigError:
        """The error that refuses to ``verb`` a transaction that is not merely proposed."""
        state = trans.state
        if state == TransactionState.REJECTED:
            why = f"was rejected at propose ({trans.reason})"
        elif state == TransactionState.LAPSED:
            why = (
                f"lapsed: it was not executed within"
                f" {self._config.lapse_timeout:g} s of its proposal"
            )
        elif state == TransactionState.EXECUTING:
            why = "is already executing"
        else:
            why = f"was already {state}"
        return RigError(f"cannot {verb} transaction {trans_id}: it {why}")

    def counts(self, now: float) -> dict[str, dict[str, int]]:
        """Every open session's transactions counted by state, at ``now``."""
        sessions = {}
        for name, transactions in self._sessions.items():
            self._refresh_all(transactions, now)
            counts = dict.fromkeys(TransactionState.ALL, 0)
            for trans in transactions.values():
                counts[trans.state] += 1
            sessions[name] = counts
        return sessions
