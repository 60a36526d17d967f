"""What a full ``make bench`` keeps of ``docs/performance.md`` when it writes it again.

The report is generated from the run's results; beside it the file holds what was written
by hand: dated runs and their analyses (a benchmark run alone with ``BENCH_ONLY``, a
profile, a before/after pair) that no template produces. Writing the report over them
lost them, so ``keep_written`` carries them into the new report: a ``## `` section the
report does not have stays after the section it followed, and a ``### `` subsection of a
section the report does have stays at the end of that section (what the run writes there
is new; what was written by hand is dated, and says when it was measured).
"""

from __future__ import annotations

import re

_HEADING = re.compile(r"^(#{2,3}) (.+)$", re.MULTILINE)


def _split(text: str, level: str) -> list[tuple[str, str]]:
    """``text`` cut at its headings of ``level`` ("##" or "###"): (heading, the text from
    it to the next such heading), the text before the first under the heading ""."""
    marks = [m for m in _HEADING.finditer(text) if m.group(1) == level]
    starts = [0, *(m.start() for m in marks)]
    heads = ["", *(m.group(2) for m in marks)]
    ends = [*starts[1:], len(text)]
    return [(head, text[start:end]) for head, start, end in zip(heads, starts, ends, strict=True)
            if head or text[start:end]]


def keep_written(generated: str, existing: str) -> str:
    """``generated`` with the sections and subsections of ``existing`` that it lacks."""
    sections = _split(generated, "##")
    titles = [title for title, _ in sections]
    bodies = dict(sections)
    after: dict[str, list[str]] = {}  # a generated title -> hand-written sections after it
    previous = ""
    for title, body in _split(existing, "##"):
        if title in bodies:
            have = {sub for sub, _ in _split(bodies[title], "###")}
            extra = [text for sub, text in _split(body, "###")[1:] if sub not in have]
            if extra:
                bodies[title] = bodies[title].rstrip("\n") + "\n\n" + "".join(extra)
            previous = title
        elif title:
            after.setdefault(previous, []).append(body)
    parts: list[str] = []
    for title in titles:
        parts.append(bodies[title].rstrip("\n") + "\n\n")
        parts += [body.rstrip("\n") + "\n\n" for body in after.pop(title, [])]
    parts += [body.rstrip("\n") + "\n\n" for kept in after.values() for body in kept]
    return "".join(parts).rstrip("\n") + "\n"
