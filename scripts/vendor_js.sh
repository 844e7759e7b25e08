#!/bin/sh
# Refresh the browser libraries vendored under static/vendor/ from the npm registry.
#
#   sh scripts/vendor_js.sh
#
# The versions are pinned exactly in scripts/vendor/package.json and locked, with their
# integrity hashes, in scripts/vendor/package-lock.json. To upgrade: change a version there,
# run `npm install --package-lock-only --ignore-scripts` in scripts/vendor/, run this script,
# check the chat page (tests/test_chat_rendering.py), and commit static/vendor/ with the lock.
#
# Only this script needs npm (and network access); the site serves the committed files, and
# neither `make run` nor `make test` nor CI runs it.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
vendor="$root/static/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

cp "$root/scripts/vendor/package.json" "$root/scripts/vendor/package-lock.json" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
modules="$work/node_modules"

version() {
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$modules/$1/package.json"
}

# copy <package> <file in the package> <directory under static/vendor>
copy() {
    mkdir -p "$vendor/$3"
    cp "$modules/$1/$2" "$vendor/$3/"
}

rm -rf "$vendor/markdown-it" "$vendor/dompurify" "$vendor/highlight.js"

# markdown-it: the UMD build (no dependencies to resolve; it sets globalThis.markdownit), the
# same release markdown-it-py ports (markdown_it/port.yaml), so client and server parse alike.
copy markdown-it dist/markdown-it.min.js markdown-it
copy markdown-it LICENSE markdown-it
# The build bundles these packages; their licences travel with it.
for dependency in entities linkify-it mdurl punycode.js uc.micro; do
    mkdir -p "$vendor/markdown-it/bundled"
    for licence in "$modules/$dependency"/LICENSE*; do
        cp "$licence" "$vendor/markdown-it/bundled/LICENSE.$dependency"
    done
done

# DOMPurify: the ES module build, with its source map (the file names it).
copy dompurify dist/purify.es.mjs dompurify
copy dompurify dist/purify.es.mjs.map dompurify
copy dompurify LICENSE dompurify
copy dompurify LICENSE-MPL dompurify

# highlight.js: the ES module build with the common languages registered.
copy @highlightjs/cdn-assets es/highlight.min.js highlight.js
copy @highlightjs/cdn-assets LICENSE highlight.js

cat > "$vendor/README.md" <<EOF
# Vendored browser libraries

Written by \`scripts/vendor_js.sh\` from the npm registry, at the exact versions pinned in
\`scripts/vendor/package.json\` (integrity hashes in \`scripts/vendor/package-lock.json\`). Do
not edit these files by hand: change the pin and run the script. The site serves them as they
are; no build step, no npm at run time.

| library | version | npm package | file here ← file in the package | licence |
| --- | --- | --- | --- | --- |
| markdown-it | $(version markdown-it) | \`markdown-it\` | \`markdown-it/markdown-it.min.js\` ← \`dist/markdown-it.min.js\` | MIT (\`markdown-it/LICENSE\`); bundles entities (BSD-2-Clause), linkify-it, mdurl, punycode.js, uc.micro (MIT): \`markdown-it/bundled/\` |
| DOMPurify | $(version dompurify) | \`dompurify\` | \`dompurify/purify.es.mjs\` ← \`dist/purify.es.mjs\` (and its \`.map\`) | Apache-2.0 or MPL-2.0 (\`dompurify/LICENSE\`, \`dompurify/LICENSE-MPL\`) |
| highlight.js | $(version @highlightjs/cdn-assets) | \`@highlightjs/cdn-assets\` | \`highlight.js/highlight.min.js\` ← \`es/highlight.min.js\` | BSD-3-Clause (\`highlight.js/LICENSE\`) |

Used by \`static/conversations/render.js\`. The highlight.js colours in
\`static/conversations/markdown.css\` follow its GitHub and GitHub Dark themes (same licence).
EOF

echo "static/vendor/ refreshed:"
(cd "$vendor" && find . -type f | sort)
