"""One budget for the bytes a host holds on behalf of its peers (pure bookkeeping, no I/O).

Every connection of a :class:`~mimirlite.net.host.Host` has a :class:`BufferAccount` in the host's
:class:`BufferBudget` (``HostConfig.max_buffered_total``). It is charged what the connection holds for
its peer: received data no reader has taken yet (a partial length-prefixed request included, as it
sits in its stream's buffer) and data written to the peer that waits in the session for the socket.
Charges count what the buffers occupy: each held chunk is its length plus :data:`CHUNK_OVERHEAD` (the
bytes object's header, the allocator's own and the slot that keeps it), so a peer sending one-byte
frames pays for the memory they take, not only for their payload.

A charge that would pass the limit is refused, unless :meth:`BufferBudget.make_room` can shed the
newest work of the connection that holds the most, when that one holds more than an equal share and
the one asking would stay within its own: a peer that fills the budget loses its newest streams
rather than locking everybody else out of it.
"""

from __future__ import annotations

from collections.abc import Callable

from mimirlite.errors import LocalError

__all__ = ["CHUNK_OVERHEAD", "BufferAccount", "BufferBudget"]

CHUNK_OVERHEAD = 64
"""Bytes one held chunk costs beyond its payload: a bytes object's header (33) plus the allocator's
header and rounding (16 to 31) plus the pointer that keeps it (8), rounded up."""

_MAX_SHEDS = 16
"""Connections :meth:`BufferBudget.make_room` sheds work from for one charge, at most."""

Shed = Callable[[int], int]
"""Reset newest work until at least this many bytes are released; returns how many were."""


class BufferAccount:
    """What one connection holds (``held``, in bytes) in a :class:`BufferBudget`."""

    __slots__ = ("budget", "held", "shed")

    def __init__(self, budget: BufferBudget, shed: Shed | None) -> None:
        self.budget = budget
        """The budget this account holds its bytes in (the hot paths update both, inlined)."""
        self.held = 0
        self.shed = shed
        """How the budget takes room from this account when it holds too much (None: it cannot)."""

    def charge(self, n: int) -> bool:
        """Hold ``n`` more bytes if the budget has room for them; False (nothing held) if not."""
        budget = self.budget
        total = budget.total + n
        if total > budget.limit:
            return False
        budget.total = total
        if total > budget.peak:
            budget.peak = budget.mark = total
        self.held += n
        return True

    def add(self, n: int) -> None:
        """Hold ``n`` more bytes even past the limit (for bytes already taken in)."""
        budget = self.budget
        total = budget.total = budget.total + n
        if total > budget.peak:
            budget.peak = total
            budget.mark = min(total, budget.limit)
        self.held += n

    def release(self, n: int) -> None:
        """``n`` bytes held before are given back."""
        self.budget.total -= n
        self.held -= n

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` gave everything back (a later release has nothing left to give)."""
        return self not in self.budget._accounts

    def close(self) -> None:
        """Give back everything held and leave the budget."""
        self.budget.total -= self.held
        self.held = 0
        self.budget._accounts.pop(self, None)


class BufferBudget:
    """A limit on the bytes all accounts hold together; ``total`` held now, ``peak`` its high mark."""

    __slots__ = ("_accounts", "limit", "mark", "peak", "total")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise LocalError("a buffer budget cannot be negative")
        self.limit = limit
        self.total = 0
        self.peak = 0
        """The highest ``total`` since this was made or :meth:`reset_peak`."""
        self.mark = 0
        """``min(peak, limit)``: a charge that keeps ``total`` at or below it needs no other check (the
        receive path, which inlines :meth:`BufferAccount.charge`, adds to ``total`` and ``held`` then)."""
        self._accounts: dict[BufferAccount, None] = {}  # in creation order

    def __repr__(self) -> str:
        return f"<BufferBudget {self.total}/{self.limit} bytes, {len(self._accounts)} accounts>"

    def reset_peak(self) -> None:
        """Start a new ``peak`` from ``total``."""
        self.peak = self.total
        self.mark = min(self.total, self.limit)

    def account(self, shed: Shed | None = None) -> BufferAccount:
        """A new account (one per connection); ``shed`` lets :meth:`make_room` take room from it."""
        acct = BufferAccount(self, shed)
        self._accounts[acct] = None
        return acct

    @property
    def accounts(self) -> list[BufferAccount]:
        return list(self._accounts)

    def fits(self, n: int) -> bool:
        """Whether ``n`` more bytes stay within the limit."""
        return self.total + n <= self.limit

    def share(self, account: BufferAccount) -> int:
        """An equal share of the limit among the accounts holding bytes and ``account``."""
        holders = sum(1 for a in self._accounts if a.held > 0)
        if account.held <= 0:
            holders += 1
        return self.limit // holders

    def victim(self, account: BufferAccount, n: int) -> BufferAccount | None:
        """The account to take room from so that ``account`` can hold ``n`` more bytes: the one holding
        the most, if it holds more than an equal share while ``account`` would stay within its own;
        None when ``account`` should be refused instead."""
        share = self.share(account)
        if account.held + n > share:
            return None
        largest: BufferAccount | None = None
        most = share
        for a in self._accounts:
            if a.held > most and a.shed is not None and a is not account:
                largest, most = a, a.held
        return largest

    def make_room(self, account: BufferAccount, n: int) -> bool:
        """Shed work from the accounts holding too much (see :meth:`victim`) until ``n`` more bytes fit;
        False when they cannot be made to fit (nothing is charged either way)."""
        for _ in range(_MAX_SHEDS):
            excess = self.total + n - self.limit
            if excess <= 0:
                return True
            victim = self.victim(account, n)
            if victim is None or victim.shed is None or victim.shed(excess) <= 0:
                return False
        return self.fits(n)
