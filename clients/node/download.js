'use strict';
// A download's file, written through a partial file beside it, as the Python SDK's
// tessera.transfer.ResumableDownloadSink: one the stream broke or ran out of time on keeps its
// bytes there with a record of the file they are the start of, for a later download to go on from
// (resume: true). The partial file and its record are named and written as the Python SDK's, so
// either client goes on from what the other kept.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { tesseraError } = require('./errors');
const { putInPlace, fileExists, writeAll, naming, syncDir } = require('./put_in_place');

// What a message tells the caller to do, and how a refused resume names the option.
const RESUME_WORDS = 'download again with resume: true';
const WITH_RESUME_WORDS = 'with resume: true';
const WITHOUT_RESUME_WORDS = 'without resume: true';

// What ends a download with its bytes worth keeping: the stream broke or ran out of time. One asked
// to resume keeps them however it ends (stopped by the caller, CANCELLED: cancelCalls, which
// tessera-node's SIGINT and SIGTERM call; refused by the daemon; the disk full), as curl -C - and
// wget -c do, but for a file whose sha256 is not the header's; one not asked to leaves nothing
// behind, but on a full disk.
const INTERRUPTIONS = ['UNAVAILABLE', 'DEADLINE_EXCEEDED'];
const STOPPED = 'CANCELLED';
// A disk too full to write the rest of the file: the bytes written are kept, not lost with it.
const NO_ROOM = ['ENOSPC', 'EDQUOT'];

const READ_BYTES = 1 << 20;

// The partial download of `file` and the record of what it holds, beside it: named after the
// file's name alone, so that a later download to it finds them, and short, so that a name at the
// filesystem's length limit still has room (tessera.transfer.partial_names).
function partialNames(file) {
  const name = path.basename(file);
  const digest = crypto.createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 8);
  const stem = path.join(path.dirname(file), `.${Array.from(name).slice(0, 32).join('')}.${digest}`);
  return { partial: `${stem}.partial`, record: `${stem}.partial.json` };
}

// What a partial file holds, as its record (`text`, read) says; undefined where there is no
// record to trust.
function parseRecord(text) {
  try {
    const kept = JSON.parse(text);
    return kept !== null && typeof kept === 'object' && !Array.isArray(kept) ? kept : undefined;
  } catch {
    return undefined;
  }
}

// The record, written whole or not at all (a temp file renamed over it).
function writeRecord(record, file, header) {
  const temp = `${record}.${crypto.randomBytes(4).toString('hex')}`;
  try {
    fs.writeFileSync(temp, JSON.stringify({ file, sha256: header.sha256, size_bytes: header.size_bytes }), { flag: 'wx' });
    fs.renameSync(temp, record);
  } catch (err) {
    fs.rmSync(temp, { force: true });
    throw err;
  }
}

// What says a file at the partial file's name is still the one found (bigint stats, which keep
// the nanoseconds): a Python resume writes on in the same file without writing its record again,
// which its size and times show.
function identity(stats) {
  return { dev: stats.dev, ino: stats.ino, size: stats.size, mtimeNs: stats.mtimeNs, ctimeNs: stats.ctimeNs };
}

function sameIdentity(a, b) {
  return Object.keys(a).every((key) => a[key] === b[key]);
}

// The bigint stats of the file at `partial`, not followed; undefined where there is none.
function lstatOrNone(partial) {
  try {
    return fs.lstatSync(partial, { bigint: true });
  } catch (err) {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  }
}

// The partial file at `partial` as this download starts, where there is one: its identity and
// its record's text (what `dropFound` and `keepBytes` check they still are), and with `resume`,
// it opened to read (`source`), its size and its record (`kept`). One that is not a plain file of
// this user's with one name is refused for a resume: its bytes may change under the copy at its
// owner's will. One removed before it is opened is none.
async function findKept(file, partial, record, resume) {
  const named = lstatOrNone(partial);
  if (named === undefined) return undefined;
  const recordText = readText(record);
  const euid = BigInt(process.geteuid());
  const plain = (stats) => stats.isFile() && stats.nlink === 1n && stats.uid === euid;
  const mine = plain(named);
  const found = { identity: identity(named), recordText, mine };
  if (!resume) return found;
  const refusal = new Error(
    `${file}: its partial download ${partial} is not a plain file of yours with one name; remove it`,
  );
  if (!mine) throw refusal;
  // Not blocking: a FIFO swapped in after the lstat is not waited on. A link is not followed.
  const { O_RDONLY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
  let source;
  try {
    source = await fs.promises.open(partial, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch (err) {
    if (err.code === 'ENOENT') return undefined;
    if (err.code === 'ELOOP') throw refusal;
    throw err;
  }
  let held;
  try {
    held = await source.stat({ bigint: true });
  } catch (err) {
    await source.close();
    throw err;
  }
  if (!plain(held)) {
    await source.close();
    throw refusal;
  }
  return { ...found, identity: identity(held), source, size: Number(held.size), kept: parseRecord(recordText) };
}

// The text of `name`; undefined where there is none.
function readText(name) {
  try {
    return fs.readFileSync(name, 'utf8');
  } catch {
    return undefined;
  }
}

// Writes a downloaded `file` through a temp file of its own beside it, which takes the name only
// once its size and sha256 match the header's. Only this download writes that file: the partial
// file an earlier download kept may be held and written by a Python download at the same moment
// (its lock is one Node cannot see), so it is only read. With `resume`, its bytes are copied into
// the temp file where its record names the file the first header does, and refused (an Error, it
// left as it was) where not; without, the download starts again from the first byte. One with
// `resume` that the caller stops keeps its bytes, those it went on from included. The sha256
// checked at the end is of the bytes this download wrote, so bytes changed under the copy are
// DATA_LOSS, never a file taking the name. `describe(header)` names the file in messages and in
// the record; `progress(done, total)` hears of the bytes written.
class PartialDownload {
  static async open(file, { overwrite, resume, describe, progress }) {
    if (!overwrite && fs.existsSync(file)) throw fileExists(file);
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) {
      throw Object.assign(new Error(`${file} is a directory; name the file to write in it`), { code: 'EISDIR' });
    }
    const { partial, record } = partialNames(file);
    // A name of its own, hidden and short, as the Python SDK's temp files (.FILE.<random>.partial).
    const base = Array.from(path.basename(file)).slice(0, 32).join('');
    const temp = path.join(path.dirname(file), `.${base}.${crypto.randomBytes(4).toString('hex')}.partial`);
    // Created here, so no other download writes it; opened before the call, so a directory that
    // is not there fails with nothing left open.
    let handle;
    try {
      handle = await fs.promises.open(temp, 'wx+');
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;
      const dir = path.dirname(file);
      throw Object.assign(new Error(`no directory ${dir} to write ${file} in; create it first`), { code: 'ENOENT' });
    }
    let found;
    try {
      found = await findKept(file, partial, record, resume);
    } catch (err) {
      await handle.close();
      fs.rmSync(temp, { force: true });
      throw err;
    }
    return new PartialDownload({ file, overwrite, resume, describe, progress, partial, record, temp, handle, found });
  }

  constructor({ file, overwrite, resume, describe, progress, partial, record, temp, handle, found }) {
    Object.assign(this, { file, overwrite, resume, describe, progress, partial, record, temp, handle, found });
    // What the record says the partial file holds, where its bytes are to be gone on from.
    this.kept = found?.source !== undefined && found.size ? found.kept : undefined;
    this.header = undefined;
    this.hash = crypto.createHash('sha256');
    this.size = 0;
    // The bytes an earlier download kept that this one went on from.
    this.resumedFrom = 0;
    // Set where an error decides the bytes kept, whatever it is: how many (0: none, removed).
    this.keep = undefined;
    // Set where a resume was refused: the partial file is left as it was.
    this.refused = false;
    // Set once `finish` closed this download's own file, whole.
    this.closed = false;
    // Where the stream being written started (the offset asked for).
    this.streamFrom = 0;
  }

  // Whether bytes of an earlier download are to be gone on from (once a header matches).
  resuming() {
    return this.kept !== undefined;
  }

  // The byte to ask the rest of the file from.
  offset() {
    return this.size;
  }

  // The header of a stream: the first is checked against the bytes kept (a resume); a later one
  // (after a reconnect) must name the same file.
  async start(header) {
    if (this.header !== undefined) {
      if (header.sha256 !== this.header.sha256 || header.size_bytes !== this.header.size_bytes) {
        throw this.changed(`sha256 ${this.header.sha256}, now ${header.sha256}`);
      }
      this.streamFrom = this.size;
      return;
    }
    try {
      if (this.kept !== undefined) await this.resumeFromKept(header, this.kept);
    } finally {
      await this.closeSource();
    }
    this.header = header;
    this.streamFrom = this.size;
  }

  async resumeFromKept(header, kept) {
    const { source } = this.found;
    const held = (await source.stat()).size;
    if (kept.sha256 !== header.sha256 || kept.size_bytes !== header.size_bytes) {
      this.refused = true;
      throw new Error(
        `${this.file}: the partial download ${this.partial} holds ${held} bytes of ${kept.file} ` +
          `(sha256 ${kept.sha256}), not of ${this.describe(header)} (sha256 ${header.sha256}); download it ` +
          `${WITHOUT_RESUME_WORDS} to start again (it replaces them), or download ${kept.file} ` +
          `${WITH_RESUME_WORDS} to go on with it`,
      );
    }
    // More bytes than the file has: damaged, so none of them is worth going on from.
    if (held > header.size_bytes) return;
    // Copied, and hashed as copied: what the sha256 checked at the end is of is what this
    // download's own file holds, whatever another download writes to the partial file meanwhile.
    const buffer = Buffer.alloc(READ_BYTES);
    while (this.size < held) {
      const want = Math.min(READ_BYTES, held - this.size);
      const { bytesRead } = await naming(this.file, () => source.read(buffer, 0, want, this.size));
      if (!bytesRead) break;
      const bytes = buffer.subarray(0, bytesRead);
      try {
        await writeAll(this.handle, bytes, this.file, this.size);
      } catch (err) {
        if (!NO_ROOM.includes(err.code)) throw err;
        err.message +=
          ` (a resume copies the bytes kept before it goes on from them, and the disk had no room ` +
          `for the copy: the ${held} bytes kept in ${this.partial} are still there; ${this.roomForAResume(header)})`;
        throw err;
      }
      this.hash.update(bytes);
      this.size += bytesRead;
    }
    this.resumedFrom = this.size;
  }

  async closeSource() {
    const source = this.found?.source;
    if (source === undefined) return;
    this.found.source = undefined;
    await source.close().catch(() => {});
  }

  // The error for the file having changed at the server while it downloaded (`how`: what says
  // so). The bytes written are of the file as it was, which the record names: they are kept, so
  // that a resume is refused as of another file rather than finding none.
  changed(how) {
    this.keep = this.size;
    const kept =
      this.size && this.mayKeep() ? `; the ${this.size} bytes of it as it was are kept in ${this.partial}` : '';
    return tesseraError(
      'DATA_LOSS',
      `${this.describe(this.header)} changed while it was downloading (${how})${kept}; ` +
        `download it again ${WITHOUT_RESUME_WORDS}`,
    );
  }

  // What a resume from bytes kept beside the file needs: the partial file stays until the end.
  roomForAResume(header) {
    return (
      `a resume needs free space for the whole file (${header.size_bytes} bytes) beside them: ` +
      `free that much and ${RESUME_WORDS}`
    );
  }

  // What the message of a download that gave up says to do.
  howToGoOn() {
    if (this.header === undefined || !this.size) return 'download it again';
    if (!this.mayKeep()) {
      return (
        `another download wrote ${this.partial} meanwhile, so this one's bytes are not kept there; ` +
        'download it again'
      );
    }
    return `${this.size} of ${this.header.size_bytes} bytes are kept in ${this.partial}; ${RESUME_WORDS}`;
  }

  async write(chunk) {
    if (this.size + chunk.length > this.header.size_bytes) {
      // Refused before the disk fills: bytes this download appended are of no known place in the
      // file, those it went on from are as an earlier download left them.
      this.keep = this.resumedFrom;
      throw this.sentTooMuch();
    }
    await writeAll(this.handle, chunk, this.file, this.size);
    this.hash.update(chunk);
    this.size += chunk.length;
  }

  // As tessera.transfer.sent_too_much: only a stream asked from past the first byte can have had
  // its offset dropped.
  sentTooMuch() {
    const said = `the daemon sent more than the ${this.header.size_bytes} bytes of ${this.describe(this.header)}`;
    if (!this.streamFrom) return tesseraError('DATA_LOSS', `${said}; download it again`);
    return tesseraError(
      'DATA_LOSS',
      `${said} (its stream sent from byte ${this.streamFrom}); a daemon that ignores the offset asked for ` +
        `(older than this client) sends the file from its first byte: upgrade tesserad, or download ` +
        `it again ${WITHOUT_RESUME_WORDS}`,
    );
  }

  progressed() {
    if (this.progress !== undefined && this.header !== undefined) this.progress(this.size, this.header.size_bytes);
  }

  // Checks the whole file, then moves it into place: on the disk before it takes its name, and
  // the name after, so a power cut once the download resolved leaves no empty or short file.
  async finish() {
    const { header } = this;
    // Whether the whole file's sha256 or size is not the header's: none of it is worth keeping.
    let damaged = false;
    try {
      await naming(this.file, () => this.handle.sync());
      await naming(this.file, () => this.handle.close());
      this.closed = true;
      const sha256 = this.hash.digest('hex');
      if (header === undefined || (header.sha256 && sha256 !== header.sha256) || this.size !== header.size_bytes) {
        damaged = true;
        const expected = header ? `${header.size_bytes} bytes with sha256 ${header.sha256}` : 'a header first';
        throw tesseraError(
          'DATA_LOSS',
          `download of ${path.basename(this.file)} is corrupt: got ${this.size} bytes with sha256 ${sha256}, ` +
            `expected ${expected}; download it again`,
        );
      }
      putInPlace(this.temp, this.file, this.overwrite);
    } catch (err) {
      if (!damaged && this.resume && this.size) {
        // Failed before it took its name (a file put there meanwhile, a full disk as it synced):
        // kept for the next resume to put in place, as it keeps its bytes at any other moment.
        await this.keepAfter(err);
      } else {
        await this.remove();
      }
      throw err;
    }
    // The partial file it went on from, or started again over, is of no more use.
    this.dropFound();
    syncDir(path.dirname(this.file));
    return header;
  }

  // After `error`: the bytes written kept for a resume where it interrupted the download, the
  // download was asked to resume (those an earlier download kept with those written since:
  // stopped by the caller, refused by the daemon), the disk had no room for the rest (the error
  // saying so) or the file changed at the server; where the server sent more than the file has,
  // those an earlier download kept; where a resume was refused or no header came, the partial
  // file left as it was; else (the daemon's DataLoss among them) what this download wrote
  // removed, with the partial file it found.
  async abort(error) {
    await this.closeSource();
    if (this.refused || this.header === undefined) {
      await this.discard();
      return;
    }
    if (this.keep !== undefined) {
      // Decided by the error, whatever it is: none kept where it is 0.
      if (this.keep) await this.keepBytes(this.keep);
      else await this.remove();
      return;
    }
    if (error.code === 'DATA_LOSS') {
      // The daemon's (its copy is damaged; ours set `keep`): the bytes it sent are of that copy,
      // none worth going on from, as with a sha256 mismatch found here.
      await this.remove();
      return;
    }
    if (this.size && (INTERRUPTIONS.includes(error.code) || (this.resume && error.code === STOPPED))) {
      await this.keepBytes(this.size);
      return;
    }
    if (this.size && NO_ROOM.includes(error.code)) {
      const kept = (await this.keepBytes(this.size)) ? this.size : this.foundBytes();
      const { size_bytes: total } = this.header;
      error.message += kept
        ? ` (the disk had no room for the rest of the file: ${kept} of ${total} bytes are kept in ` +
          `${this.partial}; ${this.roomForAResume(this.header)})`
        : ' (the disk had no room for the rest of the file; free some and download it again)';
      return;
    }
    if (this.size && this.resume) {
      await this.keepAfter(error);
      return;
    }
    await this.remove();
  }

  // A download asked to resume that ended otherwise than by a break, a stop or a full disk (a
  // refusal midway, a put in place that failed): its bytes kept, and `error` saying so on a line
  // of its own, as the Python SDK's.
  async keepAfter(error) {
    if (await this.keepBytes(this.size)) {
      error.message +=
        `\n${this.size} of ${this.header.size_bytes} bytes are kept in ${this.partial}; ` +
        `${RESUME_WORDS} to go on from them`;
    }
  }

  // The bytes of this file a resume went on from, where its partial file is still there as found;
  // else 0.
  foundBytes() {
    return this.kept !== undefined && this.isFound() ? this.found.size : 0;
  }

  // The first `size` bytes kept at the partial file's name, with the record of the file they are
  // of: this download's own file renamed over it, whole, only now, and only where what is there is
  // still what was found (or nothing): a partial file another download made or wrote since is
  // its own, left for it to go on from. The record a resume went on from already names the file,
  // so it is not written again: keeping then needs no room on a full disk. Resolves to whether
  // they were kept.
  async keepBytes(size) {
    if (!this.mayKeep()) {
      await this.discard();
      return false;
    }
    try {
      const recordNamesIt = this.kept !== undefined && this.isFound();
      if (!this.closed) {
        await this.handle.truncate(size);
        await this.handle.close();
      }
      if (!recordNamesIt) writeRecord(this.record, this.describe(this.header), this.header);
      fs.renameSync(this.temp, this.partial);
      return true;
    } catch {
      await this.discard();
      return false;
    }
  }

  async remove() {
    await this.closeSource();
    await this.discard();
    if (this.header !== undefined) this.dropFound();
  }

  // This download's own file removed.
  async discard() {
    await this.handle.close().catch(() => {});
    fs.rmSync(this.temp, { force: true });
  }

  // The partial file found at the start and its record removed, only where they are still what
  // was found: one a download (Python's) made or kept since is its own, left for it to go on from.
  dropFound() {
    if (this.found === undefined || !this.found.mine || !this.isFound()) return;
    fs.rmSync(this.partial, { force: true });
    fs.rmSync(this.record, { force: true });
  }

  // Whether this download's bytes may take the partial file's name: nothing has it, or what has
  // it is still what was found. One that cannot be looked at is not taken.
  mayKeep() {
    try {
      return lstatOrNone(this.partial) === undefined || this.isFound();
    } catch {
      return false;
    }
  }

  // Whether the file at the partial file's name and its record are the ones found.
  isFound() {
    const { found } = this;
    let named;
    try {
      named = fs.lstatSync(this.partial, { bigint: true });
    } catch {
      return false;
    }
    return (
      found !== undefined && sameIdentity(found.identity, identity(named)) && readText(this.record) === found.recordText
    );
  }
}

// Makes `directory` and its missing parents, for a download's file; those it made (their names and
// identities), the deepest first, for removeEmptyDirectories. One another made meanwhile is its own.
function makeDirectories(directory) {
  const missing = [];
  for (let name = path.resolve(directory); !fs.existsSync(name); name = path.dirname(name)) missing.push(name);
  const made = [];
  try {
    for (const name of missing.reverse()) {
      try {
        fs.mkdirSync(name);
      } catch (err) {
        if (err.code === 'EEXIST' && fs.statSync(name).isDirectory()) continue;
        throw err;
      }
      const { dev, ino } = fs.lstatSync(name, { bigint: true });
      made.unshift({ name, dev, ino });
    }
  } catch (err) {
    removeEmptyDirectories(made);
    throw err;
  }
  return made;
}

// Removes the directories makeDirectories `made` (the deepest first) that are empty, where their
// name still names them (one made at that name since is another's): a download that failed leaves
// none behind, and one whose bytes are kept for a resume keeps those that hold them.
function removeEmptyDirectories(made) {
  for (const { name, dev, ino } of made) {
    try {
      const now = fs.lstatSync(name, { bigint: true });
      if (now.dev !== dev || now.ino !== ino) return;
      fs.rmdirSync(name);
    } catch {
      return;
    }
  }
}

module.exports = { PartialDownload, makeDirectories, removeEmptyDirectories };
