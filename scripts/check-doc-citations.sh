#!/usr/bin/env bash
# Checks that every test the README and the docs cite exists, so a renamed or deleted test cannot
# leave a claim behind. Run by scripts/test-all.sh.
#
# The convention, in README.md, docs/*.md and bindings/**/README.md:
#   - a test is cited as `path::name`, e.g. `tests/sync.rs::an_idle_sync_costs_one_list` or
#     `src/sealing.rs::padme_overhead_bounds_hold_and_padding_is_monotone`; the file must exist
#     and define `name` (`fn name` in .rs, `def name` in .py, `fun name` in .kt, `func name` in
#     .swift; for `File.py::Class.test_x` the last part);
#   - a backticked snake_case identifier of four or more words, the shape of a Rust test name, is
#     taken for a test cited without its file and is an error (cite it as `path::name`);
#   - a backticked file name ending in .rs, .py, .kt, .swift or .sh that names a test or a
#     script (under tests/ or scripts/, or with "test" in its name) must exist: as a path from
#     the repository root or from the document's directory, or as the name of a tracked file.
#     (Other file names may be outputs that only a build creates.)
#
#   scripts/check-doc-citations.sh [FILE...]     (default: the documents above)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -eq 0 ]; then
  set -- README.md docs/*.md
  while IFS= read -r readme; do set -- "$@" "$readme"; done < <(git ls-files 'bindings/*README.md')
fi

python3 - "$@" <<'PY'
import os
import re
import subprocess
import sys

tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
basenames = {os.path.basename(path) for path in tracked}
DEFINES = {".rs": r"\bfn\s+{}\b", ".py": r"\bdef\s+{}\b", ".kt": r"\bfun\s+`?{}\b", ".swift": r"\bfunc\s+{}\b"}
CITATION = re.compile(r"`([A-Za-z0-9_./-]+\.(?:rs|py|kt|swift))::([A-Za-z0-9_.]+)`")
BARE_TEST = re.compile(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+){3,})`")
FILE_NAME = re.compile(r"`([A-Za-z0-9_./-]+\.(?:rs|py|kt|swift|sh))`")

problems = []
cited = 0
for document in sys.argv[1:]:
    with open(document, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        where = f"{document}:{number}"
        for path, name in CITATION.findall(line):
            cited += 1
            test = name.split(".")[-1]
            if not os.path.isfile(path):
                problems.append(f"{where}: `{path}::{name}`: no file {path}")
                continue
            with open(path, encoding="utf-8") as f:
                source = f.read()
            pattern = DEFINES[os.path.splitext(path)[1]].format(re.escape(test))
            if not re.search(pattern, source):
                problems.append(f"{where}: `{path}::{name}`: {path} defines no {test}")
        for name in BARE_TEST.findall(line):
            problems.append(f"{where}: `{name}` looks like a test name: cite it as `path::{name}`")
        for path in FILE_NAME.findall(line):
            if not (path.startswith(("tests/", "scripts/")) or "test" in path.lower()):
                continue
            relative = os.path.join(os.path.dirname(document), path)
            if not (os.path.exists(path) or os.path.exists(relative) or path in basenames):
                problems.append(f"{where}: `{path}`: no such file")

for problem in problems:
    print(problem, file=sys.stderr)
if problems:
    sys.exit(f"{len(problems)} citation(s) of tests or files that do not exist (above)")
print(f"{cited} test citations in {len(sys.argv) - 1} documents: every cited test exists")
PY
