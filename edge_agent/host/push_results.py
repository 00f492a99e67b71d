"""What each device answered a workstation request (push, rollback, listing), and the table the commands print.

A result per device, whichever command asked: `edge-agent push` (host.push), `models rollback` and
`models list --device` (host.rollback), and the members a group request skips (cli.fleet).
"""

from __future__ import annotations

from dataclasses import dataclass

REASON_WIDTH = 72  # longer results are cut in the table and printed in full below it

ACTIVATED, REJECTED, ROLLED_BACK, NO_ANSWER = "activated", "rejected", "rolled back", "no answer"


@dataclass
class PushResult:
    """One device's outcome: result is activated, rejected, rolled back or no answer."""

    device: str
    result: str
    reason: str = ""
    previous: dict | None = None
    new: dict | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result == ACTIVATED

    def to_dict(self) -> dict:
        return {"device": self.device, "result": self.result, "reason": self.reason, "previous": self.previous,
                "new": self.new, "seconds": round(self.seconds, 3)}


def format_results(results: list[PushResult], success: str = ACTIVATED) -> str:
    """The final table: device, result (with the reason), previous and new model, seconds; reasons too
    long for the table follow it in full."""
    rows = [("device", "result", "previous", "new", "seconds")]
    notes = []
    for r in results:
        result = r.result
        if r.reason:
            result = f"{r.result} ({r.reason})" if r.result == success else f"{r.result}: {r.reason}"
        if len(result) > REASON_WIDTH:
            result = result[:REASON_WIDTH - 1] + "…"
            notes.append(f"{r.device}: {r.reason}")
        rows.append((r.device, result, describe_model(r.previous), describe_model(r.new), f"{r.seconds:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.rjust(widths[i]) if i == 4 else cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    lines.append(f"{sum(r.result == success for r in results)} of {len(results)} device(s) {success}")
    return "\n".join(lines + notes)


def describe_model(model: dict | None) -> str:
    if not model:
        return "-"
    return " ".join(part for part in (model.get("name", ""), model.get("version", "")) if part) or "-"
