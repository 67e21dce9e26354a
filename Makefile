# The two set-up commands are `make demo` and `make test`; both run as root on Debian 12.
SHELL := /bin/bash
ENV_FILE ?= /var/lib/m8trx-test/env
export M8TRX_TEST_ENV_FILE := $(ENV_FILE)

.PHONY: test demo demo-build demo-down fmt-check clippy test-env unit build infra-check bench-proxy bench-scale-to-zero bench-fairness vm-test vm-image fuzz-compose fuzz-proxy

## test: formatting, lints, the real test environment, every test of the workspace, then the VM tier.
test: fmt-check clippy test-env infra-check
	set -a && . "$(ENV_FILE)" && set +a && cargo test --workspace --exclude m8trx-vm
	$(MAKE) vm-test

## vm-image: the VM tier's Debian 12 base disk (debootstrap + packer's 10/20 scripts), cached by input hash.
vm-image: test-env
	scripts/vm-image

## vm-test: the shared host in a production-shaped guest (systemd, cgroup v2, AppArmor, nf_tables); prints its evidence.
vm-test: test-env vm-image
	cargo build --workspace --bins
	set -a && . "$(ENV_FILE)" && set +a && cargo test -p m8trx-vm -- --nocapture

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

## infra-check: terraform/ and packer/: HCL format, parsing, IAM policy evaluation, checkov (scripts/check-infra).
infra-check:
	scripts/check-infra

## test-env: install packages, start containerd/dockerd/moto, build test images (idempotent).
test-env:
	scripts/test-env

## build: release binaries for the AMI (packer reads target/release).
build:
	cargo build --workspace --release

## demo-build: the three daemons the demo runs, in the dev profile (fast to build, and shared with `make test`).
demo-build:
	cargo build -p hostd -p sni-proxy -p cred-broker --bins

## bench-proxy: sni-proxy vs HAProxy, nginx stream, sniproxy and direct on loopback (not part of test).
bench-proxy: test-env
	cargo bench -p sni-proxy --bench compare

## bench-scale-to-zero: wake latency (frozen, asleep) against docker unpause and a cold docker
## start, and the host cost of N tenants awake and 90% asleep (not part of test).
## M8TRX_BENCH_ROUNDS (20), M8TRX_BENCH_TENANTS (10), M8TRX_BENCH_WINDOW (20 s).
bench-scale-to-zero: test-env
	cargo build --release -p sni-proxy
	set -a && . "$(ENV_FILE)" && set +a && cargo bench -p hostd --bench scale_to_zero

## bench-fairness: a quiet tenant's p99 through sni-proxy while its neighbour saturates cpu,
## memory, io, egress and new connections, as ratios to its idle-neighbour baseline (not part of test).
bench-fairness: test-env
	cargo build --release -p sni-proxy
	set -a && . "$(ENV_FILE)" && set +a && cargo bench -p hostd --bench fairness

## fuzz-compose: libFuzzer on hostd's compose loader, policy and plan (nightly + cargo-fuzz; not part of test).
## FUZZ_RUNS (default 10000000) executions, seeded with the compose battery; prints the figure at the end.
FUZZ_RUNS ?= 10000000
fuzz-compose:
	mkdir -p hostd/fuzz/corpus/compose_check
	cp hostd/tests/compose/hostile/*.yml hostd/tests/compose/benign/*.yml hostd/fuzz/corpus/compose_check/
	cd hostd/fuzz && cargo +nightly fuzz run compose_check corpus/compose_check -- -runs=$(FUZZ_RUNS) -max_len=8192 -rss_limit_mb=2048

## fuzz-proxy: libFuzzer on sni-proxy's ClientHello reader (against rustls), PROXY v2 header
## (against the ppp crate) and :80 service (nightly + cargo-fuzz; not part of test). FUZZ_RUNS each.
fuzz-proxy:
	cd sni-proxy/fuzz && for t in client_hello proxy_header http80_request; do \
	  mkdir -p corpus/$$t && cp -n seeds/$$t/* corpus/$$t/ 2>/dev/null; \
	  cargo +nightly fuzz run $$t corpus/$$t -- -runs=$(FUZZ_RUNS) -max_len=16400 -rss_limit_mb=2048 || exit 1; \
	done

## demo: a local shared host with two demo tenants behind sni-proxy; prints how to reach them.
## Ports: M8TRX_DEMO_TLS_PORT (8443), M8TRX_DEMO_HTTP_PORT (8080) and the others scripts/demo lists.
demo: demo-build
	@scripts/demo

## demo-down: remove everything `make demo` made.
demo-down:
	@scripts/demo down
