"""Single-flight bookkeeping: one fetch per chunk, however many reads want it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

import trio

from lazybuild.errors import LazybuildError


class Flight:
    """One chunk being fetched. When ``done`` is set: ``content`` holds the verified
    chunk, or ``error`` the failure; both None means the fetcher was cancelled and a
    waiter should fetch the chunk itself."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.content: bytes | None = None
        self.error: LazybuildError | None = None


class Flights:
    def __init__(self) -> None:
        self._by_digest: dict[str, Flight] = {}

    def get(self, digest: str) -> Flight | None:
        return self._by_digest.get(digest)

    def register(self, digests: Iterable[str]) -> dict[str, Flight]:
        """Start flights for ``digests`` (none may be in flight yet). Registering is
        synchronous, so a task can claim chunks before it first yields."""
        claimed = {digest: Flight() for digest in digests}
        for digest, flight in claimed.items():
            assert digest not in self._by_digest, f"chunk {digest} is already in flight"
            self._by_digest[digest] = flight
        return claimed

    @contextmanager
    def flying(self, claimed: dict[str, Flight]) -> Iterator[dict[str, Flight]]:
        """Run the fetch of registered flights; on exit they always land (waiters wake).
        A LazybuildError is recorded on the flights that got no content."""
        try:
            yield claimed
        except LazybuildError as exc:
            for flight in claimed.values():
                if flight.content is None and flight.error is None:
                    flight.error = exc
            raise
        finally:
            for digest, flight in claimed.items():
                del self._by_digest[digest]
                flight.done.set()

    def claim(self, digests: Iterable[str]) -> AbstractContextManager[dict[str, Flight]]:
        return self.flying(self.register(digests))
