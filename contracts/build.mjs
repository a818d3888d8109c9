// Compiles Registry.sol with solc's WebAssembly build (the npm package `solc`, pinned in
// package.json) through the standard JSON interface, with fixed settings, and writes the
// ABI and creation bytecode to artifacts/. The Rust crate embeds those files, so building
// it never needs solc.
//
//   node build.mjs           compile and (re)write artifacts/
//   node build.mjs --check   compile and fail unless artifacts/ match byte for byte
//   node build.mjs --evm-version cancun --print
//                            compile for another EVM version and print the creation
//                            bytecode (hex) on stdout, leaving artifacts/ alone; the
//                            tests deploy such builds to check how old chains refuse them
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = path.dirname(fileURLToPath(import.meta.url));
const SOURCE = "Registry.sol";
const CONTRACT = "Registry";
// Istanbul, the oldest rule set we support: the bytecode then uses nothing newer than
// Constantinople's shifts (no PUSH0 from Shanghai, no MCOPY from Cancun), so it runs on
// every later rule set too; contracts/src/evm.rs's tests check that. solc 0.8.28 would
// default to cancun, which Shanghai and older chains cannot run (contracts/README.md).
const DEFAULT_EVM_VERSION = "istanbul";
const flag = process.argv.indexOf("--evm-version");
const evmVersion = flag >= 0 ? process.argv[flag + 1] : DEFAULT_EVM_VERSION;
if (!evmVersion || evmVersion.startsWith("--")) {
  process.stderr.write("build: --evm-version needs a name (e.g. cancun)\n");
  process.exit(2);
}
if (evmVersion !== DEFAULT_EVM_VERSION && !process.argv.includes("--print")) {
  process.stderr.write(`build: artifacts/ are always compiled for ${DEFAULT_EVM_VERSION}; add --print to print a ${evmVersion} build instead\n`);
  process.exit(2);
}
// The current registry, and each older version whose deployments readers must still
// understand (their ABIs decode old events; tests deploy them to check old rounds verify).
const BUILDS = [
  { source: SOURCE, dir: path.join(here, "artifacts") },
  { source: path.join("history", "Registry-v1.sol"), dir: path.join(here, "artifacts", "v1") },
  { source: path.join("history", "Registry-v2.sol"), dir: path.join(here, "artifacts", "v2") },
  { source: path.join("history", "Registry-v3.sol"), dir: path.join(here, "artifacts", "v3") },
];

function compile(source) {
  const input = {
    language: "Solidity",
    sources: { [SOURCE]: { content: fs.readFileSync(path.join(here, source), "utf8") } },
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion,
      metadata: { bytecodeHash: "ipfs" },
      outputSelection: { [SOURCE]: { [CONTRACT]: ["abi", "evm.bytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length > 0) {
    process.stderr.write(`build: ${source} did not compile (${errors.length} errors)\n`);
    process.exit(1);
  }
  return output.contracts[SOURCE][CONTRACT];
}

if (process.argv.includes("--print")) {
  process.stdout.write(compile(SOURCE).evm.bytecode.object + "\n");
  process.exit(0);
}
let stale = [];
for (const { source, dir } of BUILDS) {
  const contract = compile(source);
  const files = {
    [`${CONTRACT}.abi.json`]: JSON.stringify(contract.abi, null, 2) + "\n",
    [`${CONTRACT}.bin`]: contract.evm.bytecode.object + "\n",
    "solc-version.txt": solc.version() + "\n",
  };
  const shown = path.relative(here, dir);
  if (process.argv.includes("--check")) {
    for (const [name, text] of Object.entries(files)) {
      const file = path.join(dir, name);
      const committed = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : null;
      if (committed !== text) stale.push(path.join(shown, name));
    }
  } else {
    fs.mkdirSync(dir, { recursive: true });
    for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
    process.stderr.write(`build: wrote ${Object.keys(files).join(", ")} to ${shown}/ from ${source} (solc ${solc.version()})\n`);
  }
}
if (stale.length > 0) {
  process.stderr.write(`build: artifacts differ from a fresh compile: ${stale.join(", ")} (run \`node build.mjs\` in contracts/ and commit)\n`);
  process.exit(1);
}
if (process.argv.includes("--check")) process.stderr.write(`build: artifacts match solc ${solc.version()}\n`);
