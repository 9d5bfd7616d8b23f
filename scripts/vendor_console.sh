#!/usr/bin/env bash
# Refreshes the console's third-party browser libraries from the npm registry, at the
# versions pinned here, into src/modelyard/console/static/vendor/ (with their licences).
# The console needs no Node.js to run; this script needs npm only when a pin changes.
set -euo pipefail
cd "$(dirname "$0")/.."

MARKED=18.3.0            # Markdown → HTML (MIT)
DOMPURIFY=3.5.0          # HTML sanitizer: model output is shown, never run (MPL-2.0 or Apache-2.0)
HIGHLIGHT=11.12.0        # code highlighting, common languages (BSD-3-Clause)

out=src/modelyard/console/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "marked@$MARKED" "dompurify@$DOMPURIFY" \
    "@highlightjs/cdn-assets@$HIGHLIGHT" >/dev/null)
for tgz in "$work"/*.tgz; do
    mkdir -p "${tgz%.tgz}" && tar xzf "$tgz" -C "${tgz%.tgz}"
done
rm -rf "$out" && mkdir -p "$out"
m="$work/marked-$MARKED/package"
d="$work/dompurify-$DOMPURIFY/package"
h="$work/highlightjs-cdn-assets-$HIGHLIGHT/package"
cp "$m/lib/marked.esm.js" "$out/marked.esm.js"
cp "$m/LICENSE" "$out/LICENSE.marked"
cp "$d/dist/purify.es.mjs" "$out/purify.es.mjs"
cp "$d/LICENSE" "$out/LICENSE.dompurify"
cp "$h/es/highlight.min.js" "$out/highlight.min.js"
cp "$h/styles/github.min.css" "$out/highlight-light.min.css"
cp "$h/styles/github-dark.min.css" "$out/highlight-dark.min.css"
cp "$h/LICENSE" "$out/LICENSE.highlight"
sed -i "/sourceMappingURL/d" "$out"/*.js "$out"/*.mjs  # the maps are not shipped
cat > "$out/VERSIONS" <<VERSIONS
marked $MARKED (MIT)
dompurify $DOMPURIFY (MPL-2.0 OR Apache-2.0)
@highlightjs/cdn-assets $HIGHLIGHT (BSD-3-Clause)
refreshed by scripts/vendor_console.sh
VERSIONS
echo "vendored into $out:"; ls -l "$out"
