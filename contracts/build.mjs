// Compiles Registry.sol with solc's WebAssembly build (the npm package `solc`, pinned in
// package.json) through the standard JSON interface, with fixed settings, and writes the
// ABI and creation bytecode to artifacts/. The Rust crate embeds those files, so building
// it never needs solc.
//
//   node build.mjs           compile and (re)write artifacts/
//   node build.mjs --check   compile and fail unless artifacts/ match byte for byte
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = path.dirname(fileURLToPath(import.meta.url));
const SOURCE = "Registry.sol";
const CONTRACT = "Registry";
// solc 0.8.28 defaults to cancun; named here so a new default never changes the bytecode.
const input = {
  language: "Solidity",
  sources: { [SOURCE]: { content: fs.readFileSync(path.join(here, SOURCE), "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    metadata: { bytecodeHash: "ipfs" },
    outputSelection: { [SOURCE]: { [CONTRACT]: ["abi", "evm.bytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
if (errors.length > 0) {
  process.stderr.write(`build: ${SOURCE} did not compile (${errors.length} errors)\n`);
  process.exit(1);
}
const contract = output.contracts[SOURCE][CONTRACT];
const files = {
  [`${CONTRACT}.abi.json`]: JSON.stringify(contract.abi, null, 2) + "\n",
  [`${CONTRACT}.bin`]: contract.evm.bytecode.object + "\n",
  "solc-version.txt": solc.version() + "\n",
};

const dir = path.join(here, "artifacts");
if (process.argv.includes("--check")) {
  let stale = [];
  for (const [name, text] of Object.entries(files)) {
    const file = path.join(dir, name);
    const committed = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : null;
    if (committed !== text) stale.push(name);
  }
  if (stale.length > 0) {
    process.stderr.write(`build: artifacts differ from a fresh compile: ${stale.join(", ")} (run \`node build.mjs\` in contracts/ and commit)\n`);
    process.exit(1);
  }
  process.stderr.write(`build: artifacts match solc ${solc.version()}\n`);
} else {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  process.stderr.write(`build: wrote ${Object.keys(files).join(", ")} to artifacts/ (solc ${solc.version()})\n`);
}
