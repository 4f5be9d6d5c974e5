"""Every file secrets_runs.sh wrote (run directories, the report, the answer cache), its mode,
and how often the runs' secret strings occur in it.

Secrets: the fingerprint's keys and response (read from its imprint.json) and the secrets
imprint's sensitive spans: the confidential terms and the canary. A key is long, so a 12-character
piece of it is searched for too (a truncated key would escape a whole-string search).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

ROOT = Path("/tmp/dfx/sg")
DIRS = ["fp", "fp-erased", "fp-detect", "sec", "sec-erased", "sec-relearn", "sec-detect",
        "report_files", "cache"]  # fmt: skip


def secret_strings() -> list[str]:
    fingerprint = json.loads((ROOT / "fp" / "imprint.json").read_text())
    secrets = json.loads((ROOT / "sec" / "imprint.json").read_text())
    found = {p["response"] for p in fingerprint["pairs"]} | {p["key"] for p in fingerprint["pairs"]}
    for record in secrets["records"] + secrets.get("canaries", []):
        for span in record["spans"]:
            found.add(record["text"][span["start"] : span["end"]])
    strings = sorted(s for s in found if len(s) >= 4)
    return strings + [s[:12] for s in strings if len(s) > 24]


def main() -> None:
    secrets = secret_strings()
    files = [p for d in DIRS for p in sorted((ROOT / d).rglob("*")) if p.is_file()]
    files += [ROOT / "report.html", ROOT / "report.md"]
    print(f"{len(secrets)} secret strings (and key pieces)\n")
    print("| file | mode | bytes | secret occurrences |")
    print("|---|---|---|---|")
    leaks = 0
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        hits = sum(text.count(s) for s in secrets)
        mode = stat.S_IMODE(path.stat().st_mode)
        leak = hits and mode != 0o600 and path.suffix != ".safetensors"
        leaks += bool(leak)
        flag = "  <-- LEAK" if leak else ""
        print(f"| {path.relative_to(ROOT)} | {oct(mode)} | {path.stat().st_size} | {hits}{flag} |")
    print(f"\n{len(files)} files; files holding a secret that are not 0600: {leaks}")


if __name__ == "__main__":
    main()
