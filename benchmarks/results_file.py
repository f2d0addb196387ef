"""benchmarks/RESULTS.md, where each benchmark keeps one section of its own."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(heading: str, text: str) -> None:
    """Put ``text`` (which starts with ``heading``) in place of the section under ``heading``,
    or at the end of the file if there is none yet; the other sections stay as they are."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = current.find(heading)
    if start < 0:
        RESULTS.write_text(current.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")
        return
    end = current.find("\n## ", start + len(heading))
    rest = current[end + 1 :] if end >= 0 else ""
    RESULTS.write_text(current[:start] + text.rstrip("\n") + "\n" + ("\n" + rest if rest else ""))
