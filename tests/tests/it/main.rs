//! Whole-system tests against real nodes: anvil for the chain, js-ipfs for IPFS.
//! One binary; each module is one topic.

/// Asynchronous rounds (FedBuff) as processes: a slow and a killed learner, staleness, verify.
mod asynchronous;
/// The registry contract and the JSON-RPC client on a real anvil chain.
mod chain;
/// The Raspberry Pi builds (aarch64, armv7) run under qemu-user-static against the native agent.
mod cross;
/// `fl-agent export`: safetensors and ONNX checked from Python (numpy, onnxruntime).
mod export;
/// The whole federation as processes: FedAvg checked byte for byte, verify, restarts.
mod federation;
/// Confirmations on a chain that reorganises: the waiting rule, reads below the head, a federation across forced reorgs.
mod finality;
mod flaky;
/// The IPFS client against real js-ipfs nodes on a private network.
mod ipfs;
/// Declared models and boards' own data: a dense network on CSV data, refusal of data that does not fit.
mod models;
/// Boards' own test figures: an aggregator without an evaluation set records and shows what they report.
mod reported;
/// A board's IPFS repository stays bounded: unpinning, garbage collection, MFS keeping, `keep_rounds`, `fl-agent status`.
mod retention;
/// Hostile learners and a dishonest aggregator: the robust rules, and what `verify` catches.
pub(crate) mod robust;
/// One federation round, as processes, on each EVM rule set the registry supports.
mod rule_sets;
/// The aggregator as a service: /healthz, /metrics (checked by promtool) and the dashboard in headless Chromium.
mod service;
