#!/usr/bin/env bash
# Vendors the browser UI's third-party JavaScript into web-static/vendor/ (or into $1) from
# the npm registry, at the versions pinned below, and writes web-static/vendor/README.md.
# Each tarball's sha512 must match the one pinned here; `//# sourceMappingURL` lines are
# dropped (no .map files are vendored); then every vendored ES module is parsed and each of
# its imports must resolve to a vendored file (the one bare import allowed is "preact", in
# preact/hooks.module.js, which the page's import map resolves). Re-running it gives
# byte-identical files. Needs node and npm; runs no cargo.
#
# To move to a new version: change its line below, take the new sha512 from
# `npm view <package>@<version> dist.integrity`, run this script, and look at `git diff`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-web-static/vendor}")

# name | npm package | version | tarball sha512 (npm's dist.integrity)
pins=(
  "preact|preact|10.29.8|sha512-ej2aVZ+vZ8WO7tvlQWRM9N63A0KzF9q4mWJfDUHgYaIofWY9hu74QdnQrjoPMmZi2/nZ5gN0bJCQF49xQqx09Q=="
  "htm|htm|3.1.1|sha512-983Vyg8NwUE7JkZ6NmOqpCZ+sh1bKv2iYTlUkzlWmA5JD2acKoxd4KVxbMmxX/85mtfdnDmTFoNKcg5DGAvxNQ=="
  "uplot|uplot|1.6.32|sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
  "novnc|@novnc/novnc|1.7.0|sha512-ucEJOx4T2avIRCleodk7YobZj5O2Ga2AeLfQ69A/yjG9HHba2+PDgwSkN3FttrmG+70ZGx21sElNFouK13RzyA=="
  "xterm|@xterm/xterm|6.0.0|sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg=="
  "xterm-fit|@xterm/addon-fit|0.11.0|sha512-jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g=="
  "uqr|uqr|0.1.3|sha512-0rjE8iEJe4YmT9TOhwsZtqCMRLc5DXZUI2UEYUUg63ikBkqqE5EYWaI0etFe/5KUcmcYwLih2RND1kq+hrUJXA=="
)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stage=$tmp/vendor
mkdir -p "$stage"

declare -A ver pkg src
for line in "${pins[@]}"; do
  IFS='|' read -r name package version integrity <<<"$line"
  ver[$name]=$version pkg[$name]=$package
  mkdir -p "$tmp/pack/$name" "$tmp/src/$name"
  (cd "$tmp/pack/$name" && npm pack --silent "$package@$version" >/dev/null)
  tgz=$(echo "$tmp/pack/$name"/*.tgz)
  got=sha512-$(node -e 'process.stdout.write(require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$tgz")
  if [ "$got" != "$integrity" ]; then
    echo "vendor-web: $package@$version: tarball is $got, pinned $integrity" >&2
    exit 1
  fi
  tar -xzf "$tgz" -C "$tmp/src/$name"
  src[$name]=$tmp/src/$name/package
done

take() { # take NAME FROM TO: copy FROM (in NAME's package) to TO (under the output)
  mkdir -p "$(dirname "$stage/$3")"
  cp -r "${src[$1]}/$2" "$stage/$3"
}
take preact dist/preact.module.js preact/preact.module.js
take preact hooks/dist/hooks.module.js preact/hooks.module.js
take preact LICENSE preact/LICENSE
take htm dist/htm.module.js htm/htm.module.js
take htm LICENSE htm/LICENSE
take uplot dist/uPlot.esm.js uplot/uPlot.esm.js
take uplot dist/uPlot.min.css uplot/uPlot.min.css
take uplot LICENSE uplot/LICENSE
# noVNC's ES module sources: core/ and the pako modules core/inflator.js and
# core/deflator.js import (../vendor/pako/...), at the same relative paths.
take novnc core novnc/core
take novnc vendor/pako/lib novnc/vendor/pako/lib
take novnc vendor/pako/LICENSE novnc/vendor/pako/LICENSE
take novnc LICENSE.txt novnc/LICENSE
take novnc docs/LICENSE.MPL-2.0 novnc/LICENSE.MPL-2.0
take novnc AUTHORS novnc/AUTHORS
take xterm lib/xterm.mjs xterm/xterm.mjs
take xterm css/xterm.css xterm/xterm.css
take xterm LICENSE xterm/LICENSE
take xterm-fit lib/addon-fit.mjs xterm/addon-fit.mjs
take xterm-fit LICENSE xterm/LICENSE.addon-fit
take uqr dist/index.mjs uqr/index.mjs
take uqr LICENSE uqr/LICENSE

find "$stage" -type f \( -name '*.js' -o -name '*.mjs' -o -name '*.css' \) -exec \
  sed -i -e '/^\/\/# sourceMappingURL=/d' -e '/^\/\*# sourceMappingURL=.*\*\/$/d' {} +
if grep -rl 'sourceMappingURL' "$stage" >&2; then
  echo "vendor-web: a sourceMappingURL is left in the files above" >&2
  exit 1
fi
find "$stage" -type d -exec chmod 755 {} +
find "$stage" -type f -exec chmod 644 {} +

# Every vendored ES module parses as one (node's own parser, vm.SourceTextModule), and each
# static import/export-from and literal import() resolves to a vendored file.
cat >"$tmp/check.mjs" <<'EOF'
import vm from 'node:vm';
import fs from 'node:fs';
import path from 'node:path';
const root = path.resolve(process.argv[2]);
const allowedBare = { 'preact/hooks.module.js': ['preact'] };
const walk = d => fs.readdirSync(d, { withFileTypes: true }).flatMap(e =>
  e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]);
let bad = 0, files = 0, edges = 0;
for (const f of walk(root).filter(f => /\.m?js$/.test(f)).sort()) {
  const rel = path.relative(root, f), src = fs.readFileSync(f, 'utf8');
  let specs;
  try { specs = [...new vm.SourceTextModule(src, { identifier: f }).dependencySpecifiers]; }
  catch (e) { console.log(`${rel}: does not parse as an ES module: ${e.message}`); bad++; continue; }
  for (const m of src.matchAll(/\bimport\s*\(\s*(['"`])([^'"`]+)\1\s*\)/g)) specs.push(m[2]);
  files++;
  for (const s of specs) {
    edges++;
    if (/^\.{1,2}\//.test(s)) {
      const t = path.resolve(path.dirname(f), s);
      if (!t.startsWith(root + path.sep) || !fs.statSync(t, { throwIfNoEntry: false })?.isFile()) {
        console.log(`${rel}: import '${s}' resolves to no vendored file`); bad++;
      }
    } else if (!(allowedBare[rel] || []).includes(s)) {
      console.log(`${rel}: bare or absolute import '${s}'`); bad++;
    }
  }
}
console.log(`vendor-web: import check: ${files} modules, ${edges} imports, ${bad} problems`);
process.exit(bad ? 1 : 0);
EOF
node --no-warnings --experimental-vm-modules "$tmp/check.mjs" "$stage"

# README.md: what is here, at which version, and how big.
size() { wc -c <"$1" | tr -d ' '; }
gz() { gzip -9 -c "$1" | wc -c | tr -d ' '; }
row() { # row NAME LICENSE FROM TO...: one table row per file
  local name=$1 license=$2; shift 2
  while [ $# -gt 0 ]; do
    echo "| ${pkg[$name]} | ${ver[$name]} | $license | \`$1\` | \`$2\` | $(size "$stage/$2") | $(gz "$stage/$2") |"
    shift 2
  done
}
sum_gz() { local t=0 f; for f in "$@"; do t=$((t + $(gz "$stage/$f"))); done; echo $t; }
sum_size() { local t=0 f; for f in "$@"; do t=$((t + $(size "$stage/$f"))); done; echo $t; }
mapfile -t novnc_js < <(cd "$stage" && find novnc -name '*.js' | LC_ALL=C sort)
first=(preact/preact.module.js preact/hooks.module.js htm/htm.module.js uplot/uPlot.esm.js uplot/uPlot.min.css)
{
  cat <<EOF
# Vendored browser libraries

Written by \`scripts/vendor-web.sh\`; do not edit by hand. The page's import map
(\`web-static/index.html\`) names these files; nothing here is built or bundled. The
\`//# sourceMappingURL\` lines are dropped (no \`.map\` files are vendored), and every ES module
here was checked to import only vendored files by relative path, but for
\`preact/hooks.module.js\`, which imports \`"preact"\` through the import map.

| npm package | version | license (SPDX) | file in the package | file here | bytes | gzip -9 bytes |
| --- | --- | --- | --- | --- | ---: | ---: |
EOF
  row preact MIT dist/preact.module.js preact/preact.module.js hooks/dist/hooks.module.js preact/hooks.module.js
  row htm Apache-2.0 dist/htm.module.js htm/htm.module.js
  row uplot MIT dist/uPlot.esm.js uplot/uPlot.esm.js dist/uPlot.min.css uplot/uPlot.min.css
  echo "| ${pkg[novnc]} | ${ver[novnc]} | MPL-2.0 (pako: MIT) | \`core/**/*.js\`, \`vendor/pako/lib/**/*.js\` | \`novnc/core/\`, \`novnc/vendor/pako/lib/\` (${#novnc_js[@]} files; entry \`novnc/core/rfb.js\`) | $(sum_size "${novnc_js[@]}") | $(sum_gz "${novnc_js[@]}") |"
  row xterm MIT lib/xterm.mjs xterm/xterm.mjs css/xterm.css xterm/xterm.css
  row xterm-fit MIT lib/addon-fit.mjs xterm/addon-fit.mjs
  row uqr MIT dist/index.mjs uqr/index.mjs
  cat <<EOF

The gzip column for noVNC adds up the files one by one (the browser fetches each module on
its own). First load (preact, hooks, htm, uPlot's JS and CSS): $(sum_size "${first[@]}") bytes,
$(sum_gz "${first[@]}") bytes gzipped. noVNC, xterm.js and uqr load only on the pages that use them.

Licenses, beside the files: \`preact/LICENSE\`, \`htm/LICENSE\`, \`uplot/LICENSE\`,
\`novnc/LICENSE\` (noVNC's LICENSE.txt, with \`novnc/LICENSE.MPL-2.0\` and \`novnc/AUTHORS\`
it refers to), \`novnc/vendor/pako/LICENSE\`, \`xterm/LICENSE\`, \`xterm/LICENSE.addon-fit\`,
\`uqr/LICENSE\`.

Why these versions:
- preact: the newest 10.x (11 is out, but the UI is written against 10). htm: newest 3.x.
  uPlot: newest 1.6.x.
- noVNC 1.7.0: the npm packages of 1.5.0 and 1.6.0 ship only the Babel-built CommonJS
  \`lib/\`; 1.4.0 and 1.7.0 ship the ES module sources under \`core/\`, and 1.7.0 is the newest.
- xterm.js 6.0.0 with addon-fit 0.11.0: 5.5.0 and addon-fit 0.10.0 ship only UMD bundles
  (\`lib/xterm.js\`); 6.0.0 is the first release with the ES module build \`lib/xterm.mjs\`.

## Refreshing

\`\`\`sh
npm view preact@10 version            # newest 10.x (likewise htm@3, uplot@1.6, @novnc/novnc,
                                      # @xterm/xterm, @xterm/addon-fit, uqr)
npm view preact@10.29.8 dist.integrity
# put the version and its integrity on the package's line in scripts/vendor-web.sh, then:
bash scripts/vendor-web.sh            # rewrites web-static/vendor/ and this README
git diff --stat web-static/vendor/
\`\`\`

\`bash scripts/vendor-web.sh /some/dir\` writes the same tree elsewhere, to compare.
EOF
} >"$stage/README.md"

mkdir -p "$out"
for d in preact htm uplot novnc xterm uqr; do rm -rf "${out:?}/$d"; done
cp -r "$stage"/. "$out"/
echo "vendor-web: wrote $out"
