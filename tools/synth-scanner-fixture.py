#!/usr/bin/env python3
"""Writes tests/fixtures/scanner-hid.long64.evdev and .long32.evdev: the input
events a USB HID barcode scanner (a boot-protocol keyboard, US layout) makes the
Linux kernel deliver on its /dev/input/eventN for three scans.

SYNTHESIZED, not captured from a scanner (none was at hand): each HID report
becomes what hid-input emits for it, in its order: for each usage that changed,
EV_MSC MSC_SCAN (usage page 7 << 16 | usage) then EV_KEY (1 = down, 0 = up),
modifier byte first, then the key array; EV_SYN SYN_REPORT ends the report. A
character is one report with its key (and Left Shift for shifted characters)
down, then one with everything up, 1 ms apart (USB full-speed polling); codes
are 1.5 s apart. Records are `struct input_event` (timeval of two longs, __u16
type, __u16 code, __s32 value), little-endian: 24 bytes with 64-bit longs
(aarch64, x86_64), 16 with 32-bit (armv7).

The scans: an operator badge "OP:Jane.Doe", a sample tube "HX-2024/0117a", and a
third scan cut off before its Enter (the scanner unplugged mid-code), which must
give nothing.

    python3 tools/synth-scanner-fixture.py
"""
import struct
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
EV_SYN, EV_KEY, EV_MSC, MSC_SCAN = 0, 1, 4, 4
LSHIFT = (42, 0xE1)  # (Linux keycode, HID usage)

# character -> (Linux keycode, HID usage, shifted)
KEYS = {}
for i, c in enumerate("abcdefghijklmnopqrstuvwxyz"):
    code = {**{ch: 16 + j for j, ch in enumerate("qwertyuiop")},
            **{ch: 30 + j for j, ch in enumerate("asdfghjkl")},
            **{ch: 44 + j for j, ch in enumerate("zxcvbnm")}}[c]
    KEYS[c] = (code, 0x04 + i, False)
    KEYS[c.upper()] = (code, 0x04 + i, True)
for i, c in enumerate("1234567890"):
    KEYS[c] = (2 + i, 0x1E + i, False)
for c, s, code, usage in [("-", "_", 12, 0x2D), ("=", "+", 13, 0x2E), (";", ":", 39, 0x33),
                          (".", ">", 52, 0x37), ("/", "?", 53, 0x38), (",", "<", 51, 0x36)]:
    KEYS[c] = (code, usage, False)
    KEYS[s] = (code, usage, True)
ENTER = (28, 0x28)


def scan(text, enter, t, events):
    """Appends the events of scanning `text`; returns the time after it."""
    def report(changes, t):
        for (code, usage), value in changes:
            events.append((t, EV_MSC, MSC_SCAN, 0x70000 | usage))
            events.append((t, EV_KEY, code, value))
        events.append((t, EV_SYN, 0, 0))
    keys = [(KEYS[c][:2], KEYS[c][2]) for c in text] + ([(ENTER, False)] if enter else [])
    for key, shifted in keys:
        down = ([(LSHIFT, 1)] if shifted else []) + [(key, 1)]
        up = ([(LSHIFT, 0)] if shifted else []) + [(key, 0)]
        report(down, t)
        t += 0.001
        report(up, t)
        t += 0.001
    return t


def main():
    events = []
    t = 1764000000.25
    for text, enter in [("OP:Jane.Doe", True), ("HX-2024/0117a", True), ("HX-99", False)]:
        t = scan(text, enter, t, events) + 1.5
    for name, fmt in [("long64", "<qqHHi"), ("long32", "<iiHHi")]:
        data = b"".join(struct.pack(fmt, int(ts), round((ts % 1) * 1e6), ty, code, value)
                        for ts, ty, code, value in events)
        path = OUT / f"scanner-hid.{name}.evdev"
        path.write_bytes(data)
        print(f"{path}: {len(events)} events, {len(data)} bytes")


main()
