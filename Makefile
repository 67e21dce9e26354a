# The two set-up commands are `make demo` and `make test`; both run as root on Debian 12.
SHELL := /bin/bash
ENV_FILE ?= /var/lib/m8trx-test/env
export M8TRX_TEST_ENV_FILE := $(ENV_FILE)

.PHONY: test demo demo-down fmt-check clippy test-env unit build infra-check bench-proxy

## test: formatting, lints, the real test environment, then every test of the workspace.
test: fmt-check clippy test-env infra-check
	set -a && . "$(ENV_FILE)" && set +a && cargo test --workspace

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

build:
	cargo build --workspace --release

## bench-proxy: sni-proxy vs HAProxy, nginx stream, sniproxy and direct on loopback (not part of test).
bench-proxy: test-env
	cargo bench -p sni-proxy --bench compare

## demo: a local shared host with two demo tenants behind sni-proxy; prints how to reach them.
demo: build
	@scripts/demo

## demo-down: remove everything `make demo` made.
demo-down:
	@scripts/demo down
