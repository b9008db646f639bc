"""The long fault run: SIGKILL `eraselab bench` at many random moments and check every resume.

    python benchmarks/faults.py                    # 30 kills, random seed, prints a summary
    python benchmarks/faults.py --kills 60 --seed 7 --record  # + RESULTS.md

Each kill runs in a fresh folder on the tiny random pipeline (tests/fault_injection.py: zygote, stand-in
evaluator, counted fault moments). Kinds of kill, mixed at random:
  * at a random fault moment of the run (inside an atomic write between fsync and rename, inside a SQLite
    transaction before COMMIT, after an erase / a denoised batch / a judgment but before it is stored), every
    stage covered (setup, erase, generate, judge, attention, report);
  * from outside at a random wall-clock time (lands wherever the process happens to be, SQLite included);
  * twice in a row: the run, then its first resume, each at a random moment.
After each: the folder is audited (no duplicate or orphan row, every PNG matches its recorded sha256 and
decodes, results.json whole or absent, every cached edit loads), a resume runs to the end, and
its results.json must equal the uninterrupted reference run's (the measured erase seconds aside) with a
clean audit.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from fault_injection import Lab  # noqa: E402

SECTION = "## Reliability"


def plan(lab: Lab, kills: int, rng: random.Random) -> list[dict]:
    """Kill moments: every stage at least twice, the rest spread over all moments, a quarter timed from
    outside, a sixth killing the resume too."""
    by_stage = lab.events_by_stage()
    all_events = [int(e[0]) for e in lab.events]
    moments = [{"stage": s, "event": rng.choice(by_stage[s])} for s in sorted(by_stage) for _ in range(2)]
    while len(moments) < kills:
        r = rng.random()
        if r < 0.25:
            moments.append({"stage": "timed", "delay": rng.uniform(0.05, 0.95) * lab.reference_seconds})
        elif r < 0.42:
            moments.append(
                {"stage": "twice", "event": rng.choice(all_events), "resume_event": rng.choice(all_events)}
            )
        else:
            event = rng.choice(all_events)
            moments.append({"stage": lab.events[event - 1][1], "event": event})
    rng.shuffle(moments)
    return moments


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--record", action="store_true", help="rewrite the Reliability section of RESULTS.md")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eraselab-faults-") as root:
        lab = Lab(Path(root))
        try:
            moments = plan(lab, args.kills, rng)
            rows = []
            for n, m in enumerate(moments):
                outcome = lab.kill_and_resume(
                    Path(root) / f"kill{n}",
                    event=m.get("event"),
                    delay=m.get("delay"),
                    resume_event=m.get("resume_event"),
                )
                ok = outcome["after_kill"] == [] and outcome["problems"] == [] and outcome["same_results"]
                rows.append({**m, **outcome, "ok": ok})
                where = f"event {m['event']}" if "event" in m else f"{m['delay']:.2f} s"
                print(
                    f"{n + 1:3d}/{len(moments)} {m['stage']:9s} {where:12s} killed={outcome['killed']!s:5s} "
                    f"{'ok' if ok else 'FAILED ' + str(outcome)}",
                    flush=True,
                )
        finally:
            lab.zygote.close()
        events, reference_seconds = len(lab.events), lab.reference_seconds
    seconds = time.perf_counter() - start
    failed = [r for r in rows if not r["ok"]]
    killed = sum(r["killed"] for r in rows) + sum(bool(r.get("resume_killed")) for r in rows)
    stages = collections.Counter(r["stage"] for r in rows)
    summary = (
        f"{len(rows)} runs, {killed} SIGKILLs landed (seed {seed}; {events} fault moments in a run of "
        f"{reference_seconds:.1f} s), {len(failed)} failed; stages: "
        + ", ".join(f"{s} {c}" for s, c in sorted(stages.items()))
        + f"; {seconds:.0f} s in all"
    )
    print(summary)
    if args.record:
        record(summary, failed)
    return 1 if failed else 0


def bad_input_cases() -> int:
    sys.path.insert(0, str(HERE.parent / "tests"))
    import test_bad_input

    return len(test_bad_input.CASES)


def record(summary: str, failed: list[dict]) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    outcome = ("- Failures: " + "; ".join(str(f) for f in failed) if failed
               else "- Every resume completed with the reference results and a clean audit.")
    body = f"""{SECTION}

Faults (`python benchmarks/faults.py --record`; fast version: tests/test_faults.py). Tiny random pipeline,
UCE, a four-probe YAML suite, stand-in evaluator; each run in a fresh folder is SIGKILLed at a random fault
moment (inside an atomic write between fsync and rename, inside a SQLite transaction before COMMIT, after an
erase / denoised batch / judgment before it is stored), from outside at a random time, or twice (the run and
its first resume); then resumed. Checks: no duplicate or orphan store row, every PNG matches its recorded
sha256 and decodes, results.json whole or absent, cached edits load — after the kill and after the resume —
and the resumed results.json equals an uninterrupted run's (the measured erase seconds aside, which
`results_hash` also leaves out).

- Latest long run: {summary}.
{outcome}
- Also covered by tests/test_faults.py: disk full (ENOSPC from a patched writer at images, tables,
  results.json, a new edit, and SQLite's "database or disk is full"; plus a real 160 KiB tmpfs where mount is
  allowed), a read-only output folder (read-only bind mount as root, chmod otherwise) for bench, report and
  evaluate, two bench runs on one folder at once (both succeed, sharing the cache), corrupted cached PNGs
  (truncated, bit-flipped) and edits (flipped tensor byte, truncated tensors, garbled edit.json, NaN):
  detected, reported and regenerated to the same results.
- Found and fixed while writing these: two runs on one folder raced on the write-test file and the attention
  temp file; attention maps of an older edit were reused; results.json could sit beside older tables; report
  figures were written in place (truncated by a kill); a full disk or read-only folder inside SQLite, savefig
  or the attention writer was a traceback; a full disk while a store was created was reported as a damaged
  store.
- Bad input (tests/test_bad_input.py): {bad_input_cases()} table-driven CLI cases (arguments, --config values,
  suite YAML, model folders and files, edit folders, prompt files, run folders, targets), each exiting
  non-zero with exactly one `error:` line naming the problem and the fix, no traceback, earlier files
  untouched. 62 failed at first, about half on the wording check or the table's own mistakes; the
  real ones, fixed: every usage error was a traceback (typer 0.29 vendors click, so
  cli.py's click.ClickException never matched), guidance nan/inf and 10 MB prompts were accepted, --batch-size
  0, a duplicated --target and --suite-option for an absent suite were ignored, config nan/inf reached the
  maths (SVD traceback), --trust-pickle was never passed to the loader, a device typo, a damaged or
  tokenizer-less model folder, non-UTF-8 or mistyped suite YAML, and malformed bench.json / results.json /
  edit.json were tracebacks, and library loading bars cluttered stderr.
"""
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
