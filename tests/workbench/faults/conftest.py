"""The fault suite's ledger: every fault a test injects is counted, and the table is printed at the end.

Each test records one row per injected fault: its kind (the rows of ``docs/reliability.md``), whether the
workspace survived it, and how many committed items were lost, how many half-written ones were left, and
how many hostile strings escaped as live markup. The suite's own assertions fail on any loss; the table
says what was tried.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass
class FaultTally:
    """Counts of one fault kind."""

    tried: int = 0
    survived: int = 0
    lost: int = 0
    half_written: int = 0
    escaped: int = 0


@dataclass
class FaultLedger:
    """Fault kind -> :class:`FaultTally`, in the order kinds were first seen."""

    kinds: dict[str, FaultTally] = field(default_factory=dict)

    def record(self, kind: str, *, lost: int = 0, half_written: int = 0, escaped: int = 0) -> None:
        """Count one injected fault of ``kind``; it survived when nothing was lost, half-written or
        escaped."""
        t = self.kinds.setdefault(kind, FaultTally())
        t.tried += 1
        t.survived += int(lost == 0 and half_written == 0 and escaped == 0)
        t.lost += lost
        t.half_written += half_written
        t.escaped += escaped

    def lines(self) -> list[str]:
        """The table, one line per kind plus a header."""
        out = [
            f"{'fault kind':<52} {'tried':>5} {'survived':>8} {'lost':>4} {'half-written':>12} {'escaped':>7}"
        ]
        for kind, t in self.kinds.items():
            out.append(
                f"{kind:<52} {t.tried:>5} {t.survived:>8} {t.lost:>4} {t.half_written:>12} {t.escaped:>7}"
            )
        return out


LEDGER = FaultLedger()


@pytest.fixture(scope="session")
def ledger() -> FaultLedger:
    """The session's :class:`FaultLedger`."""
    return LEDGER


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if LEDGER.kinds:
        terminalreporter.section("fault suite: n tried / n survived / n lost")
        for line in LEDGER.lines():
            terminalreporter.write_line(line)
