//! Confirmations on a chain that reorganises: anvil with automatic mining off, blocks mined
//! by the test, and reorganisations forced with `anvil_reorg` (params `[depth, [[raw tx,
//! block index], ...]]`: the last `depth` blocks are replaced by as many new ones holding
//! only the listed transactions). Checks the rule of `fl_contracts::finality` on one
//! client (a transaction reorganised out is reported dropped and can be sent again, one
//! moved to another block or put back in the pool is waited for, reads stay below the
//! confirmed head), then a whole federation with forced reorganisations of learner updates
//! and global models, and a learner killed while it waits for confirmations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fl_contracts::cid::cid_from_bytes;
use fl_contracts::ethers_core::types::Bytes;
use fl_contracts::ethers_core::utils::keccak256;
use fl_contracts::{Address, Client, Error, Event, PendingTx, Registry, Rpc, TransactionReceipt, H256};
use fl_tests::anvil::Anvil;
use fl_tests::devnet::{Running, MAX_SAMPLES};
use serde_json::{json, Value};

use crate::federation::{check_rounds, Federation, ROUNDS, RUN_LIMIT};

/// Confirmations in these tests: every forced reorganisation is at most this deep, so a
/// client waiting for them must never act on a block that vanishes.
const CONFIRMATIONS: u64 = 3;

/// anvil's development controls over JSON-RPC.
struct Dev {
    rpc: Rpc,
}

impl Dev {
    fn new(url: &str) -> Result<Dev> {
        Ok(Dev { rpc: Rpc::new(url)? })
    }

    /// Stops mining a block per transaction: from now on blocks come only from [`Dev::mine`].
    fn manual_mining(&self) -> Result<()> {
        self.rpc.request::<Value>("evm_setAutomine", json!([false]))?;
        Ok(())
    }

    /// Mines `blocks` blocks, the first with whatever is in the pool.
    fn mine(&self, blocks: u64) -> Result<()> {
        for _ in 0..blocks {
            self.rpc.request::<Value>("evm_mine", json!([]))?;
        }
        Ok(())
    }

    fn head(&self) -> Result<u64> {
        Ok(self.rpc.block_number()?)
    }

    /// Replaces the last `depth` blocks; `txs` are (signed transaction, index of the new
    /// block that holds it).
    fn reorg(&self, depth: u64, txs: &[(Bytes, u64)]) -> Result<()> {
        let txs: Vec<Value> = txs.iter().map(|(raw, index)| json!([raw, index])).collect();
        self.rpc.request::<Value>("anvil_reorg", json!([depth, txs])).with_context(|| format!("anvil_reorg of depth {depth}"))?;
        Ok(())
    }

    /// The signed bytes of a known transaction.
    fn raw_transaction(&self, hash: H256) -> Result<Bytes> {
        let raw: Option<Bytes> = self.rpc.request("eth_getRawTransactionByHash", json!([hash]))?;
        raw.with_context(|| format!("anvil does not know transaction {hash:?}"))
    }

    /// The transactions of block `number`, in order.
    fn block_transactions(&self, number: u64) -> Result<Vec<H256>> {
        let block: Value = self.rpc.request("eth_getBlockByNumber", json!([format!("{number:#x}"), false]))?;
        let hashes = block.get("transactions").cloned().with_context(|| format!("block {number} has no transaction list: {block}"))?;
        Ok(serde_json::from_value(hashes)?)
    }

    /// (block number, block hash) of a mined transaction.
    fn mined_in(&self, hash: H256) -> Result<Option<(u64, H256)>> {
        Ok(self.rpc.transaction_receipt(hash)?.and_then(|r| Some((r.block_number?.as_u64(), r.block_hash?))))
    }
}

/// A well-formed CIDv1 (raw codec, SHA-256 multihash of keccak256(label)).
fn cid(label: &str) -> String {
    let mut bytes = vec![0x01, 0x55, 0x12, 0x20];
    bytes.extend(keccak256(label.as_bytes()));
    cid_from_bytes(&bytes).expect("test cid is well formed")
}

fn client(anvil: &Anvil, key: usize) -> Result<Client> {
    Ok(Client::new(Rpc::new(anvil.url())?, anvil.signer(key)?, Some(anvil.chain_id()))?)
}

/// A registry with learner 1 registered and round 1 open, deployed while anvil still mines
/// a block per transaction; then mining becomes manual.
fn open_round_one(anvil: &Anvil, dev: &Dev) -> Result<Address> {
    let owner = client(anvil, 0)?;
    let (registry, _) = Registry::deploy(&owner, MAX_SAMPLES)?;
    registry.add_learner(1, anvil.address(1), None)?;
    registry.set_global_weight(0, &cid("seed"), [1; 32], [0; 32], &[], &[])?;
    dev.manual_mining()?;
    // Everything above gets its confirmations before the test starts.
    dev.mine(CONFIRMATIONS)?;
    Ok(registry.address())
}

/// Learner 1's client: waits for [`CONFIRMATIONS`], and no longer than a minute for a receipt.
fn confirming_learner(anvil: &Anvil) -> Result<Client> {
    Ok(client(anvil, 1)?.with_confirmations(CONFIRMATIONS).with_receipt_timeout(Duration::from_secs(60)))
}

fn send_update(learner: &Client, registry: Address, label: &str) -> Result<PendingTx> {
    let data = Registry::set_local_weight_calldata(1, 1, &cid(label), [7; 32], 5)?;
    Ok(learner.send("setLocalWeight", Some(registry), data)?)
}

/// Mines a block every 100 ms until `wait` returns; returns its result and the head at that
/// moment (mining stops right after, so a wait that returned too early shows in the head).
fn mine_until<T: Send>(dev: &Dev, wait: impl FnOnce() -> T + Send) -> Result<(T, u64)> {
    std::thread::scope(|scope| mine_until_finished(dev, scope.spawn(wait)))
}

/// [`mine_until`] for a wait already running in `waiter`.
fn mine_until_finished<T>(dev: &Dev, waiter: std::thread::ScopedJoinHandle<'_, T>) -> Result<(T, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !waiter.is_finished() {
        ensure!(Instant::now() < deadline, "the wait did not return within a minute of mining");
        dev.mine(1)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let head = dev.head()?;
    let result = waiter.join().map_err(|_| anyhow::anyhow!("the waiting thread panicked"))?;
    Ok((result, head))
}

/// Mines the block holding `tx` and `CONFIRMATIONS - 1` more, then lets `wait` run for a
/// while: with one confirmation short it must still be waiting. Returns the block (number,
/// hash) the transaction was first mined in.
fn mine_one_short_of_confirmed(dev: &Dev, tx: H256, waiter: &std::thread::ScopedJoinHandle<'_, impl Sized>) -> Result<(u64, H256)> {
    dev.mine(1)?;
    let first = dev.mined_in(tx)?.context("the transaction was not mined in the next block")?;
    dev.mine(CONFIRMATIONS - 1)?;
    // The wait polls every 100 ms: it has seen the receipt and the head several times.
    std::thread::sleep(Duration::from_millis(800));
    ensure!(!waiter.is_finished(), "the wait returned with {} of {CONFIRMATIONS} confirmations", CONFIRMATIONS - 1);
    Ok(first)
}

/// The confirmed checks of a receipt: in a canonical block with enough blocks on top.
fn assert_confirmed(dev: &Dev, receipt: &TransactionReceipt, head_at_return: u64) -> Result<()> {
    let block = receipt.block_number.context("receipt without block number")?.as_u64();
    ensure!(
        head_at_return >= block + CONFIRMATIONS,
        "the wait returned at head {head_at_return}, block {block} had fewer than {CONFIRMATIONS} confirmations"
    );
    ensure!(dev.rpc.block_hash(block)? == receipt.block_hash, "the returned receipt is from a block that is not canonical");
    Ok(())
}

#[test]
fn finality_a_transaction_reorganised_out_before_its_confirmations_is_reported_dropped_and_sent_again() -> Result<()> {
    let anvil = Anvil::start()?;
    let dev = Dev::new(anvil.url())?;
    let registry = open_round_one(&anvil, &dev)?;
    let learner = confirming_learner(&anvil)?;

    let first = send_update(&learner, registry, "first")?;
    let outcome = std::thread::scope(|scope| -> Result<_> {
        let waiter = scope.spawn(|| learner.wait("setLocalWeight", first));
        let (block, _) = mine_one_short_of_confirmed(&dev, first.hash, &waiter)?;
        // Replace the block holding it and those on top: depth = confirmations.
        dev.reorg(dev.head()? - block + 1, &[])?;
        ensure!(dev.mined_in(first.hash)?.is_none(), "anvil_reorg left the transaction in the chain");
        dev.mine(1)?;
        waiter.join().map_err(|_| anyhow::anyhow!("the waiting thread panicked"))
    })?;
    match outcome {
        Err(Error::Dropped { hash, .. }) if hash == first.hash => {}
        other => bail!("expected the wait to report {:?} dropped, got {other:?}", first.hash),
    }

    // Sent again, it takes the freed nonce: a higher one would wait behind a gap forever.
    let second = send_update(&learner, registry, "second")?;
    assert_eq!(second.nonce, first.nonce, "the resend must reuse the dropped transaction's nonce");
    let (receipt, head) = mine_until(&dev, || learner.wait("setLocalWeight", second))?;
    let receipt = receipt?;
    assert_eq!(receipt.transaction_hash, second.hash);
    assert_confirmed(&dev, &receipt, head)?;

    // The state ends right: one update of learner 1 in round 1, the one sent again.
    let reader = Registry::at(&learner, registry);
    let updates = reader.local_updates_of_round(1, 0, learner.confirmed_head()?)?;
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].cid, cid("second"));
    assert_eq!(reader.local_update(1)?.latest.map(|u| u.cid), Some(cid("second")));
    Ok(())
}

#[test]
fn finality_a_wait_that_times_out_lets_the_next_transaction_take_a_nonce_the_node_freed() -> Result<()> {
    // What a reorganisation deeper than the confirmations looks like to a waiting client: the
    // transaction is gone, and the wait only ends at its deadline.
    let anvil = Anvil::start()?;
    let dev = Dev::new(anvil.url())?;
    let registry = open_round_one(&anvil, &dev)?;
    let learner = client(&anvil, 1)?.with_receipt_timeout(Duration::from_millis(500));
    let lost = send_update(&learner, registry, "lost")?;
    let err = learner.wait("setLocalWeight", lost).unwrap_err();
    ensure!(matches!(err, Error::Timeout { .. }), "{err:?}");
    dev.rpc.request::<Value>("anvil_dropTransaction", json!([lost.hash]))?;
    let next = send_update(&learner, registry, "next")?;
    assert_eq!(next.nonce, lost.nonce, "a nonce above the node's would leave a gap no block ever fills");
    dev.mine(1)?;
    assert!(dev.mined_in(next.hash)?.is_some(), "the next transaction is mined");
    Ok(())
}

#[test]
fn finality_a_transaction_moved_to_another_block_is_confirmed_in_its_new_block() -> Result<()> {
    let anvil = Anvil::start()?;
    let dev = Dev::new(anvil.url())?;
    let registry = open_round_one(&anvil, &dev)?;
    let learner = confirming_learner(&anvil)?;

    let tx = send_update(&learner, registry, "moved")?;
    let (result, head) = std::thread::scope(|scope| -> Result<_> {
        let waiter = scope.spawn(|| learner.wait("setLocalWeight", tx));
        let (block, old_hash) = mine_one_short_of_confirmed(&dev, tx.hash, &waiter)?;
        let raw = dev.raw_transaction(tx.hash)?;
        // The same transaction, one block later in the new branch.
        dev.reorg(dev.head()? - block + 1, &[(raw, 1)])?;
        let (new_block, new_hash) = dev.mined_in(tx.hash)?.context("the re-included transaction is not mined")?;
        ensure!(new_block == block + 1 && new_hash != old_hash, "anvil_reorg did not move the transaction");
        mine_until_finished(&dev, waiter)
    })?;
    let receipt = result?;
    assert_eq!(receipt.transaction_hash, tx.hash, "the moved transaction itself, not a resend");
    assert_confirmed(&dev, &receipt, head)?;
    Ok(())
}

#[test]
fn finality_a_transaction_reorganised_out_and_back_in_the_pool_is_waited_for() -> Result<()> {
    let anvil = Anvil::start()?;
    let dev = Dev::new(anvil.url())?;
    let registry = open_round_one(&anvil, &dev)?;
    let learner = confirming_learner(&anvil)?;

    let tx = send_update(&learner, registry, "back in the pool")?;
    let (result, head) = std::thread::scope(|scope| -> Result<_> {
        let waiter = scope.spawn(|| learner.wait("setLocalWeight", tx));
        let (block, _) = mine_one_short_of_confirmed(&dev, tx.hash, &waiter)?;
        let raw = dev.raw_transaction(tx.hash)?;
        dev.reorg(dev.head()? - block + 1, &[])?;
        // What geth does with the transactions of a dropped branch: back into the pool.
        let again: H256 = dev.rpc.request("eth_sendRawTransaction", json!([raw]))?;
        ensure!(again == tx.hash);
        // Longer than the drop grace: a transaction in the pool is not reported dropped.
        std::thread::sleep(fl_contracts::finality::DROP_GRACE * 2);
        ensure!(!waiter.is_finished(), "the wait returned while the transaction was in the pool");
        mine_until_finished(&dev, waiter)
    })?;
    let receipt = result?;
    assert_eq!(receipt.transaction_hash, tx.hash);
    assert_confirmed(&dev, &receipt, head)?;
    Ok(())
}

#[test]
fn finality_reads_stay_below_the_confirmed_head_so_a_reorganised_update_is_never_seen() -> Result<()> {
    let anvil = Anvil::start()?;
    let dev = Dev::new(anvil.url())?;
    let registry = open_round_one(&anvil, &dev)?;
    // What an aggregator follows the rounds with: one reading at the head, one confirming.
    let eager = Client::read_only(Rpc::new(anvil.url())?, None)?;
    let careful = Client::read_only(Rpc::new(anvil.url())?, None)?.with_confirmations(CONFIRMATIONS);
    let updates = |reader: &Client| -> Result<usize> {
        let found = Registry::at(reader, registry).local_updates_of_round(1, 0, reader.confirmed_head()?)?;
        let latest = Registry::at(reader, registry).local_update(1)?.latest;
        ensure!(found.len() == usize::from(latest.is_some()), "events ({found:?}) and the view ({latest:?}) disagree");
        Ok(found.len())
    };

    send_update(&client(&anvil, 1)?, registry, "vanishes")?;
    dev.mine(CONFIRMATIONS)?;
    assert_eq!(updates(&eager)?, 1, "read at the head, the update is there");
    assert_eq!(updates(&careful)?, 0, "with {} of {CONFIRMATIONS} confirmations it is not read", CONFIRMATIONS - 1);
    dev.reorg(CONFIRMATIONS, &[])?;
    // Whoever acted on the eager read acted on an update that no longer exists.
    assert_eq!(updates(&eager)?, 0);
    assert_eq!(updates(&careful)?, 0);

    // Sent again (a new client: the first one's nonce counter still counts the dropped one).
    send_update(&client(&anvil, 1)?, registry, "stays")?;
    dev.mine(CONFIRMATIONS)?;
    assert_eq!(updates(&careful)?, 0, "one confirmation short");
    dev.mine(1)?;
    assert_eq!(updates(&careful)?, 1, "read once it has {CONFIRMATIONS} confirmations");
    Ok(())
}

#[test]
fn finality_bad_confirmations_are_clear_errors() -> Result<()> {
    let aggregator = fl_tests::util::workspace_bin("fl-aggregator")?;
    for (value, expected) in
        [("65", "--confirmations: 65 confirmations is more than 64"), ("-1", "--confirmations \"-1\": expected a whole number")]
    {
        let output = std::process::Command::new(&aggregator)
            .args([
                "status",
                "--rpc-url",
                "http://127.0.0.1:1",
                "--registry",
                "0x5fbdb2315678afecb367f032d93f642f64180aa3",
                "--confirmations",
                value,
            ])
            .env_remove("FL_CONFIRMATIONS")
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{stderr}");
    }
    let output = std::process::Command::new(&aggregator).args(["status"]).env("FL_CONFIRMATIONS", "many").output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("FL_CONFIRMATIONS=\"many\""), "{stderr}");
    Ok(())
}

/// What the miner of the federation test does to a registry event when it is mined.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    /// Reorganise it out at one confirmation: its sender must notice and send again.
    Drop,
    /// Stop mining (so its sender waits for confirmations) until the test releases the
    /// chain, then drop it.
    HoldThenDrop,
    /// Reorganise it into the next block at one confirmation: its sender must wait for the
    /// confirmations of the new block, and not send again.
    Move,
}

/// Which event, and what to do to it.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// `None`: a `GlobalWeightSet`; `Some(0)`: any learner's `LocalWeightSet`; `Some(id)`:
    /// learner `id`'s.
    learner: Option<u64>,
    round: u64,
    action: Action,
}

impl Target {
    fn matches(&self, event: &Event) -> bool {
        match (event, self.learner) {
            (Event::GlobalWeightSet(g), None) => g.round == self.round,
            (Event::LocalWeightSet(u), Some(id)) => u.round == self.round && (id == 0 || u.node_id == id),
            _ => false,
        }
    }
}

/// A forced reorganisation: which transaction, where it was, what was done.
#[derive(Debug, Clone)]
struct Reorganised {
    target: Target,
    tx: H256,
    block: u64,
    /// Every transaction of that block (the target's included): all are dropped or moved;
    /// the blocks on top keep theirs.
    block_txs: Vec<H256>,
}

/// The federation's only block producer: mines a block every `BLOCK_PERIOD` and reorganises
/// each target's transaction once it has one confirmation (so its sender has seen the
/// receipt, but is still waiting). Stops when `stop` is set.
struct Miner {
    stop: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<Reorganised>>>,
}

const BLOCK_PERIOD: Duration = Duration::from_millis(250);

impl Miner {
    fn start(url: &str, registry: Address, targets: Vec<Target>) -> Result<Miner> {
        let (stop, held, release) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let url = url.to_string();
        let (stop_flag, held_flag, release_flag) = (stop.clone(), held.clone(), release.clone());
        let thread = std::thread::spawn(move || Miner::run(&url, registry, targets, &stop_flag, &held_flag, &release_flag));
        Ok(Miner { stop, held, release, thread })
    }

    fn run(
        url: &str,
        registry: Address,
        mut targets: Vec<Target>,
        stop: &AtomicBool,
        held: &AtomicBool,
        release: &AtomicBool,
    ) -> Result<Vec<Reorganised>> {
        let dev = Dev::new(url)?;
        let reader = Client::read_only(Rpc::new(url)?, None)?;
        let registry = Registry::at(&reader, registry);
        let mut armed: Option<Reorganised> = None;
        let mut done = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            if held.load(Ordering::SeqCst) && !release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            dev.mine(1)?;
            let head = dev.head()?;
            match armed.take() {
                Some(found) => {
                    // One block on top: replace both (depth 2, within the confirmations).
                    let depth = head - found.block + 1;
                    ensure!(depth <= CONFIRMATIONS, "reorganisation of depth {depth} is deeper than the confirmations");
                    // Only the target's block is dropped or moved: whatever was mined on top
                    // of it (a learner's update sent in the meantime) keeps its block, or the
                    // test would drop transactions it did not choose.
                    let mut kept: Vec<(H256, u64)> = Vec::new();
                    if found.target.action == Action::Move {
                        kept.extend(found.block_txs.iter().map(|&tx| (tx, found.block + 1)));
                    }
                    for block in found.block + 1..=head {
                        kept.extend(dev.block_transactions(block)?.into_iter().map(|tx| (tx, block)));
                    }
                    let txs =
                        kept.iter().map(|&(tx, block)| Ok((dev.raw_transaction(tx)?, block - found.block))).collect::<Result<Vec<_>>>()?;
                    dev.reorg(depth, &txs)?;
                    for &tx in &found.block_txs {
                        let expected = kept.iter().find(|k| k.0 == tx).map(|k| k.1);
                        let now = dev.mined_in(tx)?.map(|(block, _)| block);
                        ensure!(now == expected, "after the reorganisation {tx:?} is in block {now:?}, expected {expected:?}");
                    }
                    for &(tx, expected) in &kept {
                        let now = dev.mined_in(tx)?.map(|(block, _)| block);
                        ensure!(now == Some(expected), "after the reorganisation {tx:?} is in block {now:?}, expected {expected}");
                    }
                    eprintln!("[miner] reorganised block {} holding {:?} ({:?})", found.block, found.tx, found.target);
                    done.push(found);
                }
                None => {
                    for logged in registry.events(head, head)? {
                        if let Some(i) = targets.iter().position(|t| t.matches(&logged.event)) {
                            let target = targets.remove(i);
                            let block_txs = dev.block_transactions(head)?;
                            armed = Some(Reorganised { target, tx: logged.transaction_hash, block: head, block_txs });
                            if target.action == Action::HoldThenDrop {
                                held.store(true, Ordering::SeqCst);
                            }
                            break;
                        }
                    }
                }
            }
            std::thread::sleep(BLOCK_PERIOD);
        }
        ensure!(targets.is_empty(), "never saw {targets:?}");
        Ok(done)
    }

    /// Waits until the miner holds the chain for a [`Action::HoldThenDrop`] target; fails
    /// at once if the miner or one of `processes` stops first.
    fn wait_held(&self, processes: &mut [&mut Running], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.held.load(Ordering::SeqCst) {
            ensure!(!self.thread.is_finished(), "the miner stopped before holding the chain");
            for process in processes.iter_mut() {
                ensure!(process.is_running(), "{} exited before the miner held the chain:\n{}", process.name, process.lines().join("\n"));
            }
            ensure!(Instant::now() < deadline, "the miner did not hold the chain within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn release(&self) {
        self.release.store(true, Ordering::SeqCst);
    }

    fn finish(self) -> Result<Vec<Reorganised>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().map_err(|_| anyhow::anyhow!("the miner thread panicked"))?
    }
}

#[test]
fn finality_federation_with_confirmations_loses_no_update_and_publishes_no_round_twice_across_reorgs() -> Result<()> {
    let federation = Federation::start("finality-federation")?;
    let url = federation.devnet.anvil.url().to_string();
    let dev = Dev::new(&url)?;
    dev.manual_mining()?;
    // The deployment and the registrations get their confirmations before anyone reads.
    dev.mine(CONFIRMATIONS)?;
    let targets = vec![
        Target { learner: None, round: 0, action: Action::Drop },
        Target { learner: Some(1), round: 1, action: Action::HoldThenDrop },
        Target { learner: None, round: 1, action: Action::Drop },
        Target { learner: Some(0), round: 2, action: Action::Move },
        Target { learner: None, round: 2, action: Action::Move },
    ];
    let miner = Miner::start(&url, federation.devnet.registry, targets)?;
    let confirmations = CONFIRMATIONS.to_string();
    let config = format!("confirmations = {CONFIRMATIONS}\n");
    let mut aggregator = federation.aggregator_with("aggregator.log", &["--confirmations", &confirmations])?;
    let mut learner_1 = federation.learner_with(1, "learner-1a.log", &config)?;
    let mut learner_2 = federation.learner_with(2, "learner-2.log", &config)?;

    // Learner 1's round-1 update is mined and the chain stands still: the learner waits
    // for confirmations. Killed there, it comes back, finds the hash in its state folder
    // and waits for that transaction; then the chain moves on and drops it.
    miner.wait_held(&mut [&mut aggregator, &mut learner_1, &mut learner_2], RUN_LIMIT)?;
    learner_1.kill();
    let mut learner_1 = federation.learner_with(1, "learner-1b.log", &config)?;
    learner_1.wait_for("sent before a restart", Duration::from_secs(120))?;
    miner.release();

    aggregator.wait_success(RUN_LIMIT)?;
    learner_1.wait_success(Duration::from_secs(120))?;
    learner_2.wait_success(Duration::from_secs(120))?;
    let reorganised = miner.finish()?;
    assert_eq!(reorganised.len(), 5, "{reorganised:?}");

    // Nothing lost, nothing twice: one global model per round, each the FedAvg of the
    // updates it commits to, one update per learner and round.
    check_rounds(&federation)?;
    let (globals, locals) = federation.events()?;
    assert_eq!(globals.len() as u64, ROUNDS + 1, "{globals:?}");
    for round in 1..=ROUNDS {
        for node_id in [1, 2] {
            let n = locals.iter().filter(|u| u.round == round && u.node_id == node_id).count();
            assert_eq!(n, 1, "learner {node_id} has {n} updates in round {round}");
        }
    }
    // The senders noticed: the dropped ones were sent again, the moved ones were not.
    let aggregator_log = aggregator.lines().join("\n");
    let learner_1_log = learner_1.lines().join("\n");
    assert_eq!(aggregator_log.matches("is no longer known to the node").count(), 2, "{aggregator_log}");
    assert!(
        learner_1
            .lines()
            .iter()
            .any(|l| l.contains("round 1: the registering transaction") && l.contains("was dropped or reorganised out; sending it again")),
        "{learner_1_log}"
    );
    let learner_2_log = learner_2.lines().join("\n");
    assert!(!learner_1_log.contains("round 2: the registering transaction"), "{learner_1_log}");
    assert!(!learner_2_log.contains("round 2: the registering transaction"), "{learner_2_log}");
    let client = federation.devnet.read_client()?;
    for moved in reorganised.iter().filter(|r| r.target.action == Action::Move) {
        let receipt = client.rpc().transaction_receipt(moved.tx)?.with_context(|| format!("moved transaction {:?} is gone", moved.tx))?;
        assert_eq!(receipt.block_number.map(|b| b.as_u64()), Some(moved.block + 1), "{moved:?}");
    }

    // And anyone following with the same confirmations verifies every round.
    for round in 1..=ROUNDS {
        let mut verify = federation.verify_command_with(round, &["--confirmations", &confirmations])?;
        verify.wait_success(Duration::from_secs(120))?;
        assert!(verify.stdout_lines().iter().any(|l| l == &format!("round {round}: verified")), "{:?}", verify.lines());
    }
    Ok(())
}
