'use strict';
// A download's temp file, as the Python SDK's tessera.transfer.PartialFile: written whole with its
// errors naming the file asked for, then, checked and synced, it takes the target's name.

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
// appeared at any moment before is kept; `partial`'s name is then removed, and on a refusal left
// for the caller to remove. `link` is fs.linkSync; a test gives one that fails as a filesystem's
// would.
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
    return;
  }
  fs.unlinkSync(partial);
}

// `chunk` written whole to `handle`, the temp file of `file`, from byte `position` on. write()
// writes part of a chunk where the disk fills midway, saying so only in bytesWritten; written on,
// the rest meets ENOSPC.
async function writeAll(handle, chunk, file, position) {
  for (let done = 0; done < chunk.length; ) {
    const at = position + done;
    const { bytesWritten } = await naming(file, () => handle.write(chunk, done, chunk.length - done, at));
    done += bytesWritten;
  }
}

// What `act` (a write to, sync or close of the temp file of `file`) resolves to; its error named
// for `file`, as Node names a path ("ENOSPC: no space left on device, write '<file>'"), not for no
// file at all (an fd's errors name none).
async function naming(file, act) {
  try {
    return await act();
  } catch (err) {
    if (typeof err.code !== 'string' || err.path !== undefined || !err.syscall) throw err;
    throw Object.assign(err, { message: `${err.message} '${file}'`, path: file });
  }
}

// The directory's entries on the disk: after a rename or link there, the new name too.
function syncDir(directory) {
  const fd = fs.openSync(directory, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

module.exports = { putInPlace, fileExists, writeAll, naming, syncDir };
