"""Mutation testing of the modules that guard data and evaluation (`make mutation`).

One mutmut 3 run per module, each in its own work folder ``mutants/modules/<name>/``
so that it mutates only that module, runs only the test files that exercise it
(``[tool.mutmut.modules]`` in pyproject.toml) and keeps its own cache:

- the first run of a module tests every mutant; later runs test only mutants
  that are new or whose function changed (mutmut's cache), then retest the
  ones not killed yet (tests may have been added since);
- each module has a time budget (``budget_s``); a module cut short is reported
  with its unchecked mutants and goes on where it stopped next time;
- ``--fresh`` drops a module's cache and tests every mutant again.

Writes reports/mutation.json
(``{"modules": {path: {"killed", "total", "equivalent", "survived": [...]}}}``)
and reports/mutation.md. A mutant counts as equivalent only when
tests/mutation_equivalent.json declares it (its id, the mutated line and a
one-line reason) and the mutant still makes exactly that change.

    .venv/bin/python scripts/mutation.py                      # every module
    .venv/bin/python scripts/mutation.py recforge/split.py    # one module (the report keeps the others)
    .venv/bin/python scripts/mutation.py --changed HEAD~1 --fail-under 0.85   # what CI runs (.ci/run)

``--changed BASE`` picks the modules whose source or listed test files differ
between BASE and the working tree (``git diff --name-only BASE``); ``--fail-under``
makes the exit status 1 when a module scores below it. A module whose budget ran
out is judged on the mutants it checked, and the report says how many were left.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutants" / "modules"
EQUIVALENT_FILE = ROOT / "tests" / "mutation_equivalent.json"
REPORTS = ROOT / "reports"
MUTMUT = Path(sys.executable).with_name("mutmut")

# mutmut's exit-code verdicts (mutmut.stats.status_by_exit_code)
KILLED = {1, 3}
TIMEOUT = {36, 24, -24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def table(name: str, values: dict) -> str:
    lines = [f"[{name}]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items() if not isinstance(value, dict)]
    return "\n".join(lines) + "\n"


def work_dir(module: str, spec: dict, settings: dict, fresh: bool) -> Path:
    """mutants/modules/<name>/: links to the sources and tests, a pyproject.toml for this module only."""
    name = Path(module).with_suffix("").as_posix().replace("recforge/", "").replace("/", "_")
    directory = WORK / name
    if fresh and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    also_copy = list(settings.get("also_copy", []))
    for linked in ["recforge", "tests", *also_copy]:
        link = directory / linked
        if not link.is_symlink():
            link.symlink_to(ROOT / linked)
    config = {key: value for key, value in settings.items() if key != "modules"}
    config["source_paths"] = ["recforge"]
    config["only_mutate"] = [module]
    config["pytest_add_cli_args_test_selection"] = existing_tests(spec)
    text = table("tool.mutmut", config)
    pytest_ini = project()["tool"].get("pytest", {}).get("ini_options", {})
    text += "\n" + table("tool.pytest.ini_options", pytest_ini)
    target = directory / "pyproject.toml"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return directory


def existing_tests(spec: dict) -> list[str]:
    return [test for test in spec["tests"] if (ROOT / test.split("::")[0]).exists()]


def meta(directory: Path, module: str) -> dict[str, int | None]:
    path = directory / "mutants" / (module + ".meta")
    if not path.exists():
        return {}
    return json.loads(path.read_text())["exit_code_by_key"]


def run_mutmut(directory: Path, names: list[str], jobs: int, deadline: float, log) -> bool:
    """One ``mutmut run`` in ``directory``; False when the budget ran out (the run is interrupted)."""
    remaining = deadline - time.monotonic()
    if remaining <= 5:
        return False
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    cmd = [str(MUTMUT), "run", "--max-children", str(jobs), *names]
    proc = subprocess.Popen(cmd, cwd=directory, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        # SIGINT lets mutmut stop its workers and keep every verdict it has
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return False
    if proc.returncode != 0:
        log.flush()
        tail = Path(log.name).read_text()[-3000:]
        raise RuntimeError(f"mutmut failed in {directory} (exit {proc.returncode}); log {log.name}:\n{tail}")
    return True


def diffs(directory: Path, module: str, names: list[str]) -> dict[str, list[str]]:
    """The changed lines ('-old', '+new') of each mutant, from mutmut's own diff."""
    if not names:
        return {}
    script = (
        "import json, sys\n"
        "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
        "names, path = json.load(sys.stdin)\n"
        "print(json.dumps({n: get_diff_for_mutant(n, path=path) for n in names}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=directory,
        input=json.dumps([names, module]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {}
    for name, diff in json.loads(out.strip().splitlines()[-1]).items():
        lines = diff.splitlines()
        result[name] = [
            line.rstrip()
            for line in lines
            if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()
        ]
    return result


def summarize(module: str, codes: dict[str, int | None], changes: dict[str, list[str]], equivalent: dict) -> dict:
    killed = [n for n, c in codes.items() if c in KILLED]
    timeouts = [n for n, c in codes.items() if c in TIMEOUT]
    declared, stale, survived = [], [], []
    for name, code in sorted(codes.items(), key=lambda kv: natural(kv[0])):
        if code in KILLED or code in TIMEOUT:
            if name in equivalent:
                stale.append(f"{name}: declared equivalent but killed")
            continue
        entry = equivalent.get(name)
        if entry is not None and code is not None:
            if entry.get("change") == changes.get(name):
                declared.append({"id": name, "change": changes.get(name), "why": entry["why"]})
                continue
            stale.append(f"{name}: declared equivalent, but the mutant now changes {changes.get(name)}")
        status = (
            "survived"
            if code in SURVIVED
            else "no tests"
            if code in NO_TESTS
            else "not checked"
            if code is None
            else f"exit {code}"
        )
        survived.append({"id": name, "status": status, "change": changes.get(name, [])})
    total = len(codes)
    scored = total - len(declared)
    return {
        "killed": len(killed) + len(timeouts),
        "total": total,
        "equivalent": len(declared),
        "timeouts": len(timeouts),
        "not_checked": sum(1 for s in survived if s["status"] == "not checked"),
        "score": round((len(killed) + len(timeouts)) / scored, 4) if scored else None,
        "survived": survived,
        "equivalent_mutants": declared,
        "stale_equivalents": stale,
    }


def natural(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("__mutmut_")
    return head, int(tail) if tail.isdigit() else 0


def run_module(module: str, spec: dict, settings: dict, args, equivalent: dict) -> dict:
    started = time.monotonic()
    if not existing_tests(spec):
        raise RuntimeError(f"none of its test files exist: {spec['tests']}")
    directory = work_dir(module, spec, settings, args.fresh)
    budget = float(args.budget or spec.get("budget_s", 600))
    deadline = started + budget
    log_path = directory / "mutmut.log"
    complete = True
    if args.report_only:
        if not (directory / "mutants").exists():
            raise RuntimeError("no earlier run to report (run without --report-only first)")
        codes = meta(directory, module)
        not_killed = [n for n, c in codes.items() if c not in KILLED | TIMEOUT]
        summary = summarize(module, codes, diffs(directory, module, not_killed), equivalent)
        summary["complete"] = summary["not_checked"] == 0
        summary["tests"] = existing_tests(spec)
        summary["seconds"] = None  # nothing ran
        return summary
    with open(log_path, "w") as log:
        # 1) every mutant without a verdict: new, changed since the last run, or not reached before
        complete = run_mutmut(directory, [], args.jobs, deadline, log)
        # 2) mutants not killed before (tests may have changed): retested by name
        if complete:
            codes = meta(directory, module)
            retest = [
                n
                for n, c in codes.items()
                if c is not None and c not in KILLED | TIMEOUT and (n not in equivalent or args.retest_equivalent)
            ]
            if retest:
                complete = run_mutmut(directory, retest, args.jobs, deadline, log)
    codes = meta(directory, module)
    not_killed = [n for n, c in codes.items() if c not in KILLED | TIMEOUT]
    summary = summarize(module, codes, diffs(directory, module, not_killed), equivalent)
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["complete"] = complete
    summary["tests"] = existing_tests(spec)
    return summary


def write_reports(modules: dict) -> None:
    from recforge.artifacts import write_json, write_text  # each report written whole or not at all

    REPORTS.mkdir(exist_ok=True)
    write_json({"modules": modules}, REPORTS / "mutation.json")
    lines = [
        "# Mutation testing",
        "",
        "`make mutation` (scripts/mutation.py, mutmut 3): each module mutated alone and tested with its own test files.",
        "Killed includes timeouts; equivalent mutants are declared in tests/mutation_equivalent.json and left out of the score.",
        "",
        "| module | killed | total | equivalent | score | survivors | time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for module, s in modules.items():
        if "score" not in s:
            lines.append(f"| {module} | - | - | - | - | failed: {s.get('error')} | - |")
            continue
        score = "-" if s["score"] is None else f"{100 * s['score']:.1f}%"
        note = "" if s.get("complete", True) else f" (budget ran out: {s['not_checked']} not checked)"
        lines.append(
            f"| {module} | {s['killed']} | {s['total']} | {s['equivalent']} | {score} | {len(s['survived'])}{note} | {s.get('seconds', '-')} |"
        )
    for module, s in modules.items():
        if "score" not in s:
            continue
        lines += ["", f"## {module}", "", "Tests: " + ", ".join(f"`{t}`" for t in s.get("tests", []))]
        if s["survived"]:
            lines += ["", "Survivors:", ""]
            for m in s["survived"]:
                change = " / ".join(f"`{c.strip()}`" for c in m["change"]) or "(no diff)"
                lines.append(f"- `{m['id']}` ({m['status']}): {change}")
        if s["equivalent_mutants"]:
            lines += ["", "Equivalent (not scored):", ""]
            for m in s["equivalent_mutants"]:
                lines.append(f"- `{m['id']}`: {m['why']}")
        if s["stale_equivalents"]:
            lines += ["", "Stale entries in tests/mutation_equivalent.json:", ""]
            lines += [f"- {entry}" for entry in s["stale_equivalents"]]
    write_text("\n".join(lines) + "\n", REPORTS / "mutation.md")


def changed_modules(base: str, all_modules: dict) -> list[str]:
    """The modules of ``all_modules`` whose source file or one of whose test files differs from ``base``."""
    if not base or base.startswith("-") or any(c.isspace() for c in base):
        raise SystemExit(f"mutation: --changed needs a git revision, got {base!r}")
    done = subprocess.run(
        ["git", "diff", "--name-only", base, "--"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"mutation: cannot compare with {base!r}: {done.stderr.strip().splitlines()[-1:]}")
    touched = set(done.stdout.split())
    return [
        module
        for module, spec in all_modules.items()
        if module in touched or any(test.split("::")[0] in touched for test in spec["tests"])
    ]


def checked_score(s: dict) -> float | None:
    """Killed over the mutants that got a verdict (declared equivalents left out)."""
    scored = s["total"] - s["equivalent"] - s.get("not_checked", 0)
    return s["killed"] / scored if scored > 0 else None


def main(argv: list[str] | None = None) -> int:
    settings = project()["tool"]["mutmut"]
    all_modules = settings["modules"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"module paths (default: all of {', '.join(all_modules)})")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")), help="mutants at once")
    parser.add_argument("--budget", type=float, help="seconds per module (default: its budget_s)")
    parser.add_argument("--fresh", action="store_true", help="drop the cache: test every mutant again")
    parser.add_argument("--retest-equivalent", action="store_true", help="also retest declared equivalents")
    parser.add_argument(
        "--report-only", action="store_true", help="write the reports from each module's last run, mutating nothing"
    )
    parser.add_argument("--changed", metavar="BASE", help="only the modules whose source or tests differ from BASE")
    parser.add_argument("--fail-under", type=float, help="exit 1 when a module's score is below this (0-1)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in all_modules]
    if unknown:
        parser.error(f"not in [tool.mutmut.modules]: {unknown}")
    if args.fail_under is not None and not 0 < args.fail_under <= 1:
        parser.error(f"--fail-under must be in (0, 1], got {args.fail_under}")
    if args.changed is not None:
        if args.modules:
            parser.error("give modules or --changed, not both")
        args.modules = changed_modules(args.changed, all_modules)
        print(f"changed since {args.changed}: {', '.join(args.modules) or 'no module in scope'}", flush=True)
        if not args.modules:
            return 0
    equivalent = json.loads(EQUIVALENT_FILE.read_text()) if EQUIVALENT_FILE.exists() else {}
    previous = {}
    if (REPORTS / "mutation.json").exists():
        previous = json.loads((REPORTS / "mutation.json").read_text()).get("modules", {})
    modules, failed = {}, []
    for module in all_modules:
        if args.modules and module not in args.modules:
            if module in previous:
                modules[module] = previous[module]
            continue
        print(f"{module}: mutating ...", flush=True)
        try:
            s = run_module(module, all_modules[module], settings, args, equivalent)
        except RuntimeError as error:
            failed.append(module)
            print(f"{module}: FAILED: {error}", flush=True)
            modules[module] = {"error": str(error).splitlines()[0]}
            continue
        modules[module] = s
        score = "-" if s["score"] is None else f"{100 * s['score']:.1f}%"
        print(
            f"{module}: {s['killed']}/{s['total']} killed, {s['equivalent']} equivalent, "
            f"{len(s['survived'])} left ({score})"
            + ("" if s["seconds"] is None else f" in {s['seconds']} s")
            + ("" if s["complete"] else " [budget ran out]"),
            flush=True,
        )
        write_reports(modules)
    write_reports(modules)
    print(f"wrote {REPORTS / 'mutation.json'} and {REPORTS / 'mutation.md'}")
    below = []
    if args.fail_under is not None:
        for module in args.modules or all_modules:
            score = checked_score(modules[module]) if "score" in modules.get(module, {}) else None
            if score is not None and score < args.fail_under:
                below.append(f"{module} {100 * score:.1f}%")
        if below:
            print(f"mutation: below {100 * args.fail_under:.0f}%: {', '.join(below)}", flush=True)
    return 1 if failed or below else 0


if __name__ == "__main__":
    sys.exit(main())
