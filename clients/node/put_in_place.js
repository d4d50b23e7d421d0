'use strict';
// A download's last step, as the Python SDK's tessera.transfer.put_in_place: its checked temp
// file takes the target's name.

const fs = require('node:fs');

// What linking answers on a filesystem without hard links (FAT, some SMB and FUSE mounts), as the
// Python SDK's _NO_HARD_LINKS: there the name is taken by check-then-rename.
const NO_HARD_LINKS = new Set(['EPERM', 'EXDEV', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

// The refusal of a file already at `file` (overwrite: false).
function fileExists(file) {
  return Object.assign(new Error(`${file} exists; not overwritten (overwrite: false)`), { code: 'EEXIST' });
}

// The finished temp file `partial` becomes `file`. Unless `overwrite`, a file at `file` by now is
// refused (EEXIST): a hard link takes the name only where it is free, in one step, so a file that
// appeared at any moment before is kept. `partial` is left for the caller to remove unless it was
// renamed. `link` is fs.linkSync; a test gives one that fails as a filesystem's would.
function putInPlace(partial, file, overwrite, link = fs.linkSync) {
  if (overwrite) {
    fs.renameSync(partial, file);
    return;
  }
  try {
    link(partial, file);
  } catch (err) {
    if (err.code === 'EEXIST') throw fileExists(file);
    if (!NO_HARD_LINKS.has(err.code)) throw err;
    // No hard links here: check, then rename. A file created between the two is replaced.
    if (fs.existsSync(file)) throw fileExists(file);
    fs.renameSync(partial, file);
  }
}

module.exports = { putInPlace, fileExists };
