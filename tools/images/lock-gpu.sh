#!/usr/bin/env bash
# Regenerate requirements/gpu.lock: resolve .[gpu,s3,gcs] against PyPI alone (--isolated: no local wheel
# folders or mirrors, which hold the CPU torch) without installing or downloading wheels (--dry-run), and
# pin what pip would install. Run from the repository root with the project's venv.
set -euo pipefail
cert=${PIP_CERT:-$(python3 -c "import ssl; print(ssl.get_default_verify_paths().cafile or '')")}
report=$(mktemp)
trap 'rm -f "$report"' EXIT
.venv/bin/pip --isolated install ${cert:+--cert "$cert"} --dry-run --ignore-installed --no-build-isolation --quiet \
  --report "$report" ".[gpu,s3,gcs]"
.venv/bin/python - "$report" <<'PY'
import json, sys, datetime
r = json.load(open(sys.argv[1]))
pins = sorted((i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in r["install"]
              if i["metadata"]["name"].lower() != "polya")
with open("requirements/gpu.lock", "w") as f:
    f.write("# The GPU stage image's resolved set (pip install --dry-run --report of .[gpu,s3,gcs] against PyPI,\n"
            f"# {datetime.date.today()}): CUDA vLLM with the CUDA torch it pins. Regenerate: tools/images/lock-gpu.sh\n")
    f.writelines(f"{n}=={v}\n" for n, v in pins)
print(f"requirements/gpu.lock: {len(pins)} pins")
PY
