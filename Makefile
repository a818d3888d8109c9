# The two commands a new user needs:
#   make demo   runs the federation (local chain + private IPFS network + aggregator + learners)
#   make test   runs every test
# Both install what they need first (pinned npm packages, MNIST, cross toolchains).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all setup build test demo paper bench bench-generic bench-rules bench-vs-keras bench-fleet bench-async bench-ensemble bench-compression cross package bench-cross check-fresh clean

all: build

## Pinned npm parts (anvil, solc, js-ipfs) and MNIST in data/mnist.
setup:
	bash tests/devnet/setup.sh

build:
	$(CARGO) build --workspace --release

## Every test: unit tests, real-node tests (anvil, IPFS), emulated ARM agents.
test: setup
	bash .ci/test.sh

## The main job: the paper's experiment on a local chain and private IPFS network.
demo: setup
	bash tests/devnet/demo.sh $(ARGS)

## The full paper experiment (long): 2 learners, 5 rounds x 5 local epochs, plus 25-epoch single node.
paper: setup
	bash tests/devnet/paper.sh $(ARGS)

## Training / evaluation throughput and peak memory of the agent.
bench: setup
	bash agent/core/bench/bench.sh

## The paper's CNN through the generic (model spec) network against the specialised one it replaced, same run.
bench-generic: setup
	bash agent/core/bench/generic.sh

## Time, peak memory and disk of each aggregation rule (fedavg, median, trimmed mean, krum, multi-krum) for 10-100 updates.
bench-rules:
	bash agent/core/bench/rules.sh $(ARGS)

## The aggregator's round overhead by phase and its peak memory for 10, 50 and 100 learners, 1 vs 4 fetch workers;
## then bench-async.
bench-fleet: setup
	bash tests/devnet/bench-fleet.sh $(ARGS)
	bash tests/devnet/bench-async.sh

## Time to 97% global accuracy, 10 learners with a third 4x slower: synchronous rounds against asynchronous ones (K = 5, S = 4).
bench-async: setup
	bash tests/devnet/bench-async.sh

## Heterogeneous models: the paper's CNN and a small dense network as two model groups, each alone against their ensemble.
bench-ensemble: setup
	bash tests/devnet/bench-ensemble.sh

## Compressed updates: bytes, encode/decode time and IPFS transfer (loopback and a 1 MB/s link) per encoding, and the paper's 5x5 accuracy per encoding over 3 seeds (long: about 2 hours).
bench-compression: setup
	bash tests/devnet/bench-compression.sh $(ARGS)

## The agent against Keras (tensorflow-cpu) on the same CPU, same run.
bench-vs-keras: setup
	bash agent/core/bench/vs-keras.sh

## Raspberry Pi builds (aarch64, armv7) and their .deb and tarball packages in target/cross/,
## with the aggregator's .deb for servers (amd64) and Pi 5 header nodes (arm64).
cross:
	bash cross/build.sh

## Every package (the same as `make cross`).
package: cross

## Binary sizes, memory and start-up time of the cross builds.
bench-cross: cross setup
	bash cross/bench.sh

## The install steps on a fresh Debian 12 root (debootstrap; root, network to Debian and npm).
check-fresh:
	bash tests/devnet/check-fresh.sh

clean:
	$(CARGO) clean
	rm -rf demo-out
