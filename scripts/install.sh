#!/usr/bin/env bash
# Set up kdbench in ./.venv on a fresh CPU machine (idempotent).
#  1. Debian's Fashion-MNIST package (the offline dataset the tests and leaderboards read), when root;
#  2. torch==2.13.0 FIRST, from pip's configured indexes, or from $KDBENCH_TORCH_INDEX when set
#     (https://download.pytorch.org/whl/cpu: the CPU build; PyPI's Linux wheel is a CUDA build of
#     several GB that also runs on CPU). Installing anything that depends on torch before it
#     would pull a newer torch;
#  3. kdbench with its [test] extra, pinned by .ci/constraints.txt (a known-good resolution:
#     torchattacks 3.5.1 pins requests~=2.25.1, which otherwise makes pip backtrack for minutes);
#  4. adv-lib==0.2.8 with --no-deps (below).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist); its tests will fail" >&2
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 \
  ${KDBENCH_TORCH_INDEX:+--index-url "$KDBENCH_TORCH_INDEX"}
.venv/bin/python -m pip install -q --disable-pip-version-check -c .ci/constraints.txt -e ".[test]"
# adv-lib (sigma-zero, the min-l0 ensemble's main member) without its dependencies: it declares
# torchvision and visdom, which its sigma-zero module does not use and whose sdist no longer builds
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps adv-lib==0.2.8
echo "kdbench installed in .venv ($(.venv/bin/kdbench --version))"
