"""Synthetic tool logs of the fab, and the grammar that says which lines are valid.

Every tool writes one line per event, and a log is one tool's lines in time order:

    06:00:59 ETCH-06 RUN LOT-01000/09 T=348.1 P=2.11 PC=31 RF=1464 PASS
    06:01:04 ETCH-06 ALARM A217 SEV=2 TEMP_OUT_OF_RANGE
    06:02:10 ETCH-06 PM START KIT=CHAMBER_CLEAN
    06:35:10 ETCH-06 PM END KIT=CHAMBER_CLEAN
    06:35:40 ETCH-06 IDLE 30s

A RUN line is one wafer: its lot and slot (slots count 01..25 within a lot), the chamber's
temperature, pressure, particle count and RF power, and the inline verdict. A wafer whose
readings leave the process window FAILs, and a failing wafer is often followed by the
ALARM that names the reading. Preventive maintenance (PM) comes in START/END pairs with
the same kit; IDLE says how long the tool waited for the next lot.

The language model of lesson 05 learns these logs; ``parses`` is its quality bar: the
share of generated lines that are valid lines of the grammar below. The grammar checks
form (fields, ranges of digits), not the story's consistency, which is harder to learn
and a better test of a bigger model.

Logs are deterministic in their seed.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["TOOLS", "KINDS", "LINE", "parses", "line_kind", "make_tool_log", "make_tool_logs"]

TOOLS = [f"{family}-0{n}" for family in ("ETCH", "CVD", "CMP", "LITHO") for n in range(1, 9)]
ALARMS = {"T": ("A217", "TEMP_OUT_OF_RANGE"), "P": ("A305", "PRESSURE_DRIFT"),
          "PC": ("A412", "PARTICLES_HIGH"), "RF": ("A118", "RF_REFLECTED_HIGH")}
KITS = ["CHAMBER_CLEAN", "RF_MATCH", "PUMP", "ESC"]
WAFERS_PER_LOT = 25

_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d"
_TOOL = r"(?:ETCH|CVD|CMP|LITHO)-0[1-8]"
_SLOT = r"(?:0[1-9]|1\d|2[0-5])"
_ALARM_CODES = "|".join(code for code, _ in ALARMS.values())
_ALARM_TEXTS = "|".join(text for _, text in ALARMS.values())
KINDS = {
    "RUN": rf"{_TIME} {_TOOL} RUN LOT-\d{{5}}/{_SLOT} T=\d{{3}}\.\d P=\d\.\d{{2}} "
           r"PC=\d{1,3} RF=\d{4} (?:PASS|FAIL)",
    "ALARM": rf"{_TIME} {_TOOL} ALARM (?:{_ALARM_CODES}) SEV=[1-3] (?:{_ALARM_TEXTS})",
    "PM": rf"{_TIME} {_TOOL} PM (?:START|END) KIT=(?:{'|'.join(KITS)})",
    "IDLE": rf"{_TIME} {_TOOL} IDLE [1-9]\d{{0,3}}s",
}
LINE = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in KINDS.items()))


def line_kind(line: str) -> str | None:
    """RUN, ALARM, PM or IDLE for a valid line; None for anything else."""
    match = LINE.fullmatch(line)
    return match.lastgroup if match else None


def parses(line: str) -> bool:
    return line_kind(line) is not None


def _clock(seconds: int) -> str:
    seconds %= 24 * 3600
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def make_tool_log(n_lines: int, seed: int = 0) -> list[str]:
    """``n_lines`` valid lines of one tool's log, in time order."""
    rng = np.random.default_rng(seed)
    tool = TOOLS[int(rng.integers(len(TOOLS)))]
    hot = rng.uniform(-3, 3)  # this chamber's own temperature offset
    now = int(rng.integers(24 * 3600))
    lot, slot = int(rng.integers(1000, 99000)), int(rng.integers(1, WAFERS_PER_LOT + 1))
    lines: list[str] = []

    def say(text: str, after_s: int) -> None:
        nonlocal now
        now += after_s
        lines.append(f"{_clock(now)} {tool} {text}")

    while len(lines) < n_lines:
        roll = rng.random()
        if roll < 0.02:  # preventive maintenance: a START and its END
            kit = KITS[int(rng.integers(len(KITS)))]
            say(f"PM START KIT={kit}", int(rng.integers(5, 60)))
            say(f"PM END KIT={kit}", int(rng.integers(600, 3600)))
            continue
        if slot > WAFERS_PER_LOT:  # the lot is done: wait for the next one
            say(f"IDLE {int(rng.integers(5, 900))}s", int(rng.integers(1, 10)))
            lot, slot = lot + int(rng.integers(1, 40)), 1
            continue
        reading = {"T": 350 + hot + rng.normal(0, 2.5), "P": rng.normal(2.0, 0.06),
                   "PC": rng.gamma(2.0, 8.0), "RF": rng.normal(1450, 25)}
        out_of_window = [name for name, bad in (
            ("T", abs(reading["T"] - 350) > 6), ("P", abs(reading["P"] - 2.0) > 0.15),
            ("PC", reading["PC"] > 60), ("RF", abs(reading["RF"] - 1450) > 70)) if bad]
        verdict = "FAIL" if out_of_window else "PASS"
        say(f"RUN LOT-{lot % 100000:05d}/{slot:02d} T={reading['T']:05.1f} "
            f"P={reading['P']:.2f} PC={min(int(reading['PC']), 999)} "
            f"RF={int(reading['RF']):04d} {verdict}", int(rng.integers(20, 90)))
        slot += 1
        if out_of_window and rng.random() < 0.7:
            code, text = ALARMS[out_of_window[0]]
            say(f"ALARM {code} SEV={1 + int(rng.integers(3))} {text}", int(rng.integers(1, 8)))
    return lines[:n_lines]


def make_tool_logs(n_logs: int, lines_per_log: int = 40, seed: int = 0) -> list[str]:
    """``n_logs`` logs, each the text of one tool's lines (newline-terminated)."""
    return ["\n".join(make_tool_log(lines_per_log, seed=seed * 100_003 + i)) + "\n"
            for i in range(n_logs)]
