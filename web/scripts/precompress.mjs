// Writes a gzip sibling (`app.js.gz`) next to each compressible file of dist/, which the `web`
// edge function serves to browsers that accept gzip: compressed once at build time rather than
// on every request.
import { readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync, constants } from "node:zlib";

const DIST = new URL("../dist/", import.meta.url).pathname;
const COMPRESSIBLE = /\.(html|js|mjs|css|json|svg|map|txt)$/;
const MIN_BYTES = 512;

async function* files(dir) {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      yield* files(path);
    } else if (entry.isFile()) {
      yield path;
    }
  }
}

let written = 0;
for await (const path of files(DIST)) {
  if (!COMPRESSIBLE.test(path) || (await stat(path)).size < MIN_BYTES) {
    continue;
  }
  const body = await readFile(path);
  const compressed = gzipSync(body, { level: constants.Z_BEST_COMPRESSION });
  // Only worth a second file when it is clearly smaller.
  if (compressed.length < body.length * 0.9) {
    await writeFile(`${path}.gz`, compressed);
    written++;
  }
}
console.log(`precompressed ${written} files`);
