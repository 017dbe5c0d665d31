#!/usr/bin/env bash
# Installs what the benchmark suite's optional sections need: pyspark (from PyPI) for (g), the
# comparison with Spark (it runs on the machine's Java 17), and taskset (util-linux) for (h).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check "pyspark>=4.0"
command -v taskset >/dev/null || {
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq util-linux >/dev/null
    fi
}
"$PYTHON" -c 'import pyspark; print("pyspark", pyspark.__version__)'
java -version 2>&1 | head -1
