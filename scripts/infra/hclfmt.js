#!/usr/bin/env node
// Canonical HCL formatting check for terraform/ and packer/.
//
// Uses @cdktf/hcl-tools, HashiCorp's WebAssembly build of hclwrite.Format, the function
// `terraform fmt` and `packer fmt` are built on. Usage:
//   hclfmt.js --check FILE...   print a diff-like report of each unformatted file, exit 1 if any
//   hclfmt.js --write FILE...   rewrite files in canonical form
// NODE_PATH must point at the node_modules holding @cdktf/hcl-tools (scripts/check-infra sets it).
"use strict";
const fs = require("fs");
const { format } = require("@cdktf/hcl-tools");

function firstDifference(a, b) {
  const la = a.split("\n");
  const lb = b.split("\n");
  for (let i = 0; i < Math.max(la.length, lb.length); i++) {
    if (la[i] !== lb[i]) {
      return { line: i + 1, have: la[i], want: lb[i] };
    }
  }
  return null;
}

async function main() {
  const [mode, ...files] = process.argv.slice(2);
  if ((mode !== "--check" && mode !== "--write") || files.length === 0) {
    console.error("usage: hclfmt.js --check|--write FILE...");
    process.exit(2);
  }
  let bad = 0;
  for (const file of files) {
    const src = fs.readFileSync(file, "utf8");
    const out = await format(src);
    if (out === src) continue;
    if (mode === "--write") {
      fs.writeFileSync(file, out);
      console.log(`formatted ${file}`);
      continue;
    }
    bad++;
    const d = firstDifference(src, out);
    console.log(`not canonically formatted: ${file}`);
    if (d) {
      console.log(`  line ${d.line}: have ${JSON.stringify(d.have)}`);
      console.log(`  line ${d.line}: want ${JSON.stringify(d.want)}`);
    }
  }
  if (bad > 0) {
    console.log(`${bad} file(s) not formatted; fix with: scripts/check-infra --fmt-write`);
    process.exit(1);
  }
  console.log(`hcl format: ${files.length} file(s) canonical`);
}

main().catch((e) => {
  console.error(`hclfmt: ${e && e.stack ? e.stack : e}`);
  process.exit(2);
});
