// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title Federated learning model registry
/// @notice Learners record the IPFS CID of each local model they train; the owner (the
/// aggregator) records each global model and a commitment to the exact local updates it was
/// built from. Keeps the paper's four functions (setLocalWeight, getLocalWeight,
/// setGlobalWeight, getGlobalWeight) and adds an owner, a learner registry, rounds, events
/// and custom errors.
/// @dev CIDs travel and are stored in binary form: CIDv1 with a one-byte codec and a SHA-256
/// multihash is 36 bytes (0x01, codec, 0x12, 0x20, 32-byte hash), so a stored CID is one
/// 32-byte slot (the hash) plus one byte (the codec) packed with the learner's other fields.
/// The getters rebuild the usual base32 text (`bafk...`, `bafy...`), which costs nothing in
/// a call. This keeps a learner's steady-state update under 50,000 gas.
///
/// Version 2 (`version()`; version 1 had no such function) adds sample caps and the round
/// record. Sample counts weigh updates in FedAvg, so they are not taken on trust: the owner
/// sets a federation-wide cap at deployment and may set a lower or higher one per learner,
/// and an update above its learner's cap is refused. Each global model carries its round
/// record: "how this global model was made" (the aggregation rule and its parameters, the
/// updates left out and why), versioned bytes the contract does not interpret, emitted in
/// the event and covered by the inputs commitment.
///
/// Version 3 adds asynchronous rounds (FedBuff, Nguyen et al. 2022), fixed for the
/// federation at deployment: `asyncBuffer` K and `maxStaleness` S (K = 0: synchronous
/// rounds, unchanged). In an asynchronous federation a learner's update names as `round`
/// the round after the global model it trained on (as in a synchronous one), and is accepted
/// while `currentRound - round <= maxStaleness`, so a slow board's update still counts once
/// faster ones have moved the model on; a global model needs at least K inputs. Storage
/// keeps each learner's latest update only: the `LocalWeightSet` events are the record of
/// every update, and the round record names each input's round.
///
/// Version 4 adds the federation's model spec, fixed at deployment: `modelSpec` is the
/// SHA-256 of the spec's canonical bytes (zero: the built-in paper CNN). The spec itself is
/// on IPFS as one raw block, so its CID follows from the digest; every model file names the
/// spec it follows by the same digest. A federation may instead declare model groups
/// (`modelGroups` >= 2, the paper's future work: heterogeneous models): `modelSpec` then
/// names the list of the groups' specs, each learner is registered to one group
/// (`setLearnerGroup`, before its first update) and the global model is the ensemble of the
/// group models.
contract Registry {
    /// One learner: the address allowed to write this nodeId, its sample cap and its latest
    /// local update. The first four fields share one storage slot (20 + 4 + 7 + 1 bytes), so
    /// checking the cap costs no extra storage read; the update's sample count is in its
    /// event (the only place readers take it from).
    struct Learner {
        address account;
        uint32 round;
        uint56 maxSamples;
        uint8 codec;
        bytes32 cidHash;
        bytes32 digest;
    }

    /// The latest global model.
    struct Global {
        uint32 round;
        uint8 codec;
        bytes32 cidHash;
        bytes32 digest;
        bytes32 inputsCommitment;
    }

    /// This contract's interface version (version 1 had no `version()`).
    uint256 public constant version = 4;
    /// SHA-256 of the canonical model spec every model of this federation follows; zero for
    /// the built-in paper CNN.
    bytes32 public immutable modelSpec;
    /// How many model groups the federation declares: 1 for one model (the default).
    uint256 public immutable modelGroups;
    /// 0: synchronous rounds. K > 0: asynchronous rounds, each global model built from at
    /// least K updates, whichever rounds they were trained for.
    uint256 public immutable asyncBuffer;
    /// Asynchronous rounds: how many global models an update's base may be behind the
    /// latest (0 in a synchronous federation).
    uint256 public immutable maxStaleness;
    /// The block the registry was deployed in: where readers of its events start.
    uint256 public immutable deployedAt;
    /// The federation-wide sample cap: a learner added without its own cap gets this one.
    uint256 public immutable defaultMaxSamples;
    /// The aggregator: publishes global models and manages learners.
    address public owner;
    /// The round that the next writes belong to; starts at 0 (the seeded global model).
    /// Shares the owner's slot, so a learner's update reads both with one cold load.
    uint32 public currentRound;

    /// The address `transferOwnership` named, until it accepts (zero when none).
    address public pendingOwner;

    mapping(uint256 => Learner) private learners;
    /// Registered node ids in no particular order, for `learnerIds()`; index + 1 by id.
    uint256[] private nodeIdList;
    mapping(uint256 => uint256) private nodeIdIndexPlusOne;
    /// Each learner's model group (0 until set; always 0 with one model). Kept apart from
    /// `Learner`, whose slot is full: an update never reads it.
    mapping(uint256 => uint256) public learnerGroup;
    Global private latestGlobal;

    error NotOwner(address caller);
    error ZeroAddress();
    error AlreadyRegistered(uint256 nodeId, address account);
    error UnknownLearner(uint256 nodeId);
    error NotLearner(uint256 nodeId, address caller);
    error WrongRound(uint256 given, uint256 current);
    error AlreadySubmitted(uint256 nodeId, uint256 round);
    error InvalidCid(bytes cid);
    error InvalidSamples(uint256 samples);
    error SamplesAboveCap(uint256 nodeId, uint256 samples, uint256 maxSamples);
    error InvalidCap(uint256 maxSamples);
    error NoRecord(uint256 round);
    error NotPendingOwner(address caller);
    error SeedHasInputs(uint256 count);
    error NoInputs(uint256 round);
    error NodeIdsNotAscending(uint256 index);
    error MissingLocalUpdate(uint256 nodeId, uint256 round);
    error NoGlobalModel();
    error InvalidMode(uint256 asyncBuffer, uint256 maxStaleness);
    error TooStale(uint256 round, uint256 current, uint256 maxStaleness);
    error OlderThanLatest(uint256 nodeId, uint256 round, uint256 latest);
    error TooFewInputs(uint256 count, uint256 asyncBuffer);
    error InvalidGroups(uint256 modelGroups);
    error InvalidGroup(uint256 nodeId, uint256 group, uint256 modelGroups);
    error GroupFixed(uint256 nodeId, uint256 round);

    /// `maxSamples`: the most samples an update of this learner may claim.
    event LearnerAdded(uint256 indexed nodeId, address indexed account, uint256 maxSamples);
    event LearnerRemoved(uint256 indexed nodeId, address indexed account);
    /// The learner trains model group `group` (0-based) of a federation of model groups.
    event LearnerGroupSet(uint256 indexed nodeId, uint256 group);
    /// A learner's board got a new key; its updates, round and cap stay.
    event LearnerAccountChanged(uint256 indexed nodeId, address indexed previousAccount, address indexed account);
    event OwnershipTransferStarted(address indexed owner, address indexed pendingOwner);
    event OwnershipTransferred(address indexed previousOwner, address indexed owner);
    /// `cid` is the binary CID (36 bytes); `samples` is the number of training examples.
    event LocalWeightSet(uint256 indexed nodeId, uint256 indexed round, bytes cid, bytes32 digest, uint256 samples);
    /// `nodeIds` lists, ascending, the learners whose round-`round` updates were the inputs of
    /// the aggregation rule; `record` is the round record (empty for round 0).
    event GlobalWeightSet(
        uint256 indexed round, bytes cid, bytes32 digest, bytes32 inputsCommitment, uint256[] nodeIds, bytes record
    );

    /// `maxSamples`: the federation-wide sample cap (1 to 2^56 - 1). `buffer` and
    /// `staleness`: 0 and 0 for synchronous rounds; K >= 1 and S < 2^32 for asynchronous ones.
    /// `spec`: the model spec's digest (zero: the built-in paper CNN). `groups`: 1, or for
    /// model groups 2 to 16 (then `spec` names the groups, and rounds are synchronous).
    constructor(uint256 maxSamples, uint256 buffer, uint256 staleness, bytes32 spec, uint256 groups) {
        if (groups == 0 || groups > 16 || (groups > 1 && (spec == bytes32(0) || buffer != 0))) revert InvalidGroups(groups);
        if (maxSamples == 0 || maxSamples > type(uint56).max) revert InvalidCap(maxSamples);
        if ((buffer == 0 && staleness != 0) || buffer > type(uint32).max || staleness > type(uint32).max) {
            revert InvalidMode(buffer, staleness);
        }
        deployedAt = block.number;
        defaultMaxSamples = maxSamples;
        asyncBuffer = buffer;
        maxStaleness = staleness;
        modelSpec = spec;
        modelGroups = groups;
        owner = msg.sender;
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    /// Binds `nodeId` to `account`; only that address may then write the node's updates, each
    /// claiming at most `maxSamples` samples (0: the federation-wide default).
    function addLearner(uint256 nodeId, address account, uint256 maxSamples) external onlyOwner {
        if (account == address(0)) revert ZeroAddress();
        if (maxSamples == 0) maxSamples = defaultMaxSamples;
        if (maxSamples > type(uint56).max) revert InvalidCap(maxSamples);
        Learner storage learner = learners[nodeId];
        if (learner.account != address(0)) revert AlreadyRegistered(nodeId, learner.account);
        learner.account = account;
        learner.maxSamples = uint56(maxSamples);
        if (nodeIdIndexPlusOne[nodeId] == 0) {
            nodeIdList.push(nodeId);
            nodeIdIndexPlusOne[nodeId] = nodeIdList.length;
        }
        emit LearnerAdded(nodeId, account, maxSamples);
    }

    /// Binds `nodeId` to a new address (a board's key leaked, or its SD card died): its
    /// latest update, round and cap stay, and only the new address may write from now on.
    function replaceLearnerAccount(uint256 nodeId, address account) external onlyOwner {
        if (account == address(0)) revert ZeroAddress();
        Learner storage learner = learners[nodeId];
        address previous = learner.account;
        if (previous == address(0)) revert UnknownLearner(nodeId);
        learner.account = account;
        emit LearnerAccountChanged(nodeId, previous, account);
    }

    /// First step of moving the registry to another key: names the new owner, who must then
    /// call `acceptOwnership` (so a mistyped address cannot take it). The zero address
    /// cancels a pending transfer.
    function transferOwnership(address newOwner) external onlyOwner {
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(owner, newOwner);
    }

    /// Second step: the named address takes over.
    function acceptOwnership() external {
        if (msg.sender != pendingOwner) revert NotPendingOwner(msg.sender);
        emit OwnershipTransferred(owner, msg.sender);
        owner = msg.sender;
        pendingOwner = address(0);
    }

    /// Unbinds `nodeId`; its past updates stay readable and in the event log.
    function removeLearner(uint256 nodeId) external onlyOwner {
        Learner storage learner = learners[nodeId];
        address account = learner.account;
        if (account == address(0)) revert UnknownLearner(nodeId);
        learner.account = address(0);
        uint256 index = nodeIdIndexPlusOne[nodeId] - 1;
        uint256 last = nodeIdList[nodeIdList.length - 1];
        nodeIdList[index] = last;
        nodeIdIndexPlusOne[last] = index + 1;
        nodeIdList.pop();
        delete nodeIdIndexPlusOne[nodeId];
        delete learnerGroup[nodeId];
        emit LearnerRemoved(nodeId, account);
    }

    /// Registers learner `nodeId` to model group `group` (0-based), before its first update:
    /// the group a learner's updates were trained for never changes under them.
    function setLearnerGroup(uint256 nodeId, uint256 group) external onlyOwner {
        Learner storage learner = learners[nodeId];
        if (learner.account == address(0)) revert UnknownLearner(nodeId);
        if (group >= modelGroups) revert InvalidGroup(nodeId, group, modelGroups);
        if (learner.round != 0) revert GroupFixed(nodeId, learner.round);
        learnerGroup[nodeId] = group;
        emit LearnerGroupSet(nodeId, group);
    }

    /// The paper's setter, with the round, the model file's SHA-256 digest and the number of
    /// training samples (1 up to the learner's cap). Only the address bound to `nodeId`, only
    /// for `round == currentRound` (local rounds start at 1; asynchronous rounds also accept
    /// up to `maxStaleness` rounds back), and once per node and round, rounds increasing: an
    /// update is never overwritten,
    /// so the inputs of a global model stay fixed and a restarted learner can see what it sent.
    function setLocalWeight(uint256 nodeId, uint256 round, bytes calldata cid, bytes32 digest, uint256 samples)
        external
    {
        uint256 current = currentRound;
        if (round == 0 || round > current) revert WrongRound(round, current);
        if (round != current) {
            if (asyncBuffer == 0) revert WrongRound(round, current);
            if (current - round > maxStaleness) revert TooStale(round, current, maxStaleness);
        }
        Learner storage learner = learners[nodeId];
        address account = learner.account;
        if (account == address(0)) revert UnknownLearner(nodeId);
        if (account != msg.sender) revert NotLearner(nodeId, msg.sender);
        uint256 latest = learner.round;
        if (latest == round) revert AlreadySubmitted(nodeId, round);
        if (latest > round) revert OlderThanLatest(nodeId, round, latest);
        if (samples == 0) revert InvalidSamples(samples);
        if (samples > learner.maxSamples) revert SamplesAboveCap(nodeId, samples, learner.maxSamples);
        uint8 codec = _checkCid(cid);
        learner.round = uint32(round);
        learner.codec = codec;
        learner.cidHash = bytes32(cid[4:36]);
        learner.digest = digest;
        emit LocalWeightSet(nodeId, round, cid, digest, samples);
    }

    /// The paper's getter: the CID (base32 text) of the node's latest local model, or "".
    function getLocalWeight(uint256 nodeId) external view returns (string memory) {
        Learner storage learner = learners[nodeId];
        if (learner.round == 0) return "";
        return _cidText(learner.codec, learner.cidHash);
    }

    /// The node's binding, its sample cap and its latest update (round 0 and an empty cid
    /// when it has none; the update's sample count is in its event).
    function localUpdate(uint256 nodeId)
        external
        view
        returns (address account, uint256 round, bytes memory cid, bytes32 digest, uint256 maxSamples)
    {
        Learner storage learner = learners[nodeId];
        account = learner.account;
        round = learner.round;
        if (round != 0) cid = _cidBytes(learner.codec, learner.cidHash);
        digest = learner.digest;
        maxSamples = learner.maxSamples;
    }

    /// The paper's setter for the global model of `round == currentRound`; advances the
    /// round. Round 0 is the seeded initial model and has no inputs; every later round lists,
    /// strictly ascending, the node ids whose round-`round` updates it averages (any
    /// non-empty subset of the learners that submitted), the round record, and a commitment to
    /// both: keccak256(abi.encode(Input[], bytes record)) with Input = (uint256 nodeId,
    /// uint256 round, string cid, bytes32 digest, uint256 samples), cid in base32 text
    /// (version 1: keccak256(abi.encode(Input[])), no record), inputs ordered by (nodeId,
    /// round). An asynchronous round lists at least `asyncBuffer` inputs, node ids strictly
    /// ascending (one update per learner), each of a learner whose latest update is at most
    /// `maxStaleness + 1` rounds old; the record names each input's round, and the
    /// commitment binds them.
    function setGlobalWeight(
        uint256 round,
        bytes calldata cid,
        bytes32 digest,
        bytes32 inputsCommitment,
        uint256[] calldata nodeIds,
        bytes calldata record
    ) external onlyOwner {
        uint256 current = currentRound;
        if (round != current) revert WrongRound(round, current);
        if (round == 0) {
            if (nodeIds.length != 0) revert SeedHasInputs(nodeIds.length);
        } else if (asyncBuffer == 0) {
            if (nodeIds.length == 0) revert NoInputs(round);
            if (record.length == 0) revert NoRecord(round);
            for (uint256 i = 0; i < nodeIds.length; i++) {
                if (i > 0 && nodeIds[i] <= nodeIds[i - 1]) revert NodeIdsNotAscending(i);
                if (learners[nodeIds[i]].round != round) revert MissingLocalUpdate(nodeIds[i], round);
            }
        } else {
            if (nodeIds.length < asyncBuffer) revert TooFewInputs(nodeIds.length, asyncBuffer);
            if (record.length == 0) revert NoRecord(round);
            for (uint256 i = 0; i < nodeIds.length; i++) {
                if (i > 0 && nodeIds[i] <= nodeIds[i - 1]) revert NodeIdsNotAscending(i);
                // An update consumed now was sent while round - 1 or round was current.
                uint256 latest = learners[nodeIds[i]].round;
                if (latest == 0 || latest + maxStaleness + 1 < round) revert MissingLocalUpdate(nodeIds[i], round);
            }
        }
        uint8 codec = _checkCid(cid);
        latestGlobal = Global({
            round: uint32(round),
            codec: codec,
            cidHash: bytes32(cid[4:36]),
            digest: digest,
            inputsCommitment: inputsCommitment
        });
        currentRound = uint32(round + 1);
        emit GlobalWeightSet(round, cid, digest, inputsCommitment, nodeIds, record);
    }

    /// The paper's getter: the CID (base32 text) of the latest global model, or "".
    function getGlobalWeight() external view returns (string memory) {
        if (currentRound == 0) return "";
        return _cidText(latestGlobal.codec, latestGlobal.cidHash);
    }

    /// The latest global model; reverts with NoGlobalModel before round 0 is published.
    function globalUpdate()
        external
        view
        returns (uint256 round, bytes memory cid, bytes32 digest, bytes32 inputsCommitment)
    {
        if (currentRound == 0) revert NoGlobalModel();
        Global storage g = latestGlobal;
        return (g.round, _cidBytes(g.codec, g.cidHash), g.digest, g.inputsCommitment);
    }

    /// The node ids currently bound to an address, in no particular order.
    function learnerIds() external view returns (uint256[] memory) {
        return nodeIdList;
    }

    /// Checks a binary CIDv1 with a one-byte codec and a SHA-256 multihash; returns the codec.
    function _checkCid(bytes calldata cid) private pure returns (uint8 codec) {
        if (cid.length != 36 || cid[0] != 0x01 || cid[2] != 0x12 || cid[3] != 0x20) revert InvalidCid(cid);
        codec = uint8(cid[1]);
        if (codec == 0 || codec >= 0x80) revert InvalidCid(cid);
    }

    function _cidBytes(uint8 codec, bytes32 hash) private pure returns (bytes memory) {
        return abi.encodePacked(uint8(0x01), codec, uint8(0x12), uint8(0x20), hash);
    }

    /// Multibase 'b' + RFC 4648 base32, lower case, no padding: the text form IPFS prints.
    function _cidText(uint8 codec, bytes32 hash) private pure returns (string memory) {
        bytes memory raw = _cidBytes(codec, hash);
        bytes memory alphabet = "abcdefghijklmnopqrstuvwxyz234567";
        bytes memory out = new bytes(1 + (raw.length * 8 + 4) / 5);
        out[0] = "b";
        uint256 buffer;
        uint256 bits;
        uint256 o = 1;
        for (uint256 i = 0; i < raw.length; i++) {
            // Shifts never revert; bits above the ones still needed just fall off the top.
            buffer = (buffer << 8) | uint8(raw[i]);
            bits += 8;
            while (bits >= 5) {
                bits -= 5;
                out[o++] = alphabet[(buffer >> bits) & 31];
            }
        }
        if (bits > 0) out[o] = alphabet[(buffer << (5 - bits)) & 31];
        return string(out);
    }
}
