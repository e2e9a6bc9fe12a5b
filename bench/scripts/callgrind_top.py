#!/usr/bin/env python3
"""Per-message inclusive cost of each function, from two callgrind profiles of one binary under
the same load (a big and a small run): (cost in big - cost in small) / (messages big - small),
which leaves out start-up as the totals' difference does. With a second pair (verification on),
prints the functions whose per-message cost differs most between the two.

    callgrind_top.py OUT BIG SMALL            (the profiles bench/scripts/callgrind.sh wrote)
"""
import os
import re
import subprocess
import sys

LINE = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+(.*)$")


def inclusive(path):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no", path],
        capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if not m or m.group(2) == "PROGRAM TOTALS":
            continue
        # "file:function [object]": the function is what compares across runs.
        name = m.group(2)
        name = re.sub(r" \[[^\]]*\]$", "", name)
        name = name.split(":", 1)[1] if ":" in name and not name.startswith("???:") else name.removeprefix("???:")
        costs[name] = max(costs.get(name, 0), int(m.group(1).replace(",", "")))
    return costs


def per_message(out, mode, big, small):
    if not os.path.exists(f"{out}/cg.{mode}.{big}"):
        return None
    b, s = inclusive(f"{out}/cg.{mode}.{big}"), inclusive(f"{out}/cg.{mode}.{small}")
    return {name: (b[name] - s.get(name, 0)) / (big - small) for name in b}


def short(name, width=110):
    return name if len(name) <= width else name[: width - 1] + "…"


def main():
    out, big, small = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    off = per_message(out, "off", big, small)
    on = per_message(out, "on", big, small)
    interesting = re.compile(r"mxhook|mail_auth|mail_parser|hickory|sqlx|rusqlite|sqlite3|reqwest|hyper|lz4|aws_lc|aws_smithy|aws_sdk|aws_sigv4|ring|sha2|serde_json|tokio::net|memcpy|malloc|free")
    for label, costs in (("verification off", off), ("verification on", on)):
        if costs is None:
            continue
        print(f"\n{label}: largest inclusive instructions per message (project and library functions)")
        shown = 0
        for name, cost in sorted(costs.items(), key=lambda kv: -kv[1]):
            if interesting.search(name) and shown < 25:
                print(f"  {cost / 1e3:10.1f} k  {short(name)}")
                shown += 1
    if off is None or on is None:
        return
    print("\nverification on minus off, per message (largest differences)")
    names = set(on) | set(off)
    delta = sorted(((on.get(n, 0) - off.get(n, 0), n) for n in names), key=lambda kv: -abs(kv[0]))
    shown = 0
    for d, name in delta:
        if interesting.search(name) and shown < 30:
            print(f"  {d / 1e3:+10.1f} k  {short(name)}")
            shown += 1


if __name__ == "__main__":
    main()
