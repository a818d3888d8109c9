//! The model registry contract from Rust: deployment, the learner registry, local and global
//! updates, the paper's getters, the inputs commitment, and event readers over bounded
//! `eth_getLogs` ranges.

use crate::abi::{decode_output, encode_call, registry_abi, registry_bytecode};
use crate::cid::{cid_from_bytes, cid_to_bytes};
use crate::client::Client;
use crate::error::{Error, Result};
use ethers_core::abi::{RawLog, Token};
use ethers_core::types::{Address, BlockNumber, Filter, TransactionReceipt, H256, U256};

/// The registry interface version this crate writes to (`version()` of `Registry.sol`).
pub const REGISTRY_VERSION: u64 = 4;

/// How a federation's rounds close, fixed at deployment (`asyncBuffer` and `maxStaleness`
/// of a version-3 registry; older ones are synchronous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every round waits for its learners (the paper's rounds).
    Sync,
    /// FedBuff: a global model whenever at least `buffer` updates are in; an update trained
    /// on the global model of round g counts while the current round is at most
    /// g + 1 + `max_staleness`.
    Async { buffer: u64, max_staleness: u64 },
}

impl Mode {
    /// How many rounds behind the current one an update's round may be (0 when synchronous).
    pub fn max_staleness(self) -> u64 {
        self.parameters().1
    }

    /// The registry's constructor arguments for the mode, `(asyncBuffer, maxStaleness)`:
    /// `(0, 0)` for synchronous rounds.
    pub fn parameters(self) -> (u64, u64) {
        match self {
            Mode::Sync => (0, 0),
            Mode::Async { buffer, max_staleness } => (buffer, max_staleness),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Sync => write!(f, "synchronous rounds"),
            Mode::Async { buffer, max_staleness } => {
                write!(f, "asynchronous rounds (a global model per {buffer} updates, staleness at most {max_staleness})")
            }
        }
    }
}

/// Default largest block range of one `eth_getLogs` request (many public nodes cap it).
pub const DEFAULT_LOG_RANGE: u64 = 1_000;

/// One learner's update for one round, as written by `setLocalWeight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUpdate {
    pub node_id: u64,
    pub round: u64,
    /// Base32 CIDv1 text of the model file on IPFS.
    pub cid: String,
    /// SHA-256 of the model file.
    pub digest: [u8; 32],
    /// Number of training samples behind the update (FedAvg weight).
    pub samples: u64,
}

/// A learner's binding, cap and latest update, as the `localUpdate` view returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnerState {
    pub node_id: u64,
    /// The address allowed to write this node id (zero once removed).
    pub account: Address,
    /// The most samples one of its updates may claim (0 if it was never registered).
    pub max_samples: u64,
    /// The latest update, `None` before the first one.
    pub latest: Option<LatestUpdate>,
}

/// A learner's latest update as the contract stores it (its sample count is only in the
/// update's `LocalWeightSet` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestUpdate {
    pub round: u64,
    pub cid: String,
    pub digest: [u8; 32],
}

/// A global model as written by `setGlobalWeight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalUpdate {
    pub round: u64,
    pub cid: String,
    pub digest: [u8; 32],
    /// [`commitment`] of the local updates it averages (zero for the seed, round 0).
    pub inputs_commitment: [u8; 32],
    /// The node ids of the updates its rule took as inputs, ascending; only known from the
    /// event, empty from the view.
    pub node_ids: Vec<u64>,
    /// The round record, "how this global model was made" (versioned bytes the contract does
    /// not interpret; see the aggregator's `record` module). Empty from a version-1 registry
    /// and from the view.
    pub record: Vec<u8>,
}

/// A registry event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `max_samples` is `None` from a version-1 registry (it had no caps).
    LearnerAdded {
        node_id: u64,
        account: Address,
        max_samples: Option<u64>,
    },
    LearnerRemoved {
        node_id: u64,
        account: Address,
    },
    LearnerAccountChanged {
        node_id: u64,
        previous: Address,
        account: Address,
    },
    OwnershipTransferStarted {
        owner: Address,
        pending_owner: Address,
    },
    OwnershipTransferred {
        previous: Address,
        owner: Address,
    },
    /// Version 4, model groups: the learner trains group `group` (0-based).
    LearnerGroupSet {
        node_id: u64,
        group: u64,
    },
    LocalWeightSet(LocalUpdate),
    GlobalWeightSet(GlobalUpdate),
}

/// An event with where it was logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub block_number: u64,
    pub transaction_hash: H256,
    pub log_index: u64,
    pub event: Event,
}

/// The commitment a global model records to its inputs and its round record: keccak256 of
/// the Solidity ABI encoding `abi.encode(Input[], bytes record)` with `Input = (uint256
/// nodeId, uint256 round, string cid, bytes32 digest, uint256 samples)`, `cid` as base32
/// text, inputs in strictly ascending (node id, round) order (a synchronous round has one
/// input per node id; an asynchronous one may have two rounds of one learner). Anyone can
/// recompute it from the `LocalWeightSet` events of the node ids listed in `GlobalWeightSet`
/// (and the rounds the record names) and the event's record. `record: None` gives a
/// version-1 registry's commitment, `abi.encode(Input[])`.
pub fn commitment(inputs: &[LocalUpdate], record: Option<&[u8]>) -> Result<[u8; 32]> {
    if let Some(pair) = inputs.windows(2).find(|w| (w[0].node_id, w[0].round) >= (w[1].node_id, w[1].round)) {
        return Err(Error::Invalid(format!(
            "commitment inputs must be in strictly ascending (node id, round) order, found learner {} round {} before learner {} round {}",
            pair[0].node_id, pair[0].round, pair[1].node_id, pair[1].round
        )));
    }
    let items = inputs
        .iter()
        .map(|u| {
            Token::Tuple(vec![
                Token::Uint(u.node_id.into()),
                Token::Uint(u.round.into()),
                Token::String(u.cid.clone()),
                Token::FixedBytes(u.digest.to_vec()),
                Token::Uint(u.samples.into()),
            ])
        })
        .collect();
    let mut tokens = vec![Token::Array(items)];
    if let Some(record) = record {
        tokens.push(Token::Bytes(record.to_vec()));
    }
    Ok(ethers_core::utils::keccak256(ethers_core::abi::encode(&tokens)))
}

/// A deployed registry, used through a [`Client`].
#[derive(Debug)]
pub struct Registry<'a> {
    client: &'a Client,
    address: Address,
    log_range: u64,
}

impl<'a> Registry<'a> {
    /// Deploys a new registry owned by the client's account; returns it and the receipt.
    /// First checks, with `eth_call`s only, that the chain's EVM runs the registry's code
    /// ([`crate::evm::preflight`]): a chain whose rule set lacks an opcode gets
    /// [`Error::InvalidOpcode`] naming it, and no gas is spent.
    /// `max_samples` is the federation-wide sample cap (at least 1): no update may claim more
    /// samples than its learner's cap, which is this one unless set when adding the learner.
    pub fn deploy(client: &'a Client, max_samples: u64) -> Result<(Registry<'a>, TransactionReceipt)> {
        Registry::deploy_with_mode(client, max_samples, Mode::Sync)
    }

    /// [`Registry::deploy`] for a federation whose rounds close as `mode` says.
    pub fn deploy_with_mode(client: &'a Client, max_samples: u64, mode: Mode) -> Result<(Registry<'a>, TransactionReceipt)> {
        Registry::deploy_federation(client, max_samples, mode, None, 1)
    }

    /// [`Registry::deploy_with_mode`] for a federation that trains the model of digest
    /// `spec` (`None`: the built-in paper CNN): one spec (`groups` 1), or the list of
    /// `groups` model groups' specs.
    pub fn deploy_federation(
        client: &'a Client,
        max_samples: u64,
        mode: Mode,
        spec: Option<[u8; 32]>,
        groups: u64,
    ) -> Result<(Registry<'a>, TransactionReceipt)> {
        Registry::deploy_bytecode(client, creation_code(&registry_bytecode(), max_samples, mode, spec, groups)?)
    }

    /// [`Registry::deploy`] with other creation code (e.g. compiled for another EVM version,
    /// with its constructor arguments: see [`creation_code`]), checked the same way before
    /// anything is sent.
    pub fn deploy_bytecode(client: &'a Client, creation: ethers_core::types::Bytes) -> Result<(Registry<'a>, TransactionReceipt)> {
        crate::evm::preflight(client, "deploy", &creation)?;
        let receipt = client.send_and_wait("deploy", None, creation)?;
        let address = receipt
            .contract_address
            .ok_or_else(|| Error::Invalid(format!("deploy: receipt {:?} has no contract address", receipt.transaction_hash)))?;
        Ok((Registry::at(client, address), receipt))
    }

    /// The registry at `address` (not checked until the first call).
    pub fn at(client: &'a Client, address: Address) -> Registry<'a> {
        Registry { client, address, log_range: DEFAULT_LOG_RANGE }
    }

    /// Sets the largest block range of one `eth_getLogs` request.
    pub fn with_log_range(mut self, blocks: u64) -> Registry<'a> {
        self.log_range = blocks.max(1);
        self
    }

    pub fn address(&self) -> Address {
        self.address
    }
    pub fn client(&self) -> &Client {
        self.client
    }

    fn view(&self, name: &str, args: &[Token]) -> Result<Vec<Token>> {
        let data = self.client.call(name, self.address, encode_call(name, args)?)?;
        if data.is_empty() {
            return Err(Error::Invalid(format!("{name}: empty reply: no registry contract at {:?}", self.address)));
        }
        decode_output(name, &data)
    }

    fn write(&self, name: &str, args: &[Token]) -> Result<TransactionReceipt> {
        self.client.send_and_wait(name, Some(self.address), encode_call(name, args)?)
    }

    /// The interface version: 1 for a registry without `version()` (no caps, no round
    /// records), else what it returns.
    pub fn version(&self) -> Result<u64> {
        let data = self.client.call("version", self.address, encode_call("version", &[])?);
        match data {
            // Version 1 has no such function and no fallback: the call reverts with no data.
            Err(Error::Revert { data, .. }) if data.is_empty() => Ok(1),
            Err(err) => Err(err),
            Ok(data) if data.is_empty() => Err(Error::Invalid(format!("version: empty reply: no registry contract at {:?}", self.address))),
            Ok(data) => uint(&decode_output("version", &data)?[0], "version"),
        }
    }

    /// Fails unless the registry is the version this code writes to ([`REGISTRY_VERSION`]):
    /// a learner or aggregator pointed at an older deployment says so before doing anything.
    pub fn require_current_version(&self) -> Result<()> {
        let version = self.version()?;
        if version != REGISTRY_VERSION {
            return Err(Error::Invalid(format!(
                "registry {:?} is version {version}, this program writes to version {REGISTRY_VERSION} (sample caps, round records, asynchronous rounds, model specs): deploy a new registry with `fl-aggregator deploy` and use its address (the old one's rounds still verify)",
                self.address
            )));
        }
        Ok(())
    }

    /// How the federation's rounds close: read from a version-3 registry, synchronous for
    /// older ones (they had no other mode).
    pub fn mode(&self) -> Result<Mode> {
        if self.version()? < 3 {
            return Ok(Mode::Sync);
        }
        let buffer = uint(&self.view("asyncBuffer", &[])?[0], "asyncBuffer")?;
        let max_staleness = uint(&self.view("maxStaleness", &[])?[0], "maxStaleness")?;
        Ok(match buffer {
            0 => Mode::Sync,
            buffer => Mode::Async { buffer, max_staleness },
        })
    }

    /// The digest of the federation's model spec, fixed at deployment: `None` for the
    /// built-in paper CNN (a zero digest, or a registry older than version 4).
    pub fn model_spec(&self) -> Result<Option<[u8; 32]>> {
        if self.version()? < 4 {
            return Ok(None);
        }
        let digest = bytes32(&self.view("modelSpec", &[])?[0], "modelSpec")?;
        Ok((digest != [0; 32]).then_some(digest))
    }

    /// How many model groups the federation declares (1 for one model, and for registries
    /// older than version 4).
    pub fn model_groups(&self) -> Result<u64> {
        if self.version()? < 4 {
            return Ok(1);
        }
        uint(&self.view("modelGroups", &[])?[0], "modelGroups")
    }

    /// The model group learner `node_id` is registered to (0 unless set).
    pub fn learner_group(&self, node_id: u64) -> Result<u64> {
        if self.version()? < 4 {
            return Ok(0);
        }
        uint(&self.view("learnerGroup", &[Token::Uint(node_id.into())])?[0], "learnerGroup")
    }

    /// Registers learner `node_id` to model group `group` (owner only; before its first
    /// update).
    pub fn set_learner_group(&self, node_id: u64, group: u64) -> Result<TransactionReceipt> {
        self.write("setLearnerGroup", &[Token::Uint(node_id.into()), Token::Uint(group.into())])
    }

    /// The federation-wide sample cap set at deployment.
    pub fn default_max_samples(&self) -> Result<u64> {
        uint(&self.view("defaultMaxSamples", &[])?[0], "defaultMaxSamples")
    }

    /// The owner (the aggregator's address).
    pub fn owner(&self) -> Result<Address> {
        address(&self.view("owner", &[])?[0], "owner")
    }

    /// The block the registry was deployed in (where event readers start).
    pub fn deployed_at(&self) -> Result<u64> {
        uint(&self.view("deployedAt", &[])?[0], "deployedAt")
    }

    /// The round the next writes belong to.
    pub fn current_round(&self) -> Result<u64> {
        uint(&self.view("currentRound", &[])?[0], "currentRound")
    }

    /// Binds `node_id` to `account` (owner only), with its own sample cap or, for `None`,
    /// the federation-wide one.
    pub fn add_learner(&self, node_id: u64, account: Address, max_samples: Option<u64>) -> Result<TransactionReceipt> {
        if max_samples == Some(0) {
            return Err(Error::Invalid(format!("addLearner {node_id}: a sample cap of 0 would refuse every update")));
        }
        let cap = max_samples.unwrap_or(0);
        self.write("addLearner", &[Token::Uint(node_id.into()), Token::Address(account), Token::Uint(cap.into())])
    }

    /// Binds `node_id` to a new address, keeping its updates, round and cap (owner only).
    pub fn replace_learner_account(&self, node_id: u64, account: Address) -> Result<TransactionReceipt> {
        self.write("replaceLearnerAccount", &[Token::Uint(node_id.into()), Token::Address(account)])
    }

    /// Names `new_owner` as the next owner; it takes over with [`Registry::accept_ownership`]
    /// (owner only; the zero address cancels).
    pub fn transfer_ownership(&self, new_owner: Address) -> Result<TransactionReceipt> {
        self.write("transferOwnership", &[Token::Address(new_owner)])
    }

    /// Takes over the registry (only the address named by `transfer_ownership`).
    pub fn accept_ownership(&self) -> Result<TransactionReceipt> {
        self.write("acceptOwnership", &[])
    }

    /// The address named by `transfer_ownership`, zero when none.
    pub fn pending_owner(&self) -> Result<Address> {
        address(&self.view("pendingOwner", &[])?[0], "pendingOwner")
    }

    /// Unbinds `node_id` (owner only).
    pub fn remove_learner(&self, node_id: u64) -> Result<TransactionReceipt> {
        self.write("removeLearner", &[Token::Uint(node_id.into())])
    }

    /// The registered node ids, ascending.
    pub fn learner_ids(&self) -> Result<Vec<u64>> {
        let Token::Array(items) = &self.view("learnerIds", &[])?[0] else {
            return Err(Error::Invalid("learnerIds: expected an array".into()));
        };
        let mut ids = items.iter().map(|t| uint(t, "learnerIds")).collect::<Result<Vec<u64>>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Every registered learner with its latest update, by ascending node id.
    pub fn learners(&self) -> Result<Vec<LearnerState>> {
        self.learner_ids()?.into_iter().map(|id| self.local_update(id)).collect()
    }

    /// Records this account's update for `node_id` in `round` (the current round, or in an
    /// asynchronous federation up to its staleness bound behind).
    pub fn set_local_weight(&self, node_id: u64, round: u64, cid: &str, digest: [u8; 32], samples: u64) -> Result<TransactionReceipt> {
        self.write("setLocalWeight", &local_args(node_id, round, cid, digest, samples)?)
    }

    /// Calldata of [`Registry::set_local_weight`], for callers that batch transactions.
    pub fn set_local_weight_calldata(
        node_id: u64,
        round: u64,
        cid: &str,
        digest: [u8; 32],
        samples: u64,
    ) -> Result<ethers_core::types::Bytes> {
        encode_call("setLocalWeight", &local_args(node_id, round, cid, digest, samples)?)
    }

    /// The node's binding, cap and latest update (the `localUpdate` view).
    pub fn local_update(&self, node_id: u64) -> Result<LearnerState> {
        let out = self.view("localUpdate", &[Token::Uint(node_id.into())])?;
        let round = uint(&out[1], "localUpdate.round")?;
        let latest = if round == 0 {
            None
        } else {
            Some(LatestUpdate {
                round,
                cid: cid_from_bytes(&bytes(&out[2], "localUpdate.cid")?)?,
                digest: bytes32(&out[3], "localUpdate.digest")?,
            })
        };
        Ok(LearnerState {
            node_id,
            account: address(&out[0], "localUpdate.account")?,
            max_samples: uint(&out[4], "localUpdate.maxSamples")?,
            latest,
        })
    }

    /// Publishes the global model of `round` (owner only; must be the current round) with
    /// its round record (required after round 0).
    pub fn set_global_weight(
        &self,
        round: u64,
        cid: &str,
        digest: [u8; 32],
        inputs_commitment: [u8; 32],
        node_ids: &[u64],
        record: &[u8],
    ) -> Result<TransactionReceipt> {
        let ids = node_ids.iter().map(|&id| Token::Uint(id.into())).collect();
        self.write(
            "setGlobalWeight",
            &[
                Token::Uint(round.into()),
                Token::Bytes(cid_to_bytes(cid)?.to_vec()),
                Token::FixedBytes(digest.to_vec()),
                Token::FixedBytes(inputs_commitment.to_vec()),
                Token::Array(ids),
                Token::Bytes(record.to_vec()),
            ],
        )
    }

    /// The latest global model, `None` before round 0 is published (`node_ids` empty: they
    /// are only in the event).
    pub fn global_update(&self) -> Result<Option<GlobalUpdate>> {
        if self.current_round()? == 0 {
            return Ok(None);
        }
        let out = self.view("globalUpdate", &[])?;
        Ok(Some(GlobalUpdate {
            round: uint(&out[0], "globalUpdate.round")?,
            cid: cid_from_bytes(&bytes(&out[1], "globalUpdate.cid")?)?,
            digest: bytes32(&out[2], "globalUpdate.digest")?,
            inputs_commitment: bytes32(&out[3], "globalUpdate.inputsCommitment")?,
            node_ids: Vec::new(),
            record: Vec::new(),
        }))
    }

    /// The paper's getter: CID of the node's latest local model ("" when none).
    pub fn get_local_weight(&self, node_id: u64) -> Result<String> {
        string(&self.view("getLocalWeight", &[Token::Uint(node_id.into())])?[0], "getLocalWeight")
    }

    /// The paper's getter: CID of the latest global model ("" when none).
    pub fn get_global_weight(&self) -> Result<String> {
        string(&self.view("getGlobalWeight", &[])?[0], "getGlobalWeight")
    }

    /// Every registry event in blocks `from..=to`, in log order, read with `eth_getLogs`
    /// requests of at most the configured number of blocks each.
    pub fn events(&self, from: u64, to: u64) -> Result<Vec<Logged>> {
        self.events_matching(from, to, None, None)
    }

    /// The `LocalWeightSet` events of `round` in blocks `from..=to`.
    pub fn local_updates_of_round(&self, round: u64, from: u64, to: u64) -> Result<Vec<LocalUpdate>> {
        let topic = registry_abi().event("LocalWeightSet").map_err(|e| Error::Invalid(e.to_string()))?.signature();
        let logged = self.events_matching(from, to, Some(topic), Some(H256::from_low_u64_be(round)))?;
        Ok(logged
            .into_iter()
            .filter_map(|l| match l.event {
                Event::LocalWeightSet(update) => Some(update),
                _ => None,
            })
            .collect())
    }

    /// The `GlobalWeightSet` events in blocks `from..=to`.
    pub fn global_updates(&self, from: u64, to: u64) -> Result<Vec<GlobalUpdate>> {
        let topic = registry_abi().event("GlobalWeightSet").map_err(|e| Error::Invalid(e.to_string()))?.signature();
        let logged = self.events_matching(from, to, Some(topic), None)?;
        Ok(logged
            .into_iter()
            .filter_map(|l| match l.event {
                Event::GlobalWeightSet(update) => Some(update),
                _ => None,
            })
            .collect())
    }

    /// The `GlobalWeightSet` event of `round` (with its record) in blocks `from..=to`,
    /// searched newest range first: a learner looks for a round it has just seen
    /// published, which is then in the first `eth_getLogs` range it asks for.
    pub fn global_event_of_round(&self, round: u64, from: u64, to: u64) -> Result<Option<GlobalUpdate>> {
        let topic = registry_abi().event("GlobalWeightSet").map_err(|e| Error::Invalid(e.to_string()))?.signature();
        let mut end = to;
        while end >= from {
            let start = end.saturating_sub(self.log_range - 1).max(from);
            let filter = Filter::new()
                .address(self.address)
                .from_block(BlockNumber::Number(start.into()))
                .to_block(BlockNumber::Number(end.into()))
                .topic0(topic)
                .topic1(H256::from_low_u64_be(round));
            for log in self.client.rpc().logs(&filter)? {
                if let Event::GlobalWeightSet(global) = decode_log(&log)?.event {
                    if global.round == round {
                        return Ok(Some(global));
                    }
                }
            }
            if start == 0 || start <= from {
                break;
            }
            end = start - 1;
        }
        Ok(None)
    }

    fn events_matching(&self, from: u64, to: u64, topic0: Option<H256>, topic2: Option<H256>) -> Result<Vec<Logged>> {
        let mut out = Vec::new();
        self.scan(from, to, topic0, topic2, &mut |logged| {
            out.push(logged);
            Ok(())
        })?;
        Ok(out)
    }

    /// Hands every registry event in blocks `from..=to` to `visit`, in log order, one
    /// `eth_getLogs` range at a time: memory stays bounded by one range however long the
    /// chain, so a long-running aggregator can replay its history.
    pub fn for_each_event(&self, from: u64, to: u64, visit: &mut dyn FnMut(Logged) -> Result<()>) -> Result<()> {
        self.scan(from, to, None, None, visit)
    }

    fn scan(
        &self,
        from: u64,
        to: u64,
        topic0: Option<H256>,
        topic2: Option<H256>,
        visit: &mut dyn FnMut(Logged) -> Result<()>,
    ) -> Result<()> {
        let mut start = from;
        while start <= to {
            let end = to.min(start.saturating_add(self.log_range - 1));
            let mut filter =
                Filter::new().address(self.address).from_block(BlockNumber::Number(start.into())).to_block(BlockNumber::Number(end.into()));
            if let Some(t) = topic0 {
                filter = filter.topic0(t);
            }
            if let Some(t) = topic2 {
                filter = filter.topic2(t);
            }
            for log in self.client.rpc().logs(&filter)? {
                visit(decode_log(&log)?)?;
            }
            if end == u64::MAX {
                break;
            }
            start = end + 1;
        }
        Ok(())
    }
}

/// Creation code: the registry's bytecode followed by its ABI-encoded constructor
/// arguments, the federation-wide sample cap, the mode (buffer and staleness bound, 0 and
/// 0 for synchronous rounds), the model spec's digest (zero for the built-in model) and the
/// number of model groups (1: one model).
pub fn creation_code(
    bytecode: &[u8],
    max_samples: u64,
    mode: Mode,
    spec: Option<[u8; 32]>,
    groups: u64,
) -> Result<ethers_core::types::Bytes> {
    if max_samples == 0 {
        return Err(Error::Invalid("deploy: a federation-wide sample cap of 0 would refuse every update".into()));
    }
    if let Mode::Async { buffer: 0, .. } = mode {
        return Err(Error::Invalid("deploy: an asynchronous federation needs a buffer of at least 1 update".into()));
    }
    let (buffer, staleness) = mode.parameters();
    if buffer > u64::from(u32::MAX) || staleness > u64::from(u32::MAX) {
        return Err(Error::Invalid(format!("deploy: buffer {buffer} and staleness bound {staleness} must each be below 2^32")));
    }
    if groups == 0 || groups > 16 || (groups > 1 && (spec.is_none() || mode != Mode::Sync)) {
        return Err(Error::Invalid(format!(
            "deploy: {groups} model groups: a federation has 1 model, or 2 to 16 groups named by a digest, in synchronous rounds"
        )));
    }
    let mut code = bytecode.to_vec();
    code.extend(ethers_core::abi::encode(&[
        Token::Uint(max_samples.into()),
        Token::Uint(buffer.into()),
        Token::Uint(staleness.into()),
        Token::FixedBytes(spec.unwrap_or([0; 32]).to_vec()),
        Token::Uint(groups.into()),
    ]));
    Ok(code.into())
}

fn local_args(node_id: u64, round: u64, cid: &str, digest: [u8; 32], samples: u64) -> Result<Vec<Token>> {
    Ok(vec![
        Token::Uint(node_id.into()),
        Token::Uint(round.into()),
        Token::Bytes(cid_to_bytes(cid)?.to_vec()),
        Token::FixedBytes(digest.to_vec()),
        Token::Uint(samples.into()),
    ])
}

/// Decodes one registry log.
pub fn decode_log(log: &ethers_core::types::Log) -> Result<Logged> {
    let topic0 = log.topics.first().ok_or_else(|| Error::Invalid("log without topics".into()))?;
    // This version's events first, then version 1's (whose LearnerAdded and GlobalWeightSet
    // had fewer fields, so other signatures).
    let event = registry_abi()
        .events()
        .chain(crate::abi::v1::registry_abi().events())
        .find(|e| e.signature() == *topic0)
        .ok_or_else(|| Error::Invalid(format!("log with unknown topic {topic0:?}")))?;
    let parsed = event
        .parse_log(RawLog { topics: log.topics.clone(), data: log.data.to_vec() })
        .map_err(|e| Error::Invalid(format!("decoding {} log: {e}", event.name)))?;
    let find = |name: &str| parsed.params.iter().find(|p| p.name == name).map(|p| &p.value);
    let param = |name: &str| -> Result<&Token> { find(name).ok_or_else(|| Error::Invalid(format!("{} log has no {name}", event.name))) };
    let decoded = match event.name.as_str() {
        "LearnerAdded" => Event::LearnerAdded {
            node_id: uint(param("nodeId")?, "nodeId")?,
            account: address(param("account")?, "account")?,
            max_samples: find("maxSamples").map(|t| uint(t, "maxSamples")).transpose()?,
        },
        "LearnerRemoved" => {
            Event::LearnerRemoved { node_id: uint(param("nodeId")?, "nodeId")?, account: address(param("account")?, "account")? }
        }
        "LearnerAccountChanged" => Event::LearnerAccountChanged {
            node_id: uint(param("nodeId")?, "nodeId")?,
            previous: address(param("previousAccount")?, "previousAccount")?,
            account: address(param("account")?, "account")?,
        },
        "OwnershipTransferStarted" => Event::OwnershipTransferStarted {
            owner: address(param("owner")?, "owner")?,
            pending_owner: address(param("pendingOwner")?, "pendingOwner")?,
        },
        "OwnershipTransferred" => Event::OwnershipTransferred {
            previous: address(param("previousOwner")?, "previousOwner")?,
            owner: address(param("owner")?, "owner")?,
        },
        "LearnerGroupSet" => Event::LearnerGroupSet { node_id: uint(param("nodeId")?, "nodeId")?, group: uint(param("group")?, "group")? },
        "LocalWeightSet" => Event::LocalWeightSet(LocalUpdate {
            node_id: uint(param("nodeId")?, "nodeId")?,
            round: uint(param("round")?, "round")?,
            cid: cid_from_bytes(&bytes(param("cid")?, "cid")?)?,
            digest: bytes32(param("digest")?, "digest")?,
            samples: uint(param("samples")?, "samples")?,
        }),
        "GlobalWeightSet" => {
            let Token::Array(ids) = param("nodeIds")? else {
                return Err(Error::Invalid("GlobalWeightSet.nodeIds: expected an array".into()));
            };
            Event::GlobalWeightSet(GlobalUpdate {
                round: uint(param("round")?, "round")?,
                cid: cid_from_bytes(&bytes(param("cid")?, "cid")?)?,
                digest: bytes32(param("digest")?, "digest")?,
                inputs_commitment: bytes32(param("inputsCommitment")?, "inputsCommitment")?,
                node_ids: ids.iter().map(|t| uint(t, "nodeIds")).collect::<Result<_>>()?,
                record: find("record").map(|t| bytes(t, "record")).transpose()?.unwrap_or_default(),
            })
        }
        other => return Err(Error::Invalid(format!("unexpected event {other}"))),
    };
    Ok(Logged {
        block_number: log.block_number.map(|b| b.as_u64()).unwrap_or_default(),
        transaction_hash: log.transaction_hash.unwrap_or_default(),
        log_index: log.log_index.map(|i| i.low_u64()).unwrap_or_default(),
        event: decoded,
    })
}

fn uint(token: &Token, what: &str) -> Result<u64> {
    match token {
        Token::Uint(v) if *v <= U256::from(u64::MAX) => Ok(v.as_u64()),
        Token::Uint(v) => Err(Error::Invalid(format!("{what}: {v} does not fit in 64 bits"))),
        other => Err(Error::Invalid(format!("{what}: expected a uint, found {other:?}"))),
    }
}

fn address(token: &Token, what: &str) -> Result<Address> {
    token.clone().into_address().ok_or_else(|| Error::Invalid(format!("{what}: expected an address")))
}

fn bytes(token: &Token, what: &str) -> Result<Vec<u8>> {
    token.clone().into_bytes().ok_or_else(|| Error::Invalid(format!("{what}: expected bytes")))
}

fn bytes32(token: &Token, what: &str) -> Result<[u8; 32]> {
    let raw = token.clone().into_fixed_bytes().ok_or_else(|| Error::Invalid(format!("{what}: expected bytes32")))?;
    raw.try_into().map_err(|_| Error::Invalid(format!("{what}: expected 32 bytes")))
}

fn string(token: &Token, what: &str) -> Result<String> {
    token.clone().into_string().ok_or_else(|| Error::Invalid(format!("{what}: expected a string")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Solidity ABI layout of `abi.encode(Input[])` for one input, word by word from the
    /// ABI specification (docs.soliditylang.org, "Formal Specification of the Encoding"),
    /// built without ethers' encoder, then hashed.
    #[test]
    fn commitment_matches_hand_built_abi_encoding() {
        let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        let update = LocalUpdate { node_id: 7, round: 3, cid: cid.into(), digest: [0xab; 32], samples: 30_000 };
        let word = |v: u64| {
            let mut w = [0u8; 32];
            w[24..].copy_from_slice(&v.to_be_bytes());
            w
        };
        let mut expected = Vec::new();
        expected.extend(word(0x20)); // offset of the array
        expected.extend(word(1)); // array length
        expected.extend(word(0x20)); // offset of element 0 (dynamic tuple) after the length
        expected.extend(word(7)); // nodeId
        expected.extend(word(3)); // round
        expected.extend(word(5 * 32)); // offset of cid inside the tuple
        expected.extend([0xab; 32]); // digest
        expected.extend(word(30_000)); // samples
        expected.extend(word(59)); // cid length
        let mut text = cid.as_bytes().to_vec();
        text.resize(64, 0);
        expected.extend(text);
        assert_eq!(commitment(std::slice::from_ref(&update), None).unwrap(), ethers_core::utils::keccak256(&expected));
        // Version 2: abi.encode(Input[], bytes): two head words (offsets), the array as
        // above, then the record's length and its bytes padded to 32.
        let record = b"{\"version\":1}";
        let mut v2 = Vec::new();
        v2.extend(word(0x40)); // offset of the array
        v2.extend(word(0x40 + expected.len() as u64 - 32)); // offset of the record
        v2.extend(&expected[32..]); // the array itself (without its own head word)
        v2.extend(word(record.len() as u64));
        let mut padded = record.to_vec();
        padded.resize(32, 0);
        v2.extend(padded);
        assert_eq!(commitment(std::slice::from_ref(&update), Some(record)).unwrap(), ethers_core::utils::keccak256(&v2));
        let mut second = update.clone();
        second.node_id = 2;
        assert!(commitment(&[update.clone(), second], None).is_err(), "descending node ids are refused");
        // An asynchronous round may hold two rounds of one learner, ascending.
        let mut later = update.clone();
        later.round = 4;
        assert!(commitment(&[update.clone(), later.clone()], None).is_ok());
        assert!(commitment(&[later, update.clone()], None).is_err(), "descending rounds are refused");
        assert!(commitment(&[update.clone(), update], None).is_err(), "an update twice is refused");
    }
}
